"""Shares: an account (storage.accounts: its kind and id) shared with a user, one row per
account and user. A share is made only by accepting an invitation (storage.invitations
writes it in the accepting transaction); here it is read and removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, select, update

from storage.db import Database
from storage.models import Invitation, Share, User

SH = Share
U = User
INV = Invitation


@dataclass(frozen=True)
class ShareRecord:
    account_kind: str
    account_id: str
    user_id: str
    email: str  # the user's
    role: str
    shared_at: float
    invitation_id: str | None


def _record(row: Any) -> ShareRecord:
    return ShareRecord(
        account_kind=row.account_kind,
        account_id=row.account_id,
        user_id=row.user_id,
        email=row.email,
        role=row.role,
        shared_at=row.shared_at,
        invitation_id=row.invitation_id,
    )


def _joined() -> Any:
    return select(SH, U.c.email).join(U, U.c.id == SH.c.user_id)


def end_account(conn: Connection, kind: str, account_id: str, now: float) -> None:
    """In the transaction deleting an account: its shares go and its open invitations are
    revoked, so that none can be accepted for an account that is no more."""
    conn.execute(delete(SH).where(SH.c.account_kind == kind, SH.c.account_id == account_id))
    conn.execute(
        update(INV)
        .where(INV.c.account_kind == kind, INV.c.account_id == account_id)
        .where(INV.c.status == "pending")  # storage.invitations.PENDING (it imports this)
        .values(status="revoked", responded_at=now)
    )


def put_share(
    conn: Connection, kind: str, account_id: str, user_id: str, role: str, now: float,
    invitation_id: str | None,
) -> None:  # fmt: skip
    """Share the account with the user in the caller's transaction (a share there already
    takes the new role)."""
    key = (SH.c.account_kind == kind, SH.c.account_id == account_id, SH.c.user_id == user_id)
    if conn.execute(select(SH.c.user_id).where(*key)).first() is not None:
        conn.execute(update(SH).where(*key).values(role=role, invitation_id=invitation_id))
        return
    conn.execute(
        SH.insert().values(
            account_kind=kind, account_id=account_id, user_id=user_id, role=role,
            shared_at=now, invitation_id=invitation_id,
        )
    )  # fmt: skip


async def list_shares(db: Database, kind: str, account_id: str) -> list[ShareRecord]:
    query = (
        _joined()
        .where(SH.c.account_kind == kind, SH.c.account_id == account_id)
        .order_by(SH.c.shared_at, SH.c.user_id)
    )
    return await db.read(lambda conn: [_record(row) for row in conn.execute(query)])


async def get_share(db: Database, kind: str, account_id: str, user_id: str) -> ShareRecord | None:
    query = _joined().where(
        SH.c.account_kind == kind, SH.c.account_id == account_id, SH.c.user_id == user_id
    )
    row = await db.read(lambda conn: conn.execute(query).first())
    return None if row is None else _record(row)


async def shared_account_ids(db: Database, user_id: str, kind: str) -> set[str]:
    """The ids of the accounts of this kind shared with the user."""
    query = select(SH.c.account_id).where(SH.c.user_id == user_id, SH.c.account_kind == kind)
    return await db.read(lambda conn: set(conn.execute(query).scalars()))


async def shared_users(db: Database, kind: str) -> list[tuple[str, str]]:
    """(account id, user id) of every share of this kind."""
    query = select(SH.c.account_id, SH.c.user_id).where(SH.c.account_kind == kind)
    return await db.read(lambda conn: [(row[0], row[1]) for row in conn.execute(query)])


async def remove_share(db: Database, kind: str, account_id: str, user_id: str) -> bool:
    """Stop sharing the account with the user; whether it was shared."""
    query = delete(SH).where(
        SH.c.account_kind == kind, SH.c.account_id == account_id, SH.c.user_id == user_id
    )
    return bool(await db.transaction(lambda conn: conn.execute(query).rowcount))
