"""Invitations to share an account (storage.accounts names it by kind and id), each state
change one transaction.

    pending --accept--> accepted      (the share is written in the same transaction)
            --decline-> declined
            --revoke--> revoked
            --renew---> pending       (a new token and expiry: the old token is dead)
    pending past expires_at reads as `expired`; inviting the address again closes it as
    `expired` in the inviting transaction.

The rules hold in the database, on SQLite and PostgreSQL alike: a change applies only to a
row still `pending` (and, to accept or decline, not expired), so of two accepts of one
invitation only one shares the account; a partial unique index keeps one pending
invitation per account and address, so two concurrent invites cannot both stand.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Connection, and_, or_, select, update
from sqlalchemy.exc import IntegrityError

from storage.accounts import Ref
from storage.db import Database
from storage.errors import Refused
from storage.models import ApiKey, Invitation, Share, User
from storage.shares import put_share
from storage.users import UserExists, UserRecord, insert_user

INV = Invitation
U = User
K = ApiKey
SH = Share

PENDING, ACCEPTED, DECLINED, REVOKED, EXPIRED = (
    "pending", "accepted", "declined", "revoked", "expired"
)  # fmt: skip
STATUSES = (PENDING, EXPIRED, ACCEPTED, DECLINED, REVOKED)
TTL = 30 * 86400.0  # seconds an invitation stays open
LIST_MAX = 500  # the most invitations one list answers


class InvitationError(Refused):
    """An invitation is refused; the text is safe to show."""


class AlreadyShared(InvitationError):
    """The invited address already shares the account."""


class InvitationPending(InvitationError):
    """A live invitation of this address to this account exists (`invitation_id`)."""

    def __init__(self, message: str, invitation_id: str | None) -> None:
        super().__init__(message)
        self.invitation_id = invitation_id


@dataclass(frozen=True)
class InvitationRecord:
    id: str
    account_kind: str
    account_id: str
    invitee_email: str
    role: str
    status: str  # as stored: see status_at
    inviter_id: str | None
    created_at: float
    expires_at: float
    responded_at: float | None
    inviter_name: str = ""  # the inviting user's name (or email), or the key's name

    @property
    def account(self) -> Ref:
        return (self.account_kind, self.account_id)

    def status_at(self, now: float) -> str:
        """The status as shown: a pending invitation past its expiry is `expired`."""
        return EXPIRED if self.status == PENDING and self.expires_at <= now else self.status


_COLUMNS = tuple(f.name for f in fields(InvitationRecord) if f.name != "inviter_name")


def _record(row: Any) -> InvitationRecord:
    named = row.user_name or row.user_email or row.key_name or ""
    return InvitationRecord(**{n: getattr(row, n) for n in _COLUMNS}, inviter_name=named)


def _with_inviter() -> Any:
    """Invitations with their inviter's name: a user's, or an API key's."""
    return (
        select(INV, U.c.name.label("user_name"), U.c.email.label("user_email"),
               K.c.name.label("key_name"))
        .outerjoin(U, U.c.id == INV.c.inviter_id)
        .outerjoin(K, K.c.id == INV.c.inviter_id)
    )  # fmt: skip


def _live(now: float) -> Any:
    return and_(INV.c.status == PENDING, INV.c.expires_at > now)


def _shown_as(status: str, now: float) -> Any:
    """The rows whose status_at(now) is `status`."""
    if status == PENDING:
        return _live(now)
    if status == EXPIRED:
        return or_(INV.c.status == EXPIRED, and_(INV.c.status == PENDING, INV.c.expires_at <= now))
    return INV.c.status == status


def _of(account: Ref) -> Any:
    return and_(INV.c.account_kind == account[0], INV.c.account_id == account[1])


def _shared_with(conn: Connection, account: Ref, email: str) -> bool:
    query = (
        select(SH.c.user_id)
        .join(U, U.c.id == SH.c.user_id)
        .where(SH.c.account_kind == account[0], SH.c.account_id == account[1], U.c.email == email)
    )
    return conn.execute(query).first() is not None


def _close_expired(conn: Connection, account: Ref, email: str, now: float) -> None:
    """A pending invitation of this address: still live, InvitationPending; expired, closed
    as `expired`, so that a new one may take its place."""
    query = select(INV.c.id, INV.c.expires_at).where(
        _of(account), INV.c.invitee_email == email, INV.c.status == PENDING
    )
    row = conn.execute(query).first()
    if row is None:
        return
    if row.expires_at > now:
        raise InvitationPending(f"{email} has a pending invitation to this account", row.id)
    closing = update(INV).where(INV.c.id == row.id, INV.c.status == PENDING)
    conn.execute(closing.values(status=EXPIRED))


