"""What the two doors to sender aliases share (/api/v1/aliases and Settings → Aliases):
who sees which alias, the address checks beyond the schema, the verification message and
its token, and Intake told of every change.

    create:  address and name checked -> its domain verified? -> stored unverified with a
             token's SHA-256 -> Intake reloads its identities -> the verification message
    resend:  not verified yet? -> a new token replaces the unspent ones -> the message again
    verify:  the token redeemed (once, within 48 hours) -> Intake reloads

`get` is the door to one alias (another's is a 404, as for none); the operations on one
alias take what `get` returned. The refusals of storage.aliases (AliasError) are answered
from api.answers.ANSWERS.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from api import errors
from api.auth import Caller
from api.context import ApiContext
from api.management import TOKEN_TTL
from api.ownership import visible_to
from api.resource_schemas import AliasCreate
from gateway.addresses import envelope_problem, normalise
from gateway.intake.fields import text_problem
from gateway.intake.message_builder import Draft, Mailbox, build
from gateway.intake.pipeline import Refusal
from gateway.message import Sender, Submission
from storage import aliases, mail_accounts
from storage.aliases import AliasRecord
from storage.db import Database
from storage.domains import get_domain

log = logging.getLogger("postern.api")

SCOPE = "aliases"
VERIFY_PATH = "/api/v1/aliases/verify"  # the link of the verification message
MAX_TOKEN = 128


@dataclass(frozen=True)
class DomainAdvice:
    """How a door tells its caller to verify the alias's domain first: in its own words
    (`{domain}` is the domain), the API naming its endpoint, a page the Domains page."""

    message: str = "{domain} is not a verified domain: add it (POST /api/v1/domains) and verify it"
    detail: str = "the domain is not verified"


API_ADVICE = DomainAdvice()


def token_hash(token: str) -> str:
    """What is stored of a verification token: its SHA-256, never the token."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def bad(field: str, message: str) -> errors.InvalidRequest:
    """The 400 naming `field`."""
    return errors.InvalidRequest(f"{field}: {message}", [{"field": field, "message": message}])


async def identities_changed(ctx: ApiContext) -> None:
    """Intake routes and checks senders from memory: make it see the change now."""
    await ctx.management().identities.reload()


async def records(ctx: ApiContext, caller: Caller) -> list[AliasRecord]:
    """Every alias the caller may see."""
    seen = await visible_to(ctx, caller, "alias")
    return seen.only(await aliases.list_aliases(ctx.db), lambda a: (a.id, a.created_by))


async def get(ctx: ApiContext, caller: Caller, alias_id: str) -> AliasRecord:
    """The alias, if the caller may see it (another's is a 404, as for none)."""
    record = await aliases.get_alias(ctx.db, alias_id)
    seen = await visible_to(ctx, caller, "alias")
    if record is None or not seen.allows(record.id, record.created_by):
        raise errors.NotFound("alias not found")
    return record


def checked_identity(body: AliasCreate) -> tuple[str, str]:
    """The alias's address (normalised) and display name, refused as header-unsafe or not
    one mailbox (InvalidRequest naming the field)."""
    problem = text_problem(body.email, header=True) or envelope_problem(body.email)
    if problem:
        raise bad("email", problem)
    name = body.name or ""
    problem = text_problem(name, header=True) if name else None
    if problem:
        raise bad("name", problem)
    return normalise(body.email), name


async def require_verified_domain(
    db: Database, email: str, advice: DomainAdvice = API_ADVICE
) -> None:
    """DomainNotVerified (422) unless the address's domain is registered and verified, or
    the address is a connected account's (seed 002: "must be on a verified custom domain or
    be a connected IMAP account")."""
    domain = email.rpartition("@")[2]
    registered = await get_domain(db, domain)
    if registered is None or not registered.is_verified:
        if await mail_accounts.is_connected(db, email):
            return
        raise errors.DomainNotVerified(
            advice.message.format(domain=domain),
            [{"field": "email", "message": advice.detail.format(domain=domain)}],
        )


