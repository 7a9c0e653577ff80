"""The API's storage on SQLite and PostgreSQL: idempotency reservations won by exactly one
of several racing nodes, API keys stored as hashes, suppressions keyed by mailbox.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from sqlalchemy import Connection, text

from gateway.message import Route, Sender, Submission
from storage import idempotency
from storage.db import Database, create_schema
from storage.keys import (
    KeyStore,
    UnknownScope,
    create_key,
    find_by_secret,
    hash_secret,
    list_keys,
    revoke_key,
)
from storage.suppressions import add_suppression, list_suppressions, remove_suppression
from storage.users import create_user, disable_user, set_role
from tests.support.databases import MakeQueue

pytestmark = pytest.mark.timeout(60)


def submission(key: str | None, sender: str = "key_a") -> Submission:
    return Submission(
        mail_from="app@sender.test",
        recipients=("rcpt@example.test",),
        content=b"Subject: x\r\n\r\nbody\r\n",
        source="http",
        idempotency_key=key,
        sender=Sender(sender, may_send=True, may_sandbox=False),
    )


async def rows(db: Database, sql: str) -> list[tuple[object, ...]]:
    def run(conn: Connection) -> list[tuple[object, ...]]:
        return [tuple(row) for row in conn.execute(text(sql))]

    return await db.read(run)


async def test_racing_nodes_store_one_message_per_idempotency_key(
    backend: Database,
    other_db: Database,
    make_queue: MakeQueue,
) -> None:
    node_a = await make_queue("node-a")
    node_b = await make_queue("node-b", db=other_db)
    queues = [node_a, node_b] * 5
    outcomes = await asyncio.gather(
        *(q.enqueue(submission("race"), Route(), claim=False) for q in queues),
        return_exceptions=True,
    )
    stored = [o for o in outcomes if not isinstance(o, BaseException)]
    duplicates = [o for o in outcomes if isinstance(o, idempotency.Duplicate)]
    assert len(stored) == 1 and len(duplicates) == 9
    assert {d.message_id for d in duplicates} == {stored[0].id}
    assert await rows(backend, "SELECT id FROM message") == [(stored[0].id,)]


async def test_other_jobs_in_the_same_group_commit_survive_a_lost_race(
    backend: Database,
    make_queue: MakeQueue,
) -> None:
    queue = await make_queue("node-a")
    jobs = [submission("same") for _ in range(5)] + [submission(None) for _ in range(5)]
    outcomes = await asyncio.gather(
        *(queue.enqueue(job, Route(), claim=False) for job in jobs), return_exceptions=True
    )
    assert sum(isinstance(o, idempotency.Duplicate) for o in outcomes) == 4
    assert not [
        o for o in outcomes if isinstance(o, Exception) and not isinstance(o, idempotency.Duplicate)
    ]
    assert len(await rows(backend, "SELECT id FROM message")) == 6


async def test_keys_store_only_a_hash_and_revoked_keys_stop_working(
    backend: Database,
) -> None:
    record, secret = await create_key(backend, "ci", ["send", "sandbox", "send"])
    assert secret.startswith("msk_") and len(secret) >= 4 + 43
    assert record.scopes == ("send", "sandbox")
    stored = await rows(backend, "SELECT * FROM api_key")
    assert not any(secret in str(value) for value in stored[0])
    assert hash_secret(secret) in stored[0]
    assert await find_by_secret(backend, secret) == record
    assert await find_by_secret(backend, secret[:-1] + "x") is None
    revoked = await revoke_key(backend, record.id)
    assert revoked is not None and revoked.revoked_at is not None
    assert await find_by_secret(backend, secret) is None
    assert [k.id for k in await list_keys(backend)] == [record.id]
    with pytest.raises(UnknownScope):
        await create_key(backend, "bad", ["root"])


async def test_a_key_comes_with_its_owner_and_stops_with_them(backend: Database) -> None:
    user = await create_user(backend, "m@example.com", "", "owner", "hash")
    await create_user(backend, "o@example.com", "", "owner", "hash")  # not the last owner
    record, secret = await create_key(backend, "mine", ["send"], user.id)
    found = await find_by_secret(backend, secret)
    assert found is not None and found.user_id == user.id
    assert found.owner is not None and found.owner.role == "owner"
    assert [k.id for k in await list_keys(backend, user.id)] == [record.id]
    assert await list_keys(backend, "usr_nobody") == []
    keys = KeyStore(backend, ttl=0.0)  # no cache: each read sees the change at once
    await set_role(backend, user.id, "member")
    current = await keys.current(record.id)
    assert current is not None and current.owner is not None and current.owner.role == "member"
    await disable_user(backend, user.id)
    assert await find_by_secret(backend, secret) is None
    assert await keys.current(record.id) is None and await keys.authenticate(secret) is None


async def test_suppressions_are_one_per_mailbox_and_page_in_order(
    backend: Database,
) -> None:
    _, created = await add_suppression(backend, "A@Example.TEST", "manual")
    again, created_again = await add_suppression(backend, "A@example.test", "complaint")
    assert created and not created_again
    assert (again.email, again.reason) == ("a@example.test", "complaint")
    for name in ("b", "c", "d"):
        await add_suppression(backend, f"{name}@example.test", "bounced")
    page, cursor = await list_suppressions(backend, limit=2)
    assert [r.email for r in page] == ["a@example.test", "b@example.test"]
    rest, end = await list_suppressions(backend, limit=2, after=cursor)
    assert [r.email for r in rest] == ["c@example.test", "d@example.test"] and end is None
    bounced, _ = await list_suppressions(backend, reason="bounced")
    assert len(bounced) == 3
    assert await remove_suppression(backend, "A@EXAMPLE.test")
    assert not await remove_suppression(backend, "A@example.test")


async def test_an_expired_reservation_is_taken_over_and_a_live_one_is_not(
    backend: Database,
) -> None:
    now = 1_000_000.0

    async def reserve(message_id: str, at: float) -> str | None:
        holder = await backend.transaction(
            lambda conn: idempotency.reserve(conn, "key_a", "k", message_id, at, "digest")
        )
        return None if holder is None else holder.message_id

    assert await reserve("msg_1", now) is None
    assert await reserve("msg_2", now + 60) == "msg_1"
    assert await reserve("msg_3", now + idempotency.TTL + 1) is None
    hit = await backend.read(
        lambda conn: idempotency.lookup(conn, "key_a", "k", now + idempotency.TTL + 2)
    )
    assert hit is not None and hit.message_id == "msg_3" and hit.response is None


async def test_a_reused_key_is_told_from_a_retry_by_the_request_digest(
    backend: Database,
    make_queue: MakeQueue,
) -> None:
    queue = await make_queue("node-a")
    first = await queue.enqueue(replace(submission("k"), request_hash="a" * 64), Route(), False)
    with pytest.raises(idempotency.Duplicate) as retry:
        await queue.enqueue(replace(submission("k"), request_hash="a" * 64), Route(), False)
    assert retry.value.message_id == first.id
    with pytest.raises(idempotency.KeyReused) as reused:
        await queue.enqueue(replace(submission("k"), request_hash="b" * 64), Route(), False)
    assert reused.value.message_id == first.id
    assert await rows(backend, "SELECT id FROM message") == [(first.id,)]


async def test_upgrade_adds_the_request_digest_to_existing_reservations(
    backend: Database,
    make_queue: MakeQueue,
) -> None:
    """A schema 4 database gets idempotency.request_hash; its reservations keep working and
    match any request (they were made without a digest)."""
    queue = await make_queue("node-a")
    old = await queue.enqueue(submission("from-v4"), Route(), claim=False)

    def downgrade(conn: Connection) -> None:
        conn.execute(text("ALTER TABLE idempotency DROP COLUMN request_hash"))
        conn.execute(text("UPDATE postern_meta SET value = '4' WHERE key = 'schema_version'"))

    await backend.transaction(downgrade)
    await create_schema(backend)
    with pytest.raises(idempotency.Duplicate) as retry:
        await queue.enqueue(replace(submission("from-v4"), request_hash="c" * 64), Route(), False)
    assert retry.value.message_id == old.id
    await queue.enqueue(replace(submission("new"), request_hash="d" * 64), Route(), False)
    with pytest.raises(idempotency.KeyReused):
        await queue.enqueue(replace(submission("new"), request_hash="e" * 64), Route(), False)
