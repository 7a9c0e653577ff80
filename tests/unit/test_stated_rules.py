"""What /openapi.json states of a field is what the server checks: each pattern, read by a
JSON Schema validator (ECMA-262 regular expressions, as clients and schemathesis read
them), accepts exactly the strings the server's own check accepts."""

from __future__ import annotations

from typing import Any

import jsonschema_rs
from hypothesis import example, given, settings
from hypothesis import strategies as st

from api.schemas import HEADER_TEXT
from gateway import rates, timestamps
from gateway.intake.fields import text_problem
from gateway.queue.operations import STATUS_PATTERN, FilterError, make_filter


def _valid(constraints: dict[str, Any]) -> Any:
    validator = jsonschema_rs.validator_for({"type": "string", **constraints})
    return validator.is_valid


_HEADER_TEXT = _valid(HEADER_TEXT)
_TIME = _valid({"pattern": timestamps.PATTERN})
_STATUS = _valid({"pattern": STATUS_PATTERN})
_RATE = _valid({"pattern": rates.PATTERN})

# Text rich in what the rules are about: controls, line separators, encoded-word syntax.
_TRICKY = st.lists(
    st.sampled_from(["=?", "?=", "?", "q", "B", "a", " ", "\t", "\n", "\x85", "\u2028", "é"])
    | st.characters(exclude_categories=["Cs"]),
    max_size=16,
).map("".join)


@settings(max_examples=250, deadline=None)
@given(_TRICKY)
@example("=?utf-8?q?x?=")
@example("=?utf-8?q?a\u00a0b?=")
@example("tab\tis fine")
@example("nel\x85")
def test_header_text(text: str) -> None:
    assert _HEADER_TEXT(text) == (text_problem(text, header=True) is None), text


def _parses(text: str) -> bool:
    try:
        timestamps.parse(text)
    except ValueError:
        return False
    return True


@settings(max_examples=250, deadline=None)
@given(
    st.from_regex(timestamps.PATTERN, fullmatch=True)
    | st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2})?Z?)?")
    | st.text(max_size=12)
)
@example("2024-02-29")
@example("2100-02-29")
@example("2000-02-29")
@example("1969-12-31")
@example("2026-01-31T12:00:00+14:00")
@example("1e9")
def test_times(text: str) -> None:
    assert _TIME(text) == _parses(text), text


def _status_ok(text: str) -> bool:
    try:
        make_filter({"status": text})
    except FilterError:
        return False
    return True


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["queued", "deferred", "bounced", "lost", "", " "]), max_size=3).map(
        ",".join
    )
    | st.text(max_size=10)
)
@example("queued, deferred")
@example("queued\x1c")
def test_statuses(text: str) -> None:
    assert _STATUS(text) == _status_ok(text), text


def _rate_ok(text: str) -> bool:
    try:
        rates.parse_rate(text)
    except ValueError:
        return False
    return True


@settings(max_examples=200, deadline=None)
@given(
    st.from_regex(rates.PATTERN, fullmatch=True)
    | st.from_regex(r"[ 0-9]{0,8}/[0-9]{0,6}[a-zA-Z]{0,8}[ \t]?", fullmatch=True)
)
@example("1/86401s")
@example("100/Hour")
def test_rates(text: str) -> None:
    assert _RATE(text) == _rate_ok(text), text
