"""Events: what happened to a message, one row per change, written with the change itself.

`gateway.queue.store` adds the rows to the transaction of each state change (the outbox); the
webhook sender and GET /v1/messages/{id} read them, in the public shape storage.event_json
gives them. Every event names one recipient, except `throttled`, which is about the pool a
message met.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import insert

from storage.models import Event, MessageMeta

if TYPE_CHECKING:
    from gateway.message import DeliveryResult

E = Event
META = MessageMeta

QUEUED = "queued"
DEFERRED = "deferred"
DELIVERED = "delivered"
BOUNCED = "bounced"
EXPIRED = "expired"
SUPPRESSED = "suppressed"
SANDBOX = "sandbox"
CANCELLED = "cancelled"
COMPLAINT = "complaint"
THROTTLED = "throttled"
POSSIBLE_DUPLICATE = "possible_duplicate"  # no reply after the final dot: may arrive twice
# From reports that came back later (gateway.bounces.effects), with `async: true`: a soft
# bounce (counted) and a policy block (never a suppression). A hard one is `bounced`.
SOFT_BOUNCE = "soft_bounce"
POLICY_BLOCK = "policy_block"
# About an account, pool or domain, not a message (message_id ""): its reputation score
# has just crossed below [reputation] threshold (gateway.reputation.watch), with
# {"reputation": {kind, id, name, score, threshold, window_days, components}}.
REPUTATION_AT_RISK = "reputation_at_risk"
# About a warmup (message_id ""): Postern paused it itself, on a bounce or complaint spike
# or on receivers' throttling replies (gateway.delivery.warmup), written in the pause's
# transaction, with {"warmup": {kind, id, name, reason}}. A person's pause writes none.
WARMUP_PAUSED = "warmup_paused"

# An operator's hold and release (postsuper -h/-H), one per recipient still pending.
HELD = "held"
RELEASED = "released"

TYPES = (
    QUEUED,
    DEFERRED,
    DELIVERED,
    BOUNCED,
    EXPIRED,
    SUPPRESSED,
    SANDBOX,
    CANCELLED,
    COMPLAINT,
    THROTTLED,
    POSSIBLE_DUPLICATE,
    SOFT_BOUNCE,
    POLICY_BLOCK,
    REPUTATION_AT_RISK,
    WARMUP_PAUSED,
    HELD,
    RELEASED,
)
# The last outcome a recipient can have: what a `final_only` webhook receives.
FINAL = frozenset({DELIVERED, BOUNCED, EXPIRED, SUPPRESSED, SANDBOX, CANCELLED})

INSERT_EVENT = insert(E)


def row(
    type_: str,
    message_id: str,
    message_status: str,
    now: float,
    recipient: str | None = None,
    *,
    pool: str | None = None,
    result: DeliveryResult | None = None,
    attempt: int = 0,
    response: str | None = None,
    detail: str | None = None,
) -> dict[str, Any]:
    """The `event` row for one change (give `result` for an upstream's answer; `detail`,
    JSON object text, is merged into the public event)."""
    return {
        "type": type_,
        "message_id": message_id,
        "recipient": recipient,
        "pool": pool,
        "code": result.code if result else None,
        "enhanced": result.enhanced if result else None,
        "response": result.text[:1000] if result else response,
        "attempt": attempt,
        "message_status": message_status,
        "created_at": now,
        "detail": detail,
        "upstream_seconds": result.hop.transfer if result and result.hop else None,
    }


def result_type(result: DeliveryResult, expired: bool = False) -> str:
    # Imported here: the CLI reads TYPES (`postern webhooks add --event`) without delivery's
    # dataclasses; delivery has gateway.message loaded already.
    from gateway.message import Outcome

    if expired:
        return EXPIRED
    return {
        Outcome.DELIVERED: DELIVERED,
        Outcome.DEFERRED: DEFERRED,
        Outcome.BOUNCED: BOUNCED,
    }[result.outcome]
