"""The message state machine (gateway.queue.states): pure functions, no I/O."""

from __future__ import annotations

from gateway.message import DeliveryResult, Outcome
from gateway.queue import states
from gateway.queue.states import message_status, recipient_status, settle, summary

OK = DeliveryResult(Outcome.DELIVERED, 250, "2.0.0", "ok")
LATER = DeliveryResult(Outcome.DEFERRED, 451, "4.3.0", "try later")
NO = DeliveryResult(Outcome.BOUNCED, 550, "5.1.1", "no such user")


def test_a_message_is_deferred_while_due_again() -> None:
    settled = settle({"a": OK, "b": LATER}, retry_at=2000.0, any_bounced=False)
    assert settled.status == "deferred" and settled.expired == set()
    assert recipient_status(settled.results["b"]) == "pending"


def test_deferrals_expire_as_bounces_when_not_due_again() -> None:
    settled = settle({"a": OK, "b": LATER}, retry_at=None, any_bounced=False)
    assert settled.status == "bounced" and settled.expired == {"b"}
    expired = settled.results["b"]
    assert (expired.outcome, expired.enhanced) == (Outcome.BOUNCED, "5.4.7")
    assert expired.text == "expired after max_age; last: 451 4.3.0 try later"


def test_delivered_only_when_no_recipient_ever_bounced() -> None:
    assert message_status([OK], None) == "delivered"
    assert message_status([OK], None, any_bounced=True) == "bounced"
    assert message_status([OK, NO], None) == "bounced"


def test_the_summary_is_the_worst_reply() -> None:
    assert summary({"a": OK, "b": NO}) == "550 5.1.1 no such user"
    assert summary({}) == ""


def test_a_late_bounce_makes_a_delivered_message_bounced_and_leaves_the_rest() -> None:
    assert states.after_late_bounce("delivered") == "bounced"
    for status in ("bounced", "queued", "deferred", "cancelled", "sandbox"):
        assert states.after_late_bounce(status) is None


def test_a_report_that_bounced_the_last_pending_recipient_settles_the_message() -> None:
    for status in ("queued", "deferred", "held", "delivered"):
        assert states.after_late_bounce(status, if_nothing_pending=True) == "bounced"
    for status in ("bounced", "cancelled", "sandbox"):
        assert states.after_late_bounce(status, if_nothing_pending=True) is None
