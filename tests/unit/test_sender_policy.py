"""gateway.intake.identities: the `[policy] sender = "verified"` check and header From parsing.

HTTP submissions are judged by their From address; SMTP ones by the envelope MAIL FROM and
every header From address (a null envelope sender by the header alone).
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.intake.identities import Identities, header_from
from gateway.message import Submission
from gateway.routing import AliasView


def identities(enforce: bool = True) -> Identities:
    held = Identities(db=None, enforce=enforce)  # type: ignore[arg-type]
    held._domains = frozenset({"verified.test", "xn--bcher-kva.example"})
    held._addresses = frozenset({"ceo@alias.test"})
    held.aliases = (AliasView("ali_1", "ceo@alias.test", "marketing"),)
    return held


def smtp(mail_from: str, header: bytes | None, **fields: Any) -> Submission:
    block = b"" if header is None else b"From: " + header + b"\r\n"
    content = block + b"To: x@y.test\r\nSubject: s\r\n\r\nbody\r\n"
    return Submission(mail_from, ("x@y.test",), content, "smtp", **fields)


def http(mail_from: str) -> Submission:
    content = f"From: {mail_from}\r\nTo: x@y.test\r\n\r\nbody\r\n".encode()
    return Submission(mail_from, ("x@y.test",), content, "http")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"a@b.test", ["a@b.test"]),
        (b"App <a@b.test>", ["a@b.test"]),
        (b'"Doe, J" <j@b.test>, k@c.test', ["j@b.test", "k@c.test"]),
        (b"=?utf-8?q?App?= <a@b.test>", ["a@b.test"]),
        (b"undisclosed", None),
        (b"", None),
    ],
)
def test_header_from_addresses(value: bytes, expected: list[str] | None) -> None:
    assert header_from(b"From: " + value + b"\r\nSubject: s\r\n\r\nbody") == expected


def test_header_from_missing_or_repeated_is_none() -> None:
    assert header_from(b"Subject: s\r\n\r\nbody") is None
    assert header_from(b"From: a@b.test\r\nFrom: c@d.test\r\n\r\nbody") is None


def test_folded_header_from() -> None:
    assert header_from(b"From: App\r\n <a@b.test>\r\n\r\nbody") == ["a@b.test"]


@pytest.mark.parametrize(
    "sender", ["app@verified.test", "App@VERIFIED.test", "x@bücher.example", "ceo@alias.test"]
)
def test_verified_domains_and_aliases_pass(sender: str) -> None:
    assert identities().sender_problem(http(sender)) is None


@pytest.mark.parametrize(
    "sender", ["app@unverified.test", "app@sub.verified.test", "cfo@alias.test"]
)
def test_anything_else_is_refused_with_a_reason(sender: str) -> None:
    problem = identities().sender_problem(http(sender))
    assert problem is not None and sender in problem and "verified" in problem


def test_smtp_checks_the_envelope_and_the_header_from() -> None:
    held = identities()
    assert held.sender_problem(smtp("a@verified.test", b"App <b@verified.test>")) is None
    # A verified envelope does not launder a spoofed header From ...
    assert "ceo@bank.test" in (held.sender_problem(smtp("a@verified.test", b"ceo@bank.test")) or "")
    # ... nor the reverse.
    assert "a@other.test" in (held.sender_problem(smtp("a@other.test", b"b@verified.test")) or "")
    # Every header address counts.
    assert held.sender_problem(smtp("a@verified.test", b"b@verified.test, c@evil.test"))


def test_a_bounce_is_judged_by_its_header_from() -> None:
    held = identities()
    assert held.sender_problem(smtp("", b"mailer-daemon@verified.test")) is None
    assert held.sender_problem(smtp("", b"mailer-daemon@other.test")) is not None


def test_smtp_without_a_from_header_is_refused() -> None:
    assert "From" in (identities().sender_problem(smtp("a@verified.test", None)) or "")


def test_policy_any_and_postern_own_messages_are_not_checked() -> None:
    assert identities(enforce=False).sender_problem(http("app@unverified.test")) is None
    own = smtp("no-reply@unverified.test", b"no-reply@unverified.test", system=True)
    assert identities().sender_problem(own) is None


def test_control_characters_in_the_reason_are_escaped() -> None:
    problem = identities().sender_problem(http("a\x1b[31m@x.test"))
    assert problem is not None and "\x1b" not in problem
