"""Request and response bodies (pydantic). Requests are parsed strictly: a wrong type or an
unknown field is a 400, never coerced; the response models document what the routes answer.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, RootModel, ValidationError

from api.errors import InvalidRequest
from gateway import timestamps
from gateway.addresses import NO_CONTROL_PATTERN
from gateway.errors import InvalidInput
from gateway.intake import attachments as attached
from gateway.intake import fields
from gateway.intake.fields import ENCODED_WORD, HEADER_SAFE
from gateway.queue import operations as queue_ops
from storage.keys import SCOPES
from storage.suppressions import REASONS

T = TypeVar("T", bound=BaseModel)

# What /openapi.json states of a field beyond its type and length: the checks the routes
# make after parsing (JSON Schema keywords that apply to strings only, so that they also
# fit a field that may be null).
# Header-bound text (gateway.intake.fields.text_problem): no control character but TAB,
# no U+2028/U+2029, no RFC 2047 encoded-word.
HEADER_TEXT: dict[str, Any] = {
    "pattern": HEADER_SAFE,
    "not": {"type": "string", "pattern": ENCODED_WORD},
}
NO_NUL: dict[str, Any] = {"pattern": "^[^\\x00]*$"}
# An address (gateway.addresses.envelope_problem): local@domain, UTF-8 allowed (RFC 6531).
EMAIL: dict[str, Any] = {"format": "idn-email"}
# A point in time (gateway.timestamps): a string in its grammar, or a number of seconds.
TIME: dict[str, Any] = {
    "pattern": timestamps.PATTERN,
    "minimum": 0,
    "exclusiveMaximum": timestamps.MAX_SECONDS,
}
# Values only this API makes, which no pattern can tell (the custom format names them):
# a position in a list (a next_cursor it returned), the id of a pool or an alias.
CURSOR: dict[str, Any] = {"format": "cursor"}
ALIAS_ID: dict[str, Any] = {**HEADER_TEXT, "format": "alias-id"}
UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
MAX_CURSOR = 256
# The message filters (gateway.queue.operations.make_filter), in the query string and in JSON.
# An IP address (IPv4, or IPv6 in any of its forms) or a CIDR block with a prefix length its
# family allows: exactly what storage.search_keys.address_range takes.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_V4 = rf"(?:{_OCTET}\.){{3}}{_OCTET}"
_H = r"[0-9A-Fa-f]{1,4}"
_V6 = (
    rf"(?:(?:{_H}:){{7}}{_H}|(?:{_H}:){{1,7}}:|(?:{_H}:){{1,6}}:{_H}"
    rf"|(?:{_H}:){{1,5}}(?::{_H}){{1,2}}|(?:{_H}:){{1,4}}(?::{_H}){{1,3}}"
    rf"|(?:{_H}:){{1,3}}(?::{_H}){{1,4}}|(?:{_H}:){{1,2}}(?::{_H}){{1,5}}"
    rf"|{_H}:(?::{_H}){{1,6}}|:(?:(?::{_H}){{1,7}}|:)|(?:{_H}:){{6}}{_V4}"
    rf"|::(?:ffff(?::0{{1,4}})?:)?{_V4}|(?:{_H}:){{1,4}}:{_V4})"
)
CLIENT_PATTERN = (
    rf"^(?:{_V4}(?:/(?:3[0-2]|[12]?[0-9]))?|{_V6}(?:/(?:12[0-8]|1[01][0-9]|[1-9]?[0-9]))?)$"
)

FILTER_FIELDS: dict[str, dict[str, Any]] = {
    "pool": {"minLength": 1, "maxLength": 255, "pattern": NO_CONTROL_PATTERN},
    "recipient": {"minLength": 1, "maxLength": 254, **EMAIL},
    "from": {"minLength": 1, "maxLength": 254, **EMAIL},
    "tag": {"minLength": 1, "maxLength": 128, "pattern": NO_CONTROL_PATTERN},
    "message_id_header": {"minLength": 1, "maxLength": 998, "pattern": NO_CONTROL_PATTERN},
    "subject": {"minLength": 1, "maxLength": 998, "pattern": NO_CONTROL_PATTERN},
    "client": {"minLength": 1, "maxLength": 64, "pattern": CLIENT_PATTERN},
}

Scope = Literal[SCOPES]  # type: ignore[valid-type]
Reason = Literal[REASONS]  # type: ignore[valid-type]
Tag = Annotated[str, Field(min_length=1, max_length=fields.MAX_TAG, json_schema_extra=HEADER_TEXT)]
MetaKey = Annotated[str, Field(min_length=1, max_length=128)]
MetaValue = Annotated[str, Field(max_length=2048, json_schema_extra=NO_NUL)]
# Stated for the whole object: a pattern on a key type becomes patternProperties, which
# leaves the other keys free.
_META_KEYS: dict[str, Any] = {"propertyNames": {"minLength": 1, "maxLength": 128, **HEADER_TEXT}}


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


def _whole(value: Any) -> Any:
    """JSON Schema's integer is any number without a fraction: 25.0 is 25. Strict parsing
    refuses floats for int, so a whole one is made an int first (anything else is left to
    the strict check)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


