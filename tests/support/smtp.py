"""SMTP clients for tests: the stdlib client for a whole transaction."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Sequence

from tests.support.processes import LOOPBACK

CLIENT_HELO = "client.test"


async def smtp_send(
    port: int,
    sender: str,
    recipients: Sequence[str],
    data: bytes,
    *,
    mail_options: Sequence[str] = (),
    timeout: float = 10.0,
) -> tuple[int, str]:
    """One SMTP transaction with the stdlib client, run in a thread (never on the loop).

    Returns the reply that ended it: DATA's final reply, or the first refusal of MAIL, or
    of RCPT when every recipient was refused.
    """

    def run() -> tuple[int, str]:
        with smtplib.SMTP(LOOPBACK, port, local_hostname=CLIENT_HELO, timeout=timeout) as client:
            client.ehlo()
            code, text = client.mail(sender, list(mail_options))
            if code != 250:
                return code, text.decode()
            refused: tuple[int, bytes] | None = None
            accepted = 0
            for rcpt in recipients:
                code, text = client.rcpt(rcpt)
                if code in (250, 251):
                    accepted += 1
                else:
                    refused = refused or (code, text)
            if not accepted:
                assert refused is not None
                return refused[0], refused[1].decode()
            code, text = client.data(data)
            return code, text.decode()

    return await asyncio.wait_for(asyncio.to_thread(run), timeout=timeout + 5)
