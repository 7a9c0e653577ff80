"""POST /v1/send (also /mail/v1/send and /api/v1/send): through the one intake.

    key, scope, rate -> JSON body -> RFC 5322 bytes (gateway.intake.message_builder) -> Intake
    -> wait up to handoff_timeout for the first attempt -> 200 | 202 | 422

The wait is registered before the message reaches a delivery worker (Intake's `watch`), so
an upstream that answers at once is never missed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api import answers, errors
from api.auth import Caller, authenticate, client_address
from api.context import ApiContext, iso
from api.openapi import operation
from api.ownership import visible_to
from api.schemas import ErrorResponse, QueuedResponse, SendRequest, SendResponse, parse
from gateway import maillog, timestamps
from gateway.errors import StorageFull, StorageUnavailable
from gateway.headers import header_size
from gateway.intake import attachments as attached
from gateway.intake.attachments import Attachment, AttachmentRules
from gateway.intake.fields import control_problems, sandbox_flag, text_problem
from gateway.intake.message_builder import BuildError, Built, Draft, Mailbox, build
from gateway.intake.pipeline import Accepted, Duplicate, NoRoute
from gateway.intake.request_digest import json_digest
from gateway.message import Submission
from gateway.queue import idempotency
from storage.accounts import ACCOUNT
from storage.keys import missing_scope
from storage.mail_accounts import get_account
from storage.messages import RecipientState, message_state

SANDBOX_HEADERS = ("x-misarmail-sandbox", "x-postern-sandbox")
QUEUED_TEXT = "Email queued for retry"
LACKING_SEND = "this API key lacks a send scope"
LACKING_SANDBOX = "sandbox sends need an API key with the 'sandbox' scope"
# What a send says when its message could not be stored (elsewhere: that storage failed).
NOT_STORED: dict[type[Exception], answers.Answer] = {
    StorageFull: answers.Answer(
        errors.StorageFull,
        "the disk is full: the message could not be stored; nothing was accepted, "
        "please retry later",
    ),
    StorageUnavailable: answers.Answer(
        errors.Unavailable,
        "the message could not be stored; nothing was accepted, please retry",
        retry_after=1,
    ),
}


def sandbox_requested(request: Request) -> bool:
    values = [request.headers[name] for name in SANDBOX_HEADERS if name in request.headers]
    try:
        return sandbox_flag(values)
    except ValueError as error:
        raise errors.InvalidRequest(
            f"the sandbox header {error}",
            [{"field": "X-MisarMail-Sandbox", "message": str(error)}],
        ) from None


def _draft(body: SendRequest, attachments: list[Attachment]) -> Draft:
    def box(item: Any) -> Mailbox:
        return Mailbox(item.email, item.name)

    return Draft(
        sender=box(body.from_),
        to=[box(item) for item in body.to],
        cc=[box(item) for item in body.cc],
        bcc=[box(item) for item in body.bcc],
        reply_to=box(body.reply_to) if body.reply_to else None,
        subject=body.subject,
        text=body.text,
        html=body.html,
        attachments=attachments,
    )


def _attachments(body: SendRequest, rules: AttachmentRules) -> list[Attachment]:
    """The attachments decoded (bad base64: 400 naming it), then within the configured
    total (413 attachments_too_large) and types (422 attachment_refused)."""
    decoded: list[Attachment] = []
    details = []
    for i, item in enumerate(body.attachments):
        try:
            content = attached.decode(item.content)
        except ValueError as error:
            details.append({"field": f"attachments[{i}].content", "message": str(error)})
            continue
        decoded.append(Attachment(item.filename, content, item.content_type, item.content_id))
    if details:
        raise errors.InvalidRequest(f"{details[0]['field']}: {details[0]['message']}", details)
    try:
        attached.check(decoded, rules)
    except attached.AttachmentsTooLarge as error:
        raise errors.AttachmentsTooLarge(str(error)) from None
    except attached.AttachmentRefused as error:
        where = [{"field": f"attachments[{error.index}]", "message": str(error)}]
        refusal = errors.AttachmentRefused(str(error), where, extra={"filename": error.filename})
        raise refusal from None
    return decoded


def _check_plain_fields(body: SendRequest) -> None:
    """Fields that reach no header but logs, storage and webhooks: the SMTP door's checks
    (gateway.intake.fields) for those it carries too, no control characters in metadata keys, no
    NUL in metadata values."""
    problems = control_problems(body.alias_id, body.idempotency_key, body.tags)
    details = [{"field": p.field, "message": p.message} for p in problems]
    for name, value in body.metadata.items():
        for text, strict in ((name, True), (value, False)):
            problem = text_problem(text, header=strict)
            if problem:
                details.append({"field": f"metadata.{name}", "message": problem})
    if details:
        raise errors.InvalidRequest(f"{details[0]['field']}: {details[0]['message']}", details)


_INLINE_BODY = 64 * 1024
_LARGE_BODIES = asyncio.Semaphore(2)


def _parse_and_build(
    raw: bytes, hostname: str, rules: AttachmentRules
) -> tuple[SendRequest, Built]:
    body = parse(SendRequest, raw)
    _check_plain_fields(body)
    draft = _draft(body, _attachments(body, rules))
    try:
        return body, build(draft, hostname)
    except BuildError as error:
        details = [{"field": p.field, "message": p.message} for p in error.problems]
        raise errors.InvalidRequest(
            f"{error.problems[0].field}: {error.problems[0].message}", details
        ) from None


@operation(
    "Send an email",
    scope="send",
    request=SendRequest,
    description=(
        "Needs `send`, `send:transactional` or `send:marketing` (which keep the message in "
        "that ip_pool); with `X-MisarMail-Sandbox: true` or `X-Postern-Sandbox: true`, the "
        "`sandbox` scope instead, and nothing is delivered. The same `idempotency_key` within "
        "24 h returns the first result with `idempotent: true` and sends nothing; with a "
        "different request (body or sandbox flag) it is a 409 `idempotency_key_reused`."
    ),
    responses={
        200: ("the upstream accepted it (or, sandbox: stored)", SendResponse),
        202: ("stored; retried automatically until the upstream accepts it", QueuedResponse),
        400: (
            "bad field, header injection attempt, unknown alias_id (unknown_alias), "
            "account_id naming no account the caller sees (unknown_account), the "
            "pool or group asked for has no active pool (no_route), or scheduled_at "
            "in the past or over 30 days ahead (schedule_out_of_range)",
            ErrorResponse,
        ),
        403: (
            "no scope for it, From is unverified (unverified_sender), alias_id names an "
            "alias not verified yet (alias_not_verified), or From is a connected account "
            "neither yours nor shared with you",
            ErrorResponse,
        ),
        409: ("idempotency_key_reused: the key was used for another request", ErrorResponse),
        413: (
            "the body is over [http] max_body_size, the attachments over "
            "max_attachments_size (attachments_too_large), or the message over "
            "[smtp] max_message_size",
            ErrorResponse,
        ),
        422: (
            "every recipient suppressed, the upstream refused it, or an attachment's type "
            "is refused by [http] refuse_attachment_types (attachment_refused)",
            ErrorResponse,
        ),
        503: ("storage failed: nothing was accepted", ErrorResponse),
        507: ("no space left to store it (storage_full): nothing was accepted", ErrorResponse),
    },
)
async def send(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    key = await authenticate(request, ctx)
    sandbox = sandbox_requested(request)
    if missing_scope(key, sandbox) is not None:
        raise errors.Forbidden(LACKING_SANDBOX if sandbox else LACKING_SEND)
    raw = await request.body()
    body, submission = await prepare(request, ctx, key, raw, sandbox)
    try:
        accepted = await ctx.intake.submit(submission, watch=ctx.handoff_timeout > 0)
    except Duplicate as duplicate:
        assert body.idempotency_key is not None
        return await _replay(ctx, key, body.idempotency_key, duplicate)
    except NoRoute as refusal:
        field = "alias_id" if body.alias_id else "from"  # else the From's alias chose it
        raise errors.NoRoute(
            refusal.reason, [{"field": field, "message": refusal.reason}]
        ) from None
    except StorageUnavailable as error:
        raise answers.answer(error, NOT_STORED) from None
    # Any other refusal (KeyReused, AllSuppressed, ...) is answered from answers.ANSWERS.
    status, payload = await _outcome(ctx, accepted, sandbox)
    if submission.scheduled_at is not None and status == 202:
        payload["scheduled_at"] = iso(submission.scheduled_at)
    if body.idempotency_key is not None:
        save_answer(ctx, key, body.idempotency_key, accepted.message_id, status, payload)
    return JSONResponse(payload, status_code=status)


async def prepare(
    request: Request, ctx: ApiContext, key: Caller, raw: bytes, sandbox: bool
) -> tuple[SendRequest, Submission]:
    """One /v1/send body (JSON bytes) checked and built into what intake takes; an ApiError
    names what is wrong with it. Batch sends (api.routes.send_batch) check each item so."""
    if len(raw) > _INLINE_BODY:
        body, built = await _parse_and_build_in_thread(raw, ctx.hostname, ctx.attachment_rules)
    else:
        body, built = _parse_and_build(raw, ctx.hostname, ctx.attachment_rules)
    request.state.envelope = (built.mail_from, built.recipients)  # for a refusal's log line
    _check_size(ctx, built)
    await _check_account(ctx, key, body)
    submission = _submission(request, key, body, built, sandbox)
    return body, replace(submission, scheduled_at=scheduled_time(body.scheduled_at))


MAX_SCHEDULE = 30 * 86400.0  # how far ahead scheduled_at may be (Resend's limit: 30 days)
SCHEDULE_GRACE = 300.0  # a scheduled_at this far in the past (a client's clock) is now


def scheduled_time(value: str | int | float | None, now: float | None = None) -> float | None:
    """A send's scheduled_at as UNIX seconds, None to send at once (none given, or a time
    within SCHEDULE_GRACE of now or before it by less); 400 naming the field when it is no
    time, further in the past, or over 30 days ahead."""
    if value is None:
        return None
    now = time.time() if now is None else now
    try:
        when = timestamps.parse(value)
    except ValueError as error:
        problem = str(error)
        raise errors.InvalidRequest(
            f"scheduled_at: {problem}", [{"field": "scheduled_at", "message": problem}]
        ) from None
    if when <= now:
        if now - when <= SCHEDULE_GRACE:
            return None
        problem = "is in the past"
    elif when - now > MAX_SCHEDULE:
        problem = "is more than 30 days ahead"
    else:
        return when
    raise errors.ScheduleOutOfRange(
        f"scheduled_at: {problem}", [{"field": "scheduled_at", "message": problem}]
    )


async def _parse_and_build_in_thread(
    raw: bytes, hostname: str, rules: AttachmentRules
) -> tuple[SendRequest, Built]:
    """Parsing and building a large body takes CPU time the event loop (SMTP, delivery)
    cannot spare: done in a thread, a few at a time so memory stays bounded."""
    async with _LARGE_BODIES:
        return await asyncio.to_thread(_parse_and_build, raw, hostname, rules)


def _check_size(ctx: ApiContext, built: Built) -> None:
    """The SMTP door's limits, on the message built from the request."""
    if len(built.content) > ctx.max_message_size:
        raise errors.PayloadTooLarge(
            f"the message would be {len(built.content)} bytes; the limit is "
            f"{ctx.max_message_size} ([smtp] max_message_size)"
        )
    if header_size(built.content) > ctx.max_header_size:
        raise errors.PayloadTooLarge(
            f"the message header would be over {ctx.max_header_size} bytes "
            "([smtp] max_header_size): fewer recipients or shorter names"
        )