WHOLE = BeforeValidator(_whole)  # last in Annotated[int, Field(...), WHOLE]: keeps the bounds


def _patch_schema(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """A Patch field may be left out, not set to null (but for those in NULLABLE): say so;
    add the model's RULES."""
    schema.update(getattr(model, "RULES", {}))
    nullable: frozenset[str] = getattr(model, "NULLABLE", frozenset())
    for name, prop in schema.get("properties", {}).items():
        if name in nullable or "anyOf" not in prop:
            continue
        kinds = [kind for kind in prop["anyOf"] if kind != {"type": "null"}]
        del prop["anyOf"]
        if len(kinds) == 1:
            prop.update(kinds[0])
        else:
            prop["anyOf"] = kinds
        if prop.get("default", "") is None:
            del prop["default"]


class Patch(Strict):
    """A partial update: the fields present change; null is refused (refuse_nulls) but for
    those in NULLABLE, where it means something. RULES: JSON Schema keywords for the whole
    body (the fields' relations)."""

    NULLABLE: ClassVar[frozenset[str]] = frozenset()
    RULES: ClassVar[dict[str, Any]] = {}
    model_config = ConfigDict(json_schema_extra=_patch_schema)


class Mailbox(Strict):
    email: str = Field(min_length=3, max_length=254, json_schema_extra=EMAIL)
    name: str | None = Field(default=None, max_length=256, json_schema_extra=HEADER_TEXT)


class AttachmentIn(Strict):
    """One attachment of POST /v1/send (checked again when decoded: a bad one is a 400
    naming `attachments[i].<field>`)."""

    filename: str = Field(
        min_length=1,
        max_length=attached.MAX_FILENAME,
        description="the name the recipient sees; RFC 2231-encoded when not ASCII",
        json_schema_extra=HEADER_TEXT,
    )
    content: str = Field(
        description="the file's bytes, base64 (RFC 4648, padded, no line breaks)",
        json_schema_extra={"contentEncoding": "base64", "pattern": attached.BASE64},
    )
    content_type: str = Field(
        default=attached.DEFAULT_TYPE,
        max_length=255,
        pattern=attached.CONTENT_TYPE,
        description="type/subtype; not multipart/* nor message/*",
    )
    content_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=attached.MAX_CONTENT_ID,
        pattern=attached.CONTENT_ID,
        description=(
            "makes it an inline part (Content-ID: <content_id>) the HTML shows as "
            '<img src="cid:content_id">; without angle brackets'
        ),
    )


# Seed 001: "Either html or text is required" (an empty one does not count).
_HTML_OR_TEXT: dict[str, Any] = {
    "anyOf": [
        {"required": [name], "properties": {name: {"type": "string", "minLength": 1}}}
        for name in ("html", "text")
    ],
    # alias_id and account_id name a route each: one of them, never both.
    "not": {
        "required": ["alias_id", "account_id"],
        "properties": {"alias_id": {"type": "string"}, "account_id": {"type": "string"}},
    },
}


