"""What the API's routes and the dashboard's page do with connected accounts (seed 004),
written once: the accounts a caller may see, connect (the body's checks, both logins proved
by gateway.accounts, the refusals as the API answers them) and disconnect, each followed by
this node's senders and upstreams.

The doors differ only in how they read the request and answer; a caller who may not see an
account is answered as if it did not exist.
"""

from __future__ import annotations

import re

from api import errors
from api.account_schemas import AccountConnect
from api.auth import Caller
from api.context import ApiContext
from api.ownership import visible_to
from api.resource_schemas import HOST_PATTERN
from gateway.accounts.accounts import Accounts, BadAccountField, HostNotAllowed
from gateway.accounts.verify import VerifyFailed
from gateway.addresses import envelope_problem
from gateway.intake.fields import text_problem
from storage import inbox, mail_accounts
from storage.accounts import ACCOUNT
from storage.inbox import Skipped
from storage.mail_accounts import MailAccountRecord

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


def check(body: AccountConnect) -> None:
    """What the schema states but pydantic does not enforce (InvalidRequest naming it)."""
    for field in ("name", "username", "password"):
        problem = text_problem(getattr(body, field), header=True)
        if problem:
            raise bad(field, problem)
    problem = text_problem(body.email, header=True) or envelope_problem(body.email)
    if problem:
        raise bad("email", problem)
    for field in ("imap_host", "smtp_host"):
        if not _HOST.fullmatch(getattr(body, field)):
            raise bad(field, "not a host name or IP address")


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
    try:
        record = await _domain(ctx).connect(caller.user.id, values, body.password)
    except VerifyFailed as failed:
        raise errors.CredentialsRefused(failed.side, failed.stage, str(failed)) from None
    except BadAccountField as wrong:
        raise bad(wrong.field, wrong.problem) from None
    except HostNotAllowed as refused:
        raise errors.HostNotAllowed(
            f"{refused.field}: {refused}", [{"field": refused.field, "message": str(refused)}]
        ) from None
    await _followed(ctx)
    return record


async def get(ctx: ApiContext, caller: Caller, account_id: str) -> MailAccountRecord:
    """The account, if `caller` may see it (NotFound otherwise, as for none)."""
    short = len(account_id) <= _MAX_ID
    record = await mail_accounts.get_account(ctx.db, account_id) if short else None
    if record is not None:
        seen = await visible_to(ctx, caller, ACCOUNT)
        if seen.allows(record.id, record.user_id):
            return record
    raise errors.NotFound("account not found")


async def disconnect(ctx: ApiContext, record: MailAccountRecord) -> None:
    """Its inbox sync stops; nothing already synced is deleted."""
    await _domain(ctx).disconnect(record.id)
    await _followed(ctx)


MAX_SKIPPED = 200  # the latest skipped messages an answer lists


async def skipped(ctx: ApiContext, record: MailAccountRecord) -> list[Skipped]:
    """The account's latest inbox messages the sync did not hand over (too big), newest
    first: each stays in the mailbox; its record goes with retention (storage.retention)."""
    return await ctx.db.read(lambda conn: inbox.latest_skipped(conn, MAX_SKIPPED, record.id))
