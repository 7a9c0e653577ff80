"""What the two doors to API keys share (/api/v1/keys and Settings → API keys): who sees
which key, what a key may be given, and who may revoke which.

A key may only grant scopes its maker holds (an `admin` any), within the maker's role (403
role_above_own), so the `keys` scope is no back door to `admin`. Members see and revoke only
their own keys (api.ownership); an admin does not take down an owner's key. The secret is in
what `create` returns and nowhere else, ever.

`get` is the door to one key (another member's is a 404, as for none); `revoke` takes what
`get` returned.
"""

from __future__ import annotations

from api import errors
from api.auth import Caller
from api.context import ApiContext
from api.ownership import Visibility, visible_to
from api.schemas import KeyCreate
from gateway.intake.fields import text_problem
from gateway.people import roles
from storage.keys import ApiKeyRecord, create_key, get_key, list_keys, revoke_key
from storage.users import get_user

SCOPE = "keys"


async def visibility(ctx: ApiContext, caller: Caller) -> Visibility:
    """Which keys the caller sees: every one, or its user's own."""
    return await visible_to(ctx, caller, "key")


async def records(ctx: ApiContext, caller: Caller) -> list[ApiKeyRecord]:
    """Every key the caller may see, revoked ones too."""
    return await list_keys(ctx.db, (await visibility(ctx, caller)).user_id)


async def get(ctx: ApiContext, caller: Caller, key_id: str) -> ApiKeyRecord:
    """The key, if the caller may see it (another member's is a 404, as for none)."""
    record = await get_key(ctx.db, key_id)
    if record is None or not (await visibility(ctx, caller)).allows(record.id, record.user_id):
        raise errors.NotFound("no such API key")
    return record


async def create(ctx: ApiContext, caller: Caller, body: KeyCreate) -> tuple[ApiKeyRecord, str]:
    """A new key of the caller's user, and its secret (shown this once): no scope above the
    user's role (403 role_above_own) nor beyond the caller's own (403)."""
    problem = text_problem(body.name, header=True)
    if problem:
        raise errors.InvalidRequest(f"name: {problem}", [{"field": "name", "message": problem}])
    if caller.user is not None:
        roles.require_scopes_within(caller.user.role, body.scopes)  # 403 role_above_own
    beyond = [scope for scope in body.scopes if not caller.has(scope)]
    if beyond:
        raise errors.Forbidden(f"a key cannot grant scopes it lacks: {', '.join(beyond)}")
    return await create_key(ctx.db, body.name, body.scopes, caller.user_id)


async def may_touch_owner(ctx: ApiContext, caller: Caller, target: ApiKeyRecord) -> None:
    """An admin does not take down an owner's key (403 role_above_own), as it does not
    change the owner."""
    if caller.user is None or target.user_id is None:
        return
    owner = await get_user(ctx.db, target.user_id)
    if owner is not None:
        roles.require_may_touch(caller.user.role, owner.role)


async def revoke(ctx: ApiContext, caller: Caller, target: ApiKeyRecord) -> ApiKeyRecord:
    """The key, revoked, and forgotten by this node's cache at once (other nodes' within
    its lifetime): one's own key, or one within reach (403 otherwise)."""
    own = caller.user_id is not None and target.user_id == caller.user_id
    if not own:
        await may_touch_owner(ctx, caller, target)
    beyond = [] if own else [scope for scope in target.scopes if not caller.has(scope)]
    if beyond:  # as for creating: a `keys` key cannot take down a stronger one (but its own)
        raise errors.Forbidden(f"a key cannot revoke one with scopes it lacks: {', '.join(beyond)}")
    record = await revoke_key(ctx.db, target.id)
    if record is None:
        raise errors.NotFound("no such API key")
    ctx.keys.forget(target.id)
    return record
