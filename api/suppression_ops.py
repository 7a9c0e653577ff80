"""What the two doors to suppressions share (/api/v1/suppressions and Settings →
Suppressions): the address rule and this node's in-memory copy changed at once (other
nodes' within their refresh).

One mailbox, one entry: addresses are kept under `gateway.addresses.mailbox_key` (quotes
removed, lower-cased, IDNs as A-labels), so `"Bob"@Example.org` adds, finds and removes
`bob@example.org`.
"""

from __future__ import annotations

from api import errors
from api.context import ApiContext
from api.schemas import SuppressionCreate
from gateway.addresses import envelope_problem, mailbox_key
from gateway.intake.fields import text_problem
from storage.suppressions import (
    SuppressionRecord,
    add_suppression,
    get_suppression,
    remove_suppression,
)

SCOPE = "suppressions"
MAX_CURSOR = 320
NOT_SUPPRESSED = "this address is not suppressed"


def address(value: str, field: str = "email") -> str:
    """The address's mailbox key, or a 400 naming the field."""
    problem = text_problem(value, header=True) or envelope_problem(value)
    if problem:
        raise errors.InvalidRequest(f"{field}: {problem}", [{"field": field, "message": problem}])
    return mailbox_key(value)


async def add(ctx: ApiContext, body: SuppressionCreate) -> tuple[SuppressionRecord, bool]:
    """The address suppressed (or its reason updated), and whether it is new."""
    email = address(body.email)
    record, created = await add_suppression(ctx.db, email, body.reason)
    ctx.suppressions.add([email])
    return record, created


async def get(ctx: ApiContext, given: str) -> SuppressionRecord:
    """The entry of the address `given`, or a 404."""
    record = await get_suppression(ctx.db, address(given))
    if record is None:
        raise errors.NotFound(NOT_SUPPRESSED)
    return record


async def remove(ctx: ApiContext, given: str) -> None:
    """The address `given` no longer suppressed, or a 404."""
    email = address(given)
    if not await remove_suppression(ctx.db, email):
        raise errors.NotFound(NOT_SUPPRESSED)
    ctx.suppressions.discard(email)