async def create_invitation(
    db: Database, *, account: Ref, invitee_email: str, role: str, inviter_id: str | None,
    token_hash: str, now: float, ttl: float = TTL,
) -> InvitationRecord:  # fmt: skip
    """Store a pending invitation (`invitee_email` in mailbox_key form). AlreadyShared if the
    address's user shares the account; InvitationPending if a live invitation exists."""
    values = {
        "id": "inv_" + secrets.token_hex(8), "account_kind": account[0],
        "account_id": account[1], "invitee_email": invitee_email, "role": role,
        "status": PENDING, "token_hash": token_hash, "inviter_id": inviter_id,
        "created_at": now, "expires_at": now + ttl, "responded_at": None,
    }  # fmt: skip

    def work(conn: Connection) -> None:
        if _shared_with(conn, account, invitee_email):
            raise AlreadyShared(f"{invitee_email} already shares this account")
        _close_expired(conn, account, invitee_email, now)
        conn.execute(INV.insert().values(**values))

    try:
        await db.exclusive(work)
    except IntegrityError:  # a concurrent invite of the same address won
        raise InvitationPending(
            f"{invitee_email} has a pending invitation to this account", None
        ) from None
    found = await get_invitation(db, str(values["id"]))
    assert found is not None
    return found


async def get_invitation(db: Database, invitation_id: str) -> InvitationRecord | None:
    query = _with_inviter().where(INV.c.id == invitation_id)
    row = await db.read(lambda conn: conn.execute(query).first())
    return None if row is None else _record(row)


async def find_by_token(db: Database, token_hash: str, now: float) -> InvitationRecord | None:
    """The live invitation of this token, or None (unknown, answered, renewed or expired)."""
    query = _with_inviter().where(INV.c.token_hash == token_hash, _live(now))
    row = await db.read(lambda conn: conn.execute(query).first())
    return None if row is None else _record(row)


async def list_for_account(
    db: Database, account: Ref, statuses: Collection[str], now: float, limit: int = LIST_MAX
) -> list[InvitationRecord]:
    """The account's invitations whose shown status is one of `statuses`, newest first."""
    query = (
        _with_inviter()
        .where(_of(account), or_(*[_shown_as(status, now) for status in statuses]))
        .order_by(INV.c.created_at.desc(), INV.c.id)
        .limit(limit)
    )
    return await db.read(lambda conn: [_record(row) for row in conn.execute(query)])


async def pending_for(
    db: Database, email: str, now: float, limit: int = LIST_MAX
) -> list[InvitationRecord]:
    """The live invitations to this address (mailbox_key form), newest first."""
    query = (
        _with_inviter()
        .where(INV.c.invitee_email == email, _live(now))
        .order_by(INV.c.created_at.desc(), INV.c.id)
        .limit(limit)
    )
    return await db.read(lambda conn: [_record(row) for row in conn.execute(query)])


async def accept(
    db: Database, invitation_id: str, user_id: str, now: float,
    new_user: UserRecord | None = None,
) -> bool:  # fmt: skip
    """Accept a live invitation for `user_id` and share its account with them, in one
    transaction (storing `new_user` first, when given); False if it was not live, and then
    nothing is written. UserExists if `new_user`'s email is taken."""

    def work(conn: Connection) -> bool:
        row = conn.execute(
            update(INV)
            .where(INV.c.id == invitation_id, _live(now))
            .values(status=ACCEPTED, responded_at=now)
            .returning(INV.c.account_kind, INV.c.account_id, INV.c.role)
        ).first()
        if row is None:
            return False
        if new_user is not None:
            insert_user(conn, new_user)
        put_share(conn, row.account_kind, row.account_id, user_id, row.role, now, invitation_id)
        return True

    try:
        return await db.transaction(work)
    except IntegrityError:
        if new_user is None:  # the share's key was checked in the transaction: not this
            raise
        raise UserExists(f"a user with email {new_user.email} exists") from None


async def _answer(db: Database, invitation_id: str, guard: Any, values: dict[str, Any]) -> bool:
    query = update(INV).where(INV.c.id == invitation_id, guard).values(**values)
    return bool(await db.transaction(lambda conn: conn.execute(query).rowcount))


async def decline(db: Database, invitation_id: str, now: float) -> bool:
    """Decline a live invitation; False if it was not live."""
    return await _answer(db, invitation_id, _live(now), {"status": DECLINED, "responded_at": now})


async def revoke(db: Database, invitation_id: str, now: float) -> bool:
    """Revoke a pending (or expired) invitation; False if it was answered already."""
    guard = INV.c.status == PENDING
    return await _answer(db, invitation_id, guard, {"status": REVOKED, "responded_at": now})


async def renew(
    db: Database, invitation_id: str, token_hash: str, now: float, ttl: float = TTL
) -> InvitationRecord | None:
    """A pending (or expired) invitation with a new token and expiry (the old token stops
    working); None if it was answered already."""
    values = {"token_hash": token_hash, "expires_at": now + ttl}
    if not await _answer(db, invitation_id, INV.c.status == PENDING, values):
        return None
    return await get_invitation(db, invitation_id)
