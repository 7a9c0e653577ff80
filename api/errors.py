"""Every error the API answers, as one hierarchy turned into one JSON shape:

    {"success": false, "code": "...", "error": "...", "details": [...]}

    ApiError
    ├── InvalidRequest        400 invalid_request   malformed JSON, a field of the wrong type
    │   ├── UnknownAlias      400 unknown_alias     alias_id names neither pool nor alias
    │   ├── UnknownAccount    400 unknown_account   account_id names no account the caller sees
    │   ├── NoRoute           400 no_route          the pool or group asked for has no active pool
    │   ├── ScheduleOutOfRange 400 schedule_out_of_range  scheduled_at past, or over 30 days ahead
    │   ├── HostNotAllowed    400 host_not_allowed  a pool host in a denied network (SSRF)
    │   ├── InvalidToken      400 invalid_token     unknown, used or expired verification link
    │   ├── CredentialsRefused 400 imap_<stage>_failed, smtp_<stage>_failed  a connected
    │   │                         account's login could not be proved (side and stage named)
    │   └── SmtpTestFailed    400 smtp_*_error      the connection test failed (MailSage view),
    │                             upstream_rejected the upstream refused the test message
    ├── Unauthorized          401 unauthorized      no key, an unknown or revoked key
    │   └── SignInRequired    401 sign_in_required  an invitation's link, for a user not signed in
    ├── Forbidden             403 forbidden         the key or role lacks the scope or the ip_pool
    │   ├── CsrfFailed        403 csrf_failed       a cookie's change without this origin or token
    │   ├── OwnerRequired     403 owner_required    only an owner may do this
    │   ├── RoleAboveOwn      403 role_above_own    a role above the caller's own
    │   ├── UserRequired      403 user_required     a person's route, called by a key without a user
    │   ├── UnverifiedSender  403 unverified_sender From is no verified domain or alias
    │   ├── AliasNotVerified  403 alias_not_verified    alias_id names an unverified alias
    │   ├── LastVerifiedAlias 403 last_verified_alias   the only verified alias left
    │   ├── AccountQuota      403 account_quota     [accounts] max_per_user reached
    │   ├── AccountInUse      403 account_in_use    the only default account, queued mail From it
    │   └── TlsVerifyAdminOnly 403 tls_verify_admin_only  tls_verify false: admins only,
    │                             or both hosts loopback
    ├── NotFound              404 not_found
    │   └── UnknownToken      404 invalid_token     unknown, used or expired verification link
    ├── MethodNotAllowed      405 method_not_allowed
    ├── Conflict              409 conflict          the name, domain, address or user is taken
    │   ├── AlreadyShared     409 already_shared    the invited address already shares the account
    │   ├── AlreadyConnected  409 already_connected the mail account's address is connected
    │   ├── InvitationPending 409 invitation_pending    a live invitation of the address exists
    │   ├── InvitationClosed  409 invitation_closed     answered, revoked or expired
    │   ├── LastOwnerConflict 409 last_owner        it would leave no active owner
    │   ├── ConfigPool        409 config_pool       the pool is declared in the config file
    │   ├── AliasInUse        409 alias_in_use      queued mail still references the alias
    │   ├── AliasVerified     409 alias_verified    a new link for an alias verified already
    │   ├── PoolInUse         409 pool_in_use       queued mail still needs the pool (move_to)
    │   ├── RotationInProgress    409 rotation_in_progress  the domain has a pending DKIM key
    │   ├── DkimRecordNotPublished  409 dkim_record_not_published  DNS lacks the pending
    │   │                         key's record (yet)
    │   ├── DkimKeyNotPending 409 dkim_key_not_pending  activate/cancel of a key not pending
    │   ├── MessageFinal      409 message_final     retry/cancel of a message with no work left
    │   ├── MessageBusy       409 message_busy      retry/cancel of a message being delivered
    │   ├── MessageHeld       409 message_held      retry/hold of a message on hold
    │   ├── MessageNotHeld    409 message_not_held  release of a message not on hold
    │   ├── RouteExists       409 route_exists      the recipient domain has a stored route
    │   ├── RouteInConfig     409 route_in_config   the config file routes that domain
    │   ├── IdempotencyKeyReused  409 idempotency_key_reused  the key named another request
    │   └── WebhookInactive   409 webhook_inactive  replay to a webhook that is switched off
    ├── RequestTimeout        408 request_timeout   the body took longer than [http] body_timeout
    ├── BodyGone              410 body_gone         the message is there, its stored body not
                                                    (deleted after [storage] body_retention)
    ├── PayloadTooLarge       413 payload_too_large over [http] max_body_size
    │   └── AttachmentsTooLarge   413 attachments_too_large  over [http] max_attachments_size
    ├── Suppressed            422 suppressed        every recipient is suppressed
    ├── DomainNotVerified     422 domain_not_verified   an alias on an unverified domain
    ├── UnknownPool           422 unknown_pool      a route names no pool by that name
    ├── UpstreamRejected      422 upstream_rejected the upstream refused it permanently
    ├── EmptyReport           422 empty_report      POST /api/v1/bounces without a report
    ├── AttachmentRefused     422 attachment_refused    in [http] refuse_attachment_types
    ├── RateLimited           429 rate_limit        over [http] rate_limit; Retry-After
    ├── TooManyStreams        429 too_many_streams  the caller has 5 event streams open already
    ├── Unavailable           503 unavailable       storage failed; nothing was accepted
    └── StorageFull           507 storage_full      no space left to store it; nothing was
                                                    accepted

The classes only: what answers them over HTTP (the JSON response, the table from the rest
of Postern's tree, Starlette's handlers) is api.answers. The `*_ops` modules, which the CLI
shares, raise these without loading Starlette, intake or DKIM.
"""

