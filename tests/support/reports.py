"""Reports that come back, written for the tests of bounce processing: an RFC 3464 DSN, an
RFC 5965 complaint and an RFC 3834 auto-reply, each naming the message it returns in the
ways matching reads (the VERP address it was sent to, X-Postern-Ref, Message-ID)."""

from __future__ import annotations


def returned(ref: str = "", message_id: str = "<orig@app.test>") -> str:
    ref_line = f"X-Postern-Ref: {ref}\r\n" if ref else ""
    return (
        f"{ref_line}From: app@app.test\r\nTo: rcpt@example.test\r\n"
        f"Subject: hello\r\nMessage-ID: {message_id}\r\n"
    )


def dsn(
    recipient: str,
    status: str = "5.1.1",
    diagnostic: str = "550 5.1.1 user unknown",
    *,
    to: str = "bounces@bounce.test",
    ref: str = "",
    message_id: str = "<orig@app.test>",
    action: str = "failed",
    nonce: str = "1",
) -> bytes:
    """A DSN sent to `to` (a VERP address, or not) for `recipient`. `nonce` makes two
    reports about the same thing differ in their bytes."""
    text = (
        f"From: MAILER-DAEMON@mx.example.test\r\nTo: {to}\r\nSubject: Undelivered Mail\r\n"
        f"Message-ID: <dsn{nonce}@mx.example.test>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nDelivery failed.\r\n\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.test\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: {action}\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; {diagnostic}\r\n\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"{returned(ref, message_id)}\r\n--B--\r\n"
    )
    return text.encode()


def complaint(recipient: str, *, to: str = "fbl@bounce.test", ref: str = "") -> bytes:
    text = (
        f"From: fbl@isp.test\r\nTo: {to}\r\nSubject: complaint\r\nMessage-ID: <arf1@isp.test>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="A"\r\n\r\n'
        "--A\r\nContent-Type: text/plain\r\n\r\nA complaint.\r\n\r\n"
        "--A\r\nContent-Type: message/feedback-report\r\n\r\n"
        "Feedback-Type: abuse\r\nUser-Agent: isp/1.0\r\nVersion: 1\r\n"
        f"Original-Rcpt-To: {recipient}\r\n\r\n"
        f"--A\r\nContent-Type: message/rfc822\r\n\r\n{returned(ref)}\r\nbody\r\n\r\n--A--\r\n"
    )
    return text.encode()


def auto_reply(to: str) -> bytes:
    return (
        f"From: rcpt@example.test\r\nTo: {to}\r\nSubject: Out of office\r\n"
        "Auto-Submitted: auto-replied\r\nMessage-ID: <ooo1@example.test>\r\n\r\n"
        "I am away until Monday.\r\n"
    ).encode()
