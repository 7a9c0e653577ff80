"""Upstream replies to outcomes (gateway.delivery.upstream.classify): pure, no I/O."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, replace

import pytest

from gateway.delivery.upstream import _with_hop, classify
from gateway.message import DeliveryResult, Hop, Outcome


@pytest.mark.parametrize(
    ("code", "message", "outcome", "enhanced", "text"),
    [
        (250, "2.0.0 OK queued as 12345", Outcome.DELIVERED, "2.0.0", "OK queued as 12345"),
        (250, "OK", Outcome.DELIVERED, None, "OK"),
        (
            251,
            "User not local; will forward",
            Outcome.DELIVERED,
            None,
            "User not local; will forward",
        ),
        (
            421,
            "4.7.0 Try again later, closing connection",
            Outcome.DEFERRED,
            "4.7.0",
            "Try again later, closing connection",
        ),
        (450, "mailbox busy", Outcome.DEFERRED, None, "mailbox busy"),
        (
            451,
            "4.3.0 Temporary local problem",
            Outcome.DEFERRED,
            "4.3.0",
            "Temporary local problem",
        ),
        (452, "4.5.3 Too many recipients", Outcome.DEFERRED, "4.5.3", "Too many recipients"),
        (
            550,
            "5.1.1 <x@example.com>: Recipient address rejected: User unknown",
            Outcome.BOUNCED,
            "5.1.1",
            "<x@example.com>: Recipient address rejected: User unknown",
        ),
        (550, "No such user here", Outcome.BOUNCED, None, "No such user here"),
        (
            552,
            "5.3.4 Message size exceeds fixed limit",
            Outcome.BOUNCED,
            "5.3.4",
            "Message size exceeds fixed limit",
        ),
        (554, "5.7.1 Relay access denied", Outcome.BOUNCED, "5.7.1", "Relay access denied"),
    ],
)
def test_classify(
    code: int, message: str, outcome: Outcome, enhanced: str | None, text: str
) -> None:
    result = classify(code, message)
    assert result.outcome is outcome
    assert result.code == code
    assert result.enhanced == enhanced
    assert result.text == text


@pytest.mark.parametrize("message", ["Connection lost", "4.4.2 timeout", ""])
def test_no_code_is_deferred(message: str) -> None:
    result = classify(None, message)
    assert result.outcome is Outcome.DEFERRED
    assert result.code is None


@pytest.mark.parametrize("code", [-1, 0, 100, 199, 354, 600, 999])
def test_unexpected_codes_are_deferred(code: int) -> None:
    assert classify(code, "odd").outcome is Outcome.DEFERRED


def test_multiline_reply_keeps_every_line() -> None:
    result = classify(550, "5.1.1 The email account that you tried to reach\n5.1.1 does not exist")
    assert result.outcome is Outcome.BOUNCED
    assert result.enhanced == "5.1.1"
    assert result.text == "The email account that you tried to reach\n5.1.1 does not exist"
    assert result.hard_bounce


@pytest.mark.parametrize(
    "token", ["5.1", "5.1.1.1", "x.1.1", "5.1.a", "3.1.1", "24.1.1", "45.0.0", "..", "5..1"]
)
def test_malformed_enhanced_codes_stay_in_the_text(token: str) -> None:
    result = classify(550, f"{token} rejected")
    assert result.enhanced is None
    assert result.text == f"{token} rejected"


def test_enhanced_code_only_reply() -> None:
    result = classify(550, "5.1.1")
    assert result.enhanced == "5.1.1"
    assert result.text == ""


# --- DeliveryResult.hard_bounce -----------------------------------------------------------


@pytest.mark.parametrize("enhanced", ["5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10"])
def test_hard_bounce_for_recipient_address_faults(enhanced: str) -> None:
    assert DeliveryResult(Outcome.BOUNCED, 550, enhanced, "x").hard_bounce
    assert classify(550, f"{enhanced} nope").hard_bounce


@pytest.mark.parametrize("enhanced", ["5.1.0", "5.1.7", "5.1.8"])
def test_sender_address_faults_do_not_suppress_the_recipient(enhanced: str) -> None:
    assert not classify(550, f"{enhanced} bad sender").hard_bounce


@pytest.mark.parametrize(
    "result",
    [
        DeliveryResult(Outcome.BOUNCED, 550, None, "User unknown"),
        DeliveryResult(Outcome.BOUNCED, 550, "5.7.1", "denied"),
        DeliveryResult(Outcome.BOUNCED, 552, "5.2.2", "mailbox full"),
        DeliveryResult(Outcome.BOUNCED, 550, "5.11.1", "not 5.1.x"),
        DeliveryResult(Outcome.BOUNCED, 450, "4.4.7", "expired"),
        DeliveryResult(Outcome.DEFERRED, 450, "4.1.1", "try later"),
        DeliveryResult(Outcome.DEFERRED, None, "5.1.1", "deferred all the same"),
        DeliveryResult(Outcome.DELIVERED, 250, "2.1.5", "ok"),
    ],
)
def test_no_hard_bounce_otherwise(result: DeliveryResult) -> None:
    assert not result.hard_bounce


def test_describe() -> None:
    assert DeliveryResult(Outcome.BOUNCED, 550, "5.1.1", "no such user").describe() == (
        "550 5.1.1 no such user"
    )
    assert DeliveryResult(Outcome.DEFERRED, None, None, "timeout").describe() == "timeout"
    assert len(DeliveryResult(Outcome.BOUNCED, 550, None, "x" * 5000).describe()) == 1000


def test_results_get_their_hop_as_replace_would_give_it() -> None:
    """upstream._with_hop copies a result's fields itself (dataclasses.replace cost more
    than the rest of the copy): every field kept, the hop set, recipients sharing a result
    sharing its copy, the original untouched."""
    result = DeliveryResult(
        Outcome.DEFERRED, 451, "4.3.0", "later", complaint=True, possible_duplicate=True
    )
    other = DeliveryResult(Outcome.BOUNCED, 550, "5.1.1", "gone")
    hop = Hop("relay.test[192.0.2.1]:25", 0.25, 0.5)
    stamped = _with_hop({"a@x.test": result, "b@x.test": other, "c@x.test": result}, hop)
    assert vars(stamped["a@x.test"]) == vars(replace(result, hop=hop))
    assert vars(stamped["b@x.test"]) == vars(replace(other, hop=hop))
    assert stamped["a@x.test"] is stamped["c@x.test"]
    assert result.hop is None and other.hop is None
    with pytest.raises(FrozenInstanceError):
        stamped["a@x.test"].text = "changed"  # type: ignore[misc]


@pytest.mark.parametrize("raw", ["5.1.1 user \udcff unknown", "5.1.1 user \ud800 unknown"])
def test_a_reply_byte_that_is_not_utf8_is_stored_as_a_replacement(raw: str) -> None:
    """aiosmtplib decodes replies with surrogateescape; a lone surrogate cannot be stored
    (the attempt's record would fail at every retry)."""
    result = classify(550, raw)
    assert result.text == "user \ufffd unknown" or result.text == "user ? unknown"
    result.text.encode("utf-8")  # storable


def test_a_reply_in_utf8_is_kept() -> None:
    assert classify(550, "5.1.1 Benutzer \u00fcnbekannt").text == "Benutzer \u00fcnbekannt"
