"""/mail/accounts (seed 004; also /api/v1/mail/accounts and /api/v1/accounts): connected
IMAP/SMTP mail accounts. List, connect (credentials proved by a real IMAP login and SMTP AUTH
before anything is stored: gateway.accounts), change (proved again when the credentials or
where they go change), disconnect, and the inbox mail the sync skipped.

Every route takes a session or an API key (its user's). Connecting needs a person (the
account is theirs: a key without a user is 403 `user_required`). A caller sees the
accounts they connected and those shared with them; admins and owners see all
(api.ownership.visible_to, kind `account`); another's account is a 404. Changing or
disconnecting one is its owner's (api.account_ops.may_manage: whoever connected it, an admin
or owner, or a user it is shared with as admin; one it is shared with as member gets 403
owner_required). The password is write-only: no answer carries it,
and it is stored sealed, bound to the account's id. `tls_verify: false` is an admin's
choice, or for loopback hosts (403 tls_verify_admin_only otherwise).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api import account_ops, warmup_ops
from api.account_schemas import (
    AccountConnect,
    AccountList,
    AccountUpdate,
    ConnectResponse,
    SkippedList,
    UpdateResponse,
)
from api.auth import Caller, authenticate, for_people_matters
from api.context import ApiContext, iso
from api.openapi import operation, path_parameter
from api.schemas import ErrorResponse, Ok, parse
from storage.inbox import Skipped
from storage.mail_accounts import MailAccountRecord
from storage.warmup import WarmupState, warmup_states

PREFIXES = ("/mail/accounts", "/api/v1/mail/accounts", "/api/v1/accounts")
_ID = [path_parameter("account_id", "the account's id (a UUID)")]


def account_json(
    record: MailAccountRecord, warm: dict[str, WarmupState] | None = None
) -> dict[str, Any]:
    state = (warm or {}).get(record.id)
    return {
        "id": record.id,
        "email": record.email,
        "name": record.name,
        "imap_host": record.imap_host,
        "imap_port": record.imap_port,
        "imap_security": record.imap_security,
        "smtp_host": record.smtp_host,
        "smtp_port": record.smtp_port,
        "smtp_security": record.smtp_security,
        "tls_verify": record.tls_verify,
        "username": record.username,
        "sync_status": record.sync_status,
        "is_default": record.is_default,
        "created_at": iso(record.created_at),
        "last_error": record.last_error,
        "last_synced_at": iso(record.last_synced_at) if record.last_synced_at else None,
        "warmup": warmup_ops.brief(state),
    }


async def _caller(request: Request) -> tuple[ApiContext, Caller]:
    """The caller, fit for a person's matters: a session, or a key with `admin` itself."""
    ctx: ApiContext = request.app.state.api
    return ctx, for_people_matters(await authenticate(request, ctx))


@operation(
    "List connected accounts",
    scope="",
    description="The accounts the caller connected and those shared with them (admins and "
    "owners: every account). Never a password.",
    responses={200: ("the accounts", AccountList)},
)
async def list_all(request: Request) -> Response:
    ctx, caller = await _caller(request)
    records = await account_ops.records(ctx, caller)
    ids = [r.id for r in records]
    warm = await warmup_states(ctx.db, "account", ids, warmup_ops.now(ctx))
    return JSONResponse({"success": True, "accounts": [account_json(r, warm) for r in records]})


@operation(
    "Connect an account",
    scope="",
    request=AccountConnect,
    description="Proves the credentials first, by a real IMAP login and a real SMTP AUTH "
    "(each through the SSRF guard, each bounded by [accounts] timeout); nothing is stored "
    "unless both succeed. The account then syncs in the background (sync_status pending).",
    responses={
        201: ("connected; its inbox sync is pending", ConnectResponse),
        400: (
            "a bad field; a host in a denied network (host_not_allowed); or the login failed: "
            "code imap_<stage>_failed / smtp_<stage>_failed, with side and stage",
            ErrorResponse,
        ),
        403: ("account_quota, or a key without a user (user_required)", ErrorResponse),
        409: ("the address is already connected (already_connected)", ErrorResponse),
    },
)
async def connect(request: Request) -> Response:
    ctx, caller = await _caller(request)
    body = parse(AccountConnect, await request.body())
    record = await account_ops.connect(ctx, caller, body)
    account = {"id": record.id, "email": record.email, "sync_status": record.sync_status}
    return JSONResponse({"success": True, "account": account}, status_code=201)


