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
from storage.users import OWNER, LastOwner

__all__ = ["ADMIN", "MEMBER", "OWNER", "ROLES", "LastOwner", "RoleRefused", "UnknownRole"]

ADMIN = "admin"
MEMBER = "member"
ROLES = (OWNER, ADMIN, MEMBER)  # highest first
_RANK = {MEMBER: 1, ADMIN: 2, OWNER: 3}


class UnknownRole(InvalidInput, ValueError):
    """A role name that is not one of ROLES."""


class RoleRefused(Refused):
    """The actor's role does not allow this; `code` says which rule refused it."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


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
        raise RoleRefused("only an owner manages users", code="owner_required")


def require_may_grant(actor: str | None, role: str) -> None:
    """Nobody grants a role above their own."""
    check_role(role)
    if actor is not None and not at_least(actor, role):
        raise RoleRefused(f"a {actor} cannot grant the {role} role", code="role_above_own")


def require_may_touch(actor: str | None, target: str) -> None:
    """Nobody changes a user whose role is above their own (an admin, an owner)."""
    if actor is not None and not at_least(actor, target):
        raise RoleRefused(f"a {actor} cannot change a {target}", code="role_above_own")
