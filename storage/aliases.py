"""Sender aliases and their single-use verification tokens.

Rules the storage enforces (each in one transaction): at most one default alias (also a
partial unique index); one alias per mailbox (case-insensitive); an alias that queued or
deferred mail still names (alias_id) or was sent From cannot be deleted (AliasInUse), nor can
the only verified alias (LastVerifiedAlias). A token is kept as its SHA-256 only, expires,
and is spent by the first request that presents it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, func, or_, select, text, update
from sqlalchemy.exc import IntegrityError

from storage.db import Database
from storage.errors import Refused
from storage.models import AliasToken, Message, SenderAlias
from storage.shares import end_account

A = SenderAlias
T = AliasToken
M = Message

EDITABLE = frozenset({"name", "is_default", "ip_pool"})
_ACTIVE = ("queued", "deferred", "held")
_DEFAULT_LOCK = 7303


class AliasError(Refused):
    """Base of this module's refusals; the message is safe to show."""


class AliasNotFound(AliasError):
    pass


class AliasExists(AliasError):
    pass


class AliasInUse(AliasError):
    """Queued mail still references the alias."""


class LastVerifiedAlias(AliasError):
    """It is the only verified alias left."""


@dataclass(frozen=True)
class AliasRecord:
    id: str
    email: str
    name: str
    is_default: bool
    is_verified: bool
    ip_pool: str | None
    created_at: float
    verified_at: float | None
    created_by: str | None = None  # the user who made it (None: console, config, or key)


def _record(row: Any) -> AliasRecord:
    return AliasRecord(
        id=row.id,
        email=row.email,
        name=row.name,
        is_default=row.is_default,
        is_verified=row.is_verified,
        ip_pool=row.ip_pool,
        created_at=row.created_at,
        verified_at=row.verified_at,
        created_by=row.created_by,
    )


def _one(conn: Connection, alias_id: str) -> Any:
    row = conn.execute(select(A).where(A.c.id == alias_id)).first()
    if row is None:
        raise AliasNotFound("alias not found")
    return row


def _clear_default(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"SELECT pg_advisory_xact_lock({_DEFAULT_LOCK})"))
    conn.execute(update(A).where(A.c.is_default).values(is_default=False))


async def list_aliases(db: Database) -> list[AliasRecord]:
    query = select(A).order_by(A.c.created_at, A.c.id)
    return await db.read(lambda conn: [_record(row) for row in conn.execute(query)])


async def get_alias(db: Database, alias_id: str) -> AliasRecord | None:
    row = await db.read(lambda conn: conn.execute(select(A).where(A.c.id == alias_id)).first())
    return None if row is None else _record(row)


async def create_alias(
    db: Database,
    *,
    email: str,
    name: str,
    is_default: bool,
    ip_pool: str | None,
    token_hash: str,
    expires_at: float,
    created_by: str | None = None,
) -> AliasRecord:
    """Store an unverified alias and its verification token together."""
    alias_id = "ali_" + secrets.token_hex(8)
    now = time.time()

    def work(conn: Connection) -> AliasRecord:
        key = email.lower()
        if conn.execute(select(A.c.id).where(A.c.email_key == key)).first() is not None:
            raise AliasExists(f"an alias for {email} already exists")
        if is_default:
            _clear_default(conn)
        conn.execute(
            A.insert().values(
                id=alias_id,
                email=email,
                email_key=key,
                name=name,
                is_default=is_default,
                is_verified=False,
                ip_pool=ip_pool,
                created_at=now,
                created_by=created_by,
            )
        )
        conn.execute(
            T.insert().values(token_hash=token_hash, alias_id=alias_id, expires_at=expires_at)
        )
        return _record(_one(conn, alias_id))

    try:
        return await db.transaction(work)
    except IntegrityError:  # a concurrent twin won the unique email (or default) index
        raise AliasExists(f"an alias for {email} already exists") from None


async def update_alias(db: Database, alias_id: str, changes: Mapping[str, Any]) -> AliasRecord:
    """Change name, is_default or ip_pool (nothing else can change after creation)."""
    unknown = set(changes) - EDITABLE
    if unknown:
        raise ValueError(f"not editable: {sorted(unknown)}")

    def work(conn: Connection) -> AliasRecord:
        _one(conn, alias_id)
        if changes.get("is_default"):
            _clear_default(conn)
        if changes:
            conn.execute(update(A).where(A.c.id == alias_id).values(**changes))
        return _record(_one(conn, alias_id))

    return await db.transaction(work)


async def new_token(db: Database, alias_id: str, token_hash: str, expires_at: float) -> AliasRecord:
    """Replace the alias's unspent tokens with a new one (a verification message sent
    again: the last link sent is the one that works). AliasNotFound when it is gone."""

    def work(conn: Connection) -> AliasRecord:
        row = _one(conn, alias_id)
        conn.execute(delete(T).where(T.c.alias_id == alias_id, T.c.used_at.is_(None)))
        conn.execute(
            T.insert().values(token_hash=token_hash, alias_id=alias_id, expires_at=expires_at)
        )
        return _record(row)

    return await db.transaction(work)


async def delete_alias(db: Database, alias_id: str) -> AliasRecord:
    """Remove an alias: AliasNotFound, AliasInUse or LastVerifiedAlias when it may not go."""

    def work(conn: Connection) -> AliasRecord:
        row = _one(conn, alias_id)
        in_use = conn.execute(
            select(M.c.id)
            .where(
                M.c.status.in_(_ACTIVE),
                or_(M.c.alias_id == alias_id, func.lower(M.c.mail_from) == row.email_key),
            )
            .limit(1)
        ).first()
        if in_use is not None:
            raise AliasInUse(
                "queued mail still references this alias; let it drain (or reassign it) first"
            )
        if row.is_verified:
            verified = conn.execute(
                select(func.count()).select_from(A).where(A.c.is_verified)
            ).scalar()
            if verified == 1:
                raise LastVerifiedAlias("cannot delete the only remaining verified alias")
        conn.execute(delete(T).where(T.c.alias_id == alias_id))
        conn.execute(delete(A).where(A.c.id == alias_id))
        end_account(conn, "alias", alias_id, time.time())  # storage.accounts.ALIAS
        return _record(row)

    return await db.transaction(work)


async def redeem_token(db: Database, token_hash: str) -> AliasRecord | None:
    """Spend a token and verify its alias; None when it is unknown, used or expired."""
    now = time.time()

    def work(conn: Connection) -> AliasRecord | None:
        spent = conn.execute(
            update(T)
            .where(T.c.token_hash == token_hash, T.c.used_at.is_(None), T.c.expires_at > now)
            .values(used_at=now)
            .returning(T.c.alias_id)
        ).first()
        if spent is None:
            return None
        row = conn.execute(select(A).where(A.c.id == spent.alias_id)).first()
        if row is None:
            return None
        if not row.is_verified:
            conn.execute(
                update(A).where(A.c.id == row.id).values(is_verified=True, verified_at=now)
            )
        return _record(_one(conn, row.id))

    return await db.transaction(work)
