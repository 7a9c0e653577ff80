"""Pools, aliases and domains in storage (SQLite and PostgreSQL): one default, config pools
read-only, alias deletion rules, single-use verification tokens, domains never
un-verified by a failed check."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select, update

from gateway.message import Route, Submission
from gateway.queue.store import Queue
from storage import aliases, domains, pools
from storage.db import Database
from storage.models import AliasToken, Message

SEALED = "sealed"
M = Message


@dataclass(frozen=True)
class FilePool:
    """What sync_config_pools reads of a config-file pool."""

    name: str
    host: str = "127.0.0.1"
    port: int = 25
    username: str = ""
    encryption: str = "none"
    ip_pool: str = "transactional"
    priority: int = 100
    max_connections: int = 10
    is_default: bool = False
    is_active: bool = True
    from_email: str = ""
    tls_verify: bool = True
    rate: str = ""
    daily_limit: int = 0


def pool(name: str, **values: Any) -> dict[str, Any]:
    base = {"name": name, "host": "127.0.0.1", "port": 2525, "encryption": "none"}
    return base | values


async def defaults(db: Database) -> list[str]:
    return [p.name for p in await pools.pool_records(db) if p.is_default]


# --- pools ------------------------------------------------------------------------------------


async def test_pool_crud_and_the_password_seal_gets_the_new_id(backend: Database) -> None:
    seen: list[str] = []

    def seal(pool_id: str) -> str:
        seen.append(pool_id)
        return SEALED

    created = await pools.create_pool(backend, pool("a", username="u"), seal)
    assert seen == [created.id] and created.id.startswith("smtp_")
    assert created.has_password and created.source == "api"
    changed = await pools.update_pool(backend, created.id, {"port": 2600}, lambda _: "")
    assert (changed.port, changed.has_password) == (2600, False)
    assert await pools.get_pool(backend, created.id) == changed
    await pools.delete_pool(backend, created.id)
    assert await pools.get_pool(backend, created.id) is None
    with pytest.raises(pools.PoolNotFound):
        await pools.delete_pool(backend, created.id)


async def test_pool_names_are_unique(backend: Database) -> None:
    first = await pools.create_pool(backend, pool("a"), lambda _: "")
    await pools.create_pool(backend, pool("b"), lambda _: "")
    with pytest.raises(pools.PoolNameTaken):
        await pools.create_pool(backend, pool("a"), lambda _: "")
    with pytest.raises(pools.PoolNameTaken):
        await pools.update_pool(backend, first.id, {"name": "b"})


async def test_only_one_default_pool(backend: Database) -> None:
    a = await pools.create_pool(backend, pool("a", is_default=True), lambda _: "")
    await pools.create_pool(backend, pool("b", is_default=True), lambda _: "")
    assert await defaults(backend) == ["b"]
    await pools.update_pool(backend, a.id, {"is_default": True})
    assert await defaults(backend) == ["a"]


async def test_concurrent_defaults_leave_one(backend: Database) -> None:
    made = [await pools.create_pool(backend, pool(f"p{i}"), lambda _: "") for i in range(4)]
    await asyncio.gather(*(pools.update_pool(backend, p.id, {"is_default": True}) for p in made))
    assert len(await defaults(backend)) == 1


async def test_config_pools_are_read_only_and_their_default_wins(backend: Database) -> None:
    api_pool = await pools.create_pool(backend, pool("api", is_default=True), lambda _: "")
    await pools.sync_config_pools(backend, [FilePool("file", is_default=True)])
    assert await defaults(backend) == ["file"]
    file_id = pools.config_pool_id("file")
    with pytest.raises(pools.PoolReadOnly):
        await pools.update_pool(backend, file_id, {"port": 26})
    with pytest.raises(pools.PoolReadOnly):
        await pools.delete_pool(backend, file_id)
    with pytest.raises(pools.ConfigDefault):
        await pools.update_pool(backend, api_pool.id, {"is_default": True})
    record = await pools.get_pool(backend, file_id)
    assert record is not None and record.source == "config"


# --- aliases ----------------------------------------------------------------------------------


async def new_alias(
    db: Database, email: str, token: str = "", **fields: Any
) -> aliases.AliasRecord:
    values: dict[str, Any] = {"name": "", "is_default": False, "ip_pool": None}
    values.update(fields)
    return await aliases.create_alias(
        db, email=email, token_hash=token or f"h-{email}", expires_at=time.time() + 60, **values
    )


async def test_one_alias_per_mailbox_case_insensitively(backend: Database) -> None:
    await new_alias(backend, "News@example.com")
    with pytest.raises(aliases.AliasExists):
        await new_alias(backend, "news@example.com", token="other")


async def test_one_default_alias(backend: Database) -> None:
    a = await new_alias(backend, "a@example.com", is_default=True)
    b = await new_alias(backend, "b@example.com", is_default=True)
    found = {x.id: x.is_default for x in await aliases.list_aliases(backend)}
    assert found == {a.id: False, b.id: True}
    await aliases.update_alias(backend, a.id, {"is_default": True})
    found = {x.id: x.is_default for x in await aliases.list_aliases(backend)}
    assert found == {a.id: True, b.id: False}


async def test_a_token_verifies_once_and_not_after_expiry(backend: Database) -> None:
    alias = await new_alias(backend, "a@example.com", token="t1")
    assert not alias.is_verified
    verified = await aliases.redeem_token(backend, "t1")
    assert verified is not None and verified.is_verified and verified.verified_at
    assert await aliases.redeem_token(backend, "t1") is None  # single use
    assert await aliases.redeem_token(backend, "unknown") is None
    await new_alias(backend, "b@example.com", token="t2")
    table = AliasToken
    await backend.transaction(
        lambda conn: conn.execute(
            update(table).where(table.c.token_hash == "t2").values(expires_at=time.time() - 1)
        )
    )
    assert await aliases.redeem_token(backend, "t2") is None


async def test_a_new_token_replaces_the_unspent_ones(backend: Database) -> None:
    alias = await new_alias(backend, "a@example.com", token="first")
    again = await aliases.new_token(backend, alias.id, "second", time.time() + 60)
    assert again.id == alias.id and not again.is_verified
    assert await aliases.redeem_token(backend, "first") is None  # the last link sent works
    assert (await aliases.redeem_token(backend, "second")) is not None
    with pytest.raises(aliases.AliasNotFound):
        await aliases.new_token(backend, "ali_none", "third", time.time() + 60)


async def test_the_only_verified_alias_cannot_be_deleted(backend: Database) -> None:
    first = await new_alias(backend, "a@example.com", token="t1")
    await aliases.redeem_token(backend, "t1")
    with pytest.raises(aliases.LastVerifiedAlias):
        await aliases.delete_alias(backend, first.id)
    unverified = await new_alias(backend, "b@example.com")
    await aliases.delete_alias(backend, unverified.id)  # unverified ones go freely
    second = await new_alias(backend, "c@example.com", token="t3")
    await aliases.redeem_token(backend, "t3")
    await aliases.delete_alias(backend, first.id)  # another verified one remains
    with pytest.raises(aliases.AliasNotFound):
        await aliases.delete_alias(backend, first.id)
    assert [a.id for a in await aliases.list_aliases(backend)] == [second.id]


async def test_an_alias_named_by_queued_mail_cannot_be_deleted(
    backend: Database, queue: Queue
) -> None:
    by_id = await new_alias(backend, "a@example.com")
    by_from = await new_alias(backend, "b@example.com")
    body = b"From: x@example.com\r\n\r\nhi\r\n"
    named = Submission("x@example.com", ("r@x.test",), body, "http", alias_id=by_id.id)
    sent_from = Submission("B@example.com", ("r@x.test",), body, "smtp")
    await queue.enqueue(named, Route(ip_pool="transactional"), claim=False)
    await queue.enqueue(sent_from, Route(ip_pool="transactional"), claim=False)
    for alias in (by_id, by_from):
        with pytest.raises(aliases.AliasInUse):
            await aliases.delete_alias(backend, alias.id)


async def test_a_pool_queued_mail_needs_is_deleted_only_with_its_mail_moved(
    backend: Database, queue: Queue
) -> None:
    old = await pools.create_pool(backend, pool("old", ip_pool="newsletter"), lambda _: "")
    new = await pools.create_pool(backend, pool("new"), lambda _: "")
    body = b"From: a@example.com\r\n\r\nx\r\n"
    mail = Submission("a@example.com", ("r@x.test",), body, "http")
    by_id = await queue.enqueue(mail, Route(pool_id=old.id), claim=False)
    by_group = await queue.enqueue(mail, Route(ip_pool="newsletter"), claim=False)
    elsewhere = await queue.enqueue(mail, Route(ip_pool="transactional"), claim=False)
    with pytest.raises(pools.PoolInUse):
        await pools.delete_pool(backend, old.id)
    for target in (old.id, "smtp_nope"):
        with pytest.raises(pools.BadMoveTarget):
            await pools.delete_pool(backend, old.id, move_to=target)
    record, moved = await pools.delete_pool(backend, old.id, move_to=new.id)
    assert (record.id, moved) == (old.id, 2)
    routes = {
        row.id: (row.pool_id, row.ip_pool)
        for row in await backend.read(
            lambda conn: list(conn.execute(select(M.c.id, M.c.pool_id, M.c.ip_pool)))
        )
    }
    assert routes == {
        by_id.id: (new.id, None),
        by_group.id: (new.id, None),
        elsewhere.id: (None, "transactional"),
    }


MAIL = Submission("a@example.com", ("r@x.test",), b"From: a@example.com\r\n\r\nx\r\n", "http")


async def test_the_last_active_pool_of_a_group_is_in_use_though_inactive_ones_remain(
    backend: Database, queue: Queue
) -> None:
    active = await pools.create_pool(backend, pool("n1", ip_pool="newsletter"), lambda _: "")
    await pools.create_pool(
        backend, pool("n2", ip_pool="newsletter", is_active=False), lambda _: ""
    )
    await queue.enqueue(MAIL, Route(ip_pool="newsletter"), claim=False)
    with pytest.raises(pools.PoolInUse):
        await pools.delete_pool(backend, active.id)


async def test_default_routed_mail_needs_no_pool_of_its_own_but_the_last_pool_of_all(
    backend: Database, queue: Queue
) -> None:
    first = await pools.create_pool(backend, pool("first", is_default=True), lambda _: "")
    second = await pools.create_pool(backend, pool("second"), lambda _: "")
    await queue.enqueue(MAIL, Route(pool_id=first.id, default=True), claim=False)
    await pools.delete_pool(backend, first.id)  # the mail follows the default: no 409
    with pytest.raises(pools.PoolInUse):  # else it would go direct to MX
        await pools.delete_pool(backend, second.id)


async def test_a_config_pool_queued_mail_needs_is_kept_inactive_when_the_file_drops_it(
    backend: Database, queue: Queue
) -> None:
    await pools.sync_config_pools(backend, [FilePool("old", is_default=True), FilePool("other")])
    old_id = pools.config_pool_id("old")
    queued = await queue.enqueue(MAIL, Route(pool_id=old_id), claim=False)
    await pools.sync_config_pools(backend, [FilePool("renamed", is_default=True)])
    kept = await pools.get_pool(backend, old_id)
    assert kept is not None and not kept.is_active and not kept.is_default
    assert await pools.get_pool(backend, pools.config_pool_id("other")) is None  # unneeded
    await backend.transaction(
        lambda conn: conn.execute(update(M).where(M.c.id == queued.id).values(due_at=None))
    )  # its mail is gone (final): the next sync removes the pool
    await pools.sync_config_pools(backend, [FilePool("renamed", is_default=True)])
    assert await pools.get_pool(backend, old_id) is None


# --- domains ----------------------------------------------------------------------------------


async def test_domains(backend: Database) -> None:
    record = await domains.add_domain(backend, "example.com")
    with pytest.raises(domains.DomainExists):
        await domains.add_domain(backend, "example.com")
    assert await domains.get_domain(backend, record.id) == record
    assert await domains.get_domain(backend, "example.com") == record
    assert await domains.verified_domains(backend) == []
    failed = await domains.record_check(backend, record.id, passed=False)
    assert failed is not None and not failed.is_verified and failed.checked_at
    passed = await domains.record_check(backend, record.id, passed=True)
    assert passed is not None and passed.is_verified
    again = await domains.record_check(backend, record.id, passed=False)
    assert again is not None and again.is_verified  # a bad minute of DNS un-verifies nothing
    assert await domains.verified_domains(backend) == ["example.com"]
    await domains.add_domain(backend, "admin.example", verified=True)
    assert sorted(await domains.verified_domains(backend)) == ["admin.example", "example.com"]
    assert await domains.delete_domain(backend, record.id) is not None
    assert await domains.get_domain(backend, record.id) is None