async def _check_account(ctx: ApiContext, caller: Caller, body: SendRequest) -> None:
    """account_id names an account the caller sees (api.ownership: theirs, shared with
    them, or any for an admin or a console key), and comes without alias_id."""
    if body.account_id is None:
        return
    if body.alias_id is not None:
        message = "give account_id or alias_id, not both"
        raise errors.InvalidRequest(message, [{"field": "account_id", "message": message}])
    record = await get_account(ctx.db, body.account_id.lower())
    seen = await visible_to(ctx, caller, ACCOUNT)
    if record is None or not seen.allows(record.id, record.user_id):
        message = "names no connected account you may send through"
        raise errors.UnknownAccount(
            "unknown account_id", [{"field": "account_id", "message": message}]
        )


def _submission(
    request: Request, key: Caller, body: SendRequest, built: Built, sandbox: bool
) -> Submission:
    """What intake takes from either door, here from the request and the key sending it."""
    return Submission(
        mail_from=built.mail_from,
        recipients=built.recipients,
        content=built.content,
        source="http",
        alias_id=body.alias_id,
        account_id=body.account_id.lower() if body.account_id else None,
        idempotency_key=body.idempotency_key,
        request_hash=request_digest(body, sandbox) if body.idempotency_key is not None else None,
        sandbox=sandbox,
        tags=tuple(body.tags),
        sender=key.sender(),
        metadata=dict(body.metadata),
        client=maillog.client(request.client),
        client_address=client_address(request),
    )


