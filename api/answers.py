"""How the API answers an error: an ApiError (api.errors) as its JSON response, and the
rest of Postern's tree (gateway.errors) through one table.

An error of Postern's own tree that a route lets through is answered from one table,
ANSWERS: its nearest class there gives the kind (status and code) and the text.
A route whose words differ (the field at fault, what failed) answers for itself, or lays
its own rows over the table (`answer`). A storage failure anywhere (a read as much as a
write) is a 503 with Retry-After, a write that found no space a 507 with Retry-After.
Anything else is a bug: the client gets a bare 500 `internal_error`, the log the detail.

Kept apart from api.errors: the table names the errors of intake, DKIM, people and storage
(and Starlette answers), which a CLI command raising an ApiError need not load.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.errors import (
    AccountInUse,
    AccountQuota,
    AliasInUse,
    AliasNotVerified,
    AlreadyConnected,
    AlreadyShared,
    ApiError,
    ConfigPool,
    Conflict,
    DkimKeyNotPending,
    DkimRecordNotPublished,
    Forbidden,
    HostNotAllowed,
    IdempotencyKeyReused,
    InvalidRequest,
    InvitationClosed,
    InvitationPending,
    LastOwnerConflict,
    LastVerifiedAlias,
    MethodNotAllowed,
    NotFound,
    OwnerRequired,
    PoolInUse,
    RoleAboveOwn,
    RotationInProgress,
    SignInRequired,
    StorageFull,
    Suppressed,
    Unauthorized,
    Unavailable,
    UnknownAccount,
    UnknownAlias,
    UnverifiedSender,
)
from gateway.dkim import rotation
from gateway.errors import StorageUnavailable
from gateway.intake import pipeline as intake
from gateway.people import invitations, passwords, roles, users
from gateway.security.hostguard import HostRefused
from storage import aliases, dkim_keys, domains, mail_accounts, pools
from storage import errors as storage_errors
from storage import invitations as stored_invitations
from storage import users as stored_users
from storage.idempotency import KeyReused

log = logging.getLogger("postern.api")


def response(error: ApiError) -> JSONResponse:
    """The error's JSON body, with its status and headers."""
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return response(error)


async def http_error(request: Request, error: Exception) -> Response:
    """Starlette's own 404/405 (no such route, wrong method) in the same JSON shape."""
    assert isinstance(error, HTTPException)
    kinds: dict[int, type[ApiError]] = {404: NotFound, 405: MethodNotAllowed}
    kind = kinds.get(error.status_code)
    if kind is None:
        kind = type("HttpError", (ApiError,), {"status": error.status_code, "code": "error"})
    reply = response(kind(str(error.detail)))
    reply.headers.update(error.headers or {})
    return reply


@dataclass(frozen=True)
class Answer:
    """How an error is answered: its kind (status and code) and text, `{error}` standing
    for the error (None: the kind's own words); `field` names the field at fault in
    `details`, with `detail` as its message."""

    kind: Callable[..., ApiError]
    text: str | None = None
    field: str | None = None
    detail: str = "{error}"
    retry_after: int | None = None

    def to(self, error: BaseException) -> ApiError:
        if self.text is None:
            return self.kind()
        given: dict[str, Any] = {}  # only what the row has: some kinds take no more
        if self.field is not None:
            message = self.detail.format(error=error)
            given["details"] = [{"field": self.field, "message": message}]
        if self.retry_after is not None:
            given["headers"] = {"Retry-After": str(self.retry_after)}
        return self.kind(self.text.format(error=error), **given)


_RETRY = "storage is unavailable; please retry"

