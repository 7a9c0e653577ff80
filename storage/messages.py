"""Message reads for the API, and the side rows a submission adds to its message.

`gateway.queue.store` owns every write of a message's state; `meta_row` only shapes the
`message_meta` row it stores in the same transaction.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, insert, select

from storage import event_json
from storage.db import Database
from storage.models import HELD_DUE, Message, MessageMeta, Pool, Recipient
from storage.search_keys import address_of

M = Message
META = MessageMeta
R = Recipient
P = Pool

INSERT_META = insert(META)


def meta_row(
    message_id: str,
    api_key_id: str | None,
    sandbox: bool,
    tags: Sequence[str],
    metadata: Mapping[str, str],
    idempotency_key: str | None,
) -> dict[str, Any] | None:
    """The `message_meta` row for a submission, or None when it would say nothing."""
    if not (api_key_id or sandbox or tags or metadata or idempotency_key):
        return None
    return {
        "message_id": message_id,
        "api_key_id": api_key_id,
        "provider": "sandbox" if sandbox else "smtp",
        "tags": json.dumps(list(tags), ensure_ascii=False),
        "metadata_json": json.dumps(dict(metadata), ensure_ascii=False),
        "idempotency_key": idempotency_key,
    }


@dataclass(frozen=True)
class RecipientState:
    email: str
    status: str  # pending | delivered | bounced | suppressed | sandbox
    attempts: int
    code: int | None
    response: str | None


@dataclass(frozen=True)
class MessageState:
    id: str
    status: str
    api_key_id: str | None
    provider: str
    pool: str | None  # the pool of the last attempt, else the pool chosen at intake
    ip_pool: str | None
    attempts: int
    tags: list[str]
    metadata: dict[str, str]
    created_at: float
    updated_at: float
    recipients: list[RecipientState]
    mail_from: str = ""
    user_id: str | None = None  # the user it belongs to (None: a console key's, or no key's)
    next_attempt_at: float | None = None  # None once final, and while a worker holds it
    last_response: str | None = None  # the last attempt's summary
    scheduled_at: float | None = None  # a scheduled send's time
    events: list[dict[str, Any]] = field(default_factory=list)  # storage.event_json.to_json
    client_address: str | None = None  # the submitting client's IP (None: not recorded)


def next_attempt_at(due_at: float | None, claimed_by: str | None, now: float) -> float | None:
    """When the message is next tried: None once final, while held, or while a worker
    holds it (then `due_at` is the end of the worker's lease, not a retry time)."""
    if due_at is None or due_at >= HELD_DUE or (claimed_by is not None and due_at > now):
        return None
    return due_at


def _state(conn: Connection, message_id: str, with_events: bool = False) -> MessageState | None:
    row = conn.execute(
        select(
            M,
            META.c.api_key_id,
            META.c.provider,
            META.c.tags,
            META.c.metadata_json,
            P.c.name.label("pool_name"),
        )
        .select_from(
            M.outerjoin(META, META.c.message_id == M.c.id).outerjoin(P, P.c.id == M.c.pool_id)
        )
        .where(M.c.id == message_id)
    ).first()
    if row is None:
        return None
    recipients = [
        RecipientState(r.email, r.status, r.attempts, r.code, r.response)
        for r in conn.execute(select(R).where(R.c.message_id == message_id).order_by(R.c.id))
    ]
    return MessageState(
        id=row.id,
        status=row.status,
        api_key_id=row.api_key_id,
        provider=row.provider or ("sandbox" if row.status == "sandbox" else "smtp"),
        pool=row.last_pool or row.pool_name,
        ip_pool=row.ip_pool,
        attempts=row.attempts,
        tags=json.loads(row.tags) if row.tags else [],
        metadata=json.loads(row.metadata_json) if row.metadata_json else {},
        created_at=row.created_at,
        updated_at=row.updated_at,
        recipients=recipients,
        mail_from=row.mail_from,
        user_id=row.user_id,
        next_attempt_at=next_attempt_at(row.due_at, row.claimed_by, time.time()),
        last_response=row.last_response,
        scheduled_at=row.scheduled_at,
        events=event_json.for_message(conn, message_id) if with_events else [],
        client_address=address_of(row.client_address) if row.client_address else None,
    )


async def message_state(
    db: Database, message_id: str, with_events: bool = False
) -> MessageState | None:
    """The message with its per-recipient results (and, if asked, its events), or None
    when there is no such message."""
    return await db.read(lambda conn: _state(conn, message_id, with_events))
