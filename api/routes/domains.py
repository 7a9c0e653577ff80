"""/api/v1/domains: the domains mail may be sent From (scope `domains`).

Adding a domain generates its DKIM key (or keeps one `postern dkim generate` made) and
answers the DNS records to publish: DKIM, SPF, DMARC. `POST /{id}/verify` looks them up
through the `[dns] nameservers` (uncached) and verifies the domain when DKIM and SPF are
there. An `admin` key may add a domain already verified (`"verified": true`), e.g. for a
domain whose DNS is managed elsewhere. `{id}` is the domain's id or its name. A domain
registered twice (DomainExists) is answered from api.answers.ANSWERS. The work is
api.domain_ops' (shared with the dashboard); here requests are read and answered. A domain
records the user who added it (`created_by`); a caller sees the domains api.ownership lets it
see, another's is a 404.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api import domain_ops
from api.auth import Caller, authenticate
from api.context import ApiContext, iso
from api.domain_ops import SCOPE
from api.openapi import operation, path_parameter
from api.resource_schemas import (
    DkimKeyCreate,
    DkimKeyList,
    DkimKeyResponse,
    DomainCreate,
    DomainList,
    DomainResponse,
    DomainVerification,
)
from api.schemas import ErrorResponse, Ok, parse
from gateway.dkim import domains as sender_domains
from gateway.dkim.keys import dns_record
from storage.dkim_keys import DkimKeyRecord
from storage.domains import DomainRecord

BASE = "/api/v1/domains"
_ID = [path_parameter("domain_id", "the domain's id (dom_...) or its name")]
_NOT_FOUND = ("no such domain", ErrorResponse)
_KEY = [*_ID, path_parameter("selector", "the DKIM key's selector")]
_NO_KEY = ("no such domain or DKIM key", ErrorResponse)


async def domain_json(ctx: ApiContext, record: DomainRecord) -> dict[str, Any]:
    key = await sender_domains.signing_key(ctx.db, record.domain)
    publish = sender_domains.records(record.domain, key, ctx.hostname)
    return {
        "id": record.id,
        "domain": record.domain,
        "is_verified": record.is_verified,
        "created_at": iso(record.created_at),
        "verified_at": iso(record.verified_at),
        "checked_at": iso(record.checked_at),
        "records": [
            {
                "purpose": item.purpose,
                "type": item.type,
                "name": item.name,
                "value": item.value,
                "required": item.required,
            }
            for item in publish
        ],
        "created_by": record.created_by,
    }


async def _caller(request: Request) -> tuple[ApiContext, Caller]:
    ctx: ApiContext = request.app.state.api
    return ctx, await authenticate(request, ctx, SCOPE)


async def _one(ctx: ApiContext, caller: Caller, request: Request) -> DomainRecord:
    return await domain_ops.get(ctx, caller, request.path_params["domain_id"])


@operation("List domains", scope=SCOPE, responses={200: ("every domain", DomainList)})
async def list_all(request: Request) -> Response:
    ctx, caller = await _caller(request)
    records = await domain_ops.records(ctx, caller)
    found = [await domain_json(ctx, record) for record in records]
    return JSONResponse({"success": True, "domains": found})


@operation(
    "Add a domain",
    scope=SCOPE,
    request=DomainCreate,
    description="Generates the domain's DKIM key and answers the records to publish.",
    responses={
        201: ("the domain and the DNS records to publish", DomainResponse),
        403: ("`verified: true` without an admin key", ErrorResponse),
        409: ("the domain is already there", ErrorResponse),
    },
)
async def create(request: Request) -> Response:
    ctx, caller = await _caller(request)
    body = parse(DomainCreate, await request.body())
    record = await domain_ops.create(ctx, caller, body)
    return JSONResponse(
        {"success": True, "domain": await domain_json(ctx, record)}, status_code=201
    )


@operation(
    "Get a domain",
    scope=SCOPE,
    parameters=_ID,
    responses={200: ("the domain and its records", DomainResponse), 404: _NOT_FOUND},
)
async def show(request: Request) -> Response:
    ctx, caller = await _caller(request)
    record = await _one(ctx, caller, request)
    return JSONResponse({"success": True, "domain": await domain_json(ctx, record)})


@operation(
    "Verify a domain",
    scope=SCOPE,
    parameters=_ID,
    description=(
        "Looks up the DKIM, SPF and DMARC records; the domain is verified when the DKIM "
        "record carries its key and one SPF record exists (DMARC is recommended, not "
        "required). A failed check never un-verifies a domain."
    ),
    responses={200: ("what DNS says", DomainVerification), 404: _NOT_FOUND},
)
async def verify(request: Request) -> Response:
    ctx, caller = await _caller(request)
    updated, checks = await domain_ops.verify(ctx, await _one(ctx, caller, request))
    return JSONResponse(
        {
            "success": True,
            "verified": updated.is_verified,
            "domain": await domain_json(ctx, updated),
            "checks": [check.as_json() for check in checks],
        }
    )


@operation(
    "Remove a domain",
    scope=SCOPE,
    parameters=_ID,
    description="Mail From it is refused again (policy.sender = verified); DKIM keys stay.",
    responses={
        200: ("removed", Ok),
        403: ("a member the domain is shared with (`owner_required`)", ErrorResponse),
        404: _NOT_FOUND,
    },
)
async def remove(request: Request) -> Response:
    ctx, caller = await _caller(request)
    await domain_ops.delete(ctx, caller, await _one(ctx, caller, request))
    return JSONResponse({"success": True})


def key_json(key: DkimKeyRecord) -> dict[str, Any]:
    record = dns_record(key.selector, key.domain, key.algorithm, key.public_key)
    return {
        "selector": key.selector,
        "algorithm": key.algorithm,
        "status": key.status,
        "created_at": iso(key.created_at),
        "record": {
            "purpose": "dkim", "type": "TXT", "name": record.name, "value": record.value,
            "required": key.status != "retired",
        },
    }  # fmt: skip


@operation(
    "List a domain's DKIM keys",
    scope=SCOPE,
    parameters=_ID,
    responses={200: ("the keys, newest first", DkimKeyList), 404: _NOT_FOUND},
)
async def list_keys(request: Request) -> Response:
    ctx, caller = await _caller(request)
    found = await domain_ops.keys(ctx, await _one(ctx, caller, request))
    return JSONResponse({"success": True, "keys": [key_json(key) for key in found]})


@operation(
    "Start a DKIM key rotation",
    scope=SCOPE,
    parameters=_ID,
    request=DkimKeyCreate,
    description=(
        "Makes a new key, pending beside the active one (which signs on). Publish its "
        "record, then activate it."
    ),
    responses={
        201: ("the pending key and its record to publish", DkimKeyResponse),
        403: ("a member the domain is shared with (`owner_required`)", ErrorResponse),
        404: _NOT_FOUND,
        409: ("a rotation is in progress (`rotation_in_progress`)", ErrorResponse),
    },
)
async def rotate(request: Request) -> Response:
    ctx, caller = await _caller(request)
    record = await _one(ctx, caller, request)
    body = parse(DkimKeyCreate, await request.body())
    key = await domain_ops.rotate(ctx, caller, record, body.algorithm)
    return JSONResponse({"success": True, "key": key_json(key)}, status_code=201)


@operation(
    "Activate a pending DKIM key",
    scope=SCOPE,
    parameters=_KEY,
    description=(
        "Looks the key's record up; once DNS answers it with this key, the key signs from "
        "now on and the previous one is retired (keep its record published a few days)."
    ),
    responses={
        200: ("the key, now active", DkimKeyResponse),
        403: ("a member the domain is shared with (`owner_required`)", ErrorResponse),
        404: _NO_KEY,
        409: (
            "the record is not published yet (`dkim_record_not_published`), or the key is "
            "not pending (`dkim_key_not_pending`)",
            ErrorResponse,
        ),
    },
)
async def activate(request: Request) -> Response:
    ctx, caller = await _caller(request)
    record = await _one(ctx, caller, request)
    selector = request.path_params["selector"]
    key, _ = await domain_ops.activate_key(ctx, caller, record, selector)
    return JSONResponse({"success": True, "key": key_json(key)})


@operation(
    "Cancel a DKIM key rotation",
    scope=SCOPE,
    parameters=_KEY,
    description="Retires the pending key; the active key signs on.",
    responses={
        200: ("the key, now retired", DkimKeyResponse),
        403: ("a member the domain is shared with (`owner_required`)", ErrorResponse),
        404: _NO_KEY,
        409: ("the key is not pending (`dkim_key_not_pending`)", ErrorResponse),
    },
)
async def cancel(request: Request) -> Response:
    ctx, caller = await _caller(request)
    record = await _one(ctx, caller, request)
    key = await domain_ops.cancel_key(ctx, caller, record, request.path_params["selector"])
    return JSONResponse({"success": True, "key": key_json(key)})


routes = [
    Route(BASE, list_all, methods=["GET"]),
    Route(BASE, create, methods=["POST"]),
    Route(BASE + "/{domain_id}", show, methods=["GET"]),
    Route(BASE + "/{domain_id}", remove, methods=["DELETE"]),
    Route(BASE + "/{domain_id}/verify", verify, methods=["POST"]),
    Route(BASE + "/{domain_id}/dkim-keys", list_keys, methods=["GET"]),
    Route(BASE + "/{domain_id}/dkim-keys", rotate, methods=["POST"]),
    Route(BASE + "/{domain_id}/dkim-keys/{selector}/activate", activate, methods=["POST"]),
    Route(BASE + "/{domain_id}/dkim-keys/{selector}/cancel", cancel, methods=["POST"]),
]
