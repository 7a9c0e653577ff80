"""A large message through the real SMTP door, stored in pieces on SQLite (storage.pieces)
and whole on PostgreSQL, relayed byte for byte to the upstream sink, and read back whole by
the API."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from storage import pieces
from storage.queue_sql import bodies_of
from tests.support.api import RCPT, Api, ApiFactory
from tests.support.databases import clean_postgresql
from tests.support.sink import Sink
from tests.support.smtp import SENDER, queued_id, smtp_send

pytestmark = pytest.mark.timeout(60)


def large_message(size: int) -> bytes:
    """About `size` bytes of RFC 5322, lines well under 998, each numbered."""
    head = (
        b"From: App <app@sender.test>\r\nTo: <" + RCPT.encode() + b">\r\n"
        b"Subject: a large one\r\nMessage-ID: <large@sender.test>\r\n\r\n"
    )
    line = b"%08d " + b"0123456789abcdef" * 4 + b"\r\n"  # 75 bytes
    return head + b"".join(line % i for i in range(size // 75))


@contextlib.asynccontextmanager
async def started(api_client: ApiFactory, backend: str) -> AsyncIterator[Api]:
    if backend == "sqlite":
        yield await api_client()
        return
    async with clean_postgresql() as url:
        api = await api_client(storage={"url": url})
        try:
            yield api
        finally:
            await api.svc.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_4_mb_message_is_relayed_and_read_back_byte_for_byte(
    api_client: ApiFactory, sink: Sink, backend: str
) -> None:
    sent = large_message(4_000_000)
    async with started(api_client, backend) as api:
        reply = await smtp_send(api.svc.smtp_port, SENDER, [RCPT], sent, timeout=30)
        message_id = queued_id(reply)
        assert await sink.wait_for_async(1, timeout=30)
        [got] = sink.messages
        assert got.rcpt_tos == [RCPT]
        assert got.data.startswith(b"Received: ")
        assert got.data.endswith(sent)  # behind our Received field, every byte as sent
        assert len(got.data) - len(sent) < 300

        db = api.svc.db
        assert db is not None
        found = await db.read(
            lambda conn: conn.execute(
                text("SELECT count(*) FROM message_piece WHERE message_id = :id"),
                {"id": message_id},
            ).scalar()
        )
        stored = (await db.read(lambda conn: bodies_of(conn, [message_id])))[message_id]
        # in pieces of PIECE bytes, the last one what is left; PostgreSQL stores it whole
        assert found == (-(-len(stored) // pieces.PIECE) if backend == "sqlite" else 0)
        assert stored == got.data  # what is stored is what was relayed

        raw = await api.get(f"/v1/messages/{message_id}/raw", key=await api.key("admin"))
        assert raw.status_code == 200, raw.text
        assert raw.content == stored