class SendRequest(Strict):
    """POST /v1/send. Either html or text is required."""

    model_config = ConfigDict(json_schema_extra=_HTML_OR_TEXT)

    from_: Mailbox = Field(alias="from")
    to: list[Mailbox] = Field(min_length=1, max_length=100)
    cc: list[Mailbox] = Field(default_factory=list, max_length=50)
    bcc: list[Mailbox] = Field(default_factory=list, max_length=50)
    reply_to: Mailbox | None = None
    subject: str = Field(max_length=998, json_schema_extra=HEADER_TEXT)
    html: str | None = Field(default=None, json_schema_extra=NO_NUL)
    text: str | None = Field(default=None, json_schema_extra=NO_NUL)
    alias_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=fields.MAX_ALIAS_ID,
        description="the id of an SMTP pool or an alias (unknown: 400 unknown_alias)",
        json_schema_extra=ALIAS_ID,
    )
    account_id: str | None = Field(
        default=None,
        pattern=UUID_PATTERN,
        description=(
            "the id of a connected account to send through, with its own SMTP server and "
            "credentials (unknown, or not yours nor shared with you: 400 unknown_account); "
            "not with alias_id"
        ),
    )
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=fields.MAX_IDEMPOTENCY_KEY,
        json_schema_extra=HEADER_TEXT,
    )
    tags: list[Tag] = Field(default_factory=list, max_length=fields.MAX_TAGS)
    metadata: dict[MetaKey, MetaValue] = Field(
        default_factory=dict, max_length=50, json_schema_extra=_META_KEYS
    )
    scheduled_at: str | int | float | None = Field(
        default=None,
        description=(
            "send it later, at this time (ISO 8601 / RFC 3339, or UNIX seconds), at most 30 "
            "days ahead; until then it waits in the queue and POST /v1/messages/{id}/cancel "
            "stops it; delivery.max_age counts from it. A time up to 5 minutes past is now; "
            "further past, or over 30 days ahead: 400 schedule_out_of_range"
        ),
        json_schema_extra=TIME,
    )
    attachments: list[AttachmentIn] = Field(
        default_factory=list,
        max_length=attached.MAX_ATTACHMENTS,
        description=(
            "files to attach: at most [http] max_attachments_size decoded bytes in all "
            "(413 attachments_too_large), none of [http] refuse_attachment_types "
            "(422 attachment_refused)"
        ),
    )


MAX_BATCH = 100  # messages of one POST /v1/send/batch (Resend's limit)


class SendBatchRequest(RootModel[list[Any]]):
    """POST /v1/send/batch: a JSON array of 1 to 100 /v1/send bodies (SendRequest). The
    array is the request's shape; each item is checked on its own and, if it is no valid
    /v1/send body, answered in `results` with its 400 while the others go on (so an item
    is any JSON value here)."""

    root: list[Any] = Field(
        min_length=1,
        max_length=MAX_BATCH,
        json_schema_extra={"x-item-schema": "#/components/schemas/SendRequest"},
    )


class BatchId(BaseModel):
    id: str


class BatchError(BaseModel):
    index: int
    code: str
    message: str


class BatchItem(BaseModel):
    """One message's answer, as POST /v1/send would give it with no wait for the upstream
    (202 queued, 200 sandbox, or the error), with its place in the array and its status."""

    model_config = ConfigDict(extra="allow")

    index: int
    status: int
    success: bool
    message_id: str | None = None


class SendBatchResponse(BaseModel):
    """200: every message accepted; 207: some refused. `results` answers each in order;
    `data` (the ids of those accepted, in order) and `errors` are Resend's shape."""

    success: bool
    accepted: int
    refused: int
    results: list[BatchItem]
    data: list[BatchId]
    errors: list[BatchError]


class RecipientResult(BaseModel):
    email: str
    response: str | None = None


SPLIT = (
    "only when routes by recipient domain split the message: every part's id, the first "
    "being message_id (each part is a message of its own, with its own recipients)"
)


class SendResponse(BaseModel):
    """200: accepted by the upstream (or stored, for a sandbox send)."""

    success: Literal[True]
    message_id: str
    provider: Literal["smtp", "sandbox"]
    timestamp: str
    idempotent: bool | None = None
    message_ids: list[str] | None = Field(None, description=SPLIT)
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
    message_ids: list[str] | None = Field(None, description=SPLIT)
    suppressed_recipients: list[str] | None = Field(
        None, description="recipients left out as suppressed (the others were stored)"
    )
    scheduled_at: str | None = Field(None, description="a scheduled send's time: sent then")


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
    "queued", "delivered", "deferred", "held", "bounced", "suppressed", "sandbox", "cancelled"
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
    scheduled_at: str | None = Field(
        None, description="a scheduled send's time (not attempted before it)"
    )
    events: list[MessageEvent]
    client_address: str | None = Field(
        description="the IP address it was submitted from (SMTP or HTTP client); null: "
        "Postern's own mail, or stored before this was recorded"
    )


class ContentAttachment(BaseModel):
    filename: str = Field(description='the part\'s file name, or "(no name)"')
    content_type: str
    size: int = Field(description="decoded bytes")
    content_id: str | None = Field(description="an inline part's Content-ID, no angle brackets")


class MessageContent(BaseModel):
    message_id: str
    headers: list[tuple[str, str]] = Field(description="[name, value], in order, decoded")
    text: str | None
    html: str | None = Field(description="as sent: untrusted, never render it unsandboxed")
    attachments: list[ContentAttachment] = Field(description="what they are, not their bytes")
    truncated: bool = Field(description="text or HTML longer than shown: /raw has it all")


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
    client_address: str | None = Field(
        description="the IP address it was submitted from (SMTP or HTTP client); null: "
        "Postern's own mail, or stored before this was recorded"
    )


