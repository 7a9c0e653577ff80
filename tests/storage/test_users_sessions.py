"""Users and sessions in storage, on SQLite and PostgreSQL: the unique email, the last-owner
rule held in the transaction, sessions' sliding and absolute expiry, the purge."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from sqlalchemy import Connection, inspect, text

from storage import sessions, users
from storage.db import Database, create_schema
from storage.models import SCHEMA_VERSION

HOUR = 3600.0


async def _user(db: Database, email: str, role: str = "owner") -> users.UserRecord:
    return await users.create_user(db, email, "N", role, "$argon2id$stub")


async def test_email_is_unique_in_mailbox_key_form(backend: Database) -> None:
    created = await _user(backend, "Ann@Example.COM")
    assert created.email == "ann@example.com"
    assert created.id.startswith("usr_")
    with pytest.raises(users.UserExists):
        await _user(backend, "ANN@example.com.")
    found = await users.find_by_email(backend, "ann@EXAMPLE.com")
    assert found is not None and found.id == created.id
    assert "password_hash" not in found.as_json() and "stub" not in repr(found)


async def test_last_owner_can_be_neither_demoted_nor_disabled(backend: Database) -> None:
    first = await _user(backend, "a@example.com")
    with pytest.raises(users.LastOwner):
        await users.set_role(backend, first.id, "admin")
    with pytest.raises(users.LastOwner):
        await users.disable_user(backend, first.id)
    second = await _user(backend, "b@example.com")
    assert (await users.set_role(backend, first.id, "member")).role == "member"
    with pytest.raises(users.LastOwner):
        await users.disable_user(backend, second.id)
    assert await users.count_owners(backend) == 1
    with pytest.raises(users.UserNotFound):
        await users.set_role(backend, "usr_missing", "owner")


async def test_two_owners_demoted_at_once_leave_one(backend: Database) -> None:
    a = await _user(backend, "a@example.com")
    b = await _user(backend, "b@example.com")
    results = await asyncio.gather(
        users.set_role(backend, a.id, "member"),
        users.disable_user(backend, b.id),
        return_exceptions=True,
    )
    assert sum(isinstance(r, users.LastOwner) for r in results) == 1
    assert await users.count_owners(backend) == 1


async def test_session_slides_and_stops_at_its_absolute_expiry(backend: Database) -> None:
    user = await _user(backend, "a@example.com")
    token_hash = hashlib.sha256(b"token").hexdigest()
    now = 1_000_000.0
    created = await sessions.create_session(
        backend, user.id, token_hash, now=now, idle=HOUR, absolute=3 * HOUR,
        user_agent="x" * 1000, ip="192.0.2.1",
    )  # fmt: skip
    assert len(created.user_agent) == sessions.USER_AGENT_MAX
    found = await sessions.find_session(backend, token_hash, now + 1)
    assert found is not None and found[0].id == created.id and found[1].id == user.id
    assert await sessions.touch_session(backend, created.id, now=now + 0.9 * HOUR, idle=HOUR)
    assert await sessions.find_session(backend, token_hash, now + 1.5 * HOUR) is not None
    assert await sessions.find_session(backend, token_hash, now + 2.0 * HOUR) is None  # idle
    await sessions.touch_session(backend, created.id, now=now + 1.8 * HOUR, idle=HOUR)
    expiry = await sessions.touch_session(backend, created.id, now=now + 2.5 * HOUR, idle=HOUR)
    assert expiry == now + 3 * HOUR  # capped
    assert await sessions.find_session(backend, token_hash, now + 3 * HOUR) is None
    assert await sessions.touch_session(backend, created.id, now=now + 3 * HOUR, idle=HOUR) is None
    assert await sessions.purge_expired(backend, now + 3 * HOUR) == 1


async def test_revoke_one_all_and_rotate(backend: Database) -> None:
    user = await _user(backend, "a@example.com")
    made = [
        await sessions.create_session(backend, user.id, f"{i:064x}", now=0.0, idle=HOUR,
                                      absolute=2 * HOUR)
        for i in range(3)
    ]  # fmt: skip
    rotated = await sessions.create_session(
        backend, user.id, f"{9:064x}", now=1.0, idle=HOUR, absolute=2 * HOUR, replaces=made[0].id
    )
    listed = await sessions.list_user_sessions(backend, user.id, 2.0)
    assert {s.id for s in listed} == {rotated.id, made[1].id, made[2].id}
    assert not await sessions.revoke_session(backend, made[1].id, user_id="usr_other")
    assert await sessions.revoke_session(backend, made[1].id, user_id=user.id)
    assert await sessions.revoke_user_sessions(backend, user.id, keep=rotated.id) == 1
    assert [s.id for s in await sessions.list_user_sessions(backend, user.id, 2.0)] == [rotated.id]


async def test_a_schema_5_database_gains_the_tables(backend: Database) -> None:
    def to_schema_5(conn: Connection) -> None:
        conn.execute(text("DROP TABLE sessions"))
        conn.execute(text("DROP TABLE users"))
        conn.execute(text("UPDATE postern_meta SET value = '5' WHERE key = 'schema_version'"))

    await backend.transaction(to_schema_5)
    await create_schema(backend)
    assert (await _user(backend, "a@example.com")).role == "owner"
    version = await backend.read(
        lambda conn: conn.execute(
            text("SELECT value FROM postern_meta WHERE key = 'schema_version'")
        ).scalar()
    )
    assert version == str(SCHEMA_VERSION)


async def test_a_schema_6_database_gains_the_owner_columns(backend: Database) -> None:
    added = [("sessions", "role"), ("message", "user_id"), ("api_key", "user_id")]
    added += [(t, "created_by") for t in ("smtp_pool", "sender_domain", "sender_alias", "webhook")]

    def to_schema_6(conn: Connection) -> None:
        conn.execute(text("DROP INDEX IF EXISTS ix_message_sent_by_user"))
        for table, column in added:
            conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        conn.execute(text("UPDATE postern_meta SET value = '6' WHERE key = 'schema_version'"))

    await backend.transaction(to_schema_6)
    await create_schema(backend)

    def columns(conn: Connection) -> set[tuple[str, str]]:
        found = inspect(conn)
        return {(t, c["name"]) for t, _ in added for c in found.get_columns(t)}

    assert set(added) <= await backend.read(columns)


async def test_a_user_holds_at_most_fifty_sessions_the_least_used_end(backend: Database) -> None:
    user = await _user(backend, "a@example.com")
    made = [
        await sessions.create_session(backend, user.id, f"{i:064x}", now=float(i), idle=HOUR,
                                      absolute=2 * HOUR)
        for i in range(sessions.MAX_PER_USER + 2)
    ]  # fmt: skip
    listed = {s.id for s in await sessions.list_user_sessions(backend, user.id, 100.0)}
    assert listed == {s.id for s in made[2:]}  # the two least recently used ended
