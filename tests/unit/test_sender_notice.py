"""gateway.queue.notify: the RFC 3464 report a bounce of SMTP mail sends its sender, read
back with the standard library; hostile replies and addresses never make a header."""

from __future__ import annotations

import email
from email.message import Message
from email.policy import default

from gateway.message import DeliveryResult, Hop, Outcome, QueuedMessage
from gateway.queue.notify import SOURCE, Notifier, build_report, reported

ORIGINAL = (
    b"From: a@example.com\r\nSubject: Invoice 42\r\nMessage-ID: <m1@example.com>\r\n\r\nbody\r\n"
)


def queued(**fields: object) -> QueuedMessage:
    base: dict[str, object] = {
        "id": "msg_1",
        "mail_from": "a@example.com",
        "recipients": [],
        "content": ORIGINAL,
        "attempts": 1,
        "created_at": 1_800_000_000.0,
        "source": "smtp",
    }
    return QueuedMessage(**{**base, **fields})  # type: ignore[arg-type]


def test_the_report_names_each_recipient_and_its_reply() -> None:
    bounced = {
        "x@example.org": DeliveryResult(
            Outcome.BOUNCED,
            550,
            "5.1.1",
            "no such user",
            hop=Hop("mx.example.org[192.0.2.1]:25", 0, 0),
        ),
        "y@example.org": DeliveryResult(Outcome.BOUNCED, 554, None, "refused"),
    }
    raw = build_report("relay.example.net", queued(), bounced, 1_800_000_100.0)
    parsed = email.message_from_bytes(raw, policy=default)
    assert parsed["To"] == "a@example.com" and "MAILER-DAEMON@relay.example.net" in parsed["From"]
    _, status, headers = parsed.get_payload()  # type: ignore[misc]
    blocks: list[Message] = status.get_payload()  # type: ignore[assignment]
    assert blocks[0]["Reporting-MTA"] == "dns; relay.example.net"
    assert [b["Final-Recipient"] for b in blocks[1:]] == [
        "rfc822; x@example.org",
        "rfc822; y@example.org",
    ]
    assert [b["Status"] for b in blocks[1:]] == ["5.1.1", "5.0.0"]
    assert blocks[1]["Remote-MTA"] == "dns; mx.example.org"
    assert blocks[1]["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"
    assert "Subject: Invoice 42" in headers.get_payload()


def test_a_hostile_reply_stays_inside_its_field() -> None:
    evil = DeliveryResult(
        Outcome.BOUNCED, 550, "5.1.1", "bad\r\nBcc: victim@example.net\r\n\r\nx\u00e9"
    )
    raw = build_report("h.example", queued(), {"x@example.org": evil}, 1_800_000_100.0)
    assert raw.isascii() and b"\r\nBcc:" not in raw
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert b"\n" not in raw.replace(b"\r\n", b"")


def test_who_is_notified() -> None:
    notifier = Notifier("h.example")
    assert notifier.wanted(queued(), "smtp")
    assert not notifier.wanted(queued(mail_from=""), "smtp")  # a null sender: never
    assert not notifier.wanted(queued(), "http")  # webhooks tell HTTP senders
    assert not notifier.wanted(queued(mail_from=""), SOURCE)  # never a report of a report
    verp = queued(mail_from="bounces+msg_1-x@b.example", client_sender="a@example.com")
    notice = notifier.bounce(verp, {"x@example.org": DeliveryResult(Outcome.BOUNCED)}, 0.0)
    assert notice.mail_from == "" and notice.recipients == ("a@example.com",)
    assert notice.source == SOURCE


def test_a_delay_notice_says_delayed_and_until_when() -> None:
    notifier = Notifier("h.example", delay_warning=3600, max_age=86400)
    message = queued(updated_at=1_800_000_000.0 + 1800)
    assert not notifier.delay_due(message, 1_800_000_000.0 + 3000)  # not old enough yet
    assert notifier.delay_due(message, 1_800_000_000.0 + 3700)  # first past the hour
    later = queued(updated_at=1_800_000_000.0 + 3700)
    assert not notifier.delay_due(later, 1_800_000_000.0 + 7200)  # told already
    assert not Notifier("h.example").delay_due(message, 1_900_000_000.0)  # 0: never
    busy = DeliveryResult(Outcome.DEFERRED, 451, "4.2.2", "mailbox full")
    notice = notifier.delay(message, {"x@example.org": busy}, 1_800_000_000.0 + 3700)
    parsed = email.message_from_bytes(notice.content, policy=default)
    assert parsed["Subject"].startswith("Delayed Mail")
    _, status, _ = parsed.get_payload()  # type: ignore[misc]
    [_, block] = status.get_payload()
    assert block["Action"] == "delayed" and block["Status"] == "4.2.2"
    assert block["Will-Retry-Until"]


def test_a_reports_reply_is_repeated_not_prefixed_again() -> None:
    """A later bounce's result (`reported`): the report's Status, and its Diagnostic-Code as
    the reply, which the notification's Diagnostic-Code repeats as it was."""
    cases = [  # (Status, Diagnostic-Code) -> what the notification says
        ("5.1.1", "550 5.1.1 <x@example.org>: no", "550 5.1.1 <x@example.org>: no"),
        ("5.1.1", "550-5.1.1 The account does not exist", "550 5.1.1 The account does not exist"),
        ("5.1.1", "550 User unknown", "550 5.1.1 User unknown"),
        ("5.1.10", "550 5.1.1 refined", "550 5.1.10 5.1.1 refined"),
        ("5.2.1", "Mailbox disabled", "5.2.1 Mailbox disabled"),
        ("", "550 5.7.1 blocked", "550 5.7.1 blocked"),
        ("5.0.0", "", "5.0.0"),
    ]  # fmt: skip
    for status, diagnostic, said in cases:
        result = reported(status, diagnostic)
        assert result.outcome is Outcome.BOUNCED and result.describe() == said, diagnostic
    gone = reported("5.1.1", "550 5.1.1 <x@example.org>: User unknown")
    raw = build_report("relay.example.net", queued(), {"x@example.org": gone}, 1_800_000_100.0)
    parsed = email.message_from_bytes(raw, policy=default)
    _, status_part, _ = parsed.get_payload()  # type: ignore[misc]
    block = status_part.get_payload()[1]
    assert block["Status"] == "5.1.1"
    assert block["Diagnostic-Code"] == "smtp; 550 5.1.1 <x@example.org>: User unknown"