class MessageList(BaseModel):
    data: list[MessageSummary]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null: last")


_CRITERIA = queue_ops.FILTER_FIELDS
# A bulk operation needs a criterion (a field that is there and not null), or "all": true.
_SOME_CRITERION: dict[str, Any] = {
    "anyOf": [
        {"required": ["all"], "properties": {"all": {"const": True}}},
        *(
            {"required": [name], "properties": {name: {"not": {"type": "null"}}}}
            for name in _CRITERIA
        ),
    ]
}


class MessageFilterBody(Strict):
    """Which messages a bulk operation acts on: every criterion given must match."""

    model_config = ConfigDict(json_schema_extra=_SOME_CRITERION)

    status: str | Annotated[list[queue_ops.Status], Field(min_length=1)] | None = Field(
        None,
        description="queued, deferred (others match nothing: only they have work left); "
        "a list, or one string of them separated by commas",
        json_schema_extra={"pattern": queue_ops.STATUS_PATTERN},
    )
    pool: str | None = Field(None, json_schema_extra=FILTER_FIELDS["pool"])
    recipient: str | None = Field(None, json_schema_extra=FILTER_FIELDS["recipient"])
    from_: str | None = Field(None, alias="from", json_schema_extra=FILTER_FIELDS["from"])
    tag: str | None = Field(None, json_schema_extra=FILTER_FIELDS["tag"])
    message_id_header: str | None = Field(
        None,
        description="the client's own Message-ID, with or without its angle brackets",
        json_schema_extra=FILTER_FIELDS["message_id_header"],
    )
    subject: str | None = Field(
        None,
        description="words the Subject has, all of them, in any order and case",
        json_schema_extra=FILTER_FIELDS["subject"],
    )
    client: str | None = Field(
        None,
        description="the client's IP address, or a CIDR block such as 192.0.2.0/24",
        json_schema_extra=FILTER_FIELDS["client"],
    )
    since: str | int | float | None = Field(
        None, description="ISO 8601 or UNIX seconds", json_schema_extra=TIME
    )
    until: str | int | float | None = Field(
        None, description="ISO 8601 or UNIX seconds", json_schema_extra=TIME
    )
    all: bool = Field(False, description="required to act on the whole queue with no criteria")


class BulkRequest(Strict):
    filter: MessageFilterBody
    dry_run: bool = False
    cursor: str | None = Field(
        None,
        max_length=MAX_CURSOR,
        description="next_cursor of the previous call, to go on from it",
        json_schema_extra=CURSOR,
    )


class BulkResult(BaseModel):
    matched: int = Field(description="messages with work left that match")
    retried: int | None = Field(None, description="retry: made due now")
    cancelled: int | None = Field(None, description="cancel: stopped")
    held: int | None = Field(None, description="hold: put on hold")
    released: int | None = Field(None, description="release: released, due now")
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


class HoldResult(BaseModel):
    message_id: str
    status: Literal["held"]


class ReleaseResult(BaseModel):
    message_id: str
    status: Literal["queued", "deferred"] = Field(
        description="queued when never tried, else deferred; due now either way"
    )


class KeyCreate(Strict):
    name: str = Field(min_length=1, max_length=128, json_schema_extra=HEADER_TEXT)
    scopes: list[Scope] = Field(min_length=1, max_length=len(SCOPES))


class Key(BaseModel):
    id: str
    name: str
    prefix: str
    scopes: list[str]
    created_at: str
    revoked_at: str | None
    user_id: str | None = Field(None, description="the user it belongs to (null: console's)")


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
    email: str = Field(min_length=3, max_length=254, json_schema_extra=EMAIL)
    reason: Reason = "manual"


class Suppression(BaseModel):
    email: str
    reason: str
    created_at: str
    note: str | None = None  # a bounce report's suppression: the rule that decided


class SuppressionResponse(BaseModel):
    success: Literal[True]
    suppression: Suppression


class SuppressionList(BaseModel):
    success: Literal[True]
    suppressions: list[Suppression]
    next_cursor: str | None


class Ok(BaseModel):
    success: Literal[True]


def refuse_nulls(body: Patch) -> None:
    """A PATCH may leave a field out but not set it to null (bar those in its NULLABLE):
    InvalidRequest naming every such field."""
    nullable = type(body).NULLABLE
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


class _DuplicateKey(InvalidInput):
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