async def create(
    ctx: ApiContext, caller: Caller, body: AliasCreate, advice: DomainAdvice = API_ADVICE
) -> tuple[AliasRecord, str | None]:
    """A new alias, unverified, and the id of its verification message (None: Intake
    refused it, the reason logged)."""
    email, name = checked_identity(body)
    await require_verified_domain(ctx.db, email, advice)
    token = secrets.token_urlsafe(32)
    record = await aliases.create_alias(
        ctx.db,
        email=email,
        name=name,
        is_default=body.is_default,
        ip_pool=body.ip_pool,
        token_hash=token_hash(token),
        expires_at=time.time() + TOKEN_TTL,
        created_by=caller.user_id,
    )
    await identities_changed(ctx)
    return record, await send_verification(ctx, caller, record, token)


async def resend(ctx: ApiContext, caller: Caller, record: AliasRecord) -> str | None:
    """A new link in a new verification message; the links sent before stop working.
    AliasVerified (409) for an alias verified already. The message's id, or None."""
    if record.is_verified:
        raise errors.AliasVerified(f"{record.email} is verified already")
    token = secrets.token_urlsafe(32)
    await aliases.new_token(ctx.db, record.id, token_hash(token), time.time() + TOKEN_TTL)
    return await send_verification(ctx, caller, record, token)


def verification_link(ctx: ApiContext, token: str) -> str:
    return f"{ctx.management().public_url}{VERIFY_PATH}?token={token}"


async def send_verification(
    ctx: ApiContext, caller: Caller, record: AliasRecord, token: str
) -> str | None:
    """Through Intake like any mail; None (and the reason logged) when it is refused."""
    domain = record.email.rpartition("@")[2]
    draft = Draft(
        sender=Mailbox(f"no-reply@{domain}", "Postern"),
        to=[Mailbox(record.email, record.name or None)],
        subject=f"Confirm {record.email} as a sender address",
        text=(
            f"Someone asked to send mail as {record.email} through Postern.\n\n"
            "To confirm, open this link within 48 hours (it works once):\n\n"
            f"{verification_link(ctx, token)}\n\n"
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
        sender=Sender(caller.id, may_send=True, may_sandbox=False, user_id=caller.user_id),
        system=True,
    )
    try:
        accepted = await ctx.intake.submit(submission)
    except Refusal as refusal:
        log.warning("verification message for %s refused: %s", record.id, refusal.reason)
        return None
    return accepted.message_id


async def verify(ctx: ApiContext, token: str) -> AliasRecord:
    """The alias of a verification link's token, now verified: InvalidToken (400) for a
    malformed token, UnknownToken (404) for one unknown, used or expired."""
    if not token or len(token) > MAX_TOKEN or not token.isascii():
        raise errors.InvalidToken("missing or malformed token")
    record = await aliases.redeem_token(ctx.db, token_hash(token))
    if record is None:
        raise errors.UnknownToken("this link is unknown, already used or expired")
    await identities_changed(ctx)
    return record


def refuse_fixed(fields: Any) -> None:
    """A 400 naming the fields of a change body that cannot change after creation."""
    if not isinstance(fields, dict):
        return
    fixed = sorted(set(fields) - set(aliases.EDITABLE))
    if fixed:
        raise errors.InvalidRequest(
            f"only name, is_default and ip_pool can be changed, not {', '.join(fixed)}",
            [{"field": name, "message": "cannot be changed"} for name in fixed],
        )


async def change(ctx: ApiContext, record: AliasRecord, changes: dict[str, Any]) -> AliasRecord:
    """The alias with `changes` (name, is_default, ip_pool) made."""
    if changes.get("is_default", False) is None:
        raise bad("is_default", "may not be null")
    if "name" in changes:
        changes["name"] = changes["name"] or ""
        problem = text_problem(changes["name"], header=True)
        if problem:
            raise bad("name", problem)
    updated = await aliases.update_alias(ctx.db, record.id, changes)
    await identities_changed(ctx)
    return updated


async def delete(ctx: ApiContext, record: AliasRecord) -> None:
    """The alias removed (AliasInUse, LastVerifiedAlias when it may not go)."""
    await aliases.delete_alias(ctx.db, record.id)
    await identities_changed(ctx)
