"""/api/v1/aliases: sender aliases (scope `aliases`).

An alias's address must be on a verified domain. Creating one sends a verification message
(through Intake, From no-reply@ the alias's domain) with a link to
`GET /api/v1/aliases/verify?token=...`: single-use, valid 48 hours, only its SHA-256 kept.
Following it sets `is_verified`; from then on mail From the alias routes to its ip_pool and
passes the `verified` sender policy. Only name, is_default and ip_pool change afterwards.
The refusals of storage.aliases (AliasError) are answered from api.errors.ANSWERS. An
alias records the user who made it (`created_by`); a caller sees the aliases
api.ownership lets it see (`_visible`), another's is a 404.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api import errors
from api.auth import Caller, authenticate
from api.context import ApiContext, iso
from api.management import TOKEN_TTL
from api.openapi import operation, path_parameter, query_parameter
from api.ownership import visible_to
from api.resource_schemas import AliasCreate, AliasList, AliasResponse, AliasUpdate
from api.schemas import ErrorResponse, Ok, parse
from gateway.addresses import envelope_problem, normalise
from gateway.intake.fields import text_problem
from gateway.intake.message_builder import Draft, Mailbox, build
from gateway.intake.pipeline import Refusal
from gateway.message import Sender, Submission
from storage import aliases
from storage.aliases import AliasRecord
from storage.domains import get_domain

log = logging.getLogger("postern.api")

SCOPE = "aliases"
BASE = "/api/v1/aliases"
_ID = [path_parameter("alias_id", "the alias's id (ali_...)")]
MAX_TOKEN = 128
_NOT_FOUND = ("alias not found", ErrorResponse)


def alias_json(record: AliasRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "email": record.email,
        "name": record.name,
        "is_default": record.is_default,
        "is_verified": record.is_verified,
        "ip_pool": record.ip_pool,
        "created_at": iso(record.created_at),
        "created_by": record.created_by,
    }


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def _bad(field: str, message: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(f"{field}: {message}", [{"field": field, "message": message}])


async def _caller(request: Request) -> tuple[ApiContext, Caller]:
    ctx: ApiContext = request.app.state.api
    return ctx, await authenticate(request, ctx, SCOPE)


async def _visible(ctx: ApiContext, caller: Caller, request: Request) -> AliasRecord:
    """The alias of the path, if the caller may see it (another's is a 404, as for none)."""
    record = await aliases.get_alias(ctx.db, request.path_params["alias_id"])
    seen = await visible_to(ctx, caller, "alias")
    if record is None or not seen.allows(record.id, record.created_by):
        raise errors.NotFound("alias not found")
    return record


async def _changed(ctx: ApiContext) -> None:
    """Intake routes and checks senders from memory: make it see the change now."""
    await ctx.management().identities.reload()


@operation("List sending aliases", scope=SCOPE, responses={200: ("every alias", AliasList)})
async def list_all(request: Request) -> Response:
    ctx, caller = await _caller(request)
    seen = await visible_to(ctx, caller, "alias")
    found = seen.only(await aliases.list_aliases(ctx.db), lambda a: (a.id, a.created_by))
    return JSONResponse({"success": True, "aliases": [alias_json(a) for a in found]})


@operation(
    "Create an alias",
    scope=SCOPE,
    request=AliasCreate,
    description="The address must be on a verified domain; a verification message is sent.",
    responses={
        201: ("the alias, not yet verified", AliasResponse),
        409: ("an alias for this address exists", ErrorResponse),
        422: ("the address's domain is not verified (domain_not_verified)", ErrorResponse),
    },
)
async def create(request: Request) -> Response:
    ctx, key = await _caller(request)
    manage = ctx.management()
    body = parse(AliasCreate, await request.body())
    problem = text_problem(body.email, header=True) or envelope_problem(body.email)
    if problem:
        raise _bad("email", problem)
    name = body.name or ""
    problem = text_problem(name, header=True) if name else None
    if problem:
        raise _bad("name", problem)
    email = normalise(body.email)
    domain = email.rpartition("@")[2]
    registered = await get_domain(ctx.db, domain)
    if registered is None or not registered.is_verified:
        raise errors.DomainNotVerified(
            f"{domain} is not a verified domain: add it (POST /api/v1/domains) and verify it",
            [{"field": "email", "message": "the domain is not verified"}],
        )
    token = secrets.token_urlsafe(32)
    record = await aliases.create_alias(
        ctx.db,
        email=email,
        name=name,
        is_default=body.is_default,
        ip_pool=body.ip_pool,
        token_hash=token_hash(token),
        expires_at=time.time() + TOKEN_TTL,
        created_by=key.user_id,
    )
    await _changed(ctx)
    link = f"{manage.public_url}{BASE}/verify?token={token}"
    message_id = await _send_verification(ctx, key, record, link)
    return JSONResponse(
        {"success": True, "alias": alias_json(record), "verification_message_id": message_id},
        status_code=201,
    )


async def _send_verification(
    ctx: ApiContext, key: Caller, record: AliasRecord, link: str
) -> str | None:
    """Through Intake like any mail; None (and the reason logged) when it is refused."""
    domain = record.email.rpartition("@")[2]
    draft = Draft(
        sender=Mailbox(f"no-reply@{domain}", "Postern"),
        to=[Mailbox(record.email, record.name or None)],
        subject=f"Confirm {record.email} as a sender address",
        text=(
            f"Someone asked to send mail as {record.email} through Postern.\n\n"
            f"To confirm, open this link within 48 hours (it works once):\n\n{link}\n\n"
            "If you did not ask for this, ignore this message.\n"
        ),
    )
    built = build(draft, ctx.hostname)
    submission = Submission(
        mail_from=built.mail_from,
        recipients=built.recipients,
        content=built.content,
        source="http",
        tags=("alias-verification",),
        sender=Sender(key.id, may_send=True, may_sandbox=False, user_id=key.user_id),
        system=True,
    )
    try:
        accepted = await ctx.intake.submit(submission)
    except Refusal as refusal:
        log.warning("verification message for %s refused: %s", record.id, refusal.reason)
        return None
    return accepted.message_id


@operation(
    "Confirm an alias",
    parameters=[
        query_parameter(
            "token",
            "the token of the verification link",
            required=True,
            minLength=1,
            maxLength=MAX_TOKEN,
            pattern="^[\\x00-\\x7f]*$",
        )
    ],
    description="The link of the verification message; no API key. Works once.",
    responses={
        200: ("the alias, now verified", AliasResponse),
        400: ("a malformed token (invalid_token)", ErrorResponse),
        404: ("an unknown, used or expired token (invalid_token)", ErrorResponse),
    },
)
async def verify(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    token = request.query_params.get("token", "")
    if not token or len(token) > MAX_TOKEN or not token.isascii():
        raise errors.InvalidToken("missing or malformed token")
    record = await aliases.redeem_token(ctx.db, token_hash(token))
    if record is None:
        raise errors.UnknownToken("this link is unknown, already used or expired")
    await _changed(ctx)
    return JSONResponse({"success": True, "alias": alias_json(record)})


@operation(
    "Get an alias",
    scope=SCOPE,
    parameters=_ID,
    responses={200: ("the alias", AliasResponse), 404: _NOT_FOUND},
)
async def show(request: Request) -> Response:
    ctx, caller = await _caller(request)
    record = await _visible(ctx, caller, request)
    return JSONResponse({"success": True, "alias": alias_json(record)})


@operation(
    "Update an alias",
    scope=SCOPE,
    request=AliasUpdate,
    parameters=_ID,
    description="Only name, is_default and ip_pool can be changed after creation.",
    responses={200: ("the alias", AliasResponse), 404: _NOT_FOUND},
)
async def change(request: Request) -> Response:
    ctx, caller = await _caller(request)
    raw = await request.body()
    try:
        fields = json.loads(raw)
    except (ValueError, RecursionError):  # malformed or nested too deep: parse() says which
        fields = None
    if isinstance(fields, dict):
        fixed = sorted(set(fields) - set(aliases.EDITABLE))
        if fixed:
            raise errors.InvalidRequest(
                f"only name, is_default and ip_pool can be changed, not {', '.join(fixed)}",
                [{"field": name, "message": "cannot be changed"} for name in fixed],
            )
    body = parse(AliasUpdate, raw)
    await _visible(ctx, caller, request)  # after the body's checks, as before ownership
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    if changes.get("is_default", False) is None:
        raise _bad("is_default", "may not be null")
    if "name" in changes:
        changes["name"] = changes["name"] or ""
        problem = text_problem(changes["name"], header=True)
        if problem:
            raise _bad("name", problem)
    record = await aliases.update_alias(ctx.db, request.path_params["alias_id"], changes)
    await _changed(ctx)
    return JSONResponse({"success": True, "alias": alias_json(record)})


@operation(
    "Remove an alias",
    scope=SCOPE,
    parameters=_ID,
    responses={
        200: ("removed", Ok),
        403: ("the only remaining verified alias (last_verified_alias)", ErrorResponse),
        404: _NOT_FOUND,
        409: ("queued mail still references it (alias_in_use)", ErrorResponse),
    },
)
async def remove(request: Request) -> Response:
    ctx, caller = await _caller(request)
    await _visible(ctx, caller, request)
    await aliases.delete_alias(ctx.db, request.path_params["alias_id"])
    await _changed(ctx)
    return JSONResponse({"success": True})


routes = [
    Route(BASE, list_all, methods=["GET"]),
    Route(BASE, create, methods=["POST"]),
    Route(BASE + "/verify", verify, methods=["GET"]),  # before /{alias_id}
    Route(BASE + "/{alias_id}", show, methods=["GET"]),
    Route(BASE + "/{alias_id}", change, methods=["PATCH"]),
    Route(BASE + "/{alias_id}", remove, methods=["DELETE"]),
]