@operation(
    "Change an account",
    scope="",
    parameters=_ID,
    request=AccountUpdate,
    description="Only the fields given change: name, is_default, email, hosts, ports, "
    "security, username, password, tls_verify. A new password, a change of where or how "
    "the password goes (a host, a port, a security, the username; tls_verify turned on), "
    "or a new address is proved first as on connect, by a real IMAP login and SMTP AUTH "
    "(with the stored password when no new one is given); nothing is stored unless both "
    "succeed. A host, "
    "port, security or username changed (or tls_verify turned off) without a new password "
    "clears the stored one instead: the account shows sync_status error until it is given. "
    "The account's owner's (whoever connected it, an admin, or a user it is shared with as "
    "admin); the account stays connected throughout.",
    responses={
        200: ("changed (the account as it is now)", UpdateResponse),
        400: (
            "a bad field; a host in a denied network (host_not_allowed); is_default false on "
            "the default account; or a login failed: imap_<stage>_failed / smtp_<stage>_failed",
            ErrorResponse,
        ),
        403: (
            "a user it is shared with as member (owner_required); tls_verify false by a "
            "non-admin for a host off loopback (tls_verify_admin_only)",
            ErrorResponse,
        ),
        404: ("no such account, or one you may not see", ErrorResponse),
        409: ("the new address is already connected (already_connected)", ErrorResponse),
    },
)
async def change(request: Request) -> Response:
    ctx, caller = await _caller(request)
    record = await account_ops.get(ctx, caller, request.path_params["account_id"])
    body = parse(AccountUpdate, await request.body())
    updated = await account_ops.update(ctx, caller, record, body)
    return JSONResponse({"success": True, "account": account_json(updated)})


@operation(
    "Disconnect an account",
    scope="",
    parameters=_ID,
    description="Stops the account's inbox sync; nothing already synced is deleted. The "
    "account's owner's (whoever connected it, an admin, or a user it is shared with as "
    "admin).",
    responses={
        200: ("disconnected", Ok),
        403: (
            "a user it is shared with as member (owner_required); the only default account "
            "while queued mail is from it (account_in_use)",
            ErrorResponse,
        ),
        404: ("no such account, or one you may not see", ErrorResponse),
    },
)
async def disconnect(request: Request) -> Response:
    ctx, caller = await _caller(request)
    record = await account_ops.get(ctx, caller, request.path_params["account_id"])
    await account_ops.disconnect(ctx, caller, record)
    return JSONResponse({"success": True})


def skipped_json(skip: Skipped) -> dict[str, Any]:
    return {
        "mailbox": skip.mailbox, "uidvalidity": skip.uidvalidity, "uid": skip.uid,
        "size": skip.size, "reason": skip.reason, "created_at": iso(skip.created_at),
    }  # fmt: skip


@operation(
    "List the inbox mail the sync skipped",
    scope="",
    parameters=_ID,
    description="The account's latest messages (at most "
    f"{account_ops.MAX_SKIPPED}, newest first) that the inbox sync did not hand to the "
    "bounce processing because they were over [bounces] max_inbound_size. Each stays in "
    "the mailbox, flagged; its record is deleted after [storage] retention.",
    responses={
        200: ("the skipped messages", SkippedList),
        404: ("no such account, or one you may not see", ErrorResponse),
    },
)
async def skipped(request: Request) -> Response:
    ctx, caller = await _caller(request)
    record = await account_ops.get(ctx, caller, request.path_params["account_id"])
    found = await account_ops.skipped(ctx, record)
    return JSONResponse({"success": True, "skipped": [skipped_json(s) for s in found]})


routes = [
    route
    for prefix in PREFIXES
    for route in (
        Route(prefix, list_all, methods=["GET"]),
        Route(prefix, connect, methods=["POST"]),
        Route(prefix + "/{account_id}", change, methods=["PATCH"]),
        Route(prefix + "/{account_id}", disconnect, methods=["DELETE"]),
        Route(prefix + "/{account_id}/skipped", skipped, methods=["GET"]),
    )
]
