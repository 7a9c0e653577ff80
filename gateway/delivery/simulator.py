"""The simulator: recipients at simulator.postern.invalid get a scripted outcome, no upstream.

Mail to them runs the whole pipeline (intake, storage, events, webhooks, suppression) so an
integration can be tested end to end without sending anything anywhere. `.invalid` is
reserved (RFC 2606): no real mailbox can live there.

    delivered@   delivered
    bounced@     hard bounce (550 5.1.1): suppressed, like a real one
    deferred@    deferred on the first two attempts, delivered on the third
    complained@  delivered, then a `complaint` event and a suppression
    anything@    550 5.1.0 (an unknown simulator address; not suppressed)

A `+tag` after the local part is ignored (`bounced+signup@...`), so tests can vary addresses.
"""

from __future__ import annotations

from gateway.message import SIMULATOR_POOL, DeliveryResult, Outcome

DOMAIN = "simulator.postern.invalid"
POOL = SIMULATOR_POOL  # the pool name its results and events carry

_DELIVERED = DeliveryResult(Outcome.DELIVERED, 250, "2.0.0", "simulated delivery")
_BOUNCED = DeliveryResult(Outcome.BOUNCED, 550, "5.1.1", "simulated hard bounce")
_DEFERRED = DeliveryResult(Outcome.DEFERRED, 451, "4.3.0", "simulated deferral")
_COMPLAINED = DeliveryResult(
    Outcome.DELIVERED, 250, "2.0.0", "simulated delivery, then a complaint", complaint=True
)
_UNKNOWN = DeliveryResult(
    Outcome.BOUNCED,
    550,
    "5.1.0",
    "unknown simulator address: use delivered@, bounced@, deferred@ or complained@",
)
DEFERRALS = 2  # deferred@ is deferred this many times before it is delivered


def handles(recipient: str) -> bool:
    return recipient.rpartition("@")[2].lower().rstrip(".") == DOMAIN


def outcome(recipient: str, attempts: int) -> DeliveryResult:
    """The scripted result of attempt number `attempts + 1` for a simulator recipient."""
    local = recipient.rpartition("@")[0].lower().partition("+")[0]
    if local == "deferred":
        return _DEFERRED if attempts < DEFERRALS else _DELIVERED
    return {
        "delivered": _DELIVERED,
        "bounced": _BOUNCED,
        "complained": _COMPLAINED,
    }.get(local, _UNKNOWN)
