"""The SMTP door under the API's rules: AUTH PLAIN/LOGIN with an API key as the password
(only over TLS or from loopback, failures slowed down), `require_auth`, and the key's
scopes applied to what it sends (ip_pool, sandbox), as dialogues over a raw socket.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import time

import pytest

from gateway.smtpd import auth as smtp_auth
from gateway.smtpd import replies
from storage.errors import StorageUnavailable
from tests.support.api import Api, ApiFactory
from tests.support.processes import free_port
from tests.support.rows import query
from tests.support.sink import Sink
from tests.support.smtp import Dialogue, plain

pytestmark = pytest.mark.timeout(30)


async def listener(api_client: ApiFactory, **smtp: object) -> Api:
    return await api_client(smtp={"require_auth": True, **smtp})


async def test_require_auth_refuses_mail_until_a_send_key_logs_in(
    api_client: ApiFactory, sink: Sink
) -> None:
    api = await listener(api_client)
    key_id, secret = await api.key_record("send")
    smtp = await Dialogue.open("127.0.0.1", api.svc.smtp_port)
    ehlo = await smtp.say("EHLO client.test")
    assert "AUTH LOGIN PLAIN" in ehlo[1]  # loopback: offered without TLS
    assert (await smtp.say("MAIL FROM:<app@sender.test>"))[0] == 530
    assert (await smtp.say(plain(secret))) == (235, "2.7.0 Authentication successful")
    code, text = await smtp.send_message()
    smtp.close()
    assert code == 250
    message_id = text.rsplit(" ", 1)[-1]
    assert await sink.wait_for_async(1, timeout=5)
    [meta] = await query(api.svc, "SELECT * FROM message_meta WHERE message_id = ?", message_id)
    assert meta["api_key_id"] == key_id  # the key can look its SMTP message up
    status = await api.get(f"/v1/messages/{message_id}", key=secret)
    assert status.status_code == 200


async def test_ehlo_offers_exactly_the_real_mechanisms(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """aiosmtpd takes every `auth_*` attribute of the handler for a mechanism: none but
    LOGIN and PLAIN may be offered, and any other name is 504 5.5.4, never a traceback."""
    smtp = await Dialogue.open("127.0.0.1", api.svc.smtp_port)
    code, text = await smtp.say("EHLO client.test")
    assert code == 250
    assert [line for line in text.split("\n") if line.startswith("AUTH")] == ["AUTH LOGIN PLAIN"]
    with caplog.at_level(logging.DEBUG):
        for name in ("throttle", "THROTTLE", "CRAM-MD5", "backend"):
            assert await smtp.say(f"AUTH {name}") == (
                504,
                "5.5.4 Unrecognized authentication type",
            )
        assert (await smtp.say("NOOP"))[0] == 250  # the session goes on
    smtp.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_auth_login_works_too(api_client: ApiFactory) -> None:
    api = await listener(api_client)
    secret = await api.key("send:transactional")
    smtp = await Dialogue.open("127.0.0.1", api.svc.smtp_port)
    await smtp.say("EHLO client.test")
    assert (await smtp.say("AUTH LOGIN"))[0] == 334
    assert (await smtp.say(base64.b64encode(b"whoever").decode()))[0] == 334
    assert (await smtp.say(base64.b64encode(secret.encode()).decode()))[0] == 235
    assert (await smtp.send_message())[0] == 250
    smtp.close()


@pytest.mark.parametrize("scopes", [("suppressions",), ("keys", "aliases")])
async def test_a_key_that_cannot_send_does_not_log_in(
    api_client: ApiFactory, scopes: tuple[str, ...]
) -> None:
    api = await listener(api_client)
    secret = await api.key(*scopes)
    smtp = await Dialogue.open("127.0.0.1", api.svc.smtp_port)
    await smtp.say("EHLO client.test")
    assert (await smtp.say(plain(secret)))[0] == 535
    smtp.close()


async def test_failed_attempts_are_slowed_down_per_client(
    api_client: ApiFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(smtp_auth, "BASE_DELAY", 0.05)  # then 0.1, 0.2, 0.4 ...
    api = await listener(api_client)
    smtp = await Dialogue.open("127.0.0.1", api.svc.smtp_port)
    await smtp.say("EHLO client.test")
    waits = []
    for attempt in range(3):
        started = time.monotonic()
        code, text = await smtp.say(plain(f"msk_wrong{attempt}"))
        waits.append(time.monotonic() - started)
        assert f"{code} {text}" == replies.AUTH_INVALID
    smtp.close()
    assert waits[0] >= 0.04 and waits[1] >= 0.09 and waits[2] >= 0.19
    other = await Dialogue.open("127.0.0.1", api.svc.smtp_port)  # same client address
    await other.say("EHLO client.test")
    started = time.monotonic()
    assert (await other.say(plain("msk_wrong")))[0] == 535
    assert time.monotonic() - started >= 0.39
    other.close()


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


async def test_off_loopback_auth_needs_tls(api_client: ApiFactory) -> None:
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    certs = Sink(tls="starttls")  # only for its self-signed certificate files
    api = await listener(
        api_client,
        listen=[f"0.0.0.0:{free_port()}"],
        tls_cert=certs.cert_path,
        tls_key=certs.key_path,
    )
    secret = await api.key("send")
    smtp = await Dialogue.open(address, api.svc.smtp_port)
    assert "AUTH" not in (await smtp.say("EHLO client.test"))[1]
    assert (await smtp.say(plain(secret)))[0] == 538
    await smtp.starttls()
    assert "AUTH LOGIN PLAIN" in (await smtp.say("EHLO client.test"))[1]
    assert (await smtp.say(plain(secret)))[0] == 235
    assert (await smtp.send_message())[0] == 250
    smtp.close()


async def test_the_keys_ip_pool_and_sandbox_scope_apply_over_smtp(
    api_client: ApiFactory, sink: Sink
) -> None:
    api = await listener(api_client)  # one pool, in the transactional group
    smtp = await Dialogue.open("127.0.0.1", api.svc.smtp_port)
    await smtp.say("EHLO client.test")
    assert (await smtp.say(plain(await api.key("send:marketing"))))[0] == 235
    code, text = await smtp.send_message()
    assert (code, text[:5]) == replies.NOT_PERMITTED.status and "marketing" in text
    code, text = await smtp.send_message(b"X-Postern-Sandbox: true\r\n")
    assert code == 550 and "sandbox" in text
    smtp.close()
    await asyncio.sleep(0.2)
    assert sink.messages == []


async def test_bad_control_header_values_are_refused(api: Api, sink: Sink) -> None:
    smtp = await Dialogue.open("127.0.0.1", api.svc.smtp_port)
    await smtp.say("EHLO client.test")
    long_key = b"X-Postern-Idempotency-Key: " + b"k" * 129 + b"\r\n"
    code, text = await smtp.send_message(long_key)
    assert code == 550 and "Idempotency-Key" in text
    many_tags = b"X-Postern-Tags: " + b",".join(b"t%d" % i for i in range(11)) + b"\r\n"
    code, text = await smtp.send_message(many_tags)
    assert code == 550 and "Tags" in text
    smtp.close()


async def test_a_failure_budget_outage_answers_454_and_checks_nothing(
    api_client: ApiFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The budgets live in the database: when it fails, a guess is neither counted nor
    checked (454 4.7.0, try again later), never a traceback nor a login let through."""
    api = await listener(api_client)
    _, secret = await api.key_record("send")
    handler = api.svc.smtp_handler
    checked: list[str] = []

    async def down(budgets: object, now: float) -> None:
        raise StorageUnavailable("connection refused (the database is down)")

    async def noted(secret: str) -> None:
        checked.append(secret)

    with monkeypatch.context() as patch:
        patch.setattr(handler.login_throttle._failures, "take", down)
        patch.setattr(handler.keys, "authenticate", noted)
        smtp = await Dialogue.open("127.0.0.1", api.svc.smtp_port)
        await smtp.say("EHLO client.test")
        for guess in (secret, "msk_wrong"):
            answer = await smtp.say(plain(guess))
            assert f"{answer[0]} {answer[1]}" == replies.AUTH_UNAVAILABLE, answer
        assert (await smtp.say("NOOP"))[0] == 250  # the session goes on
        smtp.close()
    assert checked == []
    smtp = await Dialogue.open("127.0.0.1", api.svc.smtp_port)  # back: AUTH works
    await smtp.say("EHLO client.test")
    assert (await smtp.say(plain(secret)))[0] == 235
    smtp.close()


