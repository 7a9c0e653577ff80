"""The search by subject words and by the client's address (schema 10), on both backends:
intake stores the keys in the message's own transaction, pages are read in time order
from their indexes (no scan of `message`, no sort of every match), every match comes
once, retention deletes the words with their message, and a schema 9 database gains
the column, its index and the side table."""

from __future__ import annotations

import re
import time
from dataclasses import replace

import pytest
from sqlalchemy import Connection, inspect, text

from gateway.message import Route
from gateway.queue.store import Queue
from storage.db import Database, create_schema
from storage.message_search import (
    MessageFilter,
    count_active,
    rarest_first,
    search,
    search_query,
)
from storage.retention import purge_chunk
from storage.search_keys import (
    address_key,
    address_of,
    address_range,
    subject_words,
)
from tests.storage.test_message_search import _fill, _full_scans, _plan, _rows
from tests.support.stored import fetch, message_row, submission

pytestmark = pytest.mark.timeout(120)
ROUTE = Route(ip_pool="transactional")


def test_subject_words_are_folded_split_distinct_and_bounded() -> None:
    assert subject_words("Re: Invoice #1234 — INVOICE, Überweisung!") == [
        "re", "invoice", "1234", "überweisung",
    ]  # fmt: skip
    assert subject_words(" ".join(f"w{i}" for i in range(100))) == [f"w{i}" for i in range(32)]
    assert subject_words("x" * 300) == ["x" * 64]
    assert subject_words("— … !") == []


def test_address_keys_order_as_addresses_and_blocks_are_ranges() -> None:
    assert (
        address_key("192.0.2.7")
        == address_key("::ffff:192.0.2.7")
        == address_key("[::ffff:c000:207]")
    )
    assert address_of(address_key("192.0.2.7") or "") == "192.0.2.7"
    assert address_of(address_key("2001:DB8::1") or "") == "2001:db8::1"
    assert address_key("fe80::1%eth0") == address_key("fe80::1")
    assert address_key("") is None and address_key("proxy.example") is None
    low, high = address_range("192.0.2.77/24")
    assert low == address_key("192.0.2.0") and high == address_key("192.0.2.255")
    keys = [address_key(a) or "" for a in ("9.255.255.255", "10.0.0.1", "10.0.0.10", "11.0.0.0")]
    assert keys == sorted(keys)
    inside = address_range("10.0.0.0/8")
    assert [inside[0] <= k <= inside[1] for k in keys] == [False, True, True, False]
    for bad in ("192.0.2.300", "192.0.2.0/33", "example.com", "1.2.3.4/x"):
        with pytest.raises(ValueError):
            address_range(bad)


SUBJECT = "=?utf-8?q?Facture_n=C2=B0_4711?= for ACME\r\n order"


async def test_intake_stores_the_client_address_and_the_subject_words(
    backend: Database, queue: Queue
) -> None:
    content = f"From: a@example.com\r\nSubject: {SUBJECT}\r\n\r\nbody\r\n".encode()
    given = replace(submission(content=content), client_address="2001:db8::7")
    queued = await queue.enqueue(given, ROUTE, claim=False)
    row = await message_row(backend, queued.id)
    assert row.client_address == address_key("2001:db8::7")
    words = await fetch(
        backend,
        "SELECT word, message_created_at FROM message_subject_word WHERE message_id = :id",
        id=queued.id,
    )
    assert sorted(w for w, _ in words) == ["4711", "acme", "facture", "for", "n", "order"]
    assert {at for _, at in words} == {row.created_at}
    plain = await queue.enqueue(
        submission(content=b"From: a@example.com\r\n\r\nb\r\n"), ROUTE, False
    )
    assert (await message_row(backend, plain.id)).client_address is None
    none = "SELECT COUNT(*) FROM message_subject_word WHERE message_id = :id"
    assert (await fetch(backend, none, id=plain.id))[0][0] == 0
    found, _ = await search(backend, MessageFilter(subject=("facture", "4711")))
    assert [m.id for m in found] == [queued.id] and found[0].client_address == "2001:db8::7"
    found, _ = await search(backend, MessageFilter(client=address_range("2001:db8::/32")))
    assert [m.id for m in found] == [queued.id]


async def test_retention_deletes_the_words_with_their_message(
    backend: Database, queue: Queue
) -> None:
    content = b"From: a@example.com\r\nSubject: gone soon\r\n\r\nbody\r\n"
    queued = await queue.enqueue(submission(content=content), ROUTE, claim=False)
    await queue.cancel([queued.id])
    assert await backend.transaction(lambda conn: purge_chunk(conn, time.time() + 10)) == 1
    left = await fetch(backend, "SELECT COUNT(*) FROM message_subject_word")
    assert left[0][0] == 0


