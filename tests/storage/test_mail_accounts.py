"""Connected mail accounts in storage, on SQLite and PostgreSQL: one account per address, the
quota held under concurrency, the first account the default, disconnect refused for the only
default account while queued mail is From it, the sync lease won by exactly one of two nodes,
and the `account` kind of storage.accounts (shares and invitations name it by its UUID)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy import select, update

from storage import accounts, mail_accounts, shares
from storage.db import Database
from storage.mail_accounts import SyncOutcome
from storage.models import MailAccount, Message

A = MailAccount


def values(email: str = "Me@Example.TEST", **changes: Any) -> dict[str, Any]:
    base = {
        "email": email, "name": "Me", "imap_host": "127.0.0.1", "imap_port": 993,
        "imap_security": "ssl", "smtp_host": "127.0.0.1", "smtp_port": 587,
        "smtp_security": "starttls", "tls_verify": True, "username": "me",
    }  # fmt: skip
    return base | changes


async def _connect(db: Database, email: str, user: str = "usr_a", quota: int = 10) -> Any:
    return await mail_accounts.create_account(
        db, values(email), lambda account_id: f"sealed:{account_id}", user, quota
    )


async def test_connect_list_and_one_account_per_address(backend: Database) -> None:
    first = await _connect(backend, "Me@Example.TEST")
    assert first.email == "me@example.test" and first.sync_status == "pending"
    assert accounts.kind_of(first.id) == accounts.ACCOUNT and first.is_default
    assert first.has_password and first.created_by == first.user_id == "usr_a"
    second = await _connect(backend, "other@example.test")
    assert not second.is_default
    with pytest.raises(mail_accounts.AccountExists):
        await _connect(backend, "ME@example.test", user="usr_b")
    listed = await mail_accounts.list_accounts(backend)
    assert [a.id for a in listed] == [first.id, second.id]
    row = await backend.read(lambda c: c.execute(select(A).where(A.c.id == first.id)).one())
    assert row.password_enc == f"sealed:{first.id}"  # bound to the id by the caller's seal


async def test_quota_holds_when_connects_race(backend: Database) -> None:
    made = await asyncio.gather(
        *(_connect(backend, f"m{i}@example.test", quota=3) for i in range(6)),
        return_exceptions=True,
    )
    assert sum(not isinstance(m, BaseException) for m in made) == 3
    assert all(
        isinstance(m, mail_accounts.AccountQuota) for m in made if isinstance(m, BaseException)
    )
    assert len([m for m in made if not isinstance(m, BaseException) and m.is_default]) == 1


async def test_the_only_default_is_kept_while_queued_mail_is_from_it(backend: Database) -> None:
    account = await _connect(backend, "me@example.test")
    now = time.time()
    await backend.transaction(
        lambda c: c.execute(
            Message.insert().values(
                id="msg_1", status="queued", source="http", mail_from="Me@Example.test",
                due_at=now, attempts=0, created_at=now, updated_at=now,
            )
        )
    )  # fmt: skip
    with pytest.raises(mail_accounts.AccountInUse):
        await mail_accounts.delete_account(backend, account.id)
    other = await _connect(backend, "two@example.test")
    await mail_accounts.delete_account(backend, account.id)  # another can take the default
    assert (await mail_accounts.get_account(backend, other.id)).is_default  # type: ignore[union-attr]
    with pytest.raises(mail_accounts.AccountNotFound):
        await mail_accounts.delete_account(backend, account.id)


async def test_accounts_are_a_kind_that_shares_name(backend: Database) -> None:
    account = await _connect(backend, "me@example.test")
    found = await accounts.get_account(backend, account.id)
    assert found == accounts.AccountRecord("account", account.id, account.email, "usr_a", True)
    assert accounts.kind_of(account.id.upper()) is None  # the canonical form only
    await backend.transaction(
        lambda c: shares.put_share(c, "account", account.id, "usr_b", "member", 1.0, None)
    )
    assert await shares.shared_account_ids(backend, "usr_b", "account") == {account.id}
    await mail_accounts.delete_account(backend, account.id)
    assert await shares.shared_account_ids(backend, "usr_b", "account") == set()
    assert await accounts.get_account(backend, account.id) is None


async def test_one_of_two_nodes_leases_an_account(backend: Database, other_db: Database) -> None:
    account = await _connect(backend, "me@example.test")
    now = time.time()

    def take(node: str) -> Any:
        return lambda c: mail_accounts.claim(c, account.id, node, now, now + 60)

    assert await backend.read(lambda c: mail_accounts.due(c, now, 10)) == [account.id]
    won = await asyncio.gather(backend.transaction(take("a")), other_db.transaction(take("b")))
    assert len([job for job in won if job is not None]) == 1
    holder = "a" if won[0] is not None else "b"
    state = await mail_accounts.get_account(backend, account.id)
    assert state is not None and state.sync_status == "syncing"
    assert await backend.read(lambda c: mail_accounts.due(c, now, 10)) == []
    # Only the holder records the outcome.
    outcome = SyncOutcome("synced", uidvalidity=7, uidnext=3)
    loser = "b" if holder == "a" else "a"
    for node, expected in ((loser, False), (holder, True)):
        done = await backend.transaction(
            lambda c, n=node: mail_accounts.finish(c, account.id, n, outcome, now, now + 60)
        )
        assert done is expected
    state = await mail_accounts.get_account(backend, account.id)
    assert state is not None and (state.sync_status, state.uidvalidity, state.uidnext) == (
        "synced", 7, 3,
    )  # fmt: skip
    assert state.last_synced_at == pytest.approx(now)


async def test_a_lapsed_lease_is_taken_and_release_gives_back(backend: Database) -> None:
    account = await _connect(backend, "me@example.test")
    now = time.time()
    job = await backend.transaction(lambda c: mail_accounts.claim(c, account.id, "a", now, now + 1))
    assert job is not None and job.password_enc == f"sealed:{account.id}"
    later = now + 2  # node a died: its lease lapsed
    assert await backend.transaction(
        lambda c: mail_accounts.claim(c, account.id, "b", later, later + 60)
    )
    await backend.transaction(lambda c: mail_accounts.release(c, "b"))
    state = await mail_accounts.get_account(backend, account.id)
    assert state is not None and state.sync_status == "pending"
    await backend.transaction(
        lambda c: c.execute(update(A).where(A.c.id == account.id).values(next_sync_at=now + 99))
    )
    assert await backend.read(lambda c: mail_accounts.due(c, now, 10)) == []
