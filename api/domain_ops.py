"""What the two doors to sender domains share (/api/v1/domains and Settings → Domains):
who sees which domain, the name rules, registering one with its DKIM key, the DNS check,
and Intake told when the verified domains change.

    create:  name checked -> `verified` for admins only -> registered (its DKIM key made, or
             one `postern dkim generate` made kept) -> Intake reloads when it is verified
    verify:  DKIM, SPF, DMARC looked up (gateway.dkim.domains) -> Intake reloads when it
             became verified
    rotate:  a pending DKIM key beside the active one -> activated once DNS answers its
             record (gateway.dkim.rotation), or cancelled

`get` is the door to one domain (by id or name; another's is a 404, as for none); the
operations on one domain take what `get` returned. A domain registered twice (DomainExists)
is answered from api.answers.ANSWERS.
"""

from __future__ import annotations

from api import errors
from api.auth import Caller
from api.context import ApiContext
from api.ownership import sees_everything, visible_to
from api.resource_schemas import DomainCreate
from gateway.dkim import domains as sender_domains
from gateway.dkim import rotation
from gateway.dkim.domains import Check
from gateway.dkim.errors import DkimError
from gateway.dkim.names import normalise_domain, normalise_selector
from gateway.people import roles
from storage import dkim_keys, domains
from storage.accounts import DOMAIN
from storage.dkim_keys import DkimKeyRecord
from storage.domains import DomainRecord
from storage.shares import get_share

SCOPE = "domains"
ADMIN_ONLY = "only an admin key may add a domain as already verified"


async def records(ctx: ApiContext, caller: Caller) -> list[DomainRecord]:
    """Every domain the caller may see."""
    seen = await visible_to(ctx, caller, "domain")
    return seen.only(await domains.list_domains(ctx.db), lambda r: (r.id, r.created_by))


async def get(ctx: ApiContext, caller: Caller, key: str) -> DomainRecord:
    """The domain of `key` (its id or its name), if the caller may see it (another's is a
    404, as for none)."""
    if not key.startswith("dom_"):
        try:
            key = normalise_domain(key)
        except DkimError:
            raise errors.NotFound("no such domain") from None
    record = await domains.get_domain(ctx.db, key) if len(key) <= 253 else None
    seen = await visible_to(ctx, caller, "domain")
    if record is None or not seen.allows(record.id, record.created_by):
        raise errors.NotFound("no such domain")
    return record


async def may_manage(ctx: ApiContext, caller: Caller, record: DomainRecord) -> None:
    """Changing a domain (its DKIM keys, removing it) is its owner's: whoever added it, an
    admin or owner, or a user it is shared with as admin; a member it is shared with sees
    it but may not change it (403 owner_required), as for connected accounts."""
    if sees_everything(caller) or (caller.user is not None and record.created_by == caller.user.id):
        return
    assert caller.user is not None  # sees_everything otherwise
    share = await get_share(ctx.db, DOMAIN, record.id, caller.user.id)
    if share is None or share.role != roles.ADMIN:
        raise errors.OwnerRequired("only the domain's owner (or its admins) may change it")


def checked_name(given: str) -> str:
    """The domain's name, normalised (InvalidRequest naming the field otherwise; as
    /openapi.json says, no blanks around it)."""
    try:
        if given != given.strip():
            raise DkimError(f"{given!r} has blanks around it")
        return normalise_domain(given)
    except DkimError as error:
        raise errors.InvalidRequest(
            f"domain: {error}", [{"field": "domain", "message": "not a domain name"}]
        ) from None


async def create(
    ctx: ApiContext, caller: Caller, body: DomainCreate, admin_only: str = ADMIN_ONLY
) -> DomainRecord:
    """The domain registered with its DKIM key; `verified` only for an admin (403 with the
    door's own words, `admin_only`)."""
    name = checked_name(body.domain)
    if body.verified and not caller.has("admin"):
        raise errors.Forbidden(admin_only)
    manage = ctx.management()
    record, _ = await sender_domains.register(
        ctx.db,
        manage.box,
        name,
        verified=body.verified,
        algorithm=body.algorithm,
        created_by=caller.user_id,
    )
    if record.is_verified:
        await manage.identities.reload()
    return record


async def verify(ctx: ApiContext, record: DomainRecord) -> tuple[DomainRecord, list[Check]]:
    """What DNS says of the domain's records, and the domain after it (a failed check
    never un-verifies it)."""
    manage = ctx.management()
    updated, checks = await sender_domains.verify(ctx.db, manage.resolver, record)
    if updated.is_verified and not record.is_verified:
        await manage.identities.reload()
    return updated, checks


async def delete(ctx: ApiContext, caller: Caller, record: DomainRecord) -> None:
    """The domain removed: mail From it is refused again; its DKIM keys stay."""
    await may_manage(ctx, caller, record)
    await domains.delete_domain(ctx.db, record.id)
    await ctx.management().identities.reload()


async def keys(ctx: ApiContext, record: DomainRecord) -> list[DkimKeyRecord]:
    """The domain's DKIM keys, newest first."""
    found = await dkim_keys.list_keys(ctx.db, record.domain)
    return sorted(found, key=lambda key: key.created_at, reverse=True)


def _selector(given: str) -> str:
    try:
        return normalise_selector(given)
    except DkimError:
        raise errors.NotFound("no such DKIM key") from None


async def rotate(
    ctx: ApiContext, caller: Caller, record: DomainRecord, algorithm: str
) -> DkimKeyRecord:
    """A new pending key beside the active one (RotationInProgress when one is pending)."""
    await may_manage(ctx, caller, record)
    return await rotation.start(ctx.db, ctx.management().box, record.domain, algorithm)


async def activate_key(
    ctx: ApiContext, caller: Caller, record: DomainRecord, selector: str
) -> tuple[DkimKeyRecord, Check]:
    """The pending key `selector` signs from now on, once DNS answers its record."""
    await may_manage(ctx, caller, record)
    resolver = ctx.management().resolver
    return await rotation.activate(ctx.db, resolver, record.domain, _selector(selector))


async def cancel_key(
    ctx: ApiContext, caller: Caller, record: DomainRecord, selector: str
) -> DkimKeyRecord:
    """The pending key `selector` retired: the rotation abandoned."""
    await may_manage(ctx, caller, record)
    return await rotation.cancel(ctx.db, record.domain, _selector(selector))
