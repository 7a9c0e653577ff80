"""How far each connected account's mailbox has been read, and what was skipped.

cursor:  (account, mailbox) -> (UIDVALIDITY, highest UID handed over). `advance` moves it
         only while the calling node still holds the account's sync lease, in one
         transaction with that check: a node whose lease lapsed writes nothing.
skip:    a message not handed over (too big), recorded once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select, update

from storage.models import InboxCursor, InboxSkip, MailAccount

C = InboxCursor
S = InboxSkip
A = MailAccount
MAX_REASON = 256


@dataclass(frozen=True)
class Cursor:
    uidvalidity: int
    last_uid: int


@dataclass(frozen=True)
class Skipped:
    account_id: str
    mailbox: str
    uidvalidity: int
    uid: int
    size: int
    reason: str
    created_at: float


def cursor(conn: Connection, account_id: str, mailbox: str) -> Cursor | None:
    row = conn.execute(
        select(C.c.uidvalidity, C.c.last_uid).where(
            C.c.account_id == account_id, C.c.mailbox == mailbox
        )
    ).first()
    return None if row is None else Cursor(row.uidvalidity, row.last_uid)


def _holds(conn: Connection, account_id: str, node: str) -> bool:
    query = select(A.c.id).where(A.c.id == account_id, A.c.claimed_by == node)
    return conn.execute(query).first() is not None


def advance(conn: Connection, account_id: str, mailbox: str, node: str, to: Cursor) -> bool:
    """Set the cursor to `to` (a new UIDVALIDITY starts it again); False, and nothing
    written, when `node` no longer holds the account's lease."""
    if not _holds(conn, account_id, node):
        return False
    now = time.time()
    where = (C.c.account_id == account_id, C.c.mailbox == mailbox)
    values = {"uidvalidity": to.uidvalidity, "last_uid": to.last_uid, "updated_at": now}
    if conn.execute(update(C).where(*where).values(**values)).rowcount == 0:
        conn.execute(C.insert().values(account_id=account_id, mailbox=mailbox, **values))
    return True


def skip(conn: Connection, record: Skipped) -> None:
    """Record a skipped message (once: a second record of it changes nothing)."""
    key = (record.account_id, record.mailbox, record.uidvalidity, record.uid)
    columns = (S.c.account_id, S.c.mailbox, S.c.uidvalidity, S.c.uid)
    where = [column == value for column, value in zip(columns, key, strict=True)]
    if conn.execute(select(S.c.uid).where(*where)).first() is not None:
        return
    values = record.__dict__ | {"reason": record.reason[:MAX_REASON]}
    conn.execute(S.insert().values(**values))


def _skipped(row: Any) -> Skipped:
    return Skipped(
        row.account_id, row.mailbox, row.uidvalidity, row.uid, row.size, row.reason,
        row.created_at,
    )  # fmt: skip


def skipped(conn: Connection, account_id: str) -> list[Skipped]:
    query = select(S).where(S.c.account_id == account_id).order_by(S.c.created_at, S.c.uid)
    return [_skipped(row) for row in conn.execute(query)]


def latest_skipped(conn: Connection, limit: int, account_id: str | None = None) -> list[Skipped]:
    """The latest skipped messages, newest first: of one account, or of every account."""
    query = select(S).order_by(S.c.created_at.desc(), S.c.uid.desc()).limit(limit)
    if account_id is not None:
        query = query.where(S.c.account_id == account_id)
    return [_skipped(row) for row in conn.execute(query)]
