"""The "You've been invited" banner: a signed-in person's pending invitations, shown on every
page. One indexed read (invitations by invitee address and status) at most every CACHE_SECONDS
per user, so a busy dashboard does not read them on every page; answering one forgets the
cached list at once, so the banner never offers an invitation already answered here.
"""

from __future__ import annotations

import time

from api.auth import Caller
from api.context import ApiContext
from gateway.people.invitations import Invitations, Received

CACHE_SECONDS = 2.0
MAX_CACHED = 4096  # users; past it, expired entries go (a bound on memory, not on speed)

_cache: dict[str, tuple[float, list[Received]]] = {}


def domain(ctx: ApiContext) -> Invitations:
    """The invitations as POST /mail/invitations/accept|decline use them."""
    return Invitations(ctx.db, ctx.people.users if ctx.people is not None else None)


async def pending(ctx: ApiContext, caller: Caller) -> list[Received]:
    """The caller's pending invitations (none for a caller without a user)."""
    if caller.user is None:
        return []
    now = time.monotonic()
    cached = _cache.get(caller.user.id)
    if cached is not None and cached[0] > now:
        return cached[1]
    found = await domain(ctx).pending(caller.user)
    if len(_cache) >= MAX_CACHED:
        _forget_expired(now)
    _cache[caller.user.id] = (now + CACHE_SECONDS, found)
    return found


def forget(user_id: str) -> None:
    """After an answer: the next page reads the list again."""
    _cache.pop(user_id, None)


def _forget_expired(now: float) -> None:
    for user_id in [key for key, (until, _) in _cache.items() if until <= now]:
        del _cache[user_id]
    if len(_cache) >= MAX_CACHED:
        _cache.clear()
