"""SMTP AUTH PLAIN/LOGIN with an API key as the password (the user name is ignored).

aiosmtpd checks credentials through a synchronous callback, but a key lookup needs the
database: the callback only notes what was offered, and the mechanism methods, which are
async, check it. Only a key that may send (or send to the sandbox) logs in. AUTH is offered
over TLS, or without it from a loopback address only. Every failure is logged before its
wait (with the user name and the key's id when known, never the key).

Guessing is bounded three ways: every failed attempt from a client address waits longer
before its 535 (doubling up to MAX_DELAY); a session gets MAX_SESSION_FAILURES, then 421 and
the connection closes; and a client address has a budget of failures across all its
connections (`[smtp] auth_failures_per_address`), as may every address together
(`auth_failures_per_minute`). A guess takes from the budgets before it is checked, so
parallel connections cannot overdraw them; over budget, AUTH is 421 4.7.0 unchecked.

A logged-in session keeps the key's rights only while the key does: at every MAIL the key
must still be unrevoked, its owner (if it has one) not disabled (both seen within
storage.keys.CACHE_SECONDS, from any node), and within its rate (`[http] rate_limit`, one
bucket per key shared with the HTTP API). A key with an owner never sends beyond the
owner's role (gateway.people.roles.key_allows), as that role is at each MAIL.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from typing import Any

from aiosmtpd.smtp import AuthResult, LoginPassword, Session

from gateway.message import Sender
from gateway.people.roles import key_allows
from gateway.security.ratelimit import RateLimiter, client_of
from gateway.smtpd import replies
from storage.keys import KEY_PREFIX, SEND_SCOPES, ApiKeyRecord, KeyStore

BASE_DELAY = 0.25
MAX_DELAY = 8.0
FORGET_AFTER = 600.0  # seconds without a failure after which a client starts afresh
MAX_SESSION_FAILURES = 3


class AuthThrottle:
    """Failed AUTH attempts per client address: how long the next 535 waits, and the
    budgets of failures (per address, and optionally for everyone together)."""

    def __init__(self, per_address: str = "30/h", per_minute: int = 0) -> None:
        self._failures: dict[str, tuple[int, float]] = {}
        self._budget = RateLimiter(per_address)
        self._everyone = RateLimiter(f"{per_minute}/m") if per_minute else None

    def admit(self, host: str) -> bool:
        """Take one guess from the budgets before the credentials are checked; False when
        one of them is spent (the guess must not be checked)."""
        client = client_of(host)
        if self._budget.take(client) > 0:
            return False
        if self._everyone is not None and self._everyone.take("") > 0:
            self._budget.give_back(client)
            return False
        return True

    def passed(self, host: str) -> None:
        """The admitted guess was right, or could not be checked: it costs nothing."""
        self._budget.give_back(client_of(host))
        if self._everyone is not None:
            self._everyone.give_back("")

    def failed(self, host: str) -> float:
        """Note a failure from `host`; how long its 535 waits. Only this client's own
        failures count: another address is not slowed down by them."""
        host = client_of(host)
        now = time.monotonic()
        count, last = self._failures.get(host, (0, now))
        count = 1 if now - last > FORGET_AFTER else count + 1
        if len(self._failures) > 50_000:  # bounded memory under a spray of addresses
            self._forget(now)
        self._failures[host] = (count, now)
        return min(MAX_DELAY, BASE_DELAY * 2 ** (count - 1))

    def _forget(self, now: float) -> None:
        """Drop the clients that stopped failing, then (still too many) those with the fewest
        and oldest failures: a spray of one-off addresses must not wipe the count of a
        client that keeps guessing."""
        self._failures = {
            host: entry for host, entry in self._failures.items() if now - entry[1] <= FORGET_AFTER
        }
        if len(self._failures) > 25_000:
            recent = sorted(self._failures.items(), key=lambda item: item[1])[-25_000:]
            self._failures = dict(recent)


def sender_of(session: Session) -> Sender | None:
    """The API key the session logged in with, as intake's Sender (None: no AUTH)."""
    key = session.auth_data
    if not isinstance(key, ApiKeyRecord):
        return None
    return key_sender(key)


def key_sender(key: ApiKeyRecord) -> Sender:
    """What `key` may submit, capped at its owner's role, and whose the mail is."""
    may_send = any(key_allows(key, scope) for scope in SEND_SCOPES)
    may_sandbox = key_allows(key, "sandbox")
    role = key.owner.role if key.owner is not None else None
    return Sender(key.id, may_send, may_sandbox, key.ip_pools, user_id=key.user_id, role=role)