def _unconditioned(db: Database, plan: str) -> list[str]:
    """A whole index of `message` read (a scan in all but name)."""
    if db.is_sqlite:
        return re.findall(r"SCAN message USING .*", plan)
    lines = plan.splitlines()
    return [
        line
        for i, line in enumerate(lines)
        if re.search(r"Index (Only )?Scan (Backward )?using \w+ on message\s", line)
        and "Index Cond" not in (lines[i + 1] if i + 1 < len(lines) else "")
    ]


def _expected(
    flt_words: tuple[str, ...], client: tuple[str, str] | None, n: int
) -> list[tuple[float, str]]:
    rows = _rows(n)
    words: dict[str, set[str]] = {}
    for w in rows["word"]:
        words.setdefault(w["message_id"], set()).add(w["word"])
    found = [
        r
        for r in rows["message"]
        if set(flt_words) <= words.get(r["id"], set())
        and (client is None or client[0] <= r["client_address"] <= client[1])
    ]
    return sorted(((r["created_at"], r["id"]) for r in found), reverse=True)


async def _all_pages(db: Database, flt: MessageFilter) -> list[tuple[float, str]]:
    seen: list[tuple[float, str]] = []
    cursor: str | None = None
    while True:
        page, cursor = await search(db, flt, 7, cursor)
        seen += [(m.created_at, m.id) for m in page]
        if cursor is None:
            return seen


async def test_a_subject_word_and_an_address_are_read_in_page_order(backend: Database) -> None:
    await _fill(backend, 600)
    one = address_range("192.0.2.7")
    for flt in (
        MessageFilter(subject=("r7",)),
        MessageFilter(subject=("r7", "hello")),
        MessageFilter(client=one),
    ):
        for what, query in {
            "page": search_query(flt, None, 20),
            "next page": search_query(flt, (1100.0, "msg_00200"), 20),
        }.items():
            plan = await _plan(backend, query)
            assert not _full_scans(backend, plan), f"{flt} {what}:\n{plan}"
            assert not _unconditioned(backend, plan), f"{flt} {what}:\n{plan}"
            if backend.is_sqlite:
                index = "ix_message_client" if flt.client else "ix_subject_word_time"
                assert index in plan and "TEMP B-TREE" not in plan, f"{what}:\n{plan}"


async def test_pages_by_subject_and_client_cover_every_match_once(backend: Database) -> None:
    await _fill(backend, 300)
    block = address_range("192.0.2.0/30")  # .0 to .3
    cases = [
        ((("w3",), None)),
        ((("x2", "w3"), None)),
        ((("hello", "w3", "x2"), None)),
        (((), address_range("192.0.2.7"))),
        (((), block)),
        ((("w3",), block)),
    ]
    for words, client in cases:
        seen = await _all_pages(backend, MessageFilter(subject=words, client=client))
        assert seen == _expected(words, client, 300), (words, client)
        assert seen, (words, client)
    assert await _all_pages(backend, MessageFilter(subject=("w3", "nothere"))) == []
    active = [r for r in _rows(300)["message"] if r["status"] != "delivered"]
    wanted = {m for _, m in _expected(("w3",), None, 300)} & {r["id"] for r in active}
    assert await count_active(backend, MessageFilter(subject=("w3",))) == len(wanted)


async def test_the_rarest_word_is_read_from_the_index(backend: Database) -> None:
    """A common word given first (and longest) is not the one read through: counted
    (up to PROBE entries each), the rare one goes first."""
    await _fill(backend, 600)
    given = MessageFilter(subject=("hello", "w3", "r7"))
    assert (await rarest_first(backend, given)).subject == ("r7", "w3", "hello")
    assert (await rarest_first(backend, MessageFilter(subject=("hello",)))).subject == ("hello",)
    missing = MessageFilter(subject=("hello", "nowhere"))
    assert (await rarest_first(backend, missing)).subject == ("nowhere", "hello")
    assert await _all_pages(backend, given) == _expected(("hello", "w3", "r7"), None, 600)


async def test_a_schema_9_database_gains_the_column_index_and_table(backend: Database) -> None:
    def to_schema_9(conn: Connection) -> None:
        conn.execute(text("DROP INDEX IF EXISTS ix_message_client"))
        conn.execute(text("ALTER TABLE message DROP COLUMN client_address"))
        conn.execute(text("DROP TABLE message_subject_word"))
        conn.execute(text("UPDATE postern_meta SET value = '9' WHERE key = 'schema_version'"))

    await backend.transaction(to_schema_9)
    await create_schema(backend)

    def found(conn: Connection) -> tuple[set[str], set[str], set[str]]:
        seen = inspect(conn)
        columns = {c["name"] for c in seen.get_columns("message")}
        indexes = {str(i["name"]) for i in seen.get_indexes("message")}
        words = {str(i["name"]) for i in seen.get_indexes("message_subject_word")}
        return columns, indexes, words

    columns, indexes, words = await backend.read(found)
    assert "client_address" in columns and "ix_message_client" in indexes
    assert "ix_subject_word_time" in words
