"""Webhook records: create, list, change, delete, replay, and their recent attempts.

The signing secret is stored only as a ciphertext made by the caller (bound to the webhook's
id, so a copy in another row does not decrypt); no function here returns it in clear.
What a webhook is owed is the events after its cursor (storage.webhook_outbox): a new
webhook's cursor starts at the present, a replay moves it back.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from storage import webhook_outbox as outbox
from storage.db import Database
from storage.models import Webhook, WebhookAttempt

W = Webhook
A = WebhookAttempt
EDITABLE = frozenset({"url", "event_types", "final_only", "description", "is_active"})

Seal = Callable[[str], str]  # webhook id -> the secret's ciphertext bound to it


@dataclass(frozen=True)
class WebhookRecord:
    """A stored webhook without its secret (safe to return and log)."""

    id: str
    url: str
    event_types: tuple[str, ...]  # () = every type
    final_only: bool
    description: str
    is_active: bool
    created_at: float
    updated_at: float
    failures: int
    next_attempt_at: float
    created_by: str | None = None  # the user who made it (None: console or key)


@dataclass(frozen=True)
class WebhookAttemptRecord:
    id: int
    at: float
    events: int
    status_code: int | None
    error: str
    duration_ms: float
    outcome: str


def new_id() -> str:
    return f"wh_{secrets.token_hex(8)}"


def _record(row: Any) -> WebhookRecord:
    return WebhookRecord(
        id=row.id,
        url=row.url,
        event_types=tuple(row.event_types.split()),
        final_only=row.final_only,
        description=row.description,
        is_active=row.is_active,
        created_at=row.created_at,
        updated_at=row.updated_at,
        failures=row.failures,
        next_attempt_at=row.next_attempt_at,
        created_by=row.created_by,
    )


def _stored(values: Mapping[str, Any]) -> dict[str, Any]:
    """API values -> column values (event types as one space-separated string)."""
    stored = dict(values)
    if "event_types" in stored:
        stored["event_types"] = " ".join(stored["event_types"] or ())
    return stored


async def create_webhook(
    db: Database, values: Mapping[str, Any], seal: Seal, created_by: str | None = None
) -> WebhookRecord:
    now = time.time()
    webhook_id = new_id()
    row = {
        "event_types": "",
        "final_only": False,
        "description": "",
        "is_active": True,
        **_stored(values),
        "id": webhook_id,
        "secret_enc": seal(webhook_id),
        "created_at": now,
        "updated_at": now,
        "claimed_by": None,
        "claimed_until": None,
        "next_attempt_at": 0.0,
        "failures": 0,
        "created_by": created_by,
    }

    def work(conn: Connection) -> None:
        start = outbox.horizon(conn)  # events from now on
        conn.execute(insert(W), {**row, "cursor_txid": start.txid, "cursor_id": start.id})

    await db.transaction(work)
    found = await get_webhook(db, webhook_id)
    assert found is not None
    return found


async def list_webhooks(db: Database) -> list[WebhookRecord]:
    rows = await db.read(lambda conn: conn.execute(select(W).order_by(W.c.created_at)).all())
    return [_record(row) for row in rows]


async def get_webhook(db: Database, webhook_id: str) -> WebhookRecord | None:
    row = await db.read(lambda conn: conn.execute(select(W).where(W.c.id == webhook_id)).first())
    return _record(row) if row is not None else None


async def update_webhook(
    db: Database, webhook_id: str, changes: Mapping[str, Any]
) -> WebhookRecord | None:
    """Apply `changes` (EDITABLE fields only); None when there is no such webhook.

    Re-activating a webhook clears its back-off, so it is tried again at once; one that was
    inactive gets the events from now on, not those of while it was off."""
    values = _stored({k: v for k, v in changes.items() if k in EDITABLE})
    values["updated_at"] = time.time()
    if values.get("is_active"):
        values.update(next_attempt_at=0.0, failures=0)

    def work(conn: Connection) -> int:
        if values.get("is_active"):
            start = outbox.horizon(conn)
            conn.execute(
                update(W)
                .where(W.c.id == webhook_id, W.c.is_active.is_(False))
                .values(cursor_txid=start.txid, cursor_id=start.id)
            )
        return int(conn.execute(update(W).where(W.c.id == webhook_id).values(**values)).rowcount)

    done = await db.transaction(work)
    return await get_webhook(db, webhook_id) if done else None


async def delete_webhook(db: Database, webhook_id: str) -> bool:
    """Delete the webhook and its attempts."""

    def work(conn: Connection) -> bool:
        if not conn.execute(delete(W).where(W.c.id == webhook_id)).rowcount:
            return False
        conn.execute(delete(A).where(A.c.webhook_id == webhook_id))
        return True

    return bool(await db.transaction(work))


def wanted_types(
    event_types: Collection[str], final_only: bool, final: Collection[str]
) -> frozenset[str] | None:
    """The event types a webhook receives, from its filter (empty = all) and final_only;
    None = every type."""
    wanted = frozenset(event_types) if event_types else None
    if final_only:
        wanted = frozenset(final) if wanted is None else wanted & frozenset(final)
    return wanted


async def replay(
    db: Database, webhook_id: str, since: float, types: Collection[str] | None
) -> int | None:
    """Send an active webhook again every stored event since `since` it wants (`types` None =
    all): its cursor moves back to the first event written since then, unless it is further
    back already, and max_age counts those events from now. How many events it wants from
    there on (at most COUNT_CAP counted); None when there is no such active webhook."""
    first, upto = await db.read(
        lambda conn: (outbox.first_since(conn, since), outbox.horizon(conn))
    )
    start = outbox.before(first) if first is not None else upto
    now = time.time()
    if not await db.transaction(lambda conn: outbox.rewind(conn, webhook_id, start, upto, now)):
        return None
    if first is None:
        return 0
    return await db.read(lambda conn: outbox.count_between(conn, start, upto, types))


async def attempts(db: Database, webhook_id: str, limit: int) -> list[WebhookAttemptRecord]:
    """The webhook's latest attempts, newest first."""
    rows = await db.read(
        lambda conn: conn.execute(
            select(A).where(A.c.webhook_id == webhook_id).order_by(A.c.id.desc()).limit(limit)
        ).all()
    )
    return [
        WebhookAttemptRecord(
            id=r.id,
            at=r.at,
            events=r.events,
            status_code=r.status_code,
            error=r.error,
            duration_ms=r.duration_ms,
            outcome=r.outcome,
        )
        for r in rows
    ]


BACKLOG_CAP = 1_000_000  # the gauge counts at most this many per webhook


async def backlog(db: Database) -> int:
    """Events after the cursor of each active webhook, not yet sent or skipped (the pending
    gauge)."""

    def count(conn: Connection) -> int:
        # Capped: a gauge must stay cheap while a receiver is down for hours.
        total = 0
        hooks = conn.execute(
            select(W.c.cursor_txid, W.c.cursor_id).where(W.c.is_active.is_(True))
        ).all()
        for hook in hooks:
            total += outbox.count_after(conn, outbox.cursor_of(hook), BACKLOG_CAP)
        return total

    return await db.read(count)
