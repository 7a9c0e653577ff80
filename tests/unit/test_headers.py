"""Byte-level message checks and edits (gateway.headers): pure functions, no I/O."""

from __future__ import annotations

import pytest

from gateway.headers import (
    MAX_FROM,
    clean_header,
    content_problem,
    header_value,
    mailboxes,
    message_id,
    normal_message_id,
)

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


# --- clean_header -------------------------------------------------------------------------


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
    cleaned = clean_header(data)
    stripped, controls = cleaned.content, cleaned.controls
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
    cleaned = clean_header(data)
    stripped, controls = cleaned.content, cleaned.controls
    assert stripped == b"Subject: hi\r\nTo: bob@example.com\r\n\r\nbody\r\n"
    assert controls == {"tags": "one, two,\tthree"}


def test_folded_control_header_first_and_last() -> None:
    data = (
        b"X-Postern-Alias-Id:\r\n alias_1\r\nSubject: s\r\nX-Postern-Sandbox:\r\n true\r\n\r\nb\r\n"
    )
    cleaned = clean_header(data)
    stripped, controls = cleaned.content, cleaned.controls
    assert stripped == b"Subject: s\r\n\r\nb\r\n"
    assert controls == {"alias-id": "alias_1", "sandbox": "true"}


def test_message_without_control_headers_is_unchanged() -> None:
    cleaned = clean_header(CLEAN)
    stripped, controls = cleaned.content, cleaned.controls
    assert stripped is CLEAN or stripped == CLEAN
    assert controls == {}


def test_similar_names_are_not_control_headers() -> None:
    data = b"X-Posterner: a\r\nX-Postern: b\r\nSubject: X-Postern-Tags: c\r\n\r\nbody\r\n"
    cleaned = clean_header(data)
    stripped, controls = cleaned.content, cleaned.controls
    assert stripped == data
    assert controls == {}


def test_control_header_value_is_decoded_utf8() -> None:
    data = "X-Postern-Tags: café\r\n\r\nbody\r\n".encode()
    cleaned = clean_header(data)
    stripped, controls = cleaned.content, cleaned.controls
    assert stripped == b"\r\nbody\r\n"
    assert controls == {"tags": "café"}


def test_bcc_fields_are_removed_whole_and_nothing_else() -> None:
    data = (
        b"From: a@x.test\r\n"
        b"Bcc: hidden@y.test,\r\n\tother@y.test\r\n"
        b"To: b@y.test\r\n"
        b"BCC : loud@y.test\r\n"
        b"Resent-Bcc: resent@y.test\r\n"
        b"X-Bcc-Note: kept\r\n"
        b"\r\n"
        b"Bcc: in the body, not a header\r\n"
    )
    cleaned = clean_header(data)
    assert cleaned.content == (
        b"From: a@x.test\r\nTo: b@y.test\r\nX-Bcc-Note: kept\r\n\r\n"
        b"Bcc: in the body, not a header\r\n"
    )
    assert cleaned.controls == {}


def test_hops_date_and_message_id_are_noted() -> None:
    cleaned = clean_header(CLEAN)
    assert (cleaned.hops, cleaned.has_date, cleaned.has_message_id) == (0, False, False)
    assert cleaned.content is CLEAN  # nothing taken out: not rebuilt
    data = (
        b"Received: from a\r\n\tby b; now\r\nreceived: from c\r\nDATE: Mon, 1 Jan 2024 00:00:00"
        b" +0000\r\nMessage-Id: <1@x.test>\r\n\r\nDate: body\r\n"
    )
    cleaned = clean_header(data)
    assert (cleaned.hops, cleaned.has_date, cleaned.has_message_id) == (2, True, True)
    body_only = clean_header(b"Subject: s\r\n\r\nDate: x\r\nMessage-ID: <y>\r\n")
    assert not body_only.has_date and not body_only.has_message_id


def test_only_whole_field_names_count() -> None:
    data = b"Date-Sent: x\r\nX-Date: y\r\nSubject: s\r\n date: folded\r\nreceivedx: z\r\n\r\n"
    cleaned = clean_header(data)
    assert (cleaned.hops, cleaned.has_date, cleaned.has_message_id) == (0, False, False)
    obsolete = clean_header(b"Message-ID :<a@b>\r\nReceived\t: x\r\n\r\n")  # RFC 5322 §4.5
    assert (obsolete.hops, obsolete.has_message_id) == (1, True)
    assert clean_header(b"To: abcc@x.test\r\n\r\n").content == b"To: abcc@x.test\r\n\r\n"


# --- mailboxes (a From value) -----------------------------------------------------------------


def test_mailboxes_of_a_from_value() -> None:
    both = ["app@example.com", "b@example.org"]
    assert mailboxes(b" App <app@example.com>, b@example.org") == both
    assert mailboxes(b" App <app@example.com>\r\n\t(folded)") == ["app@example.com"]
    assert mailboxes(b" no address here") is None


def test_mailboxes_parses_no_value_too_long_or_nested_past_the_stack() -> None:
    assert mailboxes(b" " + b"a" * MAX_FROM + b"@example.com") is None  # not parsed at all
    assert mailboxes(b"(" * 2000 + b")" * 2000 + b" <a@example.com>") is None  # RecursionError


# --- the Message-ID (stored with the message, matched against bounces) -----------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<a@x.test>", "<a@x.test>"),
        ("  a@x.test ", "<a@x.test>"),
        ("<a@x.test> (comment)", "<a@x.test>"),
        ("<a@\r\n x.test>", "<a@x.test>"),
        ("<>", None),
        ("", None),
        ("<" + "y" * 300 + ">", "<" + "y" * 254),
    ],
)
def test_normal_message_id(value: str, expected: str | None) -> None:
    assert normal_message_id(value) == expected


def test_message_id_is_read_from_the_header_only_folds_joined() -> None:
    folded = b"From: a@x.test\r\nMessage-ID:\r\n <f@x.test>\r\nTo: b@x.test\r\n\r\nbody\r\n"
    assert message_id(folded) == "<f@x.test>"
    assert message_id(b"message-id: <first@x.test>\r\n\r\n") == "<first@x.test>"
    assert message_id(b"From: a@x.test\r\n\r\nMessage-ID: <body@x.test>\r\n") is None
    assert message_id(b"Resent-Message-ID: <r@x.test>\r\n\r\n") is None
    assert header_value(b"X-A: 1\r\nX-AB: 2\r\n\r\n", b"x-ab") == b"2"


def test_subject_is_decoded_folded_and_tolerant() -> None:
    from gateway.headers import subject

    encoded = b"Subject: =?utf-8?q?Caf=C3=A9?= =?iso-8859-1?q?r=E9sum=E9?=\r\n\r\nb"
    assert subject(encoded) == "Caférésumé"
    assert subject(b"From: a\r\nSubject: one\r\n two\r\n\r\nSubject: body\r\n") == "one two"
    assert subject(b"Subject: =?x-unknown?q?abc?=\r\n\r\n") == "=?x-unknown?q?abc?="
    assert subject(b"From: a\r\n\r\nSubject: in the body\r\n") == ""
