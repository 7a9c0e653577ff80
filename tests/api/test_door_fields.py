"""One set of field checks for both doors (gateway.intake.fields): a tag, an alias id, an
idempotency key or a sandbox flag is accepted or refused the same over HTTP (`POST
/v1/send`, 400 naming the field) and over SMTP (its `X-Postern-*` header, 550 5.6.0 naming
the header). Before, a tag with U+2028 or an encoded-word passed over SMTP.
"""

from __future__ import annotations

import pytest

from gateway.smtpd import replies
from tests.support.api import Shared, payload
from tests.support.smtp import smtp_send

pytestmark = [pytest.mark.timeout(60), pytest.mark.asyncio(loop_scope="module")]

SANDBOX = {"X-Postern-Sandbox": "true"}

# (HTTP field, its SMTP header, a bad value, the problem both doors name)
BAD = [
    ("tags", "X-Postern-Tags", "line\u2028break", "line break"),
    ("tags", "X-Postern-Tags", "para\u2029graph", "line break"),
    ("tags", "X-Postern-Tags", "=?utf-8?q?evil?=", "encoded-word"),
    ("tags", "X-Postern-Tags", "nel\u0085", "control character"),
    ("tags", "X-Postern-Tags", "t" * 65, "64"),
    ("alias_id", "X-Postern-Alias-Id", "=?utf-8?b?c210cF8x?=", "encoded-word"),
    ("alias_id", "X-Postern-Alias-Id", "smtp_\u2028x", "line break"),
    ("alias_id", "X-Postern-Alias-Id", "a" * 129, "128"),
    ("idempotency_key", "X-Postern-Idempotency-Key", "k\u2028", "line break"),
    ("idempotency_key", "X-Postern-Idempotency-Key", "=?us-ascii?q?k?=", "encoded-word"),
    ("idempotency_key", "X-Postern-Idempotency-Key", "\x1bk", "control character"),
]


def _message(header: str, value: str) -> bytes:
    return (
        f"From: app@sender.test\r\nTo: rcpt@example.test\r\nSubject: fields\r\n"
        f"{header}: {value}\r\nX-Postern-Sandbox: true\r\n\r\nBody\r\n"
    ).encode()


async def _smtp(shared: Shared, data: bytes) -> tuple[int, str]:
    port = shared.api.svc.smtp_port
    return await smtp_send(port, "app@sender.test", ["rcpt@example.test"], data)


@pytest.mark.parametrize(("field", "header", "value", "problem"), BAD)
async def test_a_bad_value_is_refused_by_both_doors(
    shared: Shared, field: str, header: str, value: str, problem: str
) -> None:
    http = await shared.api.send(
        payload(**{field: [value] if field == "tags" else value}), key=shared.key, headers=SANDBOX
    )
    assert http.status_code == 400, http.text
    assert any(
        d["field"].startswith(field) and problem in d["message"] for d in http.json()["details"]
    ), http.json()

    code, reply = await _smtp(shared, _message(header, value))
    assert (code, reply[:5]) == replies.BAD_CONTENT.status, reply
    assert header in reply and problem in reply, reply


@pytest.mark.parametrize(
    ("field", "header", "value"),
    [
        ("tags", "X-Postern-Tags", "café-2026"),
        ("tags", "X-Postern-Tags", "t" * 64),
        ("idempotency_key", "X-Postern-Idempotency-Key", "order=7?yes"),
        ("idempotency_key", "X-Postern-Idempotency-Key", "k" * 128),
    ],
)
async def test_a_good_value_is_taken_by_both_doors(
    shared: Shared, field: str, header: str, value: str
) -> None:
    body = payload(**{field: [value] if field == "tags" else value})
    http = await shared.api.send(body, key=shared.key, headers=SANDBOX)
    assert http.status_code == 200, http.text
    code, reply = await _smtp(shared, _message(header, value))
    assert code == 250, reply


@pytest.mark.parametrize("flag", ["yes", "1", "on", "true!"])
async def test_a_sandbox_flag_other_than_true_or_false_is_refused_by_both_doors(
    shared: Shared, flag: str
) -> None:
    """Over SMTP anything but "true" used to send for real what was meant as a test."""
    http = await shared.api.send(key=shared.key, headers={"X-Postern-Sandbox": flag})
    assert http.status_code == 400, http.text
    data = (
        f"From: app@sender.test\r\nTo: rcpt@example.test\r\nSubject: s\r\n"
        f"X-Postern-Sandbox: {flag}\r\n\r\nBody\r\n"
    ).encode()
    before = len(shared.sink.messages)
    code, reply = await _smtp(shared, data)
    assert (code, reply[:5]) == replies.BAD_CONTENT.status, reply
    assert "X-Postern-Sandbox" in reply, reply
    assert len(shared.sink.messages) == before


async def test_control_header_bytes_that_are_not_utf8_are_refused(shared: Shared) -> None:
    data = (
        b"From: app@sender.test\r\nTo: rcpt@example.test\r\nSubject: s\r\n"
        b"X-Postern-Tags: caf\xe9\r\nX-Postern-Sandbox: true\r\n\r\nBody\r\n"
    )
    code, reply = await _smtp(shared, data)
    assert (code, reply[:5]) == replies.BAD_CONTENT.status and "UTF-8" in reply, reply
