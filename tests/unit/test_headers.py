"""Byte-level message checks and edits (gateway.headers): pure functions, no I/O."""

from __future__ import annotations

import pytest

from gateway.headers import content_problem, take_control_headers

CLEAN = (
    b"From: App <app@example.com>\r\n"
    b"To: alice@example.com\r\n"
    b"Subject: hello\r\n"
    b"\r\n"
    b"body line one\r\n"
    b"body line two\r\n"
)


# --- content_problem ----------------------------------------------------------------------


def test_clean_message_has_no_problem() -> None:
    assert content_problem(CLEAN) is None
    assert content_problem(b"") is None
    assert content_problem(b"Subject: x\r\n\r\n" + b"a" * 998 + b"\r\n") is None
    assert content_problem(b"Subject: x\r\n\r\n" + b"a" * 998) is None  # last line, no CRLF


@pytest.mark.parametrize(
    "data",
    [
        b"Subject: x\r\n\r\nhello\0world\r\n",
        b"Subject: x\0\r\n\r\nbody\r\n",
        b"\0",
    ],
)
def test_nul_is_refused(data: bytes) -> None:
    assert content_problem(data) is not None


@pytest.mark.parametrize(
    "data",
    [
        b"Subject: x\r\n\r\nline\rmore\r\n",  # bare CR
        b"Subject: x\r\n\r\nline\r",  # bare CR at the end
        b"Subject: x\r\n\r\n\r\r\n",  # CR before CRLF
        b"Subject: x\r\n\r\nline\nmore\r\n",  # bare LF
        b"Subject: x\n\r\nbody\r\n",  # bare LF in the header
        b"Subject: x\r\n\r\nline\n.\nMAIL FROM:<x@y>\r\n",  # a smuggling attempt
        b"Subject: x\r\n\r\nend\n\r\n",  # LF then CRLF
    ],
)
def test_bare_cr_or_lf_is_refused(data: bytes) -> None:
    assert content_problem(data) is not None


def test_line_over_998_bytes_is_refused() -> None:
    assert content_problem(b"Subject: x\r\n\r\n" + b"a" * 999 + b"\r\n") is not None
    assert content_problem(b"X-Long: " + b"b" * 991 + b"\r\n\r\nbody\r\n") is not None
    assert content_problem(b"Subject: x\r\n\r\n" + b"c" * 5000) is not None


# --- take_control_headers -----------------------------------------------------------------


def test_control_headers_removed_others_byte_identical() -> None:
    data = (
        b"From: App <app@example.com>\r\n"
        b"X-Postern-Alias-Id: pool_ses\r\n"
        b"Subject:  odd   spacing\t\r\n"
        b"x-postern-tags: a,b\r\n"
        b"Received: from a\r\n"
        b"\tby b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        b"X-POSTERN-SANDBOX : true\r\n"
        b"X-Other: kept\r\n"
        b"\r\n"
        b"X-Postern-Alias-Id: in the body, not a header\r\n"
    )
    stripped, controls = take_control_headers(data)
    assert stripped == (
        b"From: App <app@example.com>\r\n"
        b"Subject:  odd   spacing\t\r\n"
        b"Received: from a\r\n"
        b"\tby b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        b"X-Other: kept\r\n"
        b"\r\n"
        b"X-Postern-Alias-Id: in the body, not a header\r\n"
    )
    assert controls == {"alias-id": "pool_ses", "tags": "a,b", "sandbox": "true"}


def test_folded_control_header_is_removed_whole() -> None:
    data = (
        b"Subject: hi\r\n"
        b"X-Postern-Tags: one,\r\n"
        b" two,\r\n"
        b"\tthree\r\n"
        b"To: bob@example.com\r\n"
        b"\r\n"
        b"body\r\n"
    )
    stripped, controls = take_control_headers(data)
    assert stripped == b"Subject: hi\r\nTo: bob@example.com\r\n\r\nbody\r\n"
    assert controls == {"tags": "one, two,\tthree"}


def test_folded_control_header_first_and_last() -> None:
    data = (
        b"X-Postern-Alias-Id:\r\n alias_1\r\nSubject: s\r\nX-Postern-Sandbox:\r\n true\r\n\r\nb\r\n"
    )
    stripped, controls = take_control_headers(data)
    assert stripped == b"Subject: s\r\n\r\nb\r\n"
    assert controls == {"alias-id": "alias_1", "sandbox": "true"}


def test_message_without_control_headers_is_unchanged() -> None:
    stripped, controls = take_control_headers(CLEAN)
    assert stripped is CLEAN or stripped == CLEAN
    assert controls == {}


def test_similar_names_are_not_control_headers() -> None:
    data = b"X-Posterner: a\r\nX-Postern: b\r\nSubject: X-Postern-Tags: c\r\n\r\nbody\r\n"
    stripped, controls = take_control_headers(data)
    assert stripped == data
    assert controls == {}


def test_control_header_value_is_decoded_utf8() -> None:
    data = "X-Postern-Tags: café\r\n\r\nbody\r\n".encode()
    stripped, controls = take_control_headers(data)
    assert stripped == b"\r\nbody\r\n"
    assert controls == {"tags": "café"}
