"""Opportunistic STARTTLS (direct MX delivery): a host that offers STARTTLS and then refuses
it still gets the mail in plain text, as Postfix's "may" level does."""

from __future__ import annotations

import asyncio
import time

from gateway.delivery.upstream import PoolSettings, SessionSettings, UpstreamPool
from gateway.message import Outcome, QueuedMessage

MESSAGE = b"From: a@b.test\r\nTo: c@d.test\r\nSubject: tls\r\n\r\nHi.\r\n"


async def _refusing_starttls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A tiny SMTP server: offers STARTTLS, answers it 454, then takes the mail."""
    writer.write(b"220 mx.test ESMTP\r\n")
    in_data = False
    while line := await reader.readline():
        if in_data:
            if line == b".\r\n":
                in_data = False
                writer.write(b"250 2.0.0 queued\r\n")
            continue
        verb = line[:4].upper()
        if verb == b"EHLO":
            writer.write(b"250-mx.test\r\n250-STARTTLS\r\n250 8BITMIME\r\n")
        elif verb == b"STAR":
            writer.write(b"454 4.7.0 TLS not available\r\n")
        elif verb == b"DATA":
            in_data = True
            writer.write(b"354 go ahead\r\n")
        elif verb == b"QUIT":
            writer.write(b"221 bye\r\n")
            break
        else:
            writer.write(b"250 2.0.0 ok\r\n")
        await writer.drain()
    writer.close()


async def test_a_refused_starttls_falls_back_to_plain_text() -> None:
    server = await asyncio.start_server(_refusing_starttls, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool(
        PoolSettings(id="mx", name="direct", host="127.0.0.1", port=port,
                     encryption="opportunistic"),
        SessionSettings(local_hostname="postern.test", connect_timeout=2, command_timeout=2),
    )  # fmt: skip
    message = QueuedMessage(
        id="msg_1", mail_from="a@b.test", recipients=["c@d.test"], content=MESSAGE,
        attempts=0, created_at=time.time(),
    )  # fmt: skip
    try:
        results = await asyncio.wait_for(pool.send(message), timeout=10)
        assert results["c@d.test"].outcome is Outcome.DELIVERED
    finally:
        await pool.close()
        server.close()
        await server.wait_closed()
