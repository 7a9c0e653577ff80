"""Queue search on SQLite and PostgreSQL: every single filter is served by an index (the
plans of the page, count and chunk queries never scan `message` whole), keyset pages are
complete and stable across ties in created_at, and the bulk helpers see only active mail.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from sqlalchemy import Connection, insert
from sqlalchemy.sql import Select

from storage.db import Database
from storage.message_search import (
    InvalidCursor,
    MessageFilter,
    active_ids,
    count_active,
    count_query,
    decode_cursor,
    encode_cursor,
    ids_query,
    search,
    search_query,
)
from storage.models import Message, MessageMeta, MessageSubjectWord, MessageTag, Pool, Recipient
from storage.search_keys import address_key, address_range

pytestmark = pytest.mark.timeout(60)

M = Message

FILTERS = {
    "none": MessageFilter(),
    "status": MessageFilter(statuses=("deferred",)),
    "statuses": MessageFilter(statuses=("queued", "deferred")),
    "pool": MessageFilter(pool="p3"),
    "recipient": MessageFilter(recipient="r7@example.test"),
    "from": MessageFilter(mail_from="s3@example.test"),
    "tag": MessageFilter(tag="t5"),
    "since": MessageFilter(since=1000.0),
    "until": MessageFilter(until=1100.0),
    "api_key": MessageFilter(api_key_id="key_1"),
    "api_key+status": MessageFilter(api_key_id="key_1", statuses=("deferred",)),
    "api_key+tag": MessageFilter(api_key_id="key_1", tag="t5"),
    "api_key+recipient": MessageFilter(api_key_id="key_1", recipient="r7@example.test"),
    "message_id_header": MessageFilter(message_id_header="<m7@example.test>"),
    "subject": MessageFilter(subject=("w7",)),
    "subject words": MessageFilter(subject=("hello", "w7", "x3")),
    "subject+recipient": MessageFilter(subject=("w7",), recipient="r7@example.test"),
    "subject+status": MessageFilter(subject=("w7",), statuses=("deferred",)),
    "api_key+subject": MessageFilter(api_key_id="key_1", subject=("w7", "x3")),
    "client": MessageFilter(client=address_range("192.0.2.7")),
    "client block": MessageFilter(client=address_range("192.0.2.0/29")),
    "api_key+client": MessageFilter(api_key_id="key_1", client=address_range("192.0.2.7")),
}
SUBJECT_WORDS = MessageSubjectWord


def _rows(n: int, base: float = 1000.0) -> dict[str, list[dict[str, Any]]]:
    """n messages over 5 senders, 10 recipients, 10 tags and 2 keys; every 3rd deferred,
    every 3rd delivered; created_at repeats in pairs (ties the cursor must order by id)."""
    messages, recipients, meta, tags, words = [], [], [], [], []
    for i in range(n):
        message_id = f"msg_{i:05d}"
        status = ("queued", "deferred", "delivered")[i % 3]
        messages.append(
            {
                "id": message_id,
                "status": status,
                "source": "http",
                "mail_from": f"s{i % 5}@example.test",
                "pool_id": f"pool_{i % 5}",  # chosen at intake
                "last_pool": f"p{i % 7}" if i % 4 else None,  # never attempted: None
                "attempts": 1,
                "size": 10,
                "created_at": base + i // 2,
                "updated_at": base + i // 2,
                "due_at": None if status == "delivered" else base,
                "api_key_id": f"key_{i % 2}",
                "header_message_id": f"<m{i % 10}@example.test>",
                "client_address": address_key(f"192.0.2.{i % 20}"),
            }
        )
        words += [
            {"message_id": message_id, "word": word, "message_created_at": base + i // 2}
            for word in ("hello", f"w{i % 10}", f"x{i % 7}", f"r{i % 97}")
        ]
        recipients.append(
            {
                "message_id": message_id,
                "email": f"r{i % 10}@example.test",
                "status": "delivered" if status == "delivered" else "pending",
                "message_created_at": base + i // 2,
                "updated_at": base,
            }
        )
        meta.append(
            {
                "message_id": message_id,
                "api_key_id": f"key_{i % 2}",
                "provider": "smtp",
                "tags": f'["t{i % 10}"]',
                "metadata_json": "{}",
            }
        )
        tags.append({"message_id": message_id, "tag": f"t{i % 10}"})
    return {
        "message": messages, "recipient": recipients, "meta": meta, "tag": tags, "word": words
    }  # fmt: skip


async def _fill(db: Database, n: int) -> None:
    rows = _rows(n)

    def fill(conn: Connection) -> None:
        conn.execute(
            insert(Pool),
            [
                {"id": f"pool_{i}", "name": f"p{i}", "host": "127.0.0.1", "port": 25,
                 "created_at": 0}
                for i in range(5)
            ],
        )  # fmt: skip
        conn.execute(insert(M), rows["message"])
        conn.execute(insert(Recipient), rows["recipient"])
        conn.execute(insert(MessageMeta), rows["meta"])
        conn.execute(insert(MessageTag), rows["tag"])
        conn.execute(insert(SUBJECT_WORDS), rows["word"])

    await db.transaction(fill)
    await db.transaction(lambda conn: conn.exec_driver_sql("ANALYZE"))


async def _plan(db: Database, query: Select[Any]) -> str:
    def explain(conn: Connection) -> list[str]:
        sql = str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
        if db.is_sqlite:
            return [row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)]
        # PostgreSQL picks a sequential scan of a small table whatever the indexes; with it
        # switched off, a sequential scan left in the plan means no index can serve.
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        return [row[0] for row in conn.exec_driver_sql("EXPLAIN " + sql)]

    return "\n".join(await db.transaction(explain))


def _full_scans(db: Database, plan: str) -> list[str]:
    if db.is_sqlite:
        return [
            line
            for line in plan.splitlines()
            if re.match(r"\s*SCAN (TABLE )?message\b(?!_)", line.strip()) and "INDEX" not in line
        ]
    return re.findall(r"Seq Scan on message(?:\s|$).*", plan)


@pytest.mark.parametrize("name", sorted(FILTERS))
async def test_each_filter_is_served_by_an_index(backend: Database, name: str) -> None:
    await _fill(backend, 600)
    flt = FILTERS[name]
    queries = {
        "page": search_query(flt, None, 50),
        "next page": search_query(flt, (1100.0, "msg_00200"), 50),
        "count": count_query(flt),
        "chunk": ids_query(flt, (1100.0, "msg_00200"), 500),
    }
    for what, query in queries.items():
        assert query is not None
        plan = await _plan(backend, query)
        assert not _full_scans(backend, plan), f"{name} / {what}:\n{plan}"


async def test_a_keys_own_pages_are_read_in_order_from_its_index(backend: Database) -> None:
    """A non-admin key's search (no other criterion) reads ix_message_sent_by_key in page
    order: no scan of `message`, and no sort, so a page never loads all the key's mail."""
    await _fill(backend, 600)
    flt = MessageFilter(api_key_id="key_1")
    queries = {
        "page": search_query(flt, None, 50),
        "next page": search_query(flt, (1100.0, "msg_00200"), 50),
        "chunk": ids_query(flt, None, 500),
        "next chunk": ids_query(flt, (1100.0, "msg_00200"), 500),
    }
    for what, query in queries.items():
        assert query is not None
        plan = await _plan(backend, query)
        assert not _full_scans(backend, plan), f"{what}:\n{plan}"
        if backend.is_sqlite:
            assert "ix_message_sent_by_key" in plan, f"{what}:\n{plan}"
            assert "TEMP B-TREE" not in plan, f"{what}:\n{plan}"
        else:
            assert "Seq Scan" not in plan, f"{what}:\n{plan}"


