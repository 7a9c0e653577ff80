"""Sessions: who is logged in, one row per browser. Only the SHA-256 of a session's token
is stored (the token has 256 random bits, so a fast hash is enough and the lookup stays one
indexed read); the token itself exists only in the browser's cookie.

Times are passed in by the caller (the domain's clock), so that expiry can be tested without
waiting. `expires_at` never passes `absolute_expires_at`: a session is live while
`expires_at > now`, whatever made it end first.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from sqlalchemy import Connection, delete, func, select, update

from storage.db import Database
from storage.models import UserSession
from storage.users import U, UserRecord, user_from_row

S = UserSession

USER_AGENT_MAX = 256
IP_MAX = 64
MAX_PER_USER = 50  # live sessions a user may hold: a new one past it ends the least used


@dataclass(frozen=True)
class SessionRecord:
    id: str
    user_id: str
    created_at: float
    last_seen_at: float
    expires_at: float
    absolute_expires_at: float
    user_agent: str
    ip: str
    token_hash: str = field(repr=False)
    role: str = ""  # the user's role when it began ("" before schema 7)

    def as_json(self) -> dict[str, Any]:
        shown = asdict(self)
        del shown["token_hash"]
        return shown


_COLUMNS = tuple(f.name for f in fields(SessionRecord))


def _record(row: Any) -> SessionRecord:
    """The record of a sessions row (as storage.users.user_from_row makes a user's)."""
    return SessionRecord(**{name: getattr(row, name) for name in _COLUMNS})


def _new(
    user_id: str, token_hash: str, now: float, idle: float, absolute: float, user_agent: str,
    ip: str, role: str,
) -> SessionRecord:  # fmt: skip
    """`absolute` is how long from now the session may live at most."""
    return SessionRecord(
        id="ses_" + secrets.token_hex(8),
        user_id=user_id,
        created_at=now,
        last_seen_at=now,
        expires_at=min(now + idle, now + absolute),
        absolute_expires_at=now + absolute,
        user_agent=user_agent[:USER_AGENT_MAX],
        ip=ip[:IP_MAX],
        token_hash=token_hash,
        role=role,
    )


async def create_session(
    db: Database, user_id: str, token_hash: str, *, now: float, idle: float, absolute: float,
    user_agent: str = "", ip: str = "", replaces: str | None = None, role: str = "",
) -> SessionRecord:  # fmt: skip
    """Store a new session; with `replaces`, that session is deleted in the same
    transaction (rotation: the old token stops working as the new one starts)."""
    record = _new(user_id, token_hash, now, idle, absolute, user_agent, ip, role)

    def work(conn: Connection) -> None:
        if replaces is not None:
            conn.execute(delete(S).where(S.c.id == replaces))
        conn.execute(S.insert().values(**asdict(record)))
        beyond = (
            select(S.c.id).where(S.c.user_id == user_id)
            .order_by(S.c.last_seen_at.desc(), S.c.id).offset(MAX_PER_USER)
        )  # fmt: skip
        conn.execute(delete(S).where(S.c.id.in_(beyond.scalar_subquery())))

    await db.transaction(work)
    return record


async def find_session(
    db: Database, token_hash: str, now: float
) -> tuple[SessionRecord, UserRecord] | None:
    """The live session with this token hash and its user (one indexed read), or None."""
    query = (
        select(S, *[c.label("u_" + c.name) for c in U.c])
        .join(U, U.c.id == S.c.user_id)
        .where(S.c.token_hash == token_hash, S.c.expires_at > now)
    )
    rows = await db.read(lambda conn: list(conn.execute(query)))
    for row in rows:
        if hmac.compare_digest(row.token_hash, token_hash):
            return _record(row), user_from_row(row, "u_")
    return None


async def touch_session(db: Database, session_id: str, *, now: float, idle: float) -> float | None:
    """Slide a live session's expiry to `now + idle`, capped at its absolute expiry; the new
    expiry, or None if the session is gone or has expired."""

    def work(conn: Connection) -> float | None:
        smaller: Any = func.least if conn.dialect.name == "postgresql" else func.min
        new_expiry = smaller(now + idle, S.c.absolute_expires_at)
        changed = conn.execute(
            update(S)
            .where(S.c.id == session_id, S.c.expires_at > now)
            .values(last_seen_at=now, expires_at=new_expiry)
        ).rowcount
        if not changed:
            return None
        return float(conn.execute(select(S.c.expires_at).where(S.c.id == session_id)).scalar_one())

    return await db.transaction(work)


async def revoke_session(db: Database, session_id: str, user_id: str | None = None) -> bool:
    """End one session (only if it is `user_id`'s, when given); whether it existed."""
    query = delete(S).where(S.c.id == session_id)
    if user_id is not None:
        query = query.where(S.c.user_id == user_id)
    return bool(await db.transaction(lambda conn: conn.execute(query).rowcount))


async def revoke_user_sessions(db: Database, user_id: str, keep: str | None = None) -> int:
    """End every session of the user but `keep`; how many ended."""
    query = delete(S).where(S.c.user_id == user_id)
    if keep is not None:
        query = query.where(S.c.id != keep)
    return int(await db.transaction(lambda conn: conn.execute(query).rowcount))


async def list_user_sessions(db: Database, user_id: str, now: float) -> list[SessionRecord]:
    """The user's live sessions, most recently used first."""
    query = (
        select(S)
        .where(S.c.user_id == user_id, S.c.expires_at > now)
        .order_by(S.c.last_seen_at.desc())
    )
    return [_record(row) for row in await db.read(lambda conn: list(conn.execute(query)))]


async def purge_expired(db: Database, now: float, limit: int = 1000) -> int:
    """Delete up to `limit` expired sessions (a bounded sweep, safe on every node)."""
    doomed = select(S.c.id).where(S.c.expires_at <= now).limit(limit).scalar_subquery()
    query = delete(S).where(S.c.id.in_(doomed))
    return int(await db.transaction(lambda conn: conn.execute(query).rowcount))
