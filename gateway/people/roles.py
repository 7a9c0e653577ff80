"""Roles and who may grant what.

    owner   everything, users and owners included
    admin   everything but users and owners
    member  sends, reads messages, manages what is shared with it

Nobody grants a role above their own; an admin touches no owner and does not manage users.
The operator at the console (`postern users`, actor None) may do anything. The last active
owner can be neither demoted nor disabled: storage.users holds that rule in the changing
transaction (LastOwner), as a check made before it could race.
"""

from __future__ import annotations

from gateway.errors import InvalidInput, Refused
from storage.keys import SCOPES, ApiKeyRecord, scopes_allow
from storage.users import OWNER, LastOwner

__all__ = [
    "ADMIN", "MEMBER", "OWNER", "ROLES", "LastOwner", "OwnerRequired", "RoleAboveOwn",
    "RoleRefused", "UnknownRole",
]  # fmt: skip

ADMIN = "admin"
MEMBER = "member"
ROLES = (OWNER, ADMIN, MEMBER)  # highest first
_RANK = {MEMBER: 1, ADMIN: 2, OWNER: 3}


class UnknownRole(InvalidInput, ValueError):
    """A role name that is not one of ROLES."""


class RoleRefused(Refused):
    """The actor's role does not allow this; `code` says which rule refused it."""

    code = "forbidden"


class OwnerRequired(RoleRefused):
    code = "owner_required"


class RoleAboveOwn(RoleRefused):
    code = "role_above_own"


# `keys`: a member makes and revokes their own keys (api.ownership shows them no other's),
# which hold no scope above these.
MEMBER_SCOPES = ("send", "sandbox", "keys")


def scopes_of(role: str) -> tuple[str, ...]:
    """What a role may do, in API key scopes: owners and admins everything (users apart,
    which require_user_manager keeps to owners), members sending and their own keys."""
    return SCOPES if role in (OWNER, ADMIN) else MEMBER_SCOPES


def allows(role: str | None, scope: str) -> bool:
    """Whether a user of `role` may act with `scope` (None: no user, no bound)."""
    return role is None or scopes_allow(scopes_of(role), scope)


def key_allows(key: ApiKeyRecord, scope: str) -> bool:
    """Whether `key` may act with `scope`: its scopes, capped at its owner's role (a key
    never exceeds its user's role, whatever it was given when the user stood higher)."""
    owner = key.owner
    return key.has(scope) and allows(owner.role if owner is not None else None, scope)


def require_scopes_within(role: str, scopes: tuple[str, ...] | list[str]) -> None:
    """RoleAboveOwn unless a user of `role` may hold each of `scopes` (for a key of theirs)."""
    above = [scope for scope in scopes if not allows(role, scope)]
    if above:
        raise RoleAboveOwn(f"a {role} cannot give a key the scopes {', '.join(above)}")


def check_role(role: str) -> str:
    if role not in _RANK:
        raise UnknownRole(f"unknown role {role!r} (one of: {', '.join(ROLES)})")
    return role


def at_least(actor: str, role: str) -> bool:
    """Whether `actor`'s role includes what `role` may do."""
    return _RANK[actor] >= _RANK[role]


def require_user_manager(actor: str | None) -> None:
    """Only owners (and the operator) manage users."""
    if actor is not None and actor != OWNER:
        raise OwnerRequired("only an owner manages users")


def require_may_grant(actor: str | None, role: str) -> None:
    """Nobody grants a role above their own."""
    check_role(role)
    if actor is not None and not at_least(actor, role):
        raise RoleAboveOwn(f"a {actor} cannot grant the {role} role")


def require_may_touch(actor: str | None, target: str) -> None:
    """Nobody changes a user whose role is above their own (an admin, an owner)."""
    if actor is not None and not at_least(actor, target):
        raise RoleAboveOwn(f"a {actor} cannot change a {target}")
