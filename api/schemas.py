"""Request and response bodies (pydantic). Requests are parsed strictly: a wrong type or an
unknown field is a 400, never coerced; the response models document what the routes answer.
"""

from __future__ import annotations

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
    suppressed: list[str] | None = Field(None, description="recipients left out as suppressed")
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
    suppressed: list[str] | None = None


class ErrorResponse(BaseModel):
    success: Literal[False]
    code: str
    error: str
    details: list[dict[str, Any]]
    suppressed: bool | None = Field(None, description="422 `suppressed` only")
    retry_after: int | None = Field(None, description="429 only: seconds to wait")
    message_id: str | None = Field(None, description="422 `upstream_rejected` only")


class RecipientStatus(BaseModel):
    email: str
    status: Literal["queued", "deferred", "delivered", "bounced", "suppressed", "sandbox"]
    response: str | None


class MessageStatus(BaseModel):
    message_id: str
    status: Literal["queued", "delivered", "deferred", "bounced", "suppressed", "sandbox"]
    pool: str | None
    attempts: int
    recipients: list[RecipientStatus]
    created_at: str
    updated_at: str
    provider: Literal["smtp", "sandbox"]
    tags: list[str]
    metadata: dict[str, str]


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


def parse(model: type[T], body: bytes) -> T:
    """The body as `model`, or InvalidRequest naming each bad field."""
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        details = [
            {"field": field_path(problem["loc"]) or "body", "message": problem["msg"]}
            for problem in error.errors(include_url=False, include_input=False)[:20]
        ]
        first = details[0]
        raise InvalidRequest(f"{first['field']}: {first['message']}", details) from None


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """('to', 0, 'email') -> 'to[0].email'."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path
