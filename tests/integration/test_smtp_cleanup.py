"""What Postern does to a message submitted over SMTP, as Postfix's cleanup does to local
mail: Bcc fields go (their recipients stay in the envelope), a missing Date and Message-ID
are added before DKIM signing (so they are signed), and the Received field names the message
id and a sole recipient. Checked at a real sink, against the DKIM record Postern printed."""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
from pathlib import Path

import dkim as dkimpy
import pytest

from tests.support.dkim import dkim_cli, published, signed_names
from tests.support.processes import LOOPBACK
from tests.support.rows import query
from tests.support.service import ServiceFactory, make_config
from tests.support.sink import Sink
from tests.support.smtp import CLIENT_HELO, smtp_send

pytestmark = pytest.mark.timeout(30)

HEADER = (
    b"From: App <app@signed.test>\r\n"
    b"To: Ann <ann@example.test>\r\n"
    b"Bcc: Hidden <hidden@example.test>,\r\n\tsecret@example.test\r\n"
    b"Subject: cleaned\r\n"
)
BODY = b"\r\nHello.\r\n"


def queued_id(text: str) -> str:
    match = re.search(r"queued as (\S+)", text)
    assert match, text
    return match.group(1)


async def test_bcc_goes_and_a_signed_date_and_message_id_are_added(
    tmp_path: Path, service: ServiceFactory, sink: Sink
) -> None:
    config = make_config(tmp_path, sink)
    key = await dkim_cli(config, "generate", domain="signed.test", algorithm="ed25519")
    svc = await service(config)
    rcpts = ["ann@example.test", "hidden@example.test", "secret@example.test"]
    code, text = await smtp_send(svc.smtp_port, "app@signed.test", rcpts, HEADER + BODY)
    assert code == 250, text
    message_id = queued_id(text)
    assert await sink.wait_for_async(1, timeout=10)
    [got] = sink.messages
    assert got.rcpt_tos == rcpts  # the Bcc recipients stay in the envelope
    head = got.data.split(b"\r\n\r\n", 1)[0]
    assert b"bcc" not in head.lower() and b"hidden" not in got.data and b"secret@" not in got.data
    parsed = email.message_from_bytes(got.data, policy=email.policy.SMTP)
    assert parsed.get_all("Message-ID") == [f"<{message_id}@postern.test>"]
    [date] = parsed.get_all("Date")
    assert str(date).endswith("+0000") and email.utils.parsedate_to_datetime(str(date))
    assert dkimpy.verify(got.data, dnsfunc=published(key))
    assert {"from", "to", "subject", "date", "message-id"} <= signed_names(got.data)
    [received] = parsed.get_all("Received")
    assert str(received).startswith(f"from {CLIENT_HELO} ([{LOOPBACK}])")
    assert f"by postern.test (Postern) with ESMTP id {message_id};" in " ".join(received.split())
    assert "for <" not in str(received)  # several recipients: none is named


async def test_a_sole_recipient_is_named_and_the_clients_date_and_message_id_are_kept(
    service: ServiceFactory, sink: Sink
) -> None:
    svc = await service()
    own = b"Date: Mon, 1 Jan 2024 00:00:00 +0100\r\nMessage-ID: <own@client.test>\r\n"
    content = b"From: a@x.test\r\nTo: b@y.test\r\n" + own + BODY
    code, text = await smtp_send(svc.smtp_port, "a@x.test", ["b@y.test"], content)
    assert code == 250, text
    assert await sink.wait_for_async(1, timeout=10)
    [got] = sink.messages
    received, rest = got.data.split(b"\r\n", 3)[:3], got.data.split(b"\r\n", 3)[3]
    assert received[1].startswith(b"\tby postern.test (Postern) with ESMTP id msg_")
    assert received[2].startswith(b"\tfor <b@y.test>; ")
    assert rest == content  # nothing added, nothing moved


async def test_a_sandbox_message_is_cleaned_and_named_by_its_sandbox_id(
    service: ServiceFactory, sink: Sink
) -> None:
    """The id the 250 names is the one stored, in Received and in Message-ID."""
    svc = await service()
    content = b"X-Postern-Sandbox: true\r\nBcc: c@y.test\r\nFrom: a@x.test\r\n" + BODY
    code, text = await smtp_send(svc.smtp_port, "a@x.test", ["b@y.test", "c@y.test"], content)
    assert code == 250, text
    message_id = queued_id(text)
    assert message_id.startswith("sandbox_msg_")
    [row] = await query(svc, "SELECT data FROM message_body WHERE message_id = ?", message_id)
    stored = bytes(row["data"])
    assert f" id {message_id}; ".encode() in stored
    assert f"\r\nMessage-ID: <{message_id}@postern.test>\r\n".encode() in stored
    assert b"bcc" not in stored.lower() and b"x-postern" not in stored.lower()
    assert stored.endswith(b"From: a@x.test\r\n" + BODY)
