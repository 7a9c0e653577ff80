"""Webhook secrets and signatures (Stripe/Svix style).

    Postern-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>

The key is the whole secret string as shown at creation (`whsec_...`, UTF-8). Signing the
timestamp with the body lets a receiver refuse replays of an old request. The secret is
stored AES-GCM encrypted (gateway.security.secrets) and bound to the webhook's id, like pool
passwords.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from storage.dkim_keys import Cipher

PREFIX = "whsec_"
HEADER = "Postern-Signature"


def new_secret() -> str:
    """`whsec_` + 32 random bytes, urlsafe base64."""
    return PREFIX + secrets.token_urlsafe(32)


def seal(box: Cipher, webhook_id: str, secret: str) -> str:
    return box.seal(secret, "webhook", webhook_id, "secret")


def unseal(box: Cipher, webhook_id: str, token: str) -> str:
    """The secret in clear; raises the box's error when it cannot be decrypted."""
    return box.unseal(token, "webhook", webhook_id, "secret").decode("utf-8")


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The header value for `body` sent at `timestamp`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, now: float, tolerance: float = 300.0) -> bool:
    """True when `header` signs `body` with `secret` within `tolerance` seconds of `now`."""
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = signature(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))
