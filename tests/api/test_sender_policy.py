"""`[policy] sender = "verified"` (the default): mail From anything but a verified domain or
a verified alias is refused — 403 `unverified_sender` over HTTP, 550 5.7.1 over SMTP (the
envelope MAIL FROM at MAIL, the header From after DATA) — and nothing is stored."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.process.cli import main
from gateway.smtpd import replies
from tests.support.api import Api, ApiFactory, payload
from tests.support.resources import call, verified_alias
from tests.support.rows import all_messages
from tests.support.service import wait_until
from tests.support.sink import Sink
from tests.support.smtp import Dialogue, plain, smtp_send

pytestmark = pytest.mark.timeout(60)
VERIFIED = {"policy": {"sender": "verified"}}


def mail(header_from: str) -> bytes:
    return f"From: {header_from}\r\nTo: rcpt@example.test\r\nSubject: s\r\n\r\nbody\r\n".encode()


async def add_verified(api: Api, domain: str) -> None:
    admin = await api.key("admin")
    body = {"domain": domain, "verified": True, "algorithm": "ed25519"}
    assert (await call(api, "POST", "/api/v1/domains", admin, body)).status_code == 201


async def test_http_from_an_unverified_domain_is_403(api_client: ApiFactory) -> None:
    api = await api_client(**VERIFIED)
    key = await api.key("send")
    refused = await api.send(payload(), key=key)
    assert refused.status_code == 403
    assert refused.json()["code"] == "unverified_sender"
    assert "app@sender.test" in refused.json()["error"]
    assert await all_messages(api.svc) == []
    await add_verified(api, "sender.test")
    assert (await api.send(payload(), key=key)).status_code == 200


async def test_smtp_checks_envelope_and_header_from(api_client: ApiFactory, sink: Sink) -> None:
    api = await api_client(**VERIFIED)
    port = api.svc.smtp_port
    code, text = await smtp_send(
        port, "app@sender.test", ["rcpt@example.test"], mail("app@sender.test")
    )
    assert (code, text[:5]) == replies.NOT_PERMITTED.status
    await add_verified(api, "sender.test")
    code, _ = await smtp_send(
        port, "app@sender.test", ["rcpt@example.test"], mail("App <app@sender.test>")
    )
    assert code == 250
    spoof = mail("CEO <ceo@bank.test>")  # a verified envelope does not launder the header
    code, text = await smtp_send(port, "app@sender.test", ["rcpt@example.test"], spoof)
    assert code == 550 and "ceo@bank.test" in text
    code, _ = await smtp_send(
        port, "bounce@other.test", ["rcpt@example.test"], mail("app@sender.test")
    )
    assert code == 550
    assert len(await all_messages(api.svc)) == 1


async def test_smtp_refuses_an_unverified_envelope_sender_at_mail_from(
    api_client: ApiFactory, sink: Sink
) -> None:
    """The client learns before sending the body; an authenticated session is held to the
    policy as any other."""
    api = await api_client(**VERIFIED)
    await add_verified(api, "sender.test")
    smtp = await Dialogue.open("127.0.0.1", api.svc.smtp_port)
    await smtp.say("EHLO client.test")
    code, text = await smtp.say("MAIL FROM:<app@other.test>")
    assert (code, text[:5]) == replies.NOT_PERMITTED.status and "app@other.test" in text
    assert (await smtp.say("RCPT TO:<rcpt@example.test>"))[0] == 503  # no transaction
    assert (await smtp.say("DATA"))[0] == 503  # so no body is taken
    assert (await smtp.say(plain(await api.key("send"))))[0] == 235
    assert (await smtp.say("MAIL FROM:<app@other.test>"))[0] == 550
    assert (await smtp.say("MAIL FROM:<App@Sender.TEST>"))[0] == 250
    smtp.close()
    assert await all_messages(api.svc) == []


async def test_smtp_null_sender_is_judged_by_its_header_from(
    api_client: ApiFactory, sink: Sink
) -> None:
    api = await api_client(**VERIFIED)
    await add_verified(api, "sender.test")
    smtp = await Dialogue.open("127.0.0.1", api.svc.smtp_port)
    await smtp.say("EHLO client.test")
    for header_from, expected in (("ceo@bank.test", 550), ("postmaster@sender.test", 250)):
        assert (await smtp.say("MAIL FROM:<>"))[0] == 250
        assert (await smtp.say("RCPT TO:<rcpt@example.test>"))[0] == 250
        assert (await smtp.say("DATA"))[0] == 354
        code, text = await smtp.say(mail(header_from) + b".\r\n")
        assert code == expected, text
    smtp.close()
    assert len(await all_messages(api.svc)) == 1


async def test_a_verified_alias_is_a_sender_on_its_own(api_client: ApiFactory, sink: Sink) -> None:
    api = await api_client(**VERIFIED)
    key = await api.key("aliases", "send", "domains")
    await add_verified(api, "brand.test")
    alias_id = await verified_alias(api, sink, key, "hello@brand.test")
    assert alias_id
    assert (await call(api, "DELETE", "/api/v1/domains/brand.test", key)).status_code == 200
    allowed = await api.send(payload(from_={"email": "hello@brand.test"}), key=key)
    assert allowed.status_code == 200, allowed.text
    refused = await api.send(payload(from_={"email": "other@brand.test"}), key=key)
    assert refused.json()["code"] == "unverified_sender"


async def test_readme_first_send_with_a_domain_added_by_the_cli(
    api_client: ApiFactory, tmp_path: Path
) -> None:
    """README "A first send": `postern domains add example.com --verified`, then send."""
    config = tmp_path / "cli.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "var"}"\n')
    args = ["--config", str(config), "domains", "add", "example.com", "--verified"]
    assert await asyncio.to_thread(main, [*args, "--algorithm", "ed25519"]) == 0
    api = await api_client(**VERIFIED)  # the same data_dir
    data = mail("app@example.com")
    code, _ = await smtp_send(api.svc.smtp_port, "app@example.com", ["someone@example.org"], data)
    assert code == 250
    # Added while the server runs: picked up within seconds.
    args = ["--config", str(config), "domains", "add", "late.example", "--verified"]
    assert await asyncio.to_thread(main, [*args, "--algorithm", "ed25519"]) == 0

    async def accepted() -> bool:
        code, _ = await smtp_send(
            api.svc.smtp_port, "app@late.example", ["someone@example.org"], mail("app@late.example")
        )
        return code == 250

    assert await wait_until(accepted, timeout=8.0, interval=0.5)


async def test_policy_any_lets_every_sender_through(api: Api) -> None:
    key = await api.key("send")
    response = await api.send(payload(from_={"email": "anyone@anywhere.test"}), key=key)
    assert response.status_code == 200