async def test_a_successful_auth_leaves_no_failure_behind(api_client: ApiFactory) -> None:
    api = await listener(api_client, auth_failures_per_address="1/h")
    secret = await api.key("send")
    for _ in range(3):  # a budget of one failure: each login gives its guess back
        smtp = await Dialogue.open("127.0.0.1", api.svc.smtp_port)
        await smtp.say("EHLO client.test")
        assert (await smtp.say(plain(secret)))[0] == 235
        smtp.close()
        for _ in range(100):
            if not await query(api.svc, "SELECT id FROM auth_failure"):
                break
            await asyncio.sleep(0.02)
    assert await query(api.svc, "SELECT id FROM auth_failure") == []


async def test_a_key_lookup_outage_answers_454_and_costs_no_budget(
    api_client: ApiFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = await listener(api_client, auth_failures_per_address="2/h")
    _, secret = await api.key_record("send")
    keys = api.svc.smtp_handler.keys

    async def down(secret: str) -> None:
        raise OSError("connection refused (the database is down)")

    with monkeypatch.context() as patch:
        patch.setattr(keys, "authenticate", down)
        smtp = await Dialogue.open("127.0.0.1", api.svc.smtp_port)
        await smtp.say("EHLO client.test")
        for _ in range(3):  # more than the address's budget of two failures
            answer = await smtp.say(plain(secret))
            assert f"{answer[0]} {answer[1]}" == replies.AUTH_UNAVAILABLE, answer
        smtp.close()
    # The database is back and the budget whole: one failure, then the check of a second
    # guess (each takes a token before it is checked) still fit in it.
    smtp = await Dialogue.open("127.0.0.1", api.svc.smtp_port)
    await smtp.say("EHLO client.test")
    assert (await smtp.say(plain("msk_wrong")))[0] == 535
    assert (await smtp.say(plain(secret)))[0] == 235
    smtp.close()
