"""Users: creation, login, role changes, disabling and password resets, each with the role
checks of gateway.people.roles. `actor` is the role of whoever acts (None: the operator at
the console, who may do anything).

A login refusal is one LoginRefused whatever the cause (no such user, wrong password,
disabled), after the same work: one argon2 verification.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from gateway.addresses import envelope_problem, has_control, mailbox_key
from gateway.errors import InvalidInput, Refused
from gateway.people import passwords as pw
from gateway.people import roles
from storage import users as stored
from storage.db import Database
from storage.users import UserNotFound, UserRecord

NAME_MAX = 128


class LoginRefused(Refused):
    """Wrong email or password (the text never says which, nor whether the user exists)."""

    def __init__(self) -> None:
        super().__init__("wrong email or password")


class BadUserField(InvalidInput, ValueError):
    """An email or name that cannot be a user's."""


def check_email(email: str) -> str:
    """The email's mailbox_key form, or BadUserField."""
    problem = "control character" if has_control(email) else envelope_problem(email)
    if problem or "@" not in email:
        raise BadUserField(f"{email!r} is not an email address: {problem or 'no domain'}")
    return mailbox_key(email)


def _may_be_stored(email: str) -> bool:
    """Whether `email` could be a stored user's (looked up) or is no address at all (not
    looked up, but verified against the dummy hash all the same)."""
    if len(email) > 320 or has_control(email):
        return False
    try:
        email.encode("utf-8")  # a lone surrogate cannot be sent to the database
    except UnicodeEncodeError:
        return False
    return True


def check_name(name: str) -> str:
    if len(name) > NAME_MAX or has_control(name):
        raise BadUserField(f"a name has at most {NAME_MAX} printable characters")
    return name.strip()


class Users:
    def __init__(
        self,
        db: Database,
        passwords: pw.Passwords,
        clock: Callable[[], float] = time.time,
        forget: Sequence[Callable[[str], None]] = (),
    ) -> None:
        self._db = db
        self._passwords = passwords
        self._clock = clock
        # Told of each user changed here (the caches of sessions and keys), so that this
        # node never acts on the user as they were; other nodes within their cache's bound.
        self._forget = tuple(forget)

    async def create(
        self, email: str, role: str, password: str, name: str = "", actor: str | None = None
    ) -> UserRecord:
        roles.require_user_manager(actor)
        roles.require_may_grant(actor, role)
        key, name = check_email(email), check_name(name)
        password_hash = await self._passwords.hash_async(pw.check_new(password))
        return await stored.create_user(self._db, key, name, role, password_hash, self._clock())

    async def new_record(self, email: str, role: str, password: str, name: str = "") -> UserRecord:
        """A user checked and hashed but not stored: for a caller that stores it in a
        transaction of its own (accepting an invitation makes the user and the share at once)."""
        key, name = check_email(email), check_name(name)
        password_hash = await self._passwords.hash_async(pw.check_new(password))
        return stored.new_user_record(
            key, name, roles.check_role(role), password_hash, self._clock()
        )

    async def login(self, email: str, password: str) -> UserRecord:
        """The user these credentials are for; LoginRefused after one verification, whatever
        the reason. A hash with outdated parameters is replaced by one with today's."""
        user = await stored.find_by_email(self._db, email) if _may_be_stored(email) else None
        matched = await self._passwords.verify(user.password_hash if user else None, password)
        if user is None or not matched or not user.is_active:
            raise LoginRefused()
        if self._passwords.needs_rehash(user.password_hash):
            new_hash = await self._passwords.hash_async(password)
            user = await stored.set_password(self._db, user.id, new_hash, self._clock())
        return user

    async def find(self, email: str) -> UserRecord:
        user = await stored.find_by_email(self._db, check_email(email))
        if user is None:
            raise UserNotFound(f"no user with email {mailbox_key(email)}")
        return user

    async def change_role(self, user_id: str, role: str, actor: str | None = None) -> UserRecord:
        """Set the role; LastOwner if it would demote the last active owner."""
        roles.require_user_manager(actor)
        target = await self._get(user_id)
        roles.require_may_touch(actor, target.role)
        roles.require_may_grant(actor, role)
        changed = await stored.set_role(self._db, user_id, role, self._clock())
        self._changed(user_id)  # its sessions are rotated at their next request
        return changed

    async def disable(self, user_id: str, actor: str | None = None) -> UserRecord:
        """Disable the user (their sessions stop opening at once); LastOwner for the last
        active owner."""
        roles.require_user_manager(actor)
        target = await self._get(user_id)
        roles.require_may_touch(actor, target.role)
        disabled = await stored.disable_user(self._db, user_id, self._clock())
        self._changed(user_id)
        return disabled

    async def enable(self, user_id: str, actor: str | None = None) -> UserRecord:
        roles.require_user_manager(actor)
        target = await self._get(user_id)
        roles.require_may_touch(actor, target.role)
        enabled = await stored.enable_user(self._db, user_id, self._clock())
        self._changed(user_id)
        return enabled

    async def reset_password(
        self, user_id: str, password: str, actor: str | None = None
    ) -> UserRecord:
        roles.require_user_manager(actor)
        target = await self._get(user_id)
        roles.require_may_touch(actor, target.role)
        password_hash = await self._passwords.hash_async(pw.check_new(password))
        changed = await stored.set_password(
            self._db, user_id, password_hash, self._clock(), end_sessions=True
        )  # logged out everywhere, in the same transaction
        self._changed(user_id)
        return changed

    def _changed(self, user_id: str) -> None:
        for forget in self._forget:
            forget(user_id)

    async def _get(self, user_id: str) -> UserRecord:
        user = await stored.get_user(self._db, user_id)
        if user is None:
            raise UserNotFound(f"no user with id {user_id}")
        return user
