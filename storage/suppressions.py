"""The suppression list: addresses Postern refuses to send to.

Addresses are stored under `storage.mailboxes.mailbox_key` (unquoted, lower-cased, IDNs as
A-labels), so one mailbox has one entry however it is spelt. Bounces add entries with
`add_if_absent`, in the attempt's own transaction (gateway.queue.store); the other functions
are the operator's and the API's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import Connection, delete, select, update

from storage.db import Database
from storage.dialects import dialect_module
from storage.mailboxes import mailbox_key
from storage.models import Suppression

S = Suppression

# bounced: the upstream refused it at once; hard_bounce / soft_bounce: a report that came
# back later (gateway.bounces.effects; the rule that decided is the entry's note).
REASONS = ("unsubscribed", "bounced", "complaint", "manual", "hard_bounce", "soft_bounce")


@cache
def add_if_absent(is_sqlite: bool) -> Any:
    """The INSERT of entries (email, reason, created_at) that leaves an address already
    listed as it is: how an attempt's hard bounces and complaints join the list, in the
    attempt's own transaction. Built once per dialect (when first asked)."""
    dialect = dialect_module("sqlite" if is_sqlite else "postgresql")
    return dialect.insert(S).on_conflict_do_nothing(index_elements=["email"])


@dataclass(frozen=True)
class SuppressionRecord:
    email: str
    reason: str
    created_at: float
    note: str | None = None  # the bounce rule that decided, for a report's suppression

    def as_json(self) -> dict[str, Any]:
        found = {"email": self.email, "reason": self.reason, "created_at": self.created_at}
        return found | ({"note": self.note} if self.note else {})


def _record(row: Any) -> SuppressionRecord:
    return SuppressionRecord(
        email=row.email, reason=row.reason, created_at=row.created_at, note=row.note
    )


async def add_suppression(db: Database, email: str, reason: str) -> tuple[SuppressionRecord, bool]:
    """Add or update the entry; returns it and whether it is new."""
    if reason not in REASONS:
        raise ValueError(f"reason must be one of {', '.join(REASONS)}")
    key = mailbox_key(email)
    now = time.time()

    def run(conn: Connection) -> tuple[Any, bool]:
        row = conn.execute(select(S).where(S.c.email == key)).first()
        if row is None:
            conn.execute(S.insert().values(email=key, reason=reason, created_at=now))
        elif row.reason != reason:
            conn.execute(S.update().where(S.c.email == key).values(reason=reason))
        return conn.execute(select(S).where(S.c.email == key)).one(), row is None

    row, created = await db.transaction(run)
    return _record(row), created


async def remove_suppression(db: Database, email: str) -> bool:
    """Remove the entry; False when there was none."""
    key = mailbox_key(email)
    return bool(
        await db.transaction(lambda conn: conn.execute(delete(S).where(S.c.email == key)).rowcount)
    )


async def get_suppression(db: Database, email: str) -> SuppressionRecord | None:
    key = mailbox_key(email)
    rows = await db.read(lambda conn: list(conn.execute(select(S).where(S.c.email == key))))
    return _record(rows[0]) if rows else None


async def list_suppressions(
    db: Database, reason: str | None = None, limit: int = 100, after: str | None = None
) -> tuple[list[SuppressionRecord], str | None]:
    """One page in address order, and the cursor of the next page (None at the end)."""
    query = select(S).order_by(S.c.email).limit(limit + 1)
    if reason:
        query = query.where(S.c.reason == reason)
    if after:
        query = query.where(S.c.email > after)
    rows = await db.read(lambda conn: list(conn.execute(query)))
    page = [_record(row) for row in rows[:limit]]
    return page, (page[-1].email if len(rows) > limit else None)


def rekey(conn: Connection) -> int:
    """Upgrade from schema 4, which kept the local part as given: store every entry under
    its `mailbox_key`, merging the spellings of one mailbox (the first created_at, the
    latest reason). Returns how many rows changed."""
    stale: dict[str, list[Any]] = {}
    for row in conn.execute(select(S).execution_options(yield_per=10_000)):
        key = mailbox_key(row.email)
        if key != row.email:
            stale.setdefault(key, []).append(row)
    for key, rows in stale.items():
        current = conn.execute(select(S).where(S.c.email == key)).first()
        spellings = sorted([*rows, *([current] if current else [])], key=lambda r: r.created_at)
        conn.execute(delete(S).where(S.c.email.in_([row.email for row in rows])))
        merged = {"reason": spellings[-1].reason, "created_at": spellings[0].created_at}
        if current is None:
            conn.execute(S.insert().values(email=key, **merged))
        else:
            conn.execute(update(S).where(S.c.email == key).values(**merged))
    return sum(len(rows) for rows in stale.values())