from __future__ import annotations

import math
from typing import Any

from gateway.errors import PosternError


class ApiError(PosternError):
    status = 500
    code = "internal_error"

    def __init__(
        self,
        error: str,
        details: list[dict[str, Any]] | None = None,
        *,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(error)
        self.error = error
        self.details = details or []
        self.extra = extra or {}
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "success": False,
            "code": self.code,
            "error": self.error,
            "details": self.details,
            **self.extra,
        }


class InvalidRequest(ApiError):
    status, code = 400, "invalid_request"


class UnknownAlias(InvalidRequest):
    code = "unknown_alias"


class UnknownAccount(InvalidRequest):
    code = "unknown_account"


class NoRoute(InvalidRequest):
    code = "no_route"


class ScheduleOutOfRange(InvalidRequest):
    """A scheduled_at of the right form but out of range: in the past, or over 30 days
    ahead (relative to now, which no schema can state)."""

    code = "schedule_out_of_range"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"

    def __init__(self, error: str = "missing or invalid API key or session") -> None:
        super().__init__(error, headers={"WWW-Authenticate": "Bearer"})


class SignInRequired(Unauthorized):
    code = "sign_in_required"


class HostNotAllowed(InvalidRequest):
    code = "host_not_allowed"


class InvalidToken(InvalidRequest):
    code = "invalid_token"


class CredentialsRefused(InvalidRequest):
    """A connected account's IMAP login or SMTP AUTH failed: `side` and `stage` in the body,
    and in the code (`imap_login_failed`, `smtp_auth_failed`, `imap_tls_failed`...)."""

    def __init__(self, side: str, stage: str, error: str) -> None:
        super().__init__(error, extra={"side": side, "stage": stage})
        self.code = f"{side}_{stage}_failed"


class SmtpTestFailed(InvalidRequest):
    """Seed 003's shape: `error` the summary, `message` the detail, `code` the stage."""

    def __init__(
        self,
        code: str,
        summary: str,
        detail: str,
        latency_ms: int,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            summary, extra={"message": detail, "latencyMs": latency_ms, **(extra or {})}
        )
        self.code = code


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class CsrfFailed(Forbidden):
    code = "csrf_failed"


class OwnerRequired(Forbidden):
    code = "owner_required"


class RoleAboveOwn(Forbidden):
    code = "role_above_own"


class UserRequired(Forbidden):
    code = "user_required"


