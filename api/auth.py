"""Who is calling: `Authorization: Bearer msk_...` -> an API key record, its scopes, and a
per-key rate limit (a token bucket per node, sized by `[http] rate_limit`).
"""

from __future__ import annotations

import time

from starlette.requests import Request

from api.errors import Forbidden, RateLimited, Unauthorized
from gateway.rates import parse_rate
from storage.keys import ApiKeyRecord, KeyStore


class RateLimiter:
    """Token buckets, one per API key: `count` requests of burst, refilled over the rate's
    window (gateway.rates' grammar, as for pools)."""

    def __init__(self, rate: str) -> None:
        parsed = parse_rate(rate)
        if parsed is None:
            raise ValueError("an API rate limit cannot be empty")
        self.capacity = float(parsed.count)
        self.per_second = parsed.per_second
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, at)

    def take(self, key_id: str) -> float:
        """0.0 when the request may go ahead, else the seconds until it could."""
        now = time.monotonic()
        tokens, at = self._buckets.get(key_id, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - at) * self.per_second)
        if tokens >= 1.0:
            self._buckets[key_id] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key_id] = (tokens, now)
        return (1.0 - tokens) / self.per_second


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def authenticate(
    request: Request, keys: KeyStore, limiter: RateLimiter, scope: str | None = None
) -> ApiKeyRecord:
    """The calling key (401 without a valid one, 429 over its rate, 403 without `scope`)."""
    secret = bearer(request)
    key = await keys.authenticate(secret) if secret else None
    if key is None:
        raise Unauthorized()
    request.state.key_id = key.id  # for the mail log's line of a refused send
    wait = limiter.take(key.id)
    if wait > 0:
        raise RateLimited(wait)
    if scope is not None and not key.has(scope):
        raise Forbidden(f"this API key lacks the {scope!r} scope")
    return key
