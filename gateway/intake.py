"""Intake: the one policy pipeline behind both doors (SMTP and HTTP).

    sender allowed -> recipients not suppressed -> idempotency key reserved -> route chosen
    -> DKIM signed once -> stored (one transaction, group-committed) -> acknowledged

It knows nothing of SMTP or HTTP: it takes a Submission and returns an Accepted or raises
one of the Refusal exceptions below, which each door turns into its own reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from gateway import metrics
from gateway.delivery import Delivery, PoolRegistry
from gateway.message import QueuedMessage, Submission
from gateway.queue import Queue
from gateway.routing import UnknownRoute, choose_route


class Refusal(Exception):
    """Intake will not take the message; `reason` is safe to show the client."""

    reason = "refused"


class AllSuppressed(Refusal):
    reason = "every recipient is suppressed"


class UnknownAlias(Refusal):
    reason = "unknown alias_id"


@dataclass(frozen=True)
class Accepted:
    message: QueuedMessage
    suppressed: tuple[str, ...] = ()

    @property
    def message_id(self) -> str:
        return self.message.id


class Intake:
    def __init__(self, queue: Queue, registry: PoolRegistry, delivery: Delivery) -> None:
        self._queue = queue
        self._registry = registry
        self._delivery = delivery

    async def suppressed(self, addresses: Sequence[str]) -> set[str]:
        """Which of `addresses` must not be sent to."""
        return await self._queue.is_suppressed(addresses)

    async def submit(self, submission: Submission) -> Accepted:
        """Apply policy, store durably, hand to delivery. Returns only after the commit."""
        blocked = await self.suppressed(submission.recipients)
        if blocked:
            metrics.MESSAGES_SUPPRESSED.inc(len(blocked))
            if len(blocked) == len(set(submission.recipients)):
                raise AllSuppressed()
            kept = tuple(r for r in submission.recipients if r not in blocked)
            submission = replace(submission, recipients=kept)
        try:
            route = choose_route(
                submission.alias_id, submission.mail_from, self._registry.settings()
            )
        except UnknownRoute:
            metrics.MESSAGES_REFUSED.labels(reason="unknown_alias").inc()
            raise UnknownAlias() from None
        claim = self._delivery.has_room()
        message = await self._queue.enqueue(submission, route, claim=claim)
        metrics.MESSAGES_RECEIVED.labels(source=submission.source).inc()
        if claim:
            self._delivery.push(message)
        else:
            self._delivery.wake()
        return Accepted(message, tuple(sorted(blocked)))
