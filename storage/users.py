"""Users: the people who log in. Rows are keyed by id (`usr_...`) and by the mailbox_key
form of their email, unique.

The last-owner rule (an owner can be neither demoted nor disabled if no other active owner
is left) is kept here, in the transaction that makes the change: checked before it, two
concurrent changes could each leave the other's owner alone and then both go through.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Connection, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from storage.db import Database
from storage.errors import Refused
from storage.mailboxes import mailbox_key
from storage.models import User, UserSession

U = User
S = UserSession  # ended with some changes

OWNER = "owner"
_COLUMNS = tuple(column.name for column in U.c)


class UserError(Refused):
    """A change to users is refused."""


class UserExists(UserError):
    """Another user has this email."""


class UserNotFound(UserError):
    """No user with this id or email."""


class LastOwner(UserError):
    """The change would leave no active owner."""


@dataclass(frozen=True)
class UserRecord:
    id: str
    email: str
    name: str
    role: str
    disabled_at: float | None
    created_at: float
    updated_at: float
    password_hash: str = field(repr=False)  # for the domain's verification, never shown

    @property
    def is_active(self) -> bool:
        return self.disabled_at is None

    def as_json(self) -> dict[str, Any]:
        """What may be shown of the user (never the hash)."""
        shown = asdict(self)
        del shown["password_hash"]
        return shown


def user_from_row(row: Any, prefix: str = "") -> UserRecord:
    """The record of a users row (its columns under `prefix`, in a join)."""
    return UserRecord(**{name: getattr(row, prefix + name) for name in _COLUMNS})


def new_user_record(
    email: str, name: str, role: str, password_hash: str, now: float | None = None
) -> UserRecord:
    """A user not stored yet (create_user stores it; storage.invitations stores one in the
    transaction that accepts an invitation)."""
    now = time.time() if now is None else now
    return UserRecord(
        id="usr_" + secrets.token_hex(8),
        email=mailbox_key(email),
        name=name,
        role=role,
        disabled_at=None,
        created_at=now,
        updated_at=now,
        password_hash=password_hash,
    )


def insert_user(conn: Connection, record: UserRecord) -> None:
    """Store `record` in the caller's transaction (IntegrityError if the email is taken)."""
    conn.execute(U.insert().values(**asdict(record)))


async def create_user(
    db: Database, email: str, name: str, role: str, password_hash: str, now: float | None = None
) -> UserRecord:
    """Store a new user; UserExists if the email is taken."""
    record = new_user_record(email, name, role, password_hash, now)
    try:
        await db.transaction(lambda conn: insert_user(conn, record))
    except IntegrityError:
        raise UserExists(f"a user with email {record.email} exists") from None
    return record


async def get_user(db: Database, user_id: str) -> UserRecord | None:
    rows = await db.read(lambda conn: list(conn.execute(select(U).where(U.c.id == user_id))))
    return user_from_row(rows[0]) if rows else None


async def find_by_email(db: Database, email: str) -> UserRecord | None:
    key = mailbox_key(email)
    rows = await db.read(lambda conn: list(conn.execute(select(U).where(U.c.email == key))))
    return user_from_row(rows[0]) if rows else None


async def list_users(db: Database) -> list[UserRecord]:
    rows = await db.read(lambda conn: list(conn.execute(select(U).order_by(U.c.created_at))))
    return [user_from_row(row) for row in rows]


def _active_owners(conn: Connection) -> list[str]:
    """The active owners' ids, their rows locked on PostgreSQL until the transaction ends
    (SQLite's exclusive transaction holds the whole database already)."""
    query = select(U.c.id).where(U.c.role == OWNER, U.c.disabled_at.is_(None))
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return list(conn.execute(query).scalars())


async def count_owners(db: Database) -> int:
    """Active owners."""
    query = select(func.count()).where(U.c.role == OWNER, U.c.disabled_at.is_(None))
    return int(await db.read(lambda conn: conn.execute(query).scalar() or 0))


async def _change(
    db: Database, user_id: str, values: dict[str, Any], leaves_owner: bool,
    end_sessions: bool = False,
) -> UserRecord:  # fmt: skip
    """Apply `values` to the user in one transaction; when `leaves_owner` (the user stops
    being an active owner if it is one), LastOwner if no other active owner remains; with
    `end_sessions`, every session of the user ends in that same transaction (a disabled
    user re-enabled, or a reset password, never brings an old cookie back)."""

    def work(conn: Connection) -> UserRecord:
        if leaves_owner:
            owners = _active_owners(conn)  # locked before the user's own row is read
            if owners == [user_id]:
                raise LastOwner("the last owner cannot be demoted or disabled")
        found = conn.execute(update(U).where(U.c.id == user_id).values(**values)).rowcount
        if not found:
            raise UserNotFound(f"no user with id {user_id}")
        if end_sessions:
            conn.execute(delete(S).where(S.c.user_id == user_id))
        return user_from_row(conn.execute(select(U).where(U.c.id == user_id)).one())

    return await db.exclusive(work)


async def set_role(db: Database, user_id: str, role: str, now: float | None = None) -> UserRecord:
    now = time.time() if now is None else now
    values = {"role": role, "updated_at": now}
    return await _change(db, user_id, values, leaves_owner=role != OWNER)


async def disable_user(db: Database, user_id: str, now: float | None = None) -> UserRecord:
    """Disable the user (idempotent: a disabled user keeps its first time)."""
    now = time.time() if now is None else now
    current = await get_user(db, user_id)
    if current is None:
        raise UserNotFound(f"no user with id {user_id}")
    if current.disabled_at is not None:
        return current
    values = {"disabled_at": now, "updated_at": now}
    return await _change(db, user_id, values, leaves_owner=True, end_sessions=True)


async def enable_user(db: Database, user_id: str, now: float | None = None) -> UserRecord:
    now = time.time() if now is None else now
    return await _change(db, user_id, {"disabled_at": None, "updated_at": now}, False)


async def set_password(
    db: Database, user_id: str, password_hash: str, now: float | None = None,
    end_sessions: bool = False,
) -> UserRecord:  # fmt: skip
    """A new hash (a rehash at login keeps the sessions; a reset ends them with it)."""
    now = time.time() if now is None else now
    values = {"password_hash": password_hash, "updated_at": now}
    return await _change(db, user_id, values, leaves_owner=False, end_sessions=end_sessions)
