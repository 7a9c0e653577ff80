"""Who is calling: `Authorization: Bearer msk_...` -> an API key record, its scopes, and a
per-key rate limit (a token bucket per node, sized by `[http] rate_limit`, that the SMTP
listener draws on too: gateway.security.ratelimit).
"""

from __future__ import annotations

from starlette.requests import Request

from api.errors import Forbidden, RateLimited, Unauthorized
from gateway.security.ratelimit import RateLimiter
from storage.keys import ApiKeyRecord, KeyStore


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