class UnverifiedSender(Forbidden):
    code = "unverified_sender"


class AliasNotVerified(Forbidden):
    code = "alias_not_verified"


class LastVerifiedAlias(Forbidden):
    code = "last_verified_alias"


class AccountQuota(Forbidden):
    code = "account_quota"


class AccountInUse(Forbidden):
    code = "account_in_use"


class TlsVerifyAdminOnly(Forbidden):
    code = "tls_verify_admin_only"


class NotFound(ApiError):
    status, code = 404, "not_found"


class UnknownToken(NotFound):
    """A well-formed verification token that names nothing (any more)."""

    code = "invalid_token"


class BodyGone(ApiError):
    """The message exists (and the caller may see it) but its body was deleted: by
    `[storage] body_retention` after it became final (410 Gone: it will not come back)."""

    status, code = 410, "body_gone"


class MethodNotAllowed(ApiError):
    status, code = 405, "method_not_allowed"


class Conflict(ApiError):
    status, code = 409, "conflict"


class AlreadyShared(Conflict):
    code = "already_shared"


class AlreadyConnected(Conflict):
    code = "already_connected"


class InvitationPending(Conflict):
    code = "invitation_pending"


class InvitationClosed(Conflict):
    code = "invitation_closed"


class LastOwnerConflict(Conflict):
    code = "last_owner"


class ConfigPool(Conflict):
    code = "config_pool"


class AliasInUse(Conflict):
    code = "alias_in_use"


class AliasVerified(Conflict):
    code = "alias_verified"


class PoolInUse(Conflict):
    code = "pool_in_use"


class RotationInProgress(Conflict):
    code = "rotation_in_progress"


class DkimRecordNotPublished(Conflict):
    code = "dkim_record_not_published"


class DkimKeyNotPending(Conflict):
    code = "dkim_key_not_pending"


class MessageFinal(Conflict):
    code = "message_final"


class MessageBusy(Conflict):
    code = "message_busy"


class RouteExists(Conflict):
    code = "route_exists"


class RouteInConfig(Conflict):
    code = "route_in_config"


class MessageHeld(Conflict):
    """A retry or hold of a message on hold: release it first."""

    code = "message_held"


class MessageNotHeld(Conflict):
    """A release of a message that is not on hold."""

    code = "message_not_held"


class IdempotencyKeyReused(Conflict):
    code = "idempotency_key_reused"


class WebhookInactive(Conflict):
    code = "webhook_inactive"


class RequestTimeout(ApiError):
    status, code = 408, "request_timeout"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class AttachmentsTooLarge(PayloadTooLarge):
    code = "attachments_too_large"


class Suppressed(ApiError):
    status, code = 422, "suppressed"

    def __init__(self) -> None:
        super().__init__(
            "Send suppressed — recipient unsubscribed or bounced", extra={"suppressed": True}
        )


class UpstreamRejected(ApiError):
    status, code = 422, "upstream_rejected"


class EmptyReport(ApiError):
    status, code = 422, "empty_report"


class AttachmentRefused(ApiError):
    status, code = 422, "attachment_refused"


class DomainNotVerified(ApiError):
    status, code = 422, "domain_not_verified"


class UnknownPool(ApiError):
    """A route names a pool by a name no pool has."""

    status, code = 422, "unknown_pool"


class RateLimited(ApiError):
    status, code = 429, "rate_limit"  # the MailSage view's word, on every route

    def __init__(
        self, retry_after: float, error: str = "rate limit exceeded for this API key"
    ) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(
            error,
            extra={"retry_after": seconds},
            headers={"Retry-After": str(seconds)},
        )


class TooManyStreams(ApiError):
    status, code = 429, "too_many_streams"

    def __init__(self, error: str) -> None:
        super().__init__(error, extra={"retry_after": 5}, headers={"Retry-After": "5"})


class Unavailable(ApiError):
    status, code = 503, "unavailable"


class StorageFull(ApiError):
    status, code = 507, "storage_full"

    def __init__(self, error: str = "no space left to store it; nothing was accepted") -> None:
        super().__init__(error, headers={"Retry-After": "30"})
