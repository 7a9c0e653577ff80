"""The bounce parser (gateway.bounces) on a corpus of reports under tests/data/bounces/:
RFC 3464 DSNs (the RFC's own examples among them), RFC 5965 complaints, RFC 3834
auto-replies and out-of-office answers in several languages, the plain-text bounces of
qmail, Exim, Postfix, Gmail, Microsoft and Yahoo, and broken, garbage and huge messages.
Each case states the kind, every recipient with its action, status, class and deciding rule,
and the returned Message-ID. Pure functions: no I/O beyond reading the corpus.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.bounces import mime as bounce_mime
from gateway.bounces import report as report_module
from gateway.bounces.model import DEFAULT_LIMITS, KINDS, Limits, Report
from gateway.bounces.report import parse
from gateway.bounces.rules import shipped
from gateway.bounces.verp import Verp, token, token_for

CORPUS = Path(__file__).resolve().parents[1] / "data" / "bounces"


class Row(NamedTuple):
    recipient: str
    action: str
    status: str
    cls: str
    rule: str


class Case(NamedTuple):
    kind: str
    format: str
    rows: list[Row]
    message_id: str = ""


CASES: dict[str, Case] = {
    # RFC 3464 §10's first example: a failure after 5 days of timeouts, class 4 status.
    "rfc3464_simple.eml": Case(
        "dsn",
        "rfc3464",
        [Row("louisl@larry.slip.umd.edu", "failed", "4.0.0", "soft", "default-4xx")],
    ),
    "rfc3464_multi_mixed.eml": Case(
        "dsn",
        "rfc3464",
        [
            # "is not a registered gateway user": no precise code and no words that say
            # the mailbox is gone, so counted (soft), not suppressed at once
            Row("arathib@vnet.ibm.com", "failed", "5.0.0", "soft", "default-5xx"),
            Row("johnh@hpnjld.njd.hp.com", "delayed", "4.0.0", "ignore", "delayed"),
            Row("wsnell@sdcc13.ucsd.edu", "failed", "5.0.0", "hard", "user-unknown-text"),
            Row("ann.lee@example.org", "delivered", "2.0.0", "ignore", "delivered"),
            Row("relay@legacy.example.net", "relayed", "2.0.0", "ignore", "delivered"),
        ],
        "<multi-7731.4411@cs.utk.edu>",
    ),
    "rfc3464_delayed.eml": Case(
        "dsn",
        "rfc3464",
        [Row("slow@example.org", "delayed", "4.4.1", "ignore", "delayed")],
        "<delayed-1@example.com>",
    ),
    "postfix_dsn_headers.eml": Case(
        "dsn",
        "rfc3464",
        [Row("gone@example.org", "failed", "5.1.1", "hard", "bad-mailbox")],
        "<01HZX9Q4R7.postern@example.com>",
    ),
    "microsoft_dsn.eml": Case(
        "dsn",
        "rfc3464",
        [Row("nobody@contoso.example", "failed", "5.1.10", "hard", "bad-mailbox")],
        "<ms-order-88@example.com>",
    ),
    "policy_spamhaus.eml": Case(
        "dsn",
        "rfc3464",
        [
            Row("ceo@bigcorp.example", "failed", "5.7.1", "policy", "policy-block"),
            Row("cfo@bigcorp.example", "failed", "5.0.0", "policy", "policy-text"),
            Row("it@strict.example", "failed", "5.7.26", "policy", "policy-block"),
        ],
        "<news-12@example.com>",
    ),
    "mailbox_full.eml": Case(
        "dsn",
        "rfc3464",
        [
            Row("voll@example.de", "failed", "5.2.2", "soft", "mailbox-full"),
            Row("also-full@example.de", "failed", "5.0.0", "soft", "quota-text"),
        ],
        "<full-22@example.com>",
    ),
    "arf_rfc5965.eml": Case(
        "complaint",
        "arf",
        [Row("user@example.com", "", "", "complaint", "complaint-abuse")],
        "<8787KJKJ3K4J3K4J3K4J3.mail@example.net>",
    ),
    "arf_redacted.eml": Case(
        "complaint",
        "arf",
        [Row("reader@yahoo.example", "", "", "complaint", "complaint-abuse")],
        "<news-13@example.com>",
    ),
    "arf_not_spam.eml": Case(
        "complaint",
        "arf",
        [Row("happy@isp.example", "", "", "ignore", "arf-not-spam")],
        "<news-14@example.com>",
    ),
    "autoreply_rfc3834.eml": Case(
        "auto_reply", "rfc3834", [Row("ann@example.org", "", "", "auto_reply", "auto-reply")]
    ),
    "ooo_outlook_en.eml": Case(
        "auto_reply", "rfc3834", [Row("bob@contoso.example", "", "", "auto_reply", "auto-reply")]
    ),
    "ooo_de.eml": Case(
        "auto_reply", "rfc3834", [Row("juergen@example.de", "", "", "auto_reply", "auto-reply")]
    ),
    "ooo_fr.eml": Case(
        "auto_reply", "rfc3834", [Row("claire@example.fr", "", "", "auto_reply", "auto-reply")]
    ),
    "ooo_x_autoreply.eml": Case(
        "auto_reply", "rfc3834", [Row("soporte@example.es", "", "", "auto_reply", "auto-reply")]
    ),
    "ooo_precedence.eml": Case(
        "auto_reply", "rfc3834", [Row("ventas@example.es", "", "", "auto_reply", "auto-reply")]
    ),
    # An out-of-office answer quoting an Exim bounce is still an out-of-office answer.
    "ooo_quoting_a_bounce.eml": Case(
        "auto_reply", "rfc3834", [Row("dana@example.net", "", "", "auto_reply", "auto-reply")]
    ),
    "qmail.eml": Case(
        "dsn",
        "qmail",
        [
            Row("nobody@example.net", "failed", "5.1.1", "hard", "bad-mailbox"),
            Row("full.box@remote.example", "failed", "5.2.2", "soft", "mailbox-full"),
        ],
        "<qm-remind-3@example.com>",
    ),
    "exim.eml": Case(
        "dsn",
        "exim",
        [
            Row("nobody@example.co.uk", "failed", "5.1.1", "hard", "bad-mailbox"),
            Row("typo@no-such-domain.example", "failed", "5.0.0", "hard", "user-unknown-text"),
        ],
        "<ex-reset-5@example.com>",
    ),
    "exim_delay.eml": Case(
        "dsn", "exim", [Row("later@slow.example", "delayed", "4.7.1", "ignore", "delayed")]
    ),
    "postfix_plain.eml": Case(
        "dsn",
        "postfix",
        [
            Row("gone@example.org", "failed", "5.1.1", "hard", "bad-mailbox"),
            Row("local@mail.example.net", "failed", "5.0.0", "hard", "user-unknown-text"),
        ],
    ),
    "gmail.eml": Case(
        "dsn",
        "gmail",
        [Row("no.such.person@gmail.com", "failed", "5.1.1", "hard", "bad-mailbox")],
        "<gm-inv-15@example.com>",
    ),
    "gmail_old.eml": Case(
        "dsn",
        "gmail",
        [Row("someone@example.org", "failed", "5.1.1", "hard", "bad-mailbox")],
        "<gm-old-16@example.com>",
    ),
    "microsoft.eml": Case(
        "dsn",
        "microsoft",
        [Row("nobody@contoso.example", "failed", "5.1.10", "hard", "bad-mailbox")],
        "<ms-notes-17@example.com>",
    ),
    "yahoo.eml": Case(
        "dsn",
        "yahoo",
        [Row("nobody@yahoo.com", "failed", "5.0.0", "hard", "user-unknown-text")],
        "<yh-welcome-18@example.com>",
    ),
    "human_reply.eml": Case("other", "", []),
    # Auto-Submitted from MAILER-DAEMON in words no parser knows: listed, not ignored.
    "unknown_mta_bounce.eml": Case("other", "", []),
    "truncated.eml": Case("unparsed", "", []),
    "broken_multipart.eml": Case("unparsed", "", []),
    "garbage.bin": Case("unparsed", "", []),
}


def _rows(report: Report) -> list[Row]:
    verdicts = shipped().classify_report(report)
    return [Row(e.recipient, e.action, e.status, c.cls, c.rule) for e, c in verdicts]


def _message_id(report: Report) -> str:
    return report.returned.message_id if report.returned else ""


def test_every_corpus_file_has_a_case() -> None:
    assert sorted(p.name for p in CORPUS.iterdir()) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_corpus(name: str) -> None:
    case = CASES[name]
    report = parse((CORPUS / name).read_bytes())
    assert (report.kind, report.format) == (case.kind, case.format), report.error
    assert _rows(report) == case.rows
    assert _message_id(report) == case.message_id


@pytest.mark.parametrize("name", sorted(CASES))
def test_corpus_with_crlf_line_ends(name: str) -> None:
    """Reports arrive with CRLF from SMTP and IMAP: the same outcome."""
    case = CASES[name]
    report = parse((CORPUS / name).read_bytes().replace(b"\n", b"\r\n"))
    assert report.kind == case.kind
    assert _rows(report) == case.rows
    assert _message_id(report) == case.message_id


def _parse(name: str, **kwargs: object) -> Report:
    return parse((CORPUS / name).read_bytes(), **kwargs)  # type: ignore[arg-type]


def test_dsn_per_message_fields_and_diagnostics() -> None:
    report = _parse("postfix_dsn_headers.eml")
    assert report.reporting_mta == "mail.example.net"
    assert report.envelope_id == "01HZX9Q4R7"
    (entry,) = report.entries
    assert entry.remote_mta == "mx1.example.org"
    assert entry.original_recipient == "gone@example.org"
    assert entry.smtp_code == "550"
    assert entry.diagnostic == (
        "550 5.1.1 <gone@example.org>: Recipient address rejected: User unknown in virtual "
        "mailbox table"
    )


def test_generic_status_is_refined_by_the_diagnostics_own_code() -> None:
    raw = (
        (CORPUS / "postfix_dsn_headers.eml")
        .read_bytes()
        .replace(b"Status: 5.1.1", b"Status: 5.0.0")
    )
    (entry,) = parse(raw).entries
    assert entry.status == "5.1.1"


def test_returned_headers_and_reference_headers() -> None:
    returned = _parse("postfix_dsn_headers.eml").returned
    assert returned is not None
    assert returned.from_ == "Example App <app@example.com>"
    assert returned.to == "gone@example.org"
    assert returned.subject == "Welcome aboard"
    assert returned.ref("x-postern-ref") == "msg_01HZX9Q4R7"
    assert returned.return_path == "<bounces+k3j9v2pq@bounce.example.com>"


def test_reference_header_names_are_a_parameter() -> None:
    report = _parse("qmail.eml", ref_headers=("X-Mailer-Ref", "X-Postern-Ref"))
    assert report.returned is not None
    assert report.returned.refs == (("X-Postern-Ref", "msg_01HZXQM11"),)
    assert report.returned.ref("X-Mailer-Ref") == ""


def test_complaint_fields() -> None:
    report = _parse("arf_rfc5965.eml")
    feedback = report.feedback
    assert feedback is not None
    assert feedback.feedback_type == "abuse"
    assert feedback.user_agent == "SomeGenerator/1.0"
    assert feedback.original_mail_from == "somespammer@example.net"
    assert feedback.original_rcpt_to == ("user@example.com",)
    assert feedback.source_ip == "192.0.2.1"
    assert feedback.arrival_date == "Thu, 8 Mar 2005 14:00:00 EDT"
    assert feedback.reported_domain == "example.net"
    assert report.reporting_mta == "mail.example.com"


def test_auto_reply_says_why() -> None:
    assert _parse("autoreply_rfc3834.eml").auto_reply_signal == "Auto-Submitted: auto-replied"
    assert _parse("ooo_precedence.eml").auto_reply_signal == "Precedence: auto_reply"
    assert _parse("ooo_de.eml").auto_reply_signal.startswith("Subject: Abwesenheitsnotiz")


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.kind == "auto_reply"])
def test_an_auto_reply_is_never_a_bounce(name: str) -> None:
    report = _parse(name)
    assert all(c.cls == "auto_reply" for _, c in shipped().classify_report(report))


@pytest.mark.parametrize(
    ("name", "envelope", "verp", "expected"),
    [
        ("postfix_dsn_headers.eml", "", Verp(), "k3j9v2pq"),  # Delivered-To
        ("exim.eml", "", Verp(), "ex000012"),  # Envelope-to
        ("postfix_dsn_headers.eml", "bounces+fromlistener@b.example", Verp(), "fromlistener"),
        ("arf_redacted.eml", "", Verp(), "cmp00009"),  # the returned Return-Path
        ("rfc3464_simple.eml", "", Verp(), None),
        ("qmail.eml", "", Verp(domain="bounce.example.com"), "qm000011"),
        ("qmail.eml", "", Verp(domain="other.example"), None),
        ("qmail.eml", "", Verp(prefix="rtn", separator="-"), None),
    ],
)
def test_verp_token(name: str, envelope: str, verp: Verp, expected: str | None) -> None:
    assert token_for(_parse(name), envelope, verp) == expected


def test_verp_token_of_an_address_and_of_raw_bytes() -> None:
    assert token("<Bounces+AbC123@Bounce.Example.COM>") == "AbC123"
    assert token("rtn-x9@b.example", Verp(prefix="rtn", separator="-")) == "x9"
    assert token("bounces@b.example") is None
    assert token("bounces+@b.example") is None
    assert token("other+abc@b.example") is None
    assert token("not an address") is None
    raw = (CORPUS / "gmail.eml").read_bytes()
    assert token_for(raw) == "gm000015"


def test_an_exception_inside_becomes_unparsed(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: object) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(report_module, "_parse", explode)
    report = parse(b"From: a@b.example\n\nx\n")
    assert report.kind == "unparsed"
    assert report.error == "RecursionError: maximum recursion depth exceeded"


def test_garbage_says_why() -> None:
    assert _parse("garbage.bin").error == "no header fields"
    assert "NoBoundaryInMultipartDefect" in _parse("broken_multipart.eml").error
    assert "CloseBoundaryNotFoundDefect" in _parse("truncated.eml").error
    assert parse(b"").kind == "unparsed"
    assert parse("From: a@b.example\n\nhi\n").kind == "other"  # type: ignore[arg-type]


@pytest.mark.parametrize("max_parts", [DEFAULT_LIMITS.max_parts, 100_000])
def test_deep_nesting_does_not_raise(max_parts: int) -> None:
    """Nesting deeper than the parser's recursion allows (with limits that let it try)."""
    head = "".join(
        f'Content-Type: multipart/mixed; boundary="b{i}"\n\n--b{i}\n' for i in range(3000)
    )
    limits = Limits(max_parts=max_parts)
    report = parse(("From: x@y.example\n" + head + "text\n").encode(), limits=limits)
    assert report.kind in KINDS
    assert report.stats.parts_walked <= max_parts


