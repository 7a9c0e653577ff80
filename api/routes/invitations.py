"""/mail/accounts/{id}/invitations, /mail/accounts/{id}/shares, /mail/invitations/... (seed
004, also under /api/v1/mail). The emailed link's page is api.routes.invitation_page.

An account is an alias (ali_...), a verified domain (dom_...) or a connected mail account
(its UUID: api.routes.accounts) (gateway.people.invitations). Every route takes a session
or an API key: a key acts as its user when it has one, else only an admin-scoped key acts on
accounts (as the operator); the invitee's routes (pending, accept, decline) need a person.
The invitation email goes through Intake like any mail (From postmaster@ this server); if it
is refused the invitation stands and the answer says `email_sent: false`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api import errors
from api.auth import Caller, acting_person, authenticate
from api.context import ApiContext, iso
from api.invitation_schemas import (
    InvitationAnswer,
    InvitationCreate,
    InvitationList,
    InvitationResponse,
    ReceivedList,
    SentInvitation,
    ShareList,
)
from api.openapi import operation, path_parameter, query_parameter
from api.schemas import ErrorResponse, Ok, parse
from gateway.errors import PosternError
from gateway.intake.message_builder import build
from gateway.message import Sender, Submission
from gateway.people.invitations import (
    LINK_PATH,
    Actor,
    Invitations,
    Received,
    compose,
)
from storage import invitations as stored
from storage.accounts import get_account
from storage.invitations import EXPIRED, PENDING, STATUSES, InvitationRecord
from storage.shares import ShareRecord
from storage.users import UserRecord

log = logging.getLogger("postern.api")

PREFIXES = ("/mail", "/api/v1/mail")
_ACCOUNT = path_parameter(
    "account_id",
    "the account's id: an alias (ali_...), a domain (dom_...) or a connected account (a UUID)",
)
_INVITATION = path_parameter("invitation_id", "the invitation's id (inv_...)")
_USER = path_parameter("user_id", "the user's id (usr_...)")
_ONE = f"({'|'.join(STATUSES)})"
_STATUS = query_parameter(
    "status",
    "comma-separated statuses to list, or `all` (default: pending,expired)",
    maxLength=64,
    pattern=rf"^(|all|{_ONE}(,{_ONE})*)$",
)
_NOT_FOUND = ("no such account (or one you may not see), or no such invitation", ErrorResponse)
_OWNER = ("only the account's owner may do this (owner_required)", ErrorResponse)
_PERSON = ("an API key without a user (user_required)", ErrorResponse)
_CLOSED = ("the invitation was answered, revoked or expired (invitation_closed)", ErrorResponse)
_DEFAULT_STATUSES = (PENDING, EXPIRED)


# --- who acts ---------------------------------------------------------------------------------


async def _acting(request: Request) -> tuple[ApiContext, Actor, Caller]:
    ctx: ApiContext = request.app.state.api
    caller = await authenticate(request, ctx)
    return ctx, actor_of(caller), caller


def actor_of(caller: Caller) -> Actor:
    """The user a caller acts as on accounts; an admin-scoped key without a user acts as the
    operator; any other key without a user may not act on accounts."""
    if caller.user is not None:
        user = acting_person(caller)  # a key of a user acts for them only with `admin`
        return Actor(user.id, user)
    if caller.has("admin"):
        return Actor(caller.id)
    raise errors.Forbidden("an API key without a user acts on accounts only with the admin scope")


async def _person(request: Request) -> tuple[ApiContext, UserRecord]:
    ctx: ApiContext = request.app.state.api
    caller = await authenticate(request, ctx)
    if caller.user is None:
        raise errors.UserRequired(
            "invitations are received by people: log in (or use a key that belongs to a user)"
        )
    acting_person(caller)
    return ctx, caller.user


def _domain(ctx: ApiContext) -> Invitations:
    return Invitations(ctx.db, ctx.people.users if ctx.people is not None else None)


# --- answers ------------------------------------------------------------------------------------


def invitation_json(invitation: InvitationRecord, now: float) -> dict[str, Any]:
    return {
        "id": invitation.id,
        "invitee_email": invitation.invitee_email,
        "role": invitation.role,
        "status": invitation.status_at(now),
        "created_at": iso(invitation.created_at),
        "expires_at": iso(invitation.expires_at),
    }


def share_json(share: ShareRecord) -> dict[str, Any]:
    return {
        "user_id": share.user_id,
        "email": share.email,
        "role": share.role,
        "shared_at": iso(share.shared_at),
    }


def received_json(received: Received) -> dict[str, Any]:
    invitation = received.invitation
    return {
        "id": invitation.id,
        "account_email": received.account_email,
        "inviter_name": invitation.inviter_name,
        "role": invitation.role,
        "created_at": iso(invitation.created_at),
    }


def _one(invitation: InvitationRecord, status: int = 200, **extra: Any) -> JSONResponse:
    body = {"success": True, "invitation": invitation_json(invitation, time.time()), **extra}
    return JSONResponse(body, status_code=status)


def _statuses(request: Request) -> tuple[str, ...]:
    asked = request.query_params.get("status", "")
    if not asked:
        return _DEFAULT_STATUSES
    if asked == "all":
        return STATUSES
    wanted = tuple(dict.fromkeys(asked.split(",")))
    unknown = [s for s in wanted if s not in STATUSES]
    if unknown or len(asked) > 64:
        problem = f"one or more of {', '.join(STATUSES)}, or all"
        raise errors.InvalidRequest(f"status: {problem}", [{"field": "status", "message": problem}])
    return wanted


# --- the email ----------------------------------------------------------------------------------


def _public_url(request: Request, ctx: ApiContext) -> str:
    if ctx.manage is not None:
        return ctx.manage.public_url
    return ctx.public_url or str(request.base_url).rstrip("/")


async def _send(
    request: Request, ctx: ApiContext, actor: Actor, invitation: InvitationRecord, token: str
) -> bool:
    """Email the link through Intake; False (and the reason logged) if it did not go."""
    account = await get_account(ctx.db, invitation.account_id)
    link = f"{_public_url(request, ctx)}{LINK_PATH}?token={token}"
    try:
        draft = compose(invitation, account.email if account else "", link, ctx.hostname)
        built = build(draft, ctx.hostname)
        await ctx.intake.submit(
            Submission(
                mail_from=built.mail_from,
                recipients=built.recipients,
                content=built.content,
                source="http",
                tags=("invitation",),
                sender=Sender(actor.id, may_send=True, may_sandbox=False),
                system=True,
            )
        )
    except PosternError as error:  # refused, or storage failed: the invitation stands
        log.warning("invitation email for %s not sent: %s", invitation.id, error)
        return False
    return True


# --- the account's owner ------------------------------------------------------------------------


@operation(
    "Invite a user to an account",
    scope="",
    request=InvitationCreate,
    parameters=[_ACCOUNT],
    description="Account owner only. Emails the invitee a single-use link, valid 30 days.",
    responses={
        201: ("the pending invitation; email_sent false if the email was refused", SentInvitation),
        403: ("owner_required, or role_above_own", ErrorResponse),
        404: _NOT_FOUND,
        409: ("already_shared, or invitation_pending (invitation_id in the answer)", ErrorResponse),
    },
)
async def invite(request: Request) -> Response:
    ctx, actor, _ = await _acting(request)
    body = parse(InvitationCreate, await request.body())
    try:
        invitation, token = await _domain(ctx).invite(
            actor, request.path_params["account_id"], body.email, body.role
        )
    except stored.InvitationPending as pending:
        extra = {"invitation_id": pending.invitation_id} if pending.invitation_id else {}
        raise errors.InvitationPending(
            f"{pending}: resend it (POST .../invitations/{{id}}/resend) or revoke it",
            extra=extra,
        ) from None
    sent = await _send(request, ctx, actor, invitation, token)
    return _one(invitation, 201, email_sent=sent)


@operation(
    "List account invitations",
    scope="",
    parameters=[_ACCOUNT, _STATUS],
    description="Account owner only. Pending and expired ones unless `status` says otherwise.",
    responses={200: ("the invitations", InvitationList), 403: _OWNER, 404: _NOT_FOUND},
)
async def list_invitations(request: Request) -> Response:
    ctx, actor, _ = await _acting(request)
    statuses = _statuses(request)
    found = await _domain(ctx).listed(actor, request.path_params["account_id"], statuses)
    now = time.time()
    return JSONResponse({"success": True, "invitations": [invitation_json(i, now) for i in found]})


@operation(
    "Revoke an invitation",
    scope="",
    parameters=[_ACCOUNT, _INVITATION],
    description="Account owner only. Its link stops working.",
    responses={
        200: ("the invitation, revoked", InvitationResponse),
        403: _OWNER,
        404: _NOT_FOUND,
        409: _CLOSED,
    },
)
async def revoke(request: Request) -> Response:
    ctx, actor, _ = await _acting(request)
    params = request.path_params
    revoked = await _domain(ctx).revoke(actor, params["account_id"], params["invitation_id"])
    return _one(revoked)


@operation(
    "Resend an invitation",
    scope="",
    parameters=[_ACCOUNT, _INVITATION],
    description="Account owner only. A new link valid 30 days; the old one stops working. "
    "An expired invitation is renewed this way too.",
    responses={
        200: ("the invitation; email_sent false if the email was refused", SentInvitation),
        403: _OWNER,
        404: _NOT_FOUND,
        409: _CLOSED,
    },
)
async def resend(request: Request) -> Response:
    ctx, actor, _ = await _acting(request)
    params = request.path_params
    renewed, token = await _domain(ctx).resend(actor, params["account_id"], params["invitation_id"])
    return _one(renewed, email_sent=await _send(request, ctx, actor, renewed, token))


@operation(
    "List account shares",
    scope="",
    parameters=[_ACCOUNT],
    description="Account owner only: the users it is shared with (accepted invitations).",
    responses={200: ("the shares", ShareList), 403: _OWNER, 404: _NOT_FOUND},
)
async def list_shares(request: Request) -> Response:
    ctx, actor, _ = await _acting(request)
    found = await _domain(ctx).shares(actor, request.path_params["account_id"])
    return JSONResponse({"success": True, "shares": [share_json(s) for s in found]})


@operation(
    "Remove an account share",
    scope="",
    parameters=[_ACCOUNT, _USER],
    description="The account's owner removes anyone; a user may leave an account themselves.",
    responses={200: ("no longer shared", Ok), 403: _OWNER, 404: _NOT_FOUND},
)
async def unshare(request: Request) -> Response:
    ctx, actor, _ = await _acting(request)
    params = request.path_params
    await _domain(ctx).unshare(actor, params["account_id"], params["user_id"])
    return JSONResponse({"success": True})


# --- the invitee --------------------------------------------------------------------------------


@operation(
    "List pending invitations received",
    scope="",
    description="The logged-in user's pending invitations, across accounts.",
    responses={200: ("the invitations", ReceivedList), 403: _PERSON},
)
async def pending(request: Request) -> Response:
    ctx, user = await _person(request)
    found = await _domain(ctx).pending(user)
    return JSONResponse({"success": True, "invitations": [received_json(r) for r in found]})


@operation(
    "Accept an invitation",
    scope="",
    request=InvitationAnswer,
    description="Accept one of your pending invitations: the account is shared with you.",
    responses={
        200: ("the invitation, accepted", InvitationResponse),
        403: _PERSON,
        404: ("no such invitation for you", ErrorResponse),
        409: _CLOSED,
    },
)
async def accept(request: Request) -> Response:
    ctx, user = await _person(request)
    body = parse(InvitationAnswer, await request.body())
    return _one(await _domain(ctx).accept(user, body.invitation_id))


@operation(
    "Decline an invitation",
    scope="",
    request=InvitationAnswer,
    description="Decline one of your pending invitations.",
    responses={
        200: ("the invitation, declined", InvitationResponse),
        403: _PERSON,
        404: ("no such invitation for you", ErrorResponse),
        409: _CLOSED,
    },
)
async def decline(request: Request) -> Response:
    ctx, user = await _person(request)
    body = parse(InvitationAnswer, await request.body())
    return _one(await _domain(ctx).decline(user, body.invitation_id))


routes = [
    route
    for prefix in PREFIXES
    for route in (
        Route(prefix + "/accounts/{account_id}/invitations", list_invitations, methods=["GET"]),
        Route(prefix + "/accounts/{account_id}/invitations", invite, methods=["POST"]),
        Route(
            prefix + "/accounts/{account_id}/invitations/{invitation_id}/revoke",
            revoke,
            methods=["POST"],
        ),
        Route(
            prefix + "/accounts/{account_id}/invitations/{invitation_id}/resend",
            resend,
            methods=["POST"],
        ),
        Route(prefix + "/accounts/{account_id}/shares", list_shares, methods=["GET"]),
        Route(prefix + "/accounts/{account_id}/shares/{user_id}", unshare, methods=["DELETE"]),
        Route(prefix + "/invitations/pending", pending, methods=["GET"]),
        Route(prefix + "/invitations/accept", accept, methods=["POST"]),
        Route(prefix + "/invitations/decline", decline, methods=["POST"]),
    )
]
