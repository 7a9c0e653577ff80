"""The state machine: what an attempt's results make of a message and its recipients.

    accept ──> queued ──attempt──> delivered            (every recipient accepted)
                 │                 bounced              (every recipient final, one refused
                 │                                       permanently or expired at max_age)
                 └──attempt──> deferred ──attempt──> ... (some recipient got 4xx, a drop
                                                          or a timeout; retried on schedule)

A report that comes back later (gateway.bounces) may turn a recipient the upstream had
taken, or one still pending, into `bounced`: `after_late_bounce` says what that makes of
the message (a delivered one becomes bounced, as if the upstream had refused that
recipient; one whose last pending recipient it was is settled as bounced). A recipient's
first final state is the one that stays: an attempt's result for a recipient a report
bounced while it ran is not taken.

Beside these: `sandbox` (stored final, never attempted), `cancelled` (an operator
stopped it) and `held` (an operator put a queued or deferred message on hold, postsuper -h:
never claimed, never expired, until released back to queued, or to deferred when it was
tried before; the time held is left out of max_age). A recipient is `pending` until its
own result is final, so a retry goes only to those still pending. Pure: no I/O.
gateway.queue.store writes each change in one transaction; gateway.queue.retry says when a
deferred message is due again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from gateway.message import DeliveryResult, Outcome

ACTIVE_STATES = ("queued", "deferred", "held")  # the states of a message with work left


@dataclass(frozen=True)
class Settled:
    """One attempt's results as stored: the message's new status and each recipient's."""

    results: dict[str, DeliveryResult]  # recipient -> result; an expired deferral bounced
    expired: set[str]  # recipients whose deferral expired at max_age
    status: str


def has_deferred(results: Iterable[DeliveryResult]) -> bool:
    """Some recipient is to be tried again (unless the message has expired)."""
    return any(result.outcome is Outcome.DEFERRED for result in results)


def settle(
    results: dict[str, DeliveryResult], retry_at: float | None, any_bounced: bool
) -> Settled:
    """What an attempt makes of the message. `retry_at` is when it is due again; None when
    it is not, so every deferral left expires (the message had its last attempt)."""
    expired: set[str] = set()
    if retry_at is None:
        expired = {rcpt for rcpt, r in results.items() if r.outcome is Outcome.DEFERRED}
        results = {rcpt: expire(result) for rcpt, result in results.items()}
    return Settled(results, expired, message_status(results.values(), retry_at, any_bounced))


def message_status(
    results: Iterable[DeliveryResult], retry_at: float | None, any_bounced: bool = False
) -> str:
    """deferred while due again; delivered when every recipient took it; else bounced."""
    outcomes = {r.outcome for r in results}
    if retry_at is not None:
        return "deferred"
    if outcomes <= {Outcome.DELIVERED} and not any_bounced:
        return "delivered"
    return "bounced"


def recipient_status(result: DeliveryResult) -> str:
    """A deferred recipient stays pending; the others take their outcome's name."""
    return "pending" if result.outcome is Outcome.DEFERRED else result.outcome.value


def expire(result: DeliveryResult) -> DeliveryResult:
    """A deferral past max_age becomes a bounce (5.4.7) that quotes the last reply."""
    if result.outcome is not Outcome.DEFERRED:
        return result
    text = f"expired after max_age; last: {result.describe()}"
    return replace(result, outcome=Outcome.BOUNCED, enhanced="5.4.7", text=text)


def summary(results: dict[str, DeliveryResult]) -> str:
    """The message's last_response: the worst recipient's reply."""
    worst = sorted(results.values(), key=lambda r: r.outcome is Outcome.DELIVERED)
    return worst[0].describe() if worst else ""


def after_late_bounce(status: str, if_nothing_pending: bool = False) -> str | None:
    """A message's status once a report bounced one of its recipients, or None when it
    stays as it is: `delivered` becomes `bounced` (not every recipient took it after all);
    `bounced` stays; a message with work left becomes `bounced` when that was its last
    pending recipient and no worker holds it, as its next attempt would have settled it
    (`if_nothing_pending`: the status it would take then; this does not know, the caller
    checks both in the UPDATE that writes it). Else it is left to its attempts: a
    recipient's bounced status makes the last one settle it as bounced, and a worker
    holding it right now settles it so in its record (gateway.queue.store)."""
    if status == "delivered" or (if_nothing_pending and status in ACTIVE_STATES):
        return "bounced"
    return None
