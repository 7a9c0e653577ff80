"""SMTP AUTH PLAIN/LOGIN with an API key as the password (the user name is ignored).

aiosmtpd checks credentials through a synchronous callback, but a key lookup needs the
database: the callback only notes what was offered, and the mechanism methods, which are
async, check it. Only a key that may send (or send to the sandbox) logs in. AUTH is offered
over TLS, or without it from a loopback address only. Every failure is logged before its
wait (with the user name and the key's id when known, never the key).

Guessing is bounded three ways: every failed attempt from a client address waits longer
before its 535 (doubling with each of its failures still in its budget's window, up to
MAX_DELAY); a session gets MAX_SESSION_FAILURES, then 421 and the connection closes; and a
client address has a budget of failures across all its connections (`[smtp]
auth_failures_per_address`), as may every address together (`auth_failures_per_minute`).
The budgets are counted in the database (storage.auth_failures), so they hold across the
workers of a node and across nodes. A guess takes from the budgets before it is checked, so
parallel connections cannot overdraw them; over budget, AUTH is 421 4.7.0 unchecked; with
the database failing, 454 4.7.0 unchecked.

A logged-in session keeps the key's rights only while the key does: at every MAIL the key
must still be unrevoked, its owner (if it has one) not disabled (both seen within
storage.keys.CACHE_SECONDS, from any node), and within its rate (`[http] rate_limit`, one
bucket per key shared with the HTTP API and the node's other workers). A key with an owner
never sends beyond the owner's role (gateway.people.roles.key_allows), as that role is at
each MAIL.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import AuthResult, LoginPassword, Session

from gateway.message import Sender
from gateway.people.roles import key_allows
from gateway.rates import parse_rate
from gateway.security.ratelimit import RateLimiter, client_of
from gateway.smtpd import replies
from storage.auth_failures import EVERYONE, AuthFailures, Budget, Spent, address_subject
from storage.keys import KEY_PREFIX, SEND_SCOPES, ApiKeyRecord, KeyStore

BASE_DELAY = 0.25
MAX_DELAY = 8.0
MAX_SESSION_FAILURES = 3
MAX_SPENT = 10_000  # budgets remembered as spent (a cache: storage is the authority)
SPENT_MEMORY = 5.0  # seconds a spent budget is refused from memory

log = logging.getLogger("postern.smtp")


@dataclass(frozen=True)
class Guess:
    """An admitted guess: the budget rows it took, and how long its 535 waits if it fails."""

    rows: tuple[int, ...]
    delay: float


class AuthThrottle:
    """The budgets of failed AUTH attempts, per client address (an IPv4 address or an IPv6
    /64, gateway.security.ratelimit.client_of) and optionally for everyone together, kept in
    storage; `failures` None: nobody can log in (every AUTH is over budget)."""

    def __init__(
        self, failures: AuthFailures | None, per_address: str = "30/h", per_minute: int = 0
    ) -> None:
        rate = parse_rate(per_address)  # the one grammar, as for pools
        if rate is None:
            raise ValueError("the AUTH failure budget per address cannot be empty")
        self._failures = failures
        self._per_address = rate
        self._everyone = Budget(EVERYONE, per_minute, 60.0) if per_minute else None
        # Budgets known spent, until when: further guesses are refused without a database
        # round trip, for SPENT_MEMORY at most (guesses in flight may have spent it, and
        # one found right frees its slot at once: a refusal from here would miss that).
        self._spent: dict[str, float] = {}
        self._returns: set[asyncio.Task[None]] = set()

    async def admit(self, host: str) -> Guess | None:
        """Take one guess from the budgets before the credentials are checked: None when
        one of them is spent (the guess must not be checked). Raises StorageUnavailable
        when the database fails (the guess must not be checked either)."""
        if self._failures is None:
            return None
        now = time.time()
        rate = self._per_address
        budgets = [Budget(address_subject(client_of(host)), rate.count, rate.window)]
        if self._everyone is not None:
            budgets.append(self._everyone)
        if any(self._spent.get(budget.subject, 0.0) > now for budget in budgets):
            return None
        verdict = await self._failures.take(budgets, now)
        if isinstance(verdict, Spent):
            self._note_spent(verdict, now)
            return None
        return Guess(verdict.rows, failure_delay(verdict.used))

    def passed(self, guess: Guess) -> None:
        """The admitted guess was right, or could not be checked: it costs nothing. Its rows
        are given back behind the answer (the client does not wait for that write; if it
        fails, the guess counts as a failure)."""
        if self._failures is None or not guess.rows:
            return
        task = asyncio.get_running_loop().create_task(self._give_back(guess.rows))
        self._returns.add(task)
        task.add_done_callback(self._returns.discard)

    async def _give_back(self, rows: tuple[int, ...]) -> None:
        assert self._failures is not None
        try:
            await self._failures.give_back(rows)
        except Exception as error:  # it counts as a failure: the safe side
            log.warning("giving back an AUTH budget failed: %s", type(error).__name__)

    def _note_spent(self, spent: Spent, now: float) -> None:
        if len(self._spent) >= MAX_SPENT:  # bounded memory: forget what is over, then all
            self._spent = {name: until for name, until in self._spent.items() if until > now}
            if len(self._spent) >= MAX_SPENT:
                self._spent.clear()  # only a cache: storage still refuses
        self._spent[spent.subject] = min(spent.until, now + SPENT_MEMORY)


def failure_delay(used: int) -> float:
    """How long a failure waits before its 535, after `used` others from its address
    within its budget's window: BASE_DELAY, doubling with each, up to MAX_DELAY."""
    return min(MAX_DELAY, BASE_DELAY * 2 ** min(used, 16))


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
        try:
            guess = await throttle.admit(host)
        except Exception as error:  # the database is down: the guess stays unchecked
            return self._unavailable(mechanism, "failure budget", error)
        if guess is None:
            await self._hang_up(replies.AUTH_OVER_BUDGET)
            return AuthResult(success=False, handled=True)
        secret = offered.password.decode("utf-8", "replace")
        try:
            key = await keys.authenticate(secret) if keys is not None else None
        except Exception as error:  # not the client's failure
            throttle.passed(guess)
            return self._unavailable(mechanism, "key lookup", error)
        grants = key_sender(key) if key is not None else None
        if key is not None and grants is not None and (grants.may_send or grants.may_sandbox):
            throttle.passed(guess)
            return AuthResult(success=True, auth_data=key)
        user = _shown_user(offered.login.decode("utf-8", "replace"), secret)
        known = f"key={key.id} (no send scope)" if key is not None else "key=unknown"
        details = f"mechanism={mechanism} user=<{user}> {known}"
        self.log_refusal(replies.AUTH_INVALID, details)  # type: ignore[attr-defined]
        await asyncio.sleep(guess.delay)
        self._auth_failures += 1
        if self._auth_failures >= MAX_SESSION_FAILURES:
            # The 535 this attempt earned, then the unsolicited 421 that ends the session.
            await self.push(replies.AUTH_INVALID)  # type: ignore[attr-defined]
            await self._hang_up(replies.AUTH_TOO_MANY_FAILURES)
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False, message=replies.AUTH_INVALID)

    def _unavailable(self, mechanism: str, what: str, error: Exception) -> AuthResult:
        """454 4.7.0: try again later (the database failed; the guess was not checked)."""
        # Only the error's class: a database error can quote the query's parameters.
        details = f"mechanism={mechanism} {what} failed: {type(error).__name__}"
        self.log_refusal(replies.AUTH_UNAVAILABLE, details)  # type: ignore[attr-defined]
        return AuthResult(success=False, handled=False, message=replies.AUTH_UNAVAILABLE)

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
