"""What the API's routes and the dashboard's page do with connected accounts (seed 004),
written once: the accounts a caller may see, connect (the body's checks, both logins proved
by gateway.accounts, the refusals as the API answers them), update (the same, for what
changes: its owner's) and disconnect, each followed by this node's senders and upstreams.

`tls_verify: false` is an admin's choice (or anyone's for an account whose hosts are both
loopback): turned off, nothing tells Postern's connection from one to an impostor, which
would read the password and every message sent through the account. Secure by default, as
the SSRF guard is: a member asks an admin.

The doors differ only in how they read the request and answer; a caller who may not see an
account is answered as if it did not exist.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from api import errors
from api.account_schemas import AccountConnect, AccountUpdate
from api.auth import Caller
from api.context import ApiContext
from api.ownership import sees_everything, visible_to
from api.resource_schemas import HOST_PATTERN
from gateway.accounts.accounts import Accounts, BadAccountField, HostNotAllowed
from gateway.accounts.verify import VerifyFailed
from gateway.addresses import envelope_problem
from gateway.config import is_loopback
from gateway.intake.fields import text_problem
from gateway.people import roles
from storage import inbox, mail_accounts
from storage.accounts import ACCOUNT
from storage.inbox import Skipped
from storage.mail_accounts import MailAccountRecord
from storage.shares import get_share

_HOST = re.compile(HOST_PATTERN)
_MAX_ID = 64


def _domain(ctx: ApiContext) -> Accounts:
    manage = ctx.management()
    return Accounts(ctx.db, manage.box, manage.guard, manage.accounts)


async def _followed(ctx: ApiContext) -> None:
    """After a connect or disconnect: this node's senders (identities: the address may be
    sent as) and live upstreams (the account's SMTP server) follow at once; other nodes'
    within their next look."""
    manage = ctx.management()
    await manage.identities.reload()
    if manage.account_routes is not None:
        await manage.account_routes.changed()


def bad(field: str, message: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(f"{field}: {message}", [{"field": field, "message": message}])


def check(body: AccountConnect | AccountUpdate) -> None:
    """What the schema states but pydantic does not enforce (InvalidRequest naming it);
    of an update, the fields it gives."""
    for field in ("name", "username", "password"):
        value = getattr(body, field)
        problem = text_problem(value, header=True) if value is not None else None
        if problem:
            raise bad(field, problem)
    if body.email is not None:
        problem = text_problem(body.email, header=True) or envelope_problem(body.email)
        if problem:
            raise bad("email", problem)
    for field in ("imap_host", "smtp_host"):
        value = getattr(body, field)
        if value is not None and not _HOST.fullmatch(value):
            raise bad(field, "not a host name or IP address")


TLS_VERIFY_ADMIN_ONLY = (
    "tls_verify: only an admin may turn certificate verification off (a server that cannot "
    "be verified could read the password and the mail), unless both hosts are loopback"
)


def may_skip_verification(caller: Caller, imap_host: str, smtp_host: str) -> bool:
    """Whether `caller` may set tls_verify false for an account with these hosts: an admin
    or owner (the `admin` scope), or anyone when both hosts are loopback addresses (no
    network between Postern and the server for anyone to sit on)."""
    return caller.has("admin") or (is_loopback(imap_host) and is_loopback(smtp_host))


def _tls_verify_allowed(caller: Caller, imap_host: str, smtp_host: str) -> None:
    if not may_skip_verification(caller, imap_host, smtp_host):
        raise errors.TlsVerifyAdminOnly(
            TLS_VERIFY_ADMIN_ONLY, [{"field": "tls_verify", "message": TLS_VERIFY_ADMIN_ONLY}]
        )


def _host(value: str) -> str:
    """As the connection wants it: no brackets around an IPv6 literal."""
    value = value.strip()
    return value[1:-1] if value.startswith("[") and value.endswith("]") else value


async def records(ctx: ApiContext, caller: Caller) -> list[MailAccountRecord]:
    """The accounts `caller` connected or was shared (admins and owners: all)."""
    seen = await visible_to(ctx, caller, ACCOUNT)
    return seen.only(await mail_accounts.list_accounts(ctx.db), lambda r: (r.id, r.user_id))


async def connect(ctx: ApiContext, caller: Caller, body: AccountConnect) -> MailAccountRecord:
    """Both logins proved, then the account stored (its sync pending); the refusals are
    the API's: InvalidRequest, CredentialsRefused (side, stage), HostNotAllowed..."""
    check(body)
    if caller.user is None:
        raise errors.UserRequired("an account belongs to a person: log in, or use a user's key")
    values = body.model_dump(exclude={"password"})
    values["imap_host"], values["smtp_host"] = _host(body.imap_host), _host(body.smtp_host)
    if not body.tls_verify:
        _tls_verify_allowed(caller, values["imap_host"], values["smtp_host"])
    with _answered():
        record = await _domain(ctx).connect(caller.user.id, values, body.password)
    await _followed(ctx)
    return record


@contextlib.contextmanager
def _answered() -> Iterator[None]:
    """gateway.accounts' refusals as the API answers them (the field or side named)."""
    try:
        yield
    except VerifyFailed as failed:
        raise errors.CredentialsRefused(failed.side, failed.stage, str(failed)) from None
    except BadAccountField as wrong:
        raise bad(wrong.field, wrong.problem) from None
    except HostNotAllowed as refused:
        raise errors.HostNotAllowed(
            f"{refused.field}: {refused}", [{"field": refused.field, "message": str(refused)}]
        ) from None


async def may_manage(ctx: ApiContext, caller: Caller, record: MailAccountRecord) -> None:
    """Changing an account is its owner's: whoever connected it, an admin or owner, or a
    user it is shared with as admin (gateway.people.invitations' rule); a member it is
    shared with sees it but may not change it (403 owner_required)."""
    if sees_everything(caller) or (caller.user is not None and record.user_id == caller.user.id):
        return
    assert caller.user is not None  # sees_everything otherwise
    share = await get_share(ctx.db, ACCOUNT, record.id, caller.user.id)
    if share is None or share.role != roles.ADMIN:
        raise errors.OwnerRequired("only the account's owner (or its admins) may change it")


async def update(
    ctx: ApiContext, caller: Caller, record: MailAccountRecord, body: AccountUpdate
) -> MailAccountRecord:
    """Change the account as `body` says (the fields given); the refusals are connect's,
    and OwnerRequired, TlsVerifyAdminOnly, DefaultRequired (400 naming is_default)."""
    check(body)
    await may_manage(ctx, caller, record)
    changes = body.model_dump(exclude={"password"}, exclude_none=True)
    if body.imap_security is None and "imap_port" in changes:
        changes["imap_security"] = None  # the new port's default (gateway.accounts)
    if body.smtp_security is None and "smtp_port" in changes:
        changes["smtp_security"] = None
    for side in ("imap_host", "smtp_host"):
        if side in changes:
            changes[side] = _host(changes[side])
    imap_host = changes.get("imap_host", record.imap_host)
    smtp_host = changes.get("smtp_host", record.smtp_host)
    tls_verify = changes.get("tls_verify", record.tls_verify)
    hosts_moved = "imap_host" in changes or "smtp_host" in changes
    if not tls_verify and ("tls_verify" in changes or hosts_moved):
        _tls_verify_allowed(caller, imap_host, smtp_host)
    with _answered():
        updated = await _domain(ctx).update(record, changes, body.password)
    await _followed(ctx)
    return updated


async def get(ctx: ApiContext, caller: Caller, account_id: str) -> MailAccountRecord:
    """The account, if `caller` may see it (NotFound otherwise, as for none)."""
    short = len(account_id) <= _MAX_ID
    record = await mail_accounts.get_account(ctx.db, account_id) if short else None
    if record is not None:
        seen = await visible_to(ctx, caller, ACCOUNT)
        if seen.allows(record.id, record.user_id):
            return record
    raise errors.NotFound("account not found")


async def disconnect(ctx: ApiContext, caller: Caller, record: MailAccountRecord) -> None:
    """Its inbox sync stops; nothing already synced is deleted. The owner's, as a change
    is (`may_manage`: a member it is shared with may not, 403 owner_required)."""
    await may_manage(ctx, caller, record)
    await _domain(ctx).disconnect(record.id)
    await _followed(ctx)


MAX_SKIPPED = 200  # the latest skipped messages an answer lists


async def skipped(ctx: ApiContext, record: MailAccountRecord) -> list[Skipped]:
    """The account's latest inbox messages the sync did not hand over (too big), newest
    first: each stays in the mailbox; its record goes with retention (storage.retention)."""
    return await ctx.db.read(lambda conn: inbox.latest_skipped(conn, MAX_SKIPPED, record.id))
