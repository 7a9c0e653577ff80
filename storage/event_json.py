"""The public JSON shape of an event row, written twice on purpose: in Python for one
message's status (`to_json`, `for_message`), and in SQL for webhook payloads (`as_sql`:
storage.webhook_outbox sends hundreds at a time without building a dict for each).
tests/storage/test_webhook_outbox.py holds the two to one document.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ColumnElement,
    Connection,
    String,
    Text,
    case,
    cast,
    func,
    literal,
    null,
    or_,
    select,
)

from storage.models import Event

E = Event
_ID = "evt_"  # + the row's id: the event's public id


def event_id(number: int) -> str:
    return f"{_ID}{number}"


def to_json(
    event: Any, tags: Sequence[str] = (), metadata: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The public shape of an event row, as a message's status shows it."""
    response = None
    if event.code is not None or event.enhanced or event.response:
        response = {
            "code": event.code,
            "enhanced_status": event.enhanced,
            "text": event.response or "",
        }
    document = {
        "id": event_id(event.id),
        "type": event.type,
        "created_at": datetime.fromtimestamp(event.created_at, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "message_id": event.message_id,
        "message_status": event.message_status,
        "recipient": event.recipient,
        "pool": event.pool,
        "attempt": event.attempt,
        "response": response,
        "tags": list(tags),
        "metadata": dict(metadata or {}),
    }
    detail = getattr(event, "detail", None)
    return document | json.loads(detail) if detail else document


def for_message(conn: Connection, message_id: str, limit: int = 1000) -> list[dict[str, Any]]:
    """A message's events in order (without tags: the message shows them once)."""
    rows = conn.execute(select(E).where(E.c.message_id == message_id).order_by(E.c.id).limit(limit))
    return [to_json(r) for r in rows]


def as_sql(dialect: str, e: Any, tags: Any, metadata: Any) -> ColumnElement[str]:
    """`to_json` made by the database: the JSON text of an event row of `e`, with the tags
    and metadata of `tags` and `metadata` (columns of JSON text, NULL for none)."""
    pg = dialect == "postgresql"
    obj = func.json_build_object if pg else func.json_object

    def as_json(value: Any) -> Any:  # text holding JSON -> a JSON value, not a string
        return cast(value, JSON) if pg else func.json(value)

    # As datetime does: rounded to microseconds, then isoformat() truncates to milliseconds
    # (a CAST truncates on both backends; SQLite may lack floor()).
    micros = cast(func.round(e.c.created_at * 1_000_000), BigInteger)
    millis = (micros // 1000) / 1000.0
    if pg:
        created = func.to_char(
            func.timezone("UTC", func.to_timestamp(millis)), 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'
        )
    else:
        created = func.strftime("%Y-%m-%dT%H:%M:%fZ", millis, "unixepoch")
    replied = or_(
        e.c.code.is_not(None),
        func.coalesce(e.c.enhanced, "") != "",
        func.coalesce(e.c.response, "") != "",
    )
    response = obj(
        "code", e.c.code, "enhanced_status", e.c.enhanced,
        "text", func.coalesce(e.c.response, ""),
    )  # fmt: skip
    document = obj(
        "id", literal(_ID) + cast(e.c.id, String),
        "type", e.c.type,
        "created_at", created,
        "message_id", e.c.message_id,
        "message_status", e.c.message_status,
        "recipient", e.c.recipient,
        "pool", e.c.pool,
        "attempt", e.c.attempt,
        "response", case((replied, response), else_=null()) if pg else func.json(
            case((replied, response), else_=null())
        ),
        "tags", as_json(func.coalesce(tags, "[]")),
        "metadata", as_json(func.coalesce(metadata, "{}")),
    )  # fmt: skip
    # A report's event adds its `detail` object's keys (`async`, `bounce`) to the document.
    if pg:
        from sqlalchemy.dialects.postgresql import JSONB  # see storage.dialects

        merged = cast(cast(document, JSONB).op("||")(cast(e.c.detail, JSONB)), Text)
        return case((e.c.detail.is_(None), cast(document, Text)), else_=merged)
    return case((e.c.detail.is_(None), document), else_=func.json_patch(document, e.c.detail))