# Every error of Postern's own a route lets through -> its answer (the nearest class in the
# error's MRO counts). A storage driver's error is there too: one a write did not wrap.
ANSWERS: dict[type[Exception], Answer] = {
    # storage failed: nothing was done, the client retries
    storage_errors.StorageFull: Answer(StorageFull),
    StorageUnavailable: Answer(Unavailable, _RETRY, retry_after=1),
    SQLAlchemyError: Answer(Unavailable, _RETRY, retry_after=1),
    # what is stored refuses it
    aliases.AliasNotFound: Answer(NotFound, "alias not found"),
    aliases.AliasExists: Answer(Conflict, "{error}"),
    aliases.AliasInUse: Answer(AliasInUse, "{error}"),
    aliases.LastVerifiedAlias: Answer(LastVerifiedAlias, "{error}"),
    domains.DomainExists: Answer(Conflict, "{error}"),
    dkim_keys.DkimKeyNotFound: Answer(NotFound, "no such DKIM key"),
    rotation.RotationInProgress: Answer(RotationInProgress, "{error}"),
    rotation.RecordNotPublished: Answer(DkimRecordNotPublished, "{error}"),
    rotation.NotPending: Answer(DkimKeyNotPending, "{error}"),
    pools.PoolNotFound: Answer(NotFound, "{error}"),
    pools.PoolReadOnly: Answer(ConfigPool, "{error}"),
    pools.ConfigDefault: Answer(ConfigPool, "{error}"),
    pools.PoolInUse: Answer(PoolInUse, "{error}"),
    pools.BadMoveTarget: Answer(InvalidRequest, "move_to: {error}", field="move_to"),
    pools.PoolError: Answer(Conflict, "{error}"),
    HostRefused: Answer(HostNotAllowed, "host: {error}", field="host"),
    # intake's refusals, and an idempotency key used for another request
    KeyReused: Answer(
        IdempotencyKeyReused,
        "this idempotency_key was used within 24 h for a different request; "
        "use a new key for a new message",
        field="idempotency_key",
        detail="already used for a different request",
    ),
    intake.AllSuppressed: Answer(Suppressed),
    intake.UnknownAlias: Answer(
        UnknownAlias,
        "unknown alias_id",
        field="alias_id",
        detail="names neither an SMTP pool nor an alias",
    ),
    intake.NoSuchAccount: Answer(
        UnknownAccount,
        "unknown account_id",
        field="account_id",
        detail="names no connected account you may send through",
    ),
    intake.AliasUnverified: Answer(
        AliasNotVerified, "{error.reason}", field="alias_id", detail="verify the alias first"
    ),
    intake.UnverifiedSender: Answer(UnverifiedSender, "{error.reason}"),
    intake.NotPermitted: Answer(Forbidden, "{error.reason}"),
    # people: who may do what
    roles.OwnerRequired: Answer(OwnerRequired, "{error}"),
    roles.RoleAboveOwn: Answer(RoleAboveOwn, "{error}"),
    roles.LastOwner: Answer(LastOwnerConflict, "{error}"),
    roles.UnknownRole: Answer(InvalidRequest, "role: {error}", field="role"),
    users.BadUserField: Answer(InvalidRequest, "{error}"),
    passwords.WeakPassword: Answer(InvalidRequest, "password: {error}", field="password"),
    stored_users.UserExists: Answer(Conflict, "{error}"),
    stored_users.UserNotFound: Answer(NotFound, "user not found"),
    users.LoginRefused: Answer(Unauthorized, "{error}"),
    # invitations and shares (seed 004)
    invitations.AccountNotFound: Answer(NotFound, "{error}"),
    invitations.InvitationNotFound: Answer(NotFound, "{error}"),
    invitations.InvitationClosed: Answer(InvitationClosed, "{error}"),
    invitations.NotInvitable: Answer(InvalidRequest, "{error}"),
    invitations.SignInRequired: Answer(SignInRequired, "{error}"),
    stored_invitations.AlreadyShared: Answer(AlreadyShared, "{error}"),
    stored_invitations.InvitationPending: Answer(InvitationPending, "{error}"),
    # connected accounts (seed 004)
    mail_accounts.AccountNotFound: Answer(NotFound, "account not found"),
    mail_accounts.AccountExists: Answer(AlreadyConnected, "{error}"),
    mail_accounts.AccountQuota: Answer(AccountQuota, "{error}"),
    mail_accounts.AccountInUse: Answer(AccountInUse, "{error}"),
    mail_accounts.DefaultRequired: Answer(
        InvalidRequest, "is_default: {error}", field="is_default"
    ),
}


def answer(error: BaseException, over: Mapping[type[Exception], Answer] | None = None) -> ApiError:
    """The answer to `error`: from the rows of `over` (a route's own words), else ANSWERS;
    a bare 500 when neither has a row for it."""
    for kind in type(error).__mro__:
        row = (over or {}).get(kind) or ANSWERS.get(kind)
        if row is not None:
            return row.to(error)
    log.error("no answer for %r", error, exc_info=error)
    return ApiError("internal error")


async def answered(request: Request, error: Exception) -> Response:
    """An error of ANSWERS a route let through; a storage failure is logged, its detail
    never answered."""
    if isinstance(error, StorageUnavailable | SQLAlchemyError):
        log.error("storage failed on %s %s: %s", request.method, request.url.path, error)
    return response(answer(error))


async def internal_error(request: Request, error: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    return response(ApiError("internal error"))
