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
from storage.keys import SCOPES
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


MEMBER_SCOPES = ("send", "sandbox")


def scopes_of(role: str) -> tuple[str, ...]:
    """What a role may do, in API key scopes: owners and admins everything (users apart,
    which require_user_manager keeps to owners), members sending."""
    return SCOPES if role in (OWNER, ADMIN) else MEMBER_SCOPES


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
