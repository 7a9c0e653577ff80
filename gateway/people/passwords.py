"""Passwords: argon2id through argon2-cffi, verified off the event loop.

The parameters are OWASP's for argon2id (19 MiB, 2 passes, 1 lane: its Password Storage Cheat
Sheet's first choice): about 25-35 ms a verification on one core here (bench/login.py), which
the issue's budget (about 50 ms a login) allows. RFC 9106's low-memory profile (64 MiB, 3
passes, 4 lanes) cost 150-200 ms here, four lanes on two cores: a login endpoint that costs
that much is a lever for anyone who wants to burn CPU. A hash made with other parameters
still verifies, and says it needs a rehash (the login that proved the password stores a new
one). An unknown user's login verifies a dummy hash made with the same parameters, so it
costs what a known user's does.
"""

from __future__ import annotations

import asyncio
import secrets

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError
from argon2.profiles import Parameters

from gateway.errors import InvalidInput

PROFILE = Parameters(
    type=Type.ID, version=19, salt_len=16, hash_len=32, time_cost=2, memory_cost=19_456,
    parallelism=1,
)  # fmt: skip
MIN_LENGTH = 12
MAX_LENGTH = 1024  # argon2 reads all of it: a bound on what a request can make it hash
PARALLEL = 2  # verifications at once per process: each holds 19 MiB for its duration


class WeakPassword(InvalidInput):
    """A new password that is too short, too long, or carries control characters."""


def check_new(password: str) -> str:
    """The password, if it may be set; WeakPassword (the reason) if not."""
    if len(password) < MIN_LENGTH:
        raise WeakPassword(f"a password has at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise WeakPassword(f"a password has at most {MAX_LENGTH} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in password):
        raise WeakPassword("a password has no control characters")
    return password


def generate() -> str:
    """A new random password: 24 URL-safe characters (144 bits)."""
    return secrets.token_urlsafe(18)


class Passwords:
    """Hashing and verification with one set of parameters."""

    def __init__(self, hasher: PasswordHasher | None = None, parallel: int = PARALLEL) -> None:
        self.hasher = hasher or PasswordHasher.from_parameters(PROFILE)
        self._slots = asyncio.Semaphore(parallel)
        # Made now, not at the first unknown user's login (which would cost twice).
        self._dummy = self.hasher.hash(secrets.token_urlsafe(18))

    def hash(self, password: str) -> str:
        """The PHC string of `password` (blocks for a whole argon2 run: hash_async in a server)."""
        return self.hasher.hash(password)

    async def hash_async(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(self.hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        """Whether `password` matches `stored`; with None (no such user), the dummy hash is
        verified and the answer is False, after the same work."""
        async with self._slots:
            return await asyncio.to_thread(self._verify, stored, password)

    def _verify(self, stored: str | None, password: str) -> bool:
        if len(password) > MAX_LENGTH:  # never set so: refused after a bounded verification
            stored, password = None, password[:MAX_LENGTH]
        try:
            matched = self.hasher.verify(stored or self._dummy, password)
        except (VerificationError, InvalidHashError):
            return False
        return matched and stored is not None

    def needs_rehash(self, stored: str) -> bool:
        try:
            return self.hasher.check_needs_rehash(stored)
        except InvalidHashError:
            return True
