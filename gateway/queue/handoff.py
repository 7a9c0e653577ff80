"""Where intake meets delivery besides storage: the two views intake holds of delivery.

Intake stores a message, then offers it through `Handoff`: claimed in the same transaction
when delivery has room (no second read), else left for delivery's poller, which is woken.
Intake routes with `Pools`, the pools delivery runs now. Delivery implements both; the
process wires them, so neither package imports the other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from gateway.message import QueuedMessage
from gateway.routing import PoolLike


class Handoff(Protocol):
    def has_room(self) -> bool:
        """Whether a message claimed now would be taken at once."""
        ...

    def push(self, message: QueuedMessage) -> None:
        """Take a message this node has claimed."""
        ...

    def wake(self) -> None:
        """Look in storage for due mail now, not at the next poll."""
        ...

    def wait_for(self, message_id: str) -> asyncio.Future[str]:
        """A future resolved with the message's status after its next attempt."""
        ...


class Pools(Protocol):
    def settings(self) -> Sequence[PoolLike]:
        """The pools loaded now, active or not."""
        ...
