"""Invitations and shares in storage, on SQLite and PostgreSQL: one pending invitation per
account and address, accept shares once however many accept at once (two nodes), expiry as a
shown status, invite again after expiry, decline or revoke, renew kills the old token, and a
user created in the accepting transaction."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest

from storage import accounts, aliases, domains, invitations, shares, users
from storage.db import Database
from storage.invitations import ACCEPTED, DECLINED, EXPIRED, PENDING, REVOKED

DAY = 86400.0


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def _alias(db: Database) -> accounts.AccountRecord:
    created = await aliases.create_alias(
        db,
        email="team@example.com",
        name="Team",
        is_default=False,
        ip_pool=None,
        token_hash=_hash("alias"),
        expires_at=time.time() + DAY,
    )
    found = await accounts.get_account(db, created.id)
    assert found is not None and found.kind == accounts.ALIAS
    return found


async def _invite(
    db: Database,
    account: accounts.AccountRecord,
    email: str,
    token: str,
    now: float,
    inviter: str | None = None,
) -> invitations.InvitationRecord:
    return await invitations.create_invitation(
        db,
        account=account.ref,
        invitee_email=email,
        role="member",
        inviter_id=inviter,
        token_hash=_hash(token),
        now=now,
    )


async def test_accounts_are_named_by_kind_and_id(backend: Database) -> None:
    alias = await _alias(backend)
    domain = await domains.add_domain(backend, "example.org", verified=True)
    found = await accounts.get_accounts(backend, [alias.ref, (accounts.DOMAIN, domain.id)])
    assert found[(accounts.DOMAIN, domain.id)].email == "example.org"
    assert found[alias.ref].email == "team@example.com"
    assert await accounts.get_account(backend, "dom_missing") is None
    assert await accounts.get_account(backend, "550e8400-e29b-41d4-a716-446655440000") is None


async def test_one_pending_invitation_per_account_and_address(backend: Database) -> None:
    alias, now = await _alias(backend), time.time()
    owner = await users.create_user(backend, "boss@example.com", "Boss Person", "owner", "h")
    first = await _invite(backend, alias, "bob@example.com", "t1", now, owner.id)
    assert first.id.startswith("inv_") and first.status_at(now) == PENDING
    assert first.expires_at == pytest.approx(now + 30 * DAY)
    assert first.inviter_name == "Boss Person"
    with pytest.raises(invitations.InvitationPending) as refused:
        await _invite(backend, alias, "bob@example.com", "t2", now)
    assert refused.value.invitation_id == first.id
    # Two at once for another address: one stands.
    results = await asyncio.gather(
        _invite(backend, alias, "carol@example.com", "t3", now),
        _invite(backend, alias, "carol@example.com", "t4", now),
        return_exceptions=True,
    )
    assert sum(isinstance(r, invitations.InvitationPending) for r in results) == 1


async def test_accept_shares_once_when_two_nodes_accept_together(
    backend: Database, other_db: Database
) -> None:
    alias, now = await _alias(backend), time.time()
    bob = await users.create_user(backend, "bob@example.com", "Bob", "member", "h")
    invited = await _invite(backend, alias, bob.email, "t1", now)
    results = await asyncio.gather(
        *[
            invitations.accept(db, invited.id, bob.id, now)
            for db in (backend, other_db, backend, other_db)
        ]
    )
    assert sorted(results) == [False, False, False, True]
    listed = await shares.list_shares(backend, *alias.ref)
    assert [(s.user_id, s.email, s.role, s.invitation_id) for s in listed] == [
        (bob.id, "bob@example.com", "member", invited.id)
    ]
    assert await shares.shared_account_ids(backend, bob.id, accounts.ALIAS) == {alias.id}
    assert await shares.shared_account_ids(backend, bob.id, accounts.DOMAIN) == set()
    answered = await invitations.get_invitation(backend, invited.id)
    assert answered is not None and answered.status == ACCEPTED
    assert await invitations.pending_for(backend, bob.email, now) == []
    with pytest.raises(invitations.AlreadyShared):
        await _invite(backend, alias, bob.email, "t2", now)
    assert await shares.remove_share(backend, *alias.ref, bob.id)
    assert not await shares.remove_share(backend, *alias.ref, bob.id)
    assert (await _invite(backend, alias, bob.email, "t3", now)).status == PENDING


async def test_expiry_is_shown_and_the_address_may_be_invited_again(backend: Database) -> None:
    alias, now = await _alias(backend), time.time()
    old = await _invite(backend, alias, "bob@example.com", "t1", now - 31 * DAY)
    assert old.status_at(now) == EXPIRED
    assert await invitations.find_by_token(backend, _hash("t1"), now) is None
    bob = await users.create_user(backend, "bob@example.com", "Bob", "member", "h")
    assert not await invitations.accept(backend, old.id, bob.id, now)
    assert not await invitations.decline(backend, old.id, now)
    listed = await invitations.list_for_account(backend, alias.ref, [EXPIRED], now)
    assert [i.id for i in listed] == [old.id]
    again = await _invite(backend, alias, "bob@example.com", "t2", now)
    closed = await invitations.get_invitation(backend, old.id)
    assert closed is not None and closed.status == EXPIRED
    both = await invitations.list_for_account(backend, alias.ref, [PENDING, EXPIRED], now)
    assert [(i.id, i.status_at(now)) for i in both] == [(again.id, PENDING), (old.id, EXPIRED)]


async def test_decline_revoke_and_renew(backend: Database) -> None:
    alias, now = await _alias(backend), time.time()
    declined = await _invite(backend, alias, "a@example.com", "t1", now)
    assert await invitations.decline(backend, declined.id, now)
    assert not await invitations.decline(backend, declined.id, now)
    assert not await invitations.revoke(backend, declined.id, now)
    revoked = await _invite(backend, alias, "a@example.com", "t2", now)  # after a decline
    assert await invitations.revoke(backend, revoked.id, now)
    assert await invitations.find_by_token(backend, _hash("t2"), now) is None
    renewed = await _invite(backend, alias, "a@example.com", "t3", now - 40 * DAY)
    fresh = await invitations.renew(backend, renewed.id, _hash("t4"), now)
    assert fresh is not None and fresh.status_at(now) == PENDING
    assert fresh.expires_at == pytest.approx(now + 30 * DAY)
    assert await invitations.find_by_token(backend, _hash("t3"), now) is None
    by_token = await invitations.find_by_token(backend, _hash("t4"), now)
    assert by_token is not None and by_token.id == renewed.id
    assert await invitations.renew(backend, declined.id, _hash("t5"), now) is None
    statuses = {
        i.id: i.status_at(now)
        for i in await invitations.list_for_account(backend, alias.ref, invitations.STATUSES, now)
    }
    assert statuses == {declined.id: DECLINED, revoked.id: REVOKED, renewed.id: PENDING}


async def test_a_new_user_is_stored_in_the_accepting_transaction(backend: Database) -> None:
    alias, now = await _alias(backend), time.time()
    invited = await _invite(backend, alias, "new@example.com", "t1", now)
    record = users.new_user_record("new@example.com", "New", "member", "h", now)
    assert await invitations.accept(backend, invited.id, record.id, now, new_user=record)
    stored = await users.find_by_email(backend, "new@example.com")
    assert stored is not None and stored.id == record.id and stored.role == "member"
    # A second try (the invitation is answered): nothing is written, not even the user.
    other = await _invite(backend, alias, "other@example.com", "t2", now)
    assert await invitations.revoke(backend, other.id, now)
    late = users.new_user_record("other@example.com", "", "member", "h", now)
    assert not await invitations.accept(backend, other.id, late.id, now, new_user=late)
    assert await users.find_by_email(backend, "other@example.com") is None
    # A user made meanwhile with that email: UserExists, and the invitation stays pending.
    third = await _invite(backend, alias, "third@example.com", "t3", now)
    await users.create_user(backend, "third@example.com", "", "member", "h")
    clash = users.new_user_record("third@example.com", "", "member", "h", now)
    with pytest.raises(users.UserExists):
        await invitations.accept(backend, third.id, clash.id, now, new_user=clash)
    still = await invitations.get_invitation(backend, third.id)
    assert still is not None and still.status == PENDING
