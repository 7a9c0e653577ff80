"""Request and response bodies (pydantic). Requests are parsed strictly: a wrong type or an
unknown field is a 400, never coerced; the response models document what the routes answer.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.errors import InvalidRequest
from storage.keys import SCOPES
from storage.suppressions import REASONS

T = TypeVar("T", bound=BaseModel)

Scope = Literal[SCOPES]  # type: ignore[valid-type]
Reason = Literal[REASONS]  # type: ignore[valid-type]
Tag = Annotated[str, Field(min_length=1, max_length=64)]
MetaKey = Annotated[str, Field(min_length=1, max_length=128)]
MetaValue = Annotated[str, Field(max_length=2048)]


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class Mailbox(Strict):
    email: str = Field(min_length=3, max_length=254)
    name: str | None = Field(default=None, max_length=256)


class SendRequest(Strict):
    """POST /v1/send (seed 001). Either html or text is required."""

    from_: Mailbox = Field(alias="from")
    to: list[Mailbox] = Field(min_length=1, max_length=100)
    cc: list[Mailbox] = Field(default_factory=list, max_length=50)
    bcc: list[Mailbox] = Field(default_factory=list, max_length=50)
    reply_to: Mailbox | None = None
    subject: str = Field(max_length=998)
    html: str | None = None
    text: str | None = None
    alias_id: str | None = Field(default=None, min_length=1, max_length=128)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=128)
    tags: list[Tag] = Field(default_factory=list, max_length=10)
    metadata: dict[MetaKey, MetaValue] = Field(default_factory=dict, max_length=50)


class RecipientResult(BaseModel):
    email: str
    response: str | None = None


class SendResponse(BaseModel):
    """200: accepted by the upstream (or stored, for a sandbox send)."""

    success: Literal[True]
    message_id: str
    provider: Literal["smtp", "sandbox"]
    timestamp: str
    idempotent: bool | None = None
    suppressed_recipients: list[str] | None = Field(
        None, description="recipients left out as suppressed (the others were sent)"
    )
    rejected: list[RecipientResult] | None = Field(None, description="refused by the upstream")


class QueuedResponse(BaseModel):
    """202: stored; the upstream has not accepted it yet and it is retried automatically."""

    success: Literal[False]
    queued: Literal[True]
    message: str
    message_id: str
    provider: Literal["smtp"]
    timestamp: str
    idempotent: bool | None = None
    suppressed_recipients: list[str] | None = Field(
        None, description="recipients left out as suppressed (the others were stored)"
    )


class ErrorResponse(BaseModel):
    success: Literal[False]
    code: str
    error: str
    details: list[dict[str, Any]]
    suppressed: bool | None = Field(None, description="422 `suppressed` only: true")
    retry_after: int | None = Field(None, description="429 only: seconds to wait")
    message_id: str | None = Field(None, description="422 `upstream_rejected` only")


class RecipientStatus(BaseModel):
    email: str
    status: Literal[
        "queued", "deferred", "delivered", "bounced", "suppressed", "sandbox", "cancelled"
    ]
    response: str | None


class EventReply(BaseModel):
    code: int | None
    enhanced_status: str | None
    text: str


class MessageEvent(BaseModel):
    """One state change or per-recipient result (the same shape webhooks receive)."""

    id: str
    type: str
    created_at: str
    message_id: str
    message_status: str
    recipient: str | None
    pool: str | None
    attempt: int
    response: EventReply | None
    tags: list[str]
    metadata: dict[str, str]


MessageStatusName = Literal[
    "queued", "delivered", "deferred", "bounced", "suppressed", "sandbox", "cancelled"
]


class MessageStatus(BaseModel):
    message_id: str
    status: MessageStatusName
    pool: str | None
    attempts: int
    recipients: list[RecipientStatus]
    created_at: str
    updated_at: str
    provider: Literal["smtp", "sandbox"]
    tags: list[str]
    metadata: dict[str, str]
    next_attempt_at: str | None = Field(description="null once final or while being delivered")
    last_response: str | None = Field(description="the last attempt's worst reply")
    events: list[MessageEvent]


class MessageSummary(BaseModel):
    message_id: str
    status: MessageStatusName
    from_: str = Field(alias="from")
    recipients: list[str]
    pool: str | None
    attempts: int
    tags: list[str]
    created_at: str
    updated_at: str
    next_attempt_at: str | None
    last_response: str | None


class MessageList(BaseModel):
    data: list[MessageSummary]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null: last")


class MessageFilterBody(Strict):
    """Which messages a bulk operation acts on: every criterion given must match."""

    status: str | list[str] | None = Field(
        None, description="queued, deferred (others match nothing: only they have work left)"
    )
    pool: str | None = None
    recipient: str | None = None
    from_: str | None = Field(None, alias="from")
    tag: str | None = None
    since: str | int | float | None = Field(None, description="ISO 8601 or UNIX seconds")
    until: str | int | float | None = Field(None, description="ISO 8601 or UNIX seconds")
    all: bool = Field(False, description="required to act on the whole queue with no criteria")


class BulkRequest(Strict):
    filter: MessageFilterBody
    dry_run: bool = False
    cursor: str | None = Field(
        None, max_length=256, description="next_cursor of the previous call, to go on from it"
    )


class BulkResult(BaseModel):
    matched: int = Field(description="messages with work left that match")
    retried: int | None = Field(None, description="retry: made due now")
    cancelled: int | None = Field(None, description="cancel: stopped")
    busy: int = Field(description="being delivered right now: left alone")
    dry_run: bool
    remaining: int | None = Field(
        None,
        description="only when the call stopped at its cap of 10,000 messages: how many "
        "matching messages with work left it did not reach; repeat with `cursor`",
    )
    next_cursor: str | None = Field(
        None, description="with `remaining`: pass as `cursor` (same filter) to go on"
    )


class RetryResult(BaseModel):
    message_id: str
    retried: Literal[True]


class CancelResult(BaseModel):
    message_id: str
    status: Literal["cancelled"]


class KeyCreate(Strict):
    name: str = Field(min_length=1, max_length=128)
    scopes: list[Scope] = Field(min_length=1, max_length=len(SCOPES))


class Key(BaseModel):
    id: str
    name: str
    prefix: str
    scopes: list[str]
    created_at: str
    revoked_at: str | None


class CreatedKey(Key):
    key: str = Field(description="the secret: shown once, never again")


class KeyResponse(BaseModel):
    success: Literal[True]
    key: Key


class CreatedKeyResponse(BaseModel):
    success: Literal[True]
    key: CreatedKey


class KeyList(BaseModel):
    success: Literal[True]
    keys: list[Key]


class SuppressionCreate(Strict):
    email: str = Field(min_length=3, max_length=254)
    reason: Reason = "manual"


class Suppression(BaseModel):
    email: str
    reason: str
    created_at: str


class SuppressionResponse(BaseModel):
    success: Literal[True]
    suppression: Suppression


class SuppressionList(BaseModel):
    success: Literal[True]
    suppressions: list[Suppression]
    next_cursor: str | None


class Ok(BaseModel):
    success: Literal[True]


def refuse_nulls(body: BaseModel, nullable: Collection[str] = ()) -> None:
    """A PATCH may leave a field out but not set it to null (bar those in `nullable`):
    InvalidRequest naming every such field."""
    nulls = [n for n in body.model_fields_set if getattr(body, n) is None and n not in nullable]
    if nulls:
        raise InvalidRequest(
            f"{nulls[0]}: may not be null",
            [{"field": name, "message": "may not be null"} for name in nulls],
        )


def parse(model: type[T], body: bytes) -> T:
    """The body as `model`, or InvalidRequest naming each bad field."""
    try:
        parsed = model.model_validate_json(body)
    except ValidationError as error:
        details = [
            {"field": field_path(problem["loc"]) or "body", "message": problem["msg"]}
            for problem in error.errors(include_url=False, include_input=False)[:20]
        ]
        first = details[0]
        raise InvalidRequest(f"{first['field']}: {first['message']}", details) from None
    if b'"' in body:  # pydantic keeps the last of duplicate keys; a proxy may read the first
        duplicate = _duplicate_key(body)
        if duplicate is not None:
            problem = {"field": duplicate, "message": "the key appears more than once"}
            raise InvalidRequest(f"{duplicate}: the key appears more than once", [problem])
    return parsed


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return result


def _duplicate_key(body: bytes) -> str | None:
    """The first key that an object of `body` repeats (body is valid JSON, already bounded
    in depth by pydantic), or None."""
    try:
        json.loads(body, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as duplicate:
        return str(duplicate.args[0])[:128]
    except (ValueError, RecursionError):  # pydantic accepted it: nothing more to say
        return None
    return None


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """('to', 0, 'email') -> 'to[0].email'."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path
