"""Events are written with the state change they describe (SPEC "Events"), and the simulator
(recipients at simulator.postern.invalid) runs the whole pipeline with no upstream at all.

Each test checks the same invariant at the end: every recipient's last event agrees with
the recipient's stored status, and the message's last event with the message's status.
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.queue.retention import Retention
from tests.support.rows import (
    has_body,
    message_row,
    query,
    recipient_rows,
    suppression_reason,
    wait_for_status,
)
from tests.support.service import ServiceFactory
from tests.support.sink import Sink
from tests.support.smtp import SENDER, message, queued_id, smtp_send

pytestmark = pytest.mark.timeout(40)

SIM = "simulator.postern.invalid"
# What each recipient status is called in its last event.
_LAST_EVENT_FOR = {
    "delivered": {"delivered", "complaint"},
    "bounced": {"bounced", "expired"},
    "pending": {"queued", "deferred"},
    "suppressed": {"suppressed"},
    "sandbox": {"sandbox"},
    "cancelled": {"cancelled"},
}


async def events_of(svc: Any, message_id: str) -> list[dict[str, Any]]:
    return await query(svc, "SELECT * FROM event WHERE message_id = ? ORDER BY id", message_id)


async def assert_consistent(svc: Any, message_id: str) -> list[dict[str, Any]]:
    """Events and stored state agree; returns the events."""
    found = await events_of(svc, message_id)
    row = await message_row(svc, message_id)
    assert row is not None
    assert found, "a stored message has no event"
    assert found[-1]["message_status"] == row["status"]
    per_recipient = [e for e in found if e["recipient"] is not None]
    for email, recipient in (await recipient_rows(svc, message_id)).items():
        mine = [e for e in per_recipient if e["recipient"] == email]
        assert mine, f"{email} has no event"
        assert mine[-1]["type"] in _LAST_EVENT_FOR[recipient["status"]], (email, mine[-1])
    attempts = {e["attempt"] for e in found if e["attempt"]}
    assert attempts == set(range(1, row["attempts"] + 1))
    return found


async def test_a_delivered_message_has_queued_then_delivered_events(
    service: ServiceFactory, sink: Sink
) -> None:
    svc = await service()
    message_id = queued_id(
        await smtp_send(svc.smtp_port, SENDER, ["a@example.test", "b@example.test"], message())
    )
    await wait_for_status(svc, message_id, "delivered")
    found = await assert_consistent(svc, message_id)
    assert [(e["type"], e["recipient"]) for e in found] == [
        ("queued", "a@example.test"),
        ("queued", "b@example.test"),
        ("delivered", "a@example.test"),
        ("delivered", "b@example.test"),
    ]
    delivered = found[-1]
    assert delivered["pool"] == "sink"
    assert delivered["code"] == 250
    assert delivered["attempt"] == 1


async def test_deferral_then_delivery_and_a_bounce_each_write_their_events(
    service: ServiceFactory, sink: Sink
) -> None:
    sink.fail("rcpt", "550 5.1.1 no such user", match="gone@example.test")
    sink.fail("rcpt", "451 4.3.0 try later", times=1, match="ok@example.test")
    svc = await service()
    message_id = queued_id(
        await smtp_send(svc.smtp_port, SENDER, ["ok@example.test", "gone@example.test"], message())
    )
    await wait_for_status(svc, message_id, "bounced", timeout=15)
    found = await assert_consistent(svc, message_id)
    types = [e["type"] for e in found]
    assert types.count("deferred") >= 1
    assert "bounced" in types and "delivered" in types
    bounce = next(e for e in found if e["type"] == "bounced")
    assert (bounce["code"], bounce["enhanced"]) == (550, "5.1.1")


async def test_expiry_writes_expired_events(service: ServiceFactory, sink: Sink) -> None:
    sink.stop()
    svc = await service(delivery={"max_age": "2s", "retry_schedule": ["1s"]})
    message_id = queued_id(await smtp_send(svc.smtp_port, SENDER, ["x@example.test"], message()))
    await wait_for_status(svc, message_id, "bounced", timeout=20)
    found = await assert_consistent(svc, message_id)
    assert found[-1]["type"] == "expired"
    assert found[-1]["enhanced"] == "5.4.7"


async def test_a_lapsed_claim_records_nothing(service: ServiceFactory, sink: Sink) -> None:
    """A node whose lease was taken over must not write results or events."""
    from gateway.message import DeliveryResult, Outcome, QueuedMessage, Route
    from gateway.queue.store import AttemptRecord

    sink.stop()
    svc = await service()
    message_id = queued_id(await smtp_send(svc.smtp_port, SENDER, ["x@example.test"], message()))
    await wait_for_status(svc, message_id, "deferred", timeout=15)
    before = await events_of(svc, message_id)
    stale = QueuedMessage(message_id, SENDER, ["x@example.test"], b"", 0, 0.0, Route())
    delivered = DeliveryResult(Outcome.DELIVERED, 250, "2.0.0", "ok")
    status = await svc.queue.record(AttemptRecord(stale, {"x@example.test": delivered}, "sink"))
    assert status is None
    assert await events_of(svc, message_id) == before
    assert (await message_row(svc, message_id))["status"] == "deferred"  # type: ignore[index]


# --- the simulator ------------------------------------------------------------------------


async def test_each_simulator_address_gets_its_outcome_with_no_upstream(
    service: ServiceFactory, sink: Sink
) -> None:
    # notify_sender off: the report of bounced@'s bounce would go upstream to SENDER.
    svc = await service(delivery={"retry_schedule": ["0.3s"], "notify_sender": False})
    outcomes: dict[str, str] = {}
    for local, status in [
        ("delivered", "delivered"),
        ("bounced+t1", "bounced"),
        ("deferred", "delivered"),
        ("complained", "delivered"),
    ]:
        message_id = queued_id(
            await smtp_send(svc.smtp_port, SENDER, [f"{local}@{SIM}"], message(local))
        )
        await wait_for_status(svc, message_id, status, timeout=15)
        found = await assert_consistent(svc, message_id)
        outcomes[local] = " ".join(e["type"] for e in found)
        assert all(e["pool"] in (None, "simulator") for e in found)
    assert outcomes == {
        "delivered": "queued delivered",
        "bounced+t1": "queued bounced",
        "deferred": "queued deferred deferred delivered",
        "complained": "queued delivered complaint",
    }
    assert await suppression_reason(svc, f"bounced+t1@{SIM}") == "bounced"
    assert await suppression_reason(svc, f"complained@{SIM}") == "complaint"
    assert sink.connections_total == 0
    assert not sink.messages


async def test_a_message_to_the_simulator_and_a_real_recipient_splits(
    service: ServiceFactory, sink: Sink
) -> None:
    svc = await service()
    message_id = queued_id(
        await smtp_send(
            svc.smtp_port, SENDER, [f"bounced@{SIM}", "real@example.test"], message("mixed")
        )
    )
    await wait_for_status(svc, message_id, "bounced", timeout=15)
    await assert_consistent(svc, message_id)
    recipients = await recipient_rows(svc, message_id)
    assert recipients[f"bounced@{SIM}"]["status"] == "bounced"
    assert recipients["real@example.test"]["status"] == "delivered"
    assert [m.rcpt_tos for m in sink.messages] == [["real@example.test"]]


@pytest.mark.parametrize("stage", ["data", "eom"])
async def test_max_age_holds_while_the_upstream_hangs_mid_data(
    service: ServiceFactory, sink: Sink, stage: str
) -> None:
    """An upstream that goes silent mid-DATA costs one command_timeout per attempt; the
    message still expires at max_age (with its events), it is never stuck in flight."""
    sink.hang(stage, seconds=30)  # type: ignore[arg-type]
    svc = await service(
        delivery={"max_age": "3s", "retry_schedule": ["1s"], "command_timeout": "1s"}
    )
    message_id = queued_id(await smtp_send(svc.smtp_port, SENDER, ["x@example.test"], message()))
    await wait_for_status(svc, message_id, "bounced", timeout=20)
    found = await assert_consistent(svc, message_id)
    assert found[-1]["type"] == "expired"
    assert await has_body(svc, message_id)  # kept for storage.body_retention


async def test_retention_deletes_old_final_messages_whole_and_keeps_active_ones(
    service: ServiceFactory, sink: Sink
) -> None:
    svc = await service()
    done = queued_id(await smtp_send(svc.smtp_port, SENDER, ["a@example.test"], message("old")))
    await wait_for_status(svc, done, "delivered")
    sink.stop()
    waiting = queued_id(await smtp_send(svc.smtp_port, SENDER, ["b@example.test"], message("w")))
    await wait_for_status(svc, waiting, "deferred", timeout=15)
    young = Retention(svc.writer, keep=3600)
    assert await young.sweep() == 0  # nothing is old enough
    everything = Retention(svc.writer, keep=0)
    assert await everything.sweep() == 1  # the delivered one; never the deferred one
    for table in ("message", "recipient", "event"):
        column = "id" if table == "message" else "message_id"
        assert not await query(svc, f"SELECT 1 FROM {table} WHERE {column} = ?", done), table
    assert (await message_row(svc, waiting))["status"] == "deferred"  # type: ignore[index]
    assert await events_of(svc, waiting)
