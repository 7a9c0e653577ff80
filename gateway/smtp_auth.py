"""SMTP AUTH PLAIN/LOGIN with an API key as the password (the user name is ignored).

aiosmtpd checks credentials through a synchronous callback, but a key lookup needs the
database: the callback only notes what was offered, and the mechanism methods, which are
async, check it. Only a key that may send (or send to the sandbox) logs in. AUTH is offered
over TLS, or without it from a loopback address only. Every failed attempt from a client
address waits longer before its 535 (doubling up to MAX_DELAY), so guessing is slow, and is
logged before that wait (with the user name and the key's id when known, never the key).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from typing import Any

from aiosmtpd.smtp import AuthResult, LoginPassword, Session

from gateway.message import Sender
from storage.keys import KEY_PREFIX, ApiKeyRecord, KeyStore

BASE_DELAY = 0.25
MAX_DELAY = 8.0
FORGET_AFTER = 600.0  # seconds without a failure after which a client starts afresh
INVALID = "535 5.7.8 Authentication credentials invalid"  # aiosmtpd's own words


class AuthThrottle:
    """Failed AUTH attempts per client address, and how long the next 535 waits."""

    def __init__(self) -> None:
        self._failures: dict[str, tuple[int, float]] = {}

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


def client_of(host: str) -> str:
    """The unit of AUTH throttling: an IPv4 address, or an IPv6 /64 (one subscriber's
    network: a client could otherwise take a fresh address for every guess)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if not isinstance(address, ipaddress.IPv6Address):
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


def is_loopback(peer: Any) -> bool:
    host = peer[0] if isinstance(peer, tuple) and peer else str(peer or "")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def sender_of(session: Session) -> Sender | None:
    """The API key the session logged in with, as intake's Sender (None: no AUTH)."""
    key = session.auth_data
    if not isinstance(key, ApiKeyRecord):
        return None
    return Sender(key.id, key.may_send, key.may_sandbox, key.ip_pools)


class ApiKeyAuth:
    """Mixin for aiosmtpd's SMTP: AUTH PLAIN/LOGIN checked against the API keys."""

    session: Session | None
    _offered: LoginPassword | None = None

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
        secret = offered.password.decode("utf-8", "replace")
        key = await keys.authenticate(secret) if keys is not None else None
        if key is not None and (key.may_send or key.may_sandbox):
            return AuthResult(success=True, auth_data=key)
        user = _shown_user(offered.login.decode("utf-8", "replace"), secret)
        known = f"key={key.id} (no send scope)" if key is not None else "key=unknown"
        details = f"mechanism={mechanism} user=<{user}> {known}"
        self.log_refusal(INVALID, details)  # type: ignore[attr-defined]
        peer = self.session.peer if self.session is not None else None
        host = peer[0] if isinstance(peer, tuple) and peer else str(peer)
        await asyncio.sleep(throttle.failed(host))
        return AuthResult(success=False, handled=False, message=INVALID)


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
