"""Sessions: a random token in the browser, its SHA-256 in storage.

A session slides: each use moves its end to `idle` from now, never past `absolute` from its
start. Storing the new end costs a write, so a session is touched only when its end would
move by more than TOUCH_EVERY (a request a second stays one read). A resolved session is
kept in memory for CACHE_SECONDS, so a burst of requests costs one read: a session ended on
another node stops opening here within that time, one ended on this node at once.

Rotation (at login, on a role change) replaces the session in one transaction: the old token
stops working as the new one starts. A session records the role it was opened for; the
first request after the user's role changed gets it rotated (`LoggedIn.stale_role`). The
clock is passed in, so that expiry is tested without waiting.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from storage import sessions as stored
from storage.db import Database
from storage.sessions import SessionRecord
from storage.users import UserRecord

log = logging.getLogger("postern.people")

TOKEN_BYTES = 32  # secrets.token_urlsafe(32): 43 characters
TOKEN_MAX = 128  # longer is no token of ours: refused before hashing
TOUCH_EVERY = 60.0
CACHE_SECONDS = 2.0
CACHE_MAX = 10_000


@dataclass(frozen=True)
class Lifetimes:
    idle: float = 12 * 3600.0
    absolute: float = 7 * 86400.0


@dataclass(frozen=True)
class LoggedIn:
    """A live session and its (active) user."""

    session: SessionRecord
    user: UserRecord

    @property
    def stale_role(self) -> bool:
        """The user's role changed since the session began: it must be rotated."""
        return self.session.role != self.user.role


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


class Sessions:
    def __init__(
        self,
        db: Database,
        lifetimes: Lifetimes | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self.lifetimes = lifetimes or Lifetimes()
        self._clock = clock
        self._cache: dict[str, tuple[float, LoggedIn]] = {}  # token hash -> (until, it)

    async def start(
        self, user: UserRecord, user_agent: str = "", ip: str = "", replaces: str | None = None
    ) -> tuple[str, SessionRecord]:
        """A new session for `user` (ending `replaces`, if given): the token for the cookie,
        shown this once, and the stored record."""
        token = new_token()
        record = await stored.create_session(
            self._db, user.id, hash_token(token), now=self._clock(),
            idle=self.lifetimes.idle, absolute=self.lifetimes.absolute,
            user_agent=user_agent, ip=ip, replaces=replaces, role=user.role,
        )  # fmt: skip
        if replaces is not None:
            self._forget(replaces)
        return token, record

    async def resolve(self, token: str) -> LoggedIn | None:
        """The live session this token opens, with its active user, or None; slides it."""
        if not token or len(token) > TOKEN_MAX:
            return None
        digest, now = hash_token(token), self._clock()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now and cached[1].session.expires_at > now:
            return cached[1]
        found = await stored.find_session(self._db, digest, now)
        if found is None or not found[1].is_active:
            self._cache.pop(digest, None)
            return None
        session, user = found
        slid = min(now + self.lifetimes.idle, session.absolute_expires_at)
        if slid - session.expires_at > TOUCH_EVERY:
            await stored.touch_session(self._db, session.id, now=now, idle=self.lifetimes.idle)
        logged_in = LoggedIn(session, user)
        if len(self._cache) >= CACHE_MAX:  # bounded: drop everything rather than grow
            self._cache.clear()
        self._cache[digest] = (now + CACHE_SECONDS, logged_in)
        return logged_in

    async def rotate(self, logged_in: LoggedIn) -> tuple[str, LoggedIn]:
        """Replace the session with a new one for the same user (their role as it is now),
        ending no later than the old one would have: a rotation is no new login."""
        old, now = logged_in.session, self._clock()
        token = new_token()
        record = await stored.create_session(
            self._db, logged_in.user.id, hash_token(token), now=now,
            idle=self.lifetimes.idle, absolute=max(0.0, old.absolute_expires_at - now),
            user_agent=old.user_agent, ip=old.ip, replaces=old.id, role=logged_in.user.role,
        )  # fmt: skip
        self._forget(old.id)
        return token, LoggedIn(record, logged_in.user)

    async def end(self, session_id: str, user_id: str | None = None) -> bool:
        """End one session (only `user_id`'s, when given: a user revoking their own)."""
        ended = await stored.revoke_session(self._db, session_id, user_id)
        if ended:
            self._forget(session_id)
        return ended

    async def end_all(self, user_id: str, keep: str | None = None) -> int:
        ended = await stored.revoke_user_sessions(self._db, user_id, keep)
        self._cache = {
            digest: entry
            for digest, entry in self._cache.items()
            if entry[1].user.id != user_id or entry[1].session.id == keep
        }
        return ended

    def forget_user(self, user_id: str) -> None:
        """Read the user's sessions afresh at their next use (their role or state changed)."""
        self._cache = {d: e for d, e in self._cache.items() if e[1].user.id != user_id}

    def _forget(self, session_id: str) -> None:
        self._cache = {d: e for d, e in self._cache.items() if e[1].session.id != session_id}

    async def list(self, user_id: str) -> list[SessionRecord]:
        return await stored.list_user_sessions(self._db, user_id, self._clock())

    async def purge(self) -> int:
        return await stored.purge_expired(self._db, self._clock())


async def purge_expired_sessions(sessions: Sessions) -> None:
    """Delete the sessions past their end (the process runs it as a loop: idempotent, so every
    node may)."""
    removed = await sessions.purge()
    if removed:
        log.info("purged %d expired sessions", removed)
