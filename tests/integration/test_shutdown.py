"""Stopping with a slow upstream: every transaction in flight ends within the drain bound,
and how it ended is recorded truthfully. Real in-process Service, real sink, real SQLite.

- The sink hangs after the final dot ("eom"): the upstream has the whole message and may
  have taken it. The attempt counts, each recipient gets a `possible_duplicate` event and
  postern_possible_duplicates_total{pool} goes up; the message waits its retry_schedule
  step, never re-sent at once as if it were a first attempt.
- The sink hangs at DATA ("data"): the upstream never had the message. It is handed back
  due now with no attempt counted.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.delivery.direct import DirectRoutes
from gateway.delivery.upstream import PoolSettings, PoolUnavailable, SessionSettings
from gateway.delivery.workers import PoolRegistry
from gateway.dns import Resolver
from gateway.message import Outcome, QueuedMessage
from gateway.process.startup import StartupError
from gateway.security.hostguard import HostGuard
from tests.support.rows import message_row, query
from tests.support.service import (
    SINK_POOL,
    ConfigFactory,
    ManagedService,
    ServiceFactory,
    metric,
    wait_until,
)
from tests.support.sink import Sink
from tests.support.smtp import SENDER, message, queued_id, smtp_send

pytestmark = pytest.mark.timeout(30)

DRAIN = 2.0
# command_timeout far beyond the drain: only the shutdown can end the hung transaction.
SLOW = {"delivery": {"retry_schedule": ["1h"], "command_timeout": "60s"}}
DUPLICATES = "postern_possible_duplicates_total"


async def stop_within(svc: ManagedService, bound: float) -> float:
    started = time.monotonic()
    await asyncio.wait_for(svc.stop(), timeout=bound + 5)
    return time.monotonic() - started


async def event_types(svc: ManagedService, message_id: str) -> list[tuple[str, int]]:
    sql = "SELECT type, attempt FROM event WHERE message_id = ? ORDER BY id"
    rows = await query(svc, sql, message_id)
    return [(row["type"], row["attempt"]) for row in rows]


async def test_a_reply_lost_after_the_final_dot_is_recorded_as_a_possible_duplicate(
    service: ServiceFactory, sink: Sink
) -> None:
    svc = await service(drain_timeout=DRAIN, **SLOW)
    sink.hang("eom", seconds=60, times=1)
    message_id = queued_id(await smtp_send(svc.smtp_port, SENDER, ["a@example.test"], message()))
    assert await wait_until(lambda: "eom" in sink.hung, timeout=5)
    before = metric(DUPLICATES, pool=SINK_POOL)

    took = await stop_within(svc, DRAIN)

    assert took < DRAIN + 2, f"stop took {took:.1f}s"
    assert await wait_until(lambda: len(sink.dropped_after_data) == 1, timeout=5)
    assert metric(DUPLICATES, pool=SINK_POOL) == before + 1
    row = await message_row(svc, message_id)
    assert row is not None
    assert (row["status"], row["attempts"], row["claimed_by"]) == ("deferred", 1, None)
    assert row["due_at"] > time.time() + 3000  # its retry_schedule step, not at once
    assert "after the end of data" in row["last_response"]
    assert await event_types(svc, message_id) == [
        ("queued", 0),
        ("possible_duplicate", 1),
        ("deferred", 1),
    ]


async def test_a_transaction_hung_before_the_body_is_handed_back_uncounted(
    service: ServiceFactory, sink: Sink
) -> None:
    svc = await service(drain_timeout=DRAIN, **SLOW)
    sink.hang("data", seconds=60, times=1)
    message_id = queued_id(await smtp_send(svc.smtp_port, SENDER, ["a@example.test"], message()))
    assert await wait_until(lambda: "data" in sink.hung, timeout=5)
    before = metric(DUPLICATES, pool=SINK_POOL)

    took = await stop_within(svc, DRAIN)

    assert took < DRAIN + 2, f"stop took {took:.1f}s"
    assert metric(DUPLICATES, pool=SINK_POOL) == before
    row = await message_row(svc, message_id)
    assert row is not None
    assert (row["status"], row["attempts"], row["claimed_by"]) == ("queued", 0, None)
    assert row["due_at"] <= time.time()  # due again at once, at the next start
    assert await event_types(svc, message_id) == [("queued", 0)]
    assert sink.messages == [] and sink.dropped_after_data == []


# --- pools made after the cut-off -------------------------------------------------------


def _queued() -> QueuedMessage:
    return QueuedMessage(
        id="msg_late", mail_from=SENDER, recipients=["a@[127.0.0.1]"], content=message(),
        attempts=0, created_at=time.time(),
    )  # fmt: skip


async def test_a_pool_made_after_the_cut_off_starts_no_send(sink: Sink) -> None:
    """A reload (or the API) replacing a pool in shutdown's last second: the new pool is cut
    off too, so no whole send can start there and be aborted after its final dot."""
    registry = PoolRegistry(SessionSettings("postern.test", connect_timeout=2.0))
    registry.cut_off()
    registry.load([PoolSettings(id="p", name="late", host="127.0.0.1", port=sink.port,
                                encryption="none")])  # fmt: skip
    with pytest.raises(PoolUnavailable, match="shutting down"):
        await registry.get("p").send(_queued())
    assert sink.connections_total == 0 and sink.messages == []


async def test_an_mx_host_first_used_after_the_cut_off_gets_no_send(sink: Sink) -> None:
    """Direct delivery makes a pool per MX host as it first needs one: after the cut-off,
    the next host or domain must not be sent to either."""
    session = SessionSettings("postern.test", connect_timeout=2.0)
    routes = DirectRoutes(Resolver(), session, sink.port, guard=HostGuard(allow_private=True))
    routes.cut_off()
    results = await routes.deliver(_queued())
    assert results["a@[127.0.0.1]"].outcome is Outcome.DEFERRED
    assert "shutting down" in results["a@[127.0.0.1]"].describe()
    assert sink.connections_total == 0 and sink.messages == []
    await routes.close()


async def test_a_start_that_fails_late_ends_what_it_had_started(
    config_factory: ConfigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure in the last phase (the doors) leaves no writer thread, worker or loop
    behind, and frees the data_dir for the next start."""

    async def doors_fail(*args: object, **kwargs: object) -> None:
        raise StartupError("the doors would not open")

    config = config_factory()
    failing = ManagedService(config)
    monkeypatch.setattr(failing, "_open_doors", doors_fail)
    with pytest.raises(StartupError):
        await failing.start()
    assert failing.writer is not None and not failing.writer.running
    current = asyncio.current_task()
    left = [t.get_name() for t in asyncio.all_tasks() if t is not current and not t.done()]
    assert not [name for name in left if name.startswith(("worker-", "poller", "housekeeping"))]
    assert not [name for name in left if "refresh" in name or "purging" in name], left
    again = ManagedService(config)  # the lock on data_dir was given back
    await again.start()
    await again.stop()
