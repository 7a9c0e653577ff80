"""Sender reputation (issue 21, seed 004): `GET /mail/accounts/reputation` (also under
/api/v1/mail/accounts and /api/v1/accounts) exactly as the seed, plus `reputation_status`
and `components`; `GET /api/v1/reputation` (accounts, pools, domains) and
`GET /api/v1/reputation/{kind}/{id}`.

Who sees what: accounts as `/mail/accounts` (a session, or a key with `admin` itself; the
accounts one connected or was shared, all for admins and owners), pools with the `pools`
scope, domains with `domains`, each kind's own visibility (another's is a 404). The score
is the last evaluation's (gateway.reputation.watch); the components say why.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api import reputation_ops
from api.auth import authenticate, for_people_matters
from api.context import ApiContext
from api.errors import Forbidden
from api.openapi import operation, path_parameter
from api.reputation_schemas import AccountReputationList, OneReputation, ReputationOverview
from api.routes.accounts import PREFIXES
from api.schemas import ErrorResponse

_WHY = (
    "Each score is 100 minus the points of its components: hard-bounce, complaint and "
    "deferral rates over 7 and 30 days (the worse window counts; below 100 delivered in "
    "every window the score is null and reputation_status collecting), blocklist listings, "
    "and the domain's SPF, DKIM and aligned DMARC records. Thresholds: Gmail's bulk-sender "
    "rules and SES's review and pause levels (gateway/reputation/thresholds.toml)."
)


@operation(
    "Get sender reputation",
    scope="",
    description="Seed 004: per connected account the caller sees, its reputation score "
    "(0-100; below 70 a deliverability risk), warmup, today's sends, blocklist status and "
    "last check, plus reputation_status and components. " + _WHY,
    responses={
        200: ("each account's reputation", AccountReputationList),
        403: ("a key without the 'admin' scope", ErrorResponse),
    },
)
async def accounts(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    caller = for_people_matters(await authenticate(request, ctx))
    found = await reputation_ops.of(ctx, await reputation_ops.subjects(ctx, caller, "account"))
    data = [reputation_ops.account_json(report) for report in found]
    return JSONResponse({"success": True, "data": data})


@operation(
    "Reputation of accounts, pools and domains",
    scope="",
    description="Every account, pool and domain the caller may see, one shape for all; a "
    "kind the caller may not see is null. " + _WHY,
    responses={200: ("the reputations", ReputationOverview)},
)
async def overview(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    caller = await authenticate(request, ctx)
    data: dict[str, object] = {}
    for kind in reputation_ops.KINDS:
        if not reputation_ops.may_see(caller, kind):
            data[kind + "s"] = None
            continue
        found = await reputation_ops.of(ctx, await reputation_ops.subjects(ctx, caller, kind))
        data[kind + "s"] = [reputation_ops.subject_json(report) for report in found]
    return JSONResponse({"success": True, "data": data})


@operation(
    "Reputation of one account, pool or domain",
    scope="",
    parameters=[
        path_parameter("kind", "account, pool or domain", enum=list(reputation_ops.KINDS)),
        path_parameter("id", "the account's or pool's id, the domain's id or name"),
    ],
    description=_WHY,
    responses={
        200: ("its reputation", OneReputation),
        403: ("the kind needs a scope the caller lacks", ErrorResponse),
        404: ("no such kind or subject, or one you may not see", ErrorResponse),
    },
)
async def one(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    caller = await authenticate(request, ctx)
    kind, key = request.path_params["kind"], request.path_params["id"]
    if kind in reputation_ops.KINDS and not reputation_ops.may_see(caller, kind):
        needs = {"account": "admin", "pool": "pools", "domain": "domains"}[kind]
        raise Forbidden(f"the {kind} reputation needs the {needs!r} scope")
    found = await reputation_ops.of(ctx, [await reputation_ops.subject(ctx, caller, kind, key)])
    return JSONResponse({"success": True, "data": reputation_ops.subject_json(found[0])})


routes = [Route(prefix + "/reputation", accounts, methods=["GET"]) for prefix in PREFIXES] + [
    Route("/api/v1/reputation", overview, methods=["GET"]),
    Route("/api/v1/reputation/{kind}/{id}", one, methods=["GET"]),
]