async def key_refusal(
    session: Session, keys: KeyStore | None, limiter: RateLimiter | None
) -> str | None:
    """At MAIL: the reply refusing it when the session's key was revoked (or its owner
    disabled) since it logged in (the session is then logged out: AUTH again with a valid
    key) or is over its rate."""
    key = session.auth_data
    if not isinstance(key, ApiKeyRecord):
        return None
    current = await keys.current(key.id) if keys is not None else None
    if current is None:
        session.authenticated = False
        session.auth_data = session.login_data = None
        return replies.AUTH_KEY_REVOKED
    session.auth_data = current  # its owner's role as it is now
    wait = limiter.take(key.id) if limiter is not None else 0.0
    return replies.AUTH_KEY_RATE.format(seconds=math.ceil(wait)) if wait > 0 else None


class ApiKeyAuth:
    """Mixin for aiosmtpd's SMTP: AUTH PLAIN/LOGIN checked against the API keys."""

    session: Session | None
    _offered: LoginPassword | None = None
    _auth_failures = 0  # in this connection (STARTTLS does not reset it)

    def _auth_backend(self) -> tuple[KeyStore | None, AuthThrottle]:
        handler = self._handler  # type: ignore[attr-defined]
        return handler.keys, handler.login_throttle

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        self._offered = auth_data if isinstance(auth_data, LoginPassword) else None
        return AuthResult(success=False, handled=False)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        self._offered = None
        result = await super().auth_PLAIN(_, args)  # type: ignore[misc]
        return await self._verified(result, "PLAIN")

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        self._offered = None
        result = await super().auth_LOGIN(_, args)  # type: ignore[misc]
        return await self._verified(result, "LOGIN")

    async def _verified(self, result: AuthResult, mechanism: str) -> AuthResult:
        offered, self._offered = self._offered, None
        if offered is None:
            return result  # malformed or aborted: aiosmtpd has answered already
        keys, throttle = self._auth_backend()
        peer = self.session.peer if self.session is not None else None
        host = peer[0] if isinstance(peer, tuple) and peer else str(peer)
        if not throttle.admit(host):
            await self._hang_up(replies.AUTH_OVER_BUDGET)
            return AuthResult(success=False, handled=True)
        secret = offered.password.decode("utf-8", "replace")
        try:
            key = await keys.authenticate(secret) if keys is not None else None
        except Exception as error:  # the database is down: not the client's failure
            throttle.passed(host)
            # Only the error's class: a database error can quote the query's parameters.
            details = f"mechanism={mechanism} key lookup failed: {type(error).__name__}"
            self.log_refusal(replies.AUTH_UNAVAILABLE, details)  # type: ignore[attr-defined]
            return AuthResult(success=False, handled=False, message=replies.AUTH_UNAVAILABLE)
        grants = key_sender(key) if key is not None else None
        if key is not None and grants is not None and (grants.may_send or grants.may_sandbox):
            throttle.passed(host)
            return AuthResult(success=True, auth_data=key)
        user = _shown_user(offered.login.decode("utf-8", "replace"), secret)
        known = f"key={key.id} (no send scope)" if key is not None else "key=unknown"
        details = f"mechanism={mechanism} user=<{user}> {known}"
        self.log_refusal(replies.AUTH_INVALID, details)  # type: ignore[attr-defined]
        await asyncio.sleep(throttle.failed(host))
        self._auth_failures += 1
        if self._auth_failures >= MAX_SESSION_FAILURES:
            # The 535 this attempt earned, then the unsolicited 421 that ends the session.
            await self.push(replies.AUTH_INVALID)  # type: ignore[attr-defined]
            await self._hang_up(replies.AUTH_TOO_MANY_FAILURES)
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False, message=replies.AUTH_INVALID)

    async def _hang_up(self, reply: str) -> None:
        """Answer `reply` and close the connection (as aiosmtpd's QUIT does)."""
        await self.push(reply)  # type: ignore[attr-defined]
        coroutine = self._handler_coroutine  # type: ignore[attr-defined]
        if coroutine is not None:
            coroutine.cancel()
        if self.transport is not None:  # type: ignore[attr-defined]
            self.transport.close()  # type: ignore[attr-defined]


_USER_NAME = re.compile(r"[A-Za-z0-9._%+@-]{1,64}")


def _shown_user(login: str, secret: str) -> str:
    """The user name for the log, unless it may be a key or a password (pasted into the
    wrong field): only a short plain name that is no part of the secret is shown."""
    if not login:
        return ""
    if KEY_PREFIX in login.lower() or (secret and (secret in login or login in secret)):
        return "(hidden: looks like a key)"
    if not _USER_NAME.fullmatch(login) or _token_like(login):
        return "(hidden: not a plain user name)"
    return login


def _token_like(login: str) -> bool:
    """Long, without an @, mixing letters and digits: a generated secret, not a name."""
    return (
        len(login) >= 20
        and "@" not in login
        and any(c.isdigit() for c in login)
        and any(c.isalpha() for c in login)
    )