# The huge reports: bounded by structure, counted, never timed.
_MB5 = 5 * 1024 * 1024


def _huge_dsn() -> bytes:
    blocks = "".join(
        f"Final-Recipient: rfc822; user{i}@example.org\nAction: failed\nStatus: 5.1.1\n"
        f"Diagnostic-Code: smtp; 550 5.1.1 {'x' * 200_000 if i == 0 else 'no such user'}\n\n"
        for i in range(2000)
    )
    body = "A" * 76 + "\n"
    return (
        'From: MAILER-DAEMON@x.example\nContent-Type: multipart/report; boundary="H"\n\n'
        "--H\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; x.example\n\n"
        f"{blocks}--H\nContent-Type: message/rfc822\n\nMessage-ID: <huge@example.com>\n\n"
        f"{body * (_MB5 // len(body))}--H--\n"
    ).encode()


def test_a_huge_dsn_costs_bounded_work(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _huge_dsn()
    assert len(raw) > _MB5
    read = []
    text_of = bounce_mime.text_of

    def counted(part: object, limit: int) -> str:
        text = text_of(part, limit)  # type: ignore[arg-type]
        read.append(len(text))
        return text

    monkeypatch.setattr(bounce_mime, "text_of", counted)
    report = parse(raw)
    assert report.kind == "dsn"
    assert len(report.entries) == DEFAULT_LIMITS.max_recipients
    assert report.stats.recipients_cut and report.stats.truncated
    assert report.stats.bytes_parsed == DEFAULT_LIMITS.max_bytes
    assert report.stats.parts_walked <= DEFAULT_LIMITS.max_parts
    assert all(len(e.diagnostic) <= DEFAULT_LIMITS.max_diagnostic for e in report.entries)
    assert report.entries[0].diagnostic.startswith("550 5.1.1 xxx")
    assert len(read) <= DEFAULT_LIMITS.max_parts
    assert all(n <= DEFAULT_LIMITS.max_text for n in read)


def test_a_huge_plain_text_bounce_is_scanned_up_to_the_limit() -> None:
    block = "<user{}@example.org>:\nSorry, no mailbox here by that name. (#5.1.1)\n\n"
    body = "".join(block.format(i) for i in range(_MB5 // len(block)))
    raw = "From: MAILER-DAEMON@x.example\nSubject: failure notice\n\n" + (
        "Hi. This is the qmail-send program at x.example.\n\n" + body
    )
    report = parse(raw.encode())
    assert report.format == "qmail"
    assert len(report.entries) == DEFAULT_LIMITS.max_recipients
    assert report.stats.recipients_cut


def test_many_parts_are_walked_up_to_the_limit() -> None:
    """Parts past the limit are not even built: the input is cut at the 4 * max_parts-th
    boundary-like line."""
    part = "--M\nContent-Type: text/plain\n\nx\n"
    parts = part * 50_000
    raw = f'From: a@b.example\nContent-Type: multipart/mixed; boundary="M"\n\n{parts}--M--\n'
    limits = Limits(max_bytes=8 * 1024 * 1024, max_parts=10)
    report = parse(raw.encode(), limits=limits)
    assert report.kind == "unparsed"  # cut short: no close boundary, and nothing found
    assert report.stats.parts_walked == 10
    assert report.stats.truncated
    assert report.stats.bytes_parsed == raw.index("--M") + (4 * 10 - 1) * len(part)


def test_header_values_are_cut_before_they_are_decoded() -> None:
    """policy.default is quadratic in a Content-Type's parameters and slow on many encoded
    words: a report's cost must not depend on its headers' length."""
    params = "; ".join(f'a{i}="x"' for i in range(100_000))
    words = "=?utf-8?q?a?= (" * 100_000
    raw = f"From: a@b.example\nSubject: {words}\nContent-Type: text/plain; {params}\n\nhi\n"
    report = parse(raw.encode())
    assert report.kind == "other"
    assert len(report.subject) <= DEFAULT_LIMITS.max_header


_SAMPLES = [(CORPUS / name).read_bytes() for name in sorted(CASES)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sample=st.sampled_from(_SAMPLES),
    cut=st.integers(min_value=0, max_value=4000),
    insert=st.binary(max_size=64),
    at=st.integers(min_value=0, max_value=4000),
)
def test_mangled_reports_never_raise(sample: bytes, cut: int, insert: bytes, at: int) -> None:
    """Cut short and spliced with arbitrary bytes, a report still parses to a kind."""
    raw = sample[:at] + insert + sample[at:cut] if cut > at else sample[:cut] + insert
    report = parse(raw)
    assert report.kind in KINDS
    shipped().classify_report(report)


_SIGNATURES = [
    "Hi. This is the qmail-send program at x.",
    "Sorry, we were unable to deliver your message to the following address.",
    "This message was created automatically by mail delivery software.",
    "This is the mail system at host x.",
    "** Address not found **\nDelivery to the following recipient failed permanently:",
    "Delivery has failed to these recipients or groups:\nDiagnostic information for administrators",
]
_FILLERS = [
    " \n" * 30000,
    "x@" + "a." * 30000,
    "<" * 60000,
    ("  a@b.example\n" + "    x\n") * 3000,
    ("<a@b.cd>:\n" + " " * 50 + "\n") * 1000,
]


@pytest.mark.parametrize("signature", _SIGNATURES)
@pytest.mark.parametrize("filler", range(len(_FILLERS)))
def test_fallback_parsers_on_hostile_text(signature: str, filler: int) -> None:
    """Each parser's signature, then text made to make a regular expression backtrack:
    every expression is linear in the text (a quadratic one would hang here for minutes)."""
    raw = "From: MAILER-DAEMON@x.example\nSubject: Delivery Status Notification (Failure)\n\n"
    report = parse((raw + signature + "\n" + _FILLERS[filler]).encode())
    assert report.kind in KINDS
    assert len(report.entries) <= DEFAULT_LIMITS.max_recipients