async def test_a_keys_pages_hold_only_its_mail(backend: Database) -> None:
    await _fill(backend, 120)
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page, cursor = await search(backend, MessageFilter(api_key_id="key_1"), 9, cursor)
        seen += [m.id for m in page]
        if cursor is None:
            break
    mine = [r for r in _rows(120)["message"] if r["api_key_id"] == "key_1"]
    assert seen == [r["id"] for r in sorted(mine, key=lambda r: (r["created_at"], r["id"]))][::-1]
    assert await count_active(backend, MessageFilter(api_key_id="key_0")) == 40


async def test_pages_cover_every_match_once_newest_first(backend: Database) -> None:
    await _fill(backend, 250)
    for flt in (MessageFilter(), MessageFilter(statuses=("deferred",)), FILTERS["pool"]):
        seen: list[tuple[float, str]] = []
        cursor: str | None = None
        while True:
            page, cursor = await search(backend, flt, 7, cursor)
            seen += [(m.created_at, m.id) for m in page]
            if cursor is None:
                break
        expected = _expected(250, flt)
        assert seen == expected
        assert len(set(seen)) == len(seen)


def _expected(n: int, flt: MessageFilter) -> list[tuple[float, str]]:
    rows = _rows(n)["message"]
    if flt.statuses:
        rows = [r for r in rows if r["status"] in flt.statuses]
    if flt.pool is not None:
        rows = [
            r
            for r in rows
            if r["last_pool"] == flt.pool
            or (r["last_pool"] is None and r["pool_id"] == "pool_" + flt.pool[1:])
        ]
    return sorted(((r["created_at"], r["id"]) for r in rows), reverse=True)