def save_answer(
    ctx: ApiContext,
    key: Caller,
    idempotency_key: str,
    message_id: str,
    status: int,
    payload: dict[str, Any],
) -> None:
    """Keep the answer for a replay of the idempotency key, off the answer's path: a replay
    that comes first waits for it (see _replay)."""
    save = idempotency.save_answer(ctx.writer, key.id, idempotency_key, message_id, status, payload)
    ctx.in_background(save, f"saving the idempotent answer of {message_id}")


def request_digest(body: SendRequest, sandbox: bool) -> str:
    """The canonical request behind an idempotency key: the body as parsed (defaults
    filled in, so spelling and key order do not count) and the sandbox flag."""
    return json_digest({"body": body.model_dump(mode="json", by_alias=True), "sandbox": sandbox})


async def _outcome(
    ctx: ApiContext, accepted: Accepted, sandbox: bool
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) from what the first attempt did within handoff_timeout."""
    base: dict[str, Any] = {
        "message_id": accepted.message_id,
        "provider": "sandbox" if sandbox else "smtp",
        "timestamp": iso(accepted.message.created_at),
    }
    if accepted.parts:
        base["message_ids"] = accepted.message_ids
    if accepted.suppressed:  # `suppressed` is the documented boolean (the 422)
        base["suppressed_recipients"] = list(accepted.suppressed)
    # A sandbox send is never attempted (nobody watches it).
    status = "sandbox" if sandbox else await accepted.outcome(ctx.handoff_timeout)
    if status in ("delivered", "sandbox"):
        return 200, {"success": True, **base}
    if status == "bounced":
        states = [await message_state(ctx.db, message_id) for message_id in accepted.message_ids]
        recipients = [r for state in states if state is not None for r in state.recipients]
        return _bounced(recipients, base)
    return 202, {"success": False, "queued": True, "message": QUEUED_TEXT, **base}


def _bounced(recipients: list[RecipientState], base: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """A bounced message's answer (all its parts' recipients): 200 listing the refused when
    someone got it, else the upstream's refusal."""
    rejected = [
        {"email": r.email, "response": r.response} for r in recipients if r.status == "bounced"
    ]
    if any(r.status == "delivered" for r in recipients):
        return 200, {"success": True, **base, "rejected": rejected}
    reply = rejected[0]["response"] if rejected else "refused"
    refusal = errors.UpstreamRejected(
        f"the upstream refused the message: {reply}", rejected, extra=base
    )
    return refusal.status, refusal.body()


