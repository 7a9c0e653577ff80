"""What both doors (GET /v1/events/stream and the dashboard's Live page) say about events:
which a caller sees (those of the messages GET /v1/messages shows them), the filters, and
how many streams a caller may hold open at once.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping

from api import errors
from api.auth import Caller
from api.context import ApiContext
from api.message_ops import restriction
from gateway.queue import events
from gateway.queue.operations import FilterError, make_filter
from storage import event_minutes, event_stream
from storage.event_stream import EventFilter, MinuteStats

# The message search's names (and parser) for recipient, pool, tag, subject and client.
FILTERS = ("type", "message_id", "recipient", "pool", "tag", "subject", "client")
_SEARCHED = ("recipient", "pool", "tag", "subject", "client")
MAX_STREAMS = 5  # open streams per caller (a key, or a user's sessions and keys together)
RECENT = 50  # events the Live page shows without JavaScript


def _invalid(field: str, message: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(f"{field}: {message}", [{"field": field, "message": message}])


def _types(raw: str) -> tuple[str, ...]:
    names = tuple(sorted({part.strip() for part in raw.split(",") if part.strip()}))
    unknown = [name for name in names if name not in events.TYPES]
    if unknown or not names:
        raise _invalid("type", f"one or more, comma-separated: {', '.join(events.TYPES)}")
    return names


def event_filter(caller: Caller, query: Mapping[str, str]) -> EventFilter:
    """The filter of a request's parameters (FILTERS; empty ones ignored), restricted to the
    caller's mail. Raises InvalidRequest naming the first bad one."""
    given = {name: value for name, value in query.items() if value != ""}
    try:  # the messages API's own checks (an address, a pool, a tag, words, an IP or block)
        checked = make_filter({k: given.get(k) for k in _SEARCHED})
    except FilterError as error:
        raise _invalid(error.field, error.message) from None
    message_id = given.get("message_id")
    if message_id is not None and not (message_id.isascii() and 0 < len(message_id) <= 64):
        raise _invalid("message_id", "an id POST /v1/send returned")
    restricted = restriction(caller)
    return EventFilter(
        types=_types(given["type"]) if "type" in given else (),
        message_id=message_id,
        recipient=checked.recipient,
        pool=checked.pool,
        tag=checked.tag,
        subject=checked.subject,
        client=checked.client,
        user_id=restricted.get("user_id"),
        api_key_id=restricted.get("api_key_id"),
    )


def holder(caller: Caller) -> str:
    """Whose streams count together: a user's (sessions and keys), else the key's."""
    return caller.user.id if caller.user is not None else caller.id


class StreamSlots:
    """This node's open streams per caller, at most MAX_STREAMS each."""

    def __init__(self) -> None:
        self.open: Counter[str] = Counter()

    def acquire(self, caller: Caller) -> str:
        """Count one more stream of the caller's (429 past the limit); release() it."""
        who = holder(caller)
        if self.open[who] >= MAX_STREAMS:
            raise errors.TooManyStreams(f"at most {MAX_STREAMS} event streams open at once")
        self.open[who] += 1
        return who

    def release(self, who: str) -> None:
        self.open[who] -= 1
        if self.open[who] <= 0:
            del self.open[who]


async def recent(ctx: ApiContext, flt: EventFilter, limit: int = RECENT) -> list[str]:
    """The last events the filter lets through, newest first, as public JSON text."""
    return await ctx.db.read(lambda conn: event_stream.recent(conn, flt, limit))


async def per_minute(
    ctx: ApiContext, flt: EventFilter, minutes: int = 60
) -> tuple[float, list[MinuteStats]]:
    """The window's start (on a minute) and its charted events per minute (from the
    per-minute rollup when the filter allows: storage.event_minutes.per_minute)."""
    since = (time.time() // 60 - minutes + 1) * 60
    stats = await ctx.db.read(lambda conn: event_minutes.per_minute(conn, since, flt))
    return since, stats


async def per_pool_minute(
    ctx: ApiContext, pools: list[str], minutes: int = 60
) -> tuple[float, dict[str, list[MinuteStats]]]:
    """The window's start (on a minute) and each pool's charted events per minute (all
    senders': a pool's throughput, shown to those who may manage pools), from the rollup."""
    since = (time.time() // 60 - minutes + 1) * 60
    stats = await ctx.db.read(lambda conn: event_minutes.per_pool_minute(conn, since, pools))
    return since, stats