async def test_summaries_carry_recipients_tags_and_pool(backend: Database) -> None:
    await _fill(backend, 20)
    page, cursor = await search(backend, MessageFilter(tag="t3"), 10)
    assert [m.id for m in page] == ["msg_00013", "msg_00003"] and cursor is None
    first = page[0]
    assert first.recipients == ["r3@example.test"] and first.tags == ["t3"]
    assert first.pool == "p6" and first.mail_from == "s3@example.test"
    assert first.status == "deferred" and first.next_attempt_at == 1000.0
    mine = await search(backend, MessageFilter(api_key_id="key_1", recipient="r3@EXAMPLE.test"))
    assert [m.id for m in mine[0]] == ["msg_00013", "msg_00003"]


async def test_active_ids_and_count_see_only_mail_with_work_left(backend: Database) -> None:
    await _fill(backend, 300)
    chunks = [chunk async for chunk in active_ids(backend, MessageFilter(), chunk=64)]
    ids = [i for chunk in chunks for i in chunk]
    assert len(ids) == 200 == await count_active(backend, MessageFilter())
    assert all(len(chunk) == 64 for chunk in chunks[:-1])
    assert ids == [m for _, m in _expected(300, MessageFilter(statuses=("queued", "deferred")))]
    delivered = MessageFilter(statuses=("delivered",))
    assert await count_active(backend, delivered) == 0
    assert [c async for c in active_ids(backend, delivered)] == []
    assert await count_active(backend, MessageFilter(statuses=("deferred",), tag="t1")) == 10


def test_cursor_round_trips_and_rejects_garbage() -> None:
    key = (time.time(), "msg_0123")
    assert decode_cursor(encode_cursor(key)) == key
    for bad in ("", "!!!", "bm90IGpzb24", encode_cursor((1.0, "x"))[:-3], "WzEsMl0"):
        with pytest.raises(InvalidCursor):
            decode_cursor(bad)


async def test_the_mail_to_one_address_is_read_in_page_order(backend: Database) -> None:
    """The search by recipient reads ix_recipient_email_time in page order (no sort of every
    message the address got), pages cover each match once, and other criteria still hold."""
    await _fill(backend, 600)
    flt = MessageFilter(recipient="r7@example.test")
    for what, query in {
        "page": search_query(flt, None, 50),
        "next page": search_query(flt, (1100.0, "msg_00200"), 50),
    }.items():
        plan = await _plan(backend, query)
        assert not _full_scans(backend, plan), f"{what}:\n{plan}"
        if backend.is_sqlite:
            assert "ix_recipient_email_time" in plan and "TEMP B-TREE" not in plan, plan
    for given in (flt, MessageFilter(recipient="r7@example.test", statuses=("deferred",))):
        seen: list[tuple[float, str]] = []
        cursor: str | None = None
        while True:
            page, cursor = await search(backend, given, 7, cursor)
            seen += [(m.created_at, m.id) for m in page]
            if cursor is None:
                break
        rows = [r for i, r in enumerate(_rows(600)["message"]) if i % 10 == 7]
        rows = [r for r in rows if not given.statuses or r["status"] in given.statuses]
        assert seen == sorted(((r["created_at"], r["id"]) for r in rows), reverse=True)