async def _replay(
    ctx: ApiContext, key: Caller, idempotency_key: str, duplicate: Duplicate
) -> Response:
    """The first request's answer, marked idempotent; waits for it while it is in flight."""
    status, answer = await replayed(ctx, key, idempotency_key, duplicate)
    return JSONResponse(answer, status_code=status)


async def replayed(
    ctx: ApiContext, key: Caller, idempotency_key: str, duplicate: Duplicate
) -> tuple[int, dict[str, Any]]:
    """(status, body) of the first request's answer, marked idempotent; waits for it while
    it is in flight."""
    response = duplicate.response
    if response is None:
        first = await message_state(ctx.db, duplicate.message_id)
        # Wait for the first request's answer only while it can still be coming: not for a
        # message older than the handoff (its request died, e.g. in a crash).
        age = time.time() - first.created_at if first else 0.0
        deadline = time.monotonic() + max(0.0, ctx.handoff_timeout + 2.0 - age)
        response = await idempotency.wait_for_answer(
            ctx.db, key.id, idempotency_key, duplicate.message_id, deadline
        )
    if response is None:  # the first request is still waiting, or died: say what we know
        state = await message_state(ctx.db, duplicate.message_id)
        done = state is not None and state.status in ("delivered", "sandbox")
        body: dict[str, Any] = {
            "success": done,
            "message_id": duplicate.message_id,
            "provider": state.provider if state else "smtp",
            "timestamp": iso(state.created_at if state else time.time()),
        }
        if state is not None and state.status == "bounced":
            status, bounced = _bounced(state.recipients, body)
            response = {"status": status, "body": bounced}
        else:
            if not done:
                body.update(queued=True, message=QUEUED_TEXT)
            response = {"status": 200 if done else 202, "body": body}
    answer = dict(response["body"])
    if isinstance(answer.get("suppressed"), list):  # saved before it was renamed
        answer["suppressed_recipients"] = answer.pop("suppressed")
    return int(response["status"]), {**answer, "idempotent": True}


PATHS = ("/v1/send", "/mail/v1/send", "/api/v1/send")
routes = [Route(path, send, methods=["POST"]) for path in PATHS]
