"""Request and response bodies of /api/v1/webhooks (strict requests, as in api.schemas)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas import HEADER_TEXT, TIME, Patch, Strict
from gateway.queue.events import FINAL, TYPES

EventType = Literal[TYPES]  # type: ignore[valid-type]
# Checked by gateway.webhooks.urls (a 400 naming the problem): an absolute http(s) URL with
# a host, no user:password@, no #fragment.
URL: dict[str, Any] = {
    "format": "uri",
    "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://[^@#/?]+(?:[/?][^#]*)?$",
}
# final_only with event_types that hold no final outcome would receive nothing: refused.
_RECEIVES_SOMETHING: dict[str, Any] = {
    "not": {
        "required": ["final_only", "event_types"],
        "properties": {
            "final_only": {"const": True},
            "event_types": {"type": "array", "items": {"not": {"enum": sorted(FINAL)}}},
        },
    }
}


class WebhookCreate(Strict):
    model_config = ConfigDict(json_schema_extra=_RECEIVES_SOMETHING)

    url: str = Field(
        min_length=1, max_length=2048, description="http(s); no credentials", json_schema_extra=URL
    )
    event_types: list[EventType] | None = Field(
        None, min_length=1, max_length=len(TYPES), description="omitted or null: every type"
    )
    final_only: bool = Field(
        False, description="only the last outcome of each recipient (delivered, bounced, ...)"
    )
    description: str = Field("", max_length=512, json_schema_extra=HEADER_TEXT)


class WebhookUpdate(Patch):
    """Only the fields present change; `"event_types": null` means every type again."""

    NULLABLE = frozenset({"event_types"})

    url: str | None = Field(None, min_length=1, max_length=2048, json_schema_extra=URL)
    event_types: list[EventType] | None = Field(None, min_length=1, max_length=len(TYPES))
    final_only: bool | None = None
    description: str | None = Field(None, max_length=512, json_schema_extra=HEADER_TEXT)
    is_active: bool | None = Field(None, description="true again also clears the back-off")


class WebhookOut(BaseModel):
    id: str
    url: str
    event_types: list[str] | None = Field(description="null: every type")
    final_only: bool
    description: str
    is_active: bool
    created_at: str
    updated_at: str
    failures: int = Field(description="consecutive failed POSTs")
    next_attempt_at: str | None = Field(description="while backing off after failures")
    created_by: str | None = Field(None, description="the user who made it (null: a key's)")


class CreatedWebhook(WebhookOut):
    secret: str = Field(description="the signing secret (whsec_...): shown once, never again")


class WebhookResponse(BaseModel):
    success: Literal[True]
    webhook: WebhookOut


class CreatedWebhookResponse(BaseModel):
    success: Literal[True]
    webhook: CreatedWebhook


class WebhookList(BaseModel):
    success: Literal[True]
    webhooks: list[WebhookOut]


class ReplayRequest(Strict):
    since: str | int | float = Field(
        description='ISO-8601 time ("2026-01-31T12:00:00Z") or UNIX seconds',
        json_schema_extra=TIME,
    )


class ReplayResponse(BaseModel):
    success: Literal[True]
    queued: int = Field(description="events the webhook is owed from `since` on")


class Attempt(BaseModel):
    at: str
    status_code: int | None = Field(description="null: no HTTP answer (refused, timeout)")
    error: str
    events: int
    duration_ms: float
    outcome: Literal["delivered", "failed", "dropped"]


class AttemptList(BaseModel):
    success: Literal[True]
    deliveries: list[Attempt]
