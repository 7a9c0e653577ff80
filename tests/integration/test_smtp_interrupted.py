"""SMTP transactions that go wrong half-way, over loopback to the real listener, storage
and delivery: a client that leaves during the commit, a message the MIME parser cannot take.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.message import QueuedMessage, Route, Submission
from gateway.queue.store import Queue
from gateway.smtpd import replies
from tests.support import smtp
from tests.support.service import ServiceFactory
from tests.support.sink import Sink
from tests.support.smtp import GOOD, RawClient

pytestmark = pytest.mark.timeout(30)

KEY = b"X-Postern-Idempotency-Key: deep-1\r\n"


def nested(depth: int) -> bytes:
    """A message whose MIME parts nest `depth` deep (~70 bytes a level)."""
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        for i in range(depth)
    )
    closing = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(depth)))
    head = b"From: a@x.test\r\nTo: b@y.test\r\nSubject: deep\r\nMIME-Version: 1.0\r\n" + KEY
    return head + opening + b"Content-Type: text/plain\r\n\r\nx\r\n" + closing


async def test_message_of_a_client_gone_during_the_commit_is_delivered_once(
    service: ServiceFactory, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client closes after the final dot, before the 250; aiosmtpd cancels the handler
    while the commit is under way. The stored message must still reach a worker (not stay claimed
    by this node, its lease renewed, until a restart) and be delivered once."""
    enqueue = Queue.enqueue_parts  # intake stores every message as its parts
    stored = asyncio.Event()

    async def slow_enqueue(
        self: Queue, parts: list[tuple[Submission, Route]], claim: bool
    ) -> list[QueuedMessage]:
        messages = await enqueue(self, parts, claim=claim)
        stored.set()  # committed (and claimed by this node), no reply sent yet
        await asyncio.sleep(1)  # a slow commit: the client leaves before it returns
        return messages

    monkeypatch.setattr(Queue, "enqueue_parts", slow_enqueue)
    svc = await service()
    client = await RawClient.connect(svc.smtp_port)
    try:
        await client.ehlo()
        assert (await client.command("MAIL FROM:<a@x.test>")).code == 250
        assert (await client.command("RCPT TO:<b@y.test>")).code == 250
        assert (await client.command("DATA")).code == 354
        await client.send(GOOD + b".\r\n")
        await asyncio.wait_for(stored.wait(), 5)
    finally:
        await client.close()  # before the 250

    assert await sink.wait_for_async(1, timeout=5), "the stored message was never delivered"
    await asyncio.sleep(0.5)  # a second copy would be here by now
    assert len(sink.messages) == 1
    assert sink.messages[0].data.endswith(GOOD)


async def test_deeply_nested_mime_with_idempotency_key_is_accepted(
    service: ServiceFactory, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stdlib parser recurses too far on MIME nested 1000 deep: the idempotency digest
    falls back to the raw bytes instead of answering 451 to every retry for ever, and the
    session goes on with a fresh transaction."""
    # That parse takes ~1 s of a thread alone on a slow machine, past the client's usual 5 s
    # beside a full parallel test run: what is tested here is the answer, not its speed.
    monkeypatch.setattr(smtp, "READ_TIMEOUT", 20.0)
    svc = await service()
    client = await RawClient.connect(svc.smtp_port)
    try:
        await client.ehlo()
        reply = await client.transaction(nested(1000))
        assert reply.code == 250, reply
        assert (await client.transaction(GOOD)).code == 250

        assert await sink.wait_for_async(2, timeout=5)
    finally:
        await client.close()


async def test_next_mail_after_a_failed_data_handler_starts_a_new_transaction(
    service: ServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the DATA handler raises (answered 451 4.3.0), the transaction is reset:
    the next MAIL on the connection gets 250, not "503 nested MAIL"."""
    svc = await service()

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(svc.intake, "submit", broken)
    client = await RawClient.connect(svc.smtp_port)
    try:
        await client.ehlo()
        reply = await client.transaction(GOOD)
        assert (reply.code, reply.enhanced) == replies.TEMPORARY.status, reply
        assert (await client.command("MAIL FROM:<a@x.test>")).code == 250
    finally:
        await client.close()
