"""SPEC "Routing" end to end, with API-created pools in front of two real sinks — one for
the transactional group, one requiring AUTH for marketing: by pool id, by alias id, by the
From of a verified alias, the default; an unknown alias_id refused at both doors; inside a
group, priority order, failover on a closed port or a 4xx, and a failing pool skipped until
its cool-down has passed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.delivery import slowdown
from gateway.smtpd import replies
from tests.support.api import Api, ApiFactory, payload
from tests.support.processes import free_port
from tests.support.resources import POOLS, call, create_pool, verified_alias, verified_domain
from tests.support.rows import message_row, query, wait_for_status
from tests.support.service import wait_until
from tests.support.sink import Sink
from tests.support.smtp import smtp_send

pytestmark = pytest.mark.timeout(60)
MKT_LOGIN = ("marketing-user", "mkt-password-1")


@dataclass
class Setup:
    api: Api
    key: str
    transactional: Sink
    marketing: Sink
    pools: dict[str, str]  # name -> id


@pytest.fixture
async def setup(api_client: ApiFactory, sink: Sink) -> AsyncIterator[Setup]:
    marketing = Sink(auth=MKT_LOGIN).start()
    try:
        api = await api_client(pools=[])
        key = await api.key("pools", "send", "aliases", "domains")
        trans = await create_pool(api, key, sink, name="trans", ip_pool="transactional")
        mkt = await create_pool(
            api, key, marketing, name="mkt", ip_pool="marketing",
            username=MKT_LOGIN[0], password=MKT_LOGIN[1],
        )  # fmt: skip
        yield Setup(api, key, sink, marketing, {"trans": trans["id"], "mkt": mkt["id"]})
    finally:
        marketing.stop()


async def send(setup: Setup, **fields: Any) -> dict[str, Any]:
    response = await setup.api.send(payload(**fields), key=setup.key)
    assert response.status_code == 200, response.text
    row = await wait_for_status(setup.api.svc, response.json()["message_id"], {"delivered"})
    return row


async def test_by_pool_id_and_default(setup: Setup) -> None:
    row = await send(setup, alias_id=setup.pools["mkt"])
    assert row["last_pool"] == "mkt" and len(setup.marketing.messages) == 1
    assert setup.marketing.messages[0].login == MKT_LOGIN[0]  # AUTH with the stored password
    row = await send(setup)  # no default pool: the transactional group
    assert row["last_pool"] == "trans" and len(setup.transactional.messages) == 1
    await call(setup.api, "PATCH", f"{POOLS}/{setup.pools['mkt']}", setup.key, {"is_default": True})
    row = await send(setup)  # now the default pool
    assert row["last_pool"] == "mkt" and len(setup.marketing.messages) == 2


async def test_by_alias_id_and_by_from(setup: Setup) -> None:
    api = setup.api
    await verified_domain(api, "brand.test")
    alias_id = await verified_alias(
        api, setup.transactional, setup.key, "news@brand.test", ip_pool="marketing"
    )
    row = await send(setup, alias_id=alias_id)
    assert row["last_pool"] == "mkt"
    row = await send(setup, from_={"email": "news@brand.test"})  # From = the alias
    assert row["last_pool"] == "mkt"
    row = await send(setup, from_={"email": "other@brand.test"})
    assert row["last_pool"] == "trans"
    assert len(setup.marketing.messages) == 2


async def test_an_unverified_alias_claims_no_mail_by_its_from(setup: Setup) -> None:
    await verified_domain(setup.api, "brand.test")
    body = {"email": "promo@brand.test", "ip_pool": "marketing"}
    assert (await call(setup.api, "POST", "/api/v1/aliases", setup.key, body)).status_code == 201
    row = await send(setup, from_={"email": "promo@brand.test"})
    assert row["last_pool"] == "trans"


async def test_unknown_alias_id_is_refused_at_both_doors(setup: Setup) -> None:
    refused = await setup.api.send(payload(alias_id="smtp_nope"), key=setup.key)
    assert (refused.status_code, refused.json()["code"]) == (400, "unknown_alias")
    data = (
        b"From: app@sender.test\r\nTo: rcpt@example.test\r\nSubject: s\r\n"
        b"X-Postern-Alias-Id: ali_nope\r\n\r\nbody\r\n"
    )
    code, text = await smtp_send(
        setup.api.svc.smtp_port, "app@sender.test", ["rcpt@example.test"], data
    )
    assert (code, text[:5]) == replies.UNKNOWN_ALIAS.status


async def test_smtp_routes_by_the_alias_id_header(setup: Setup) -> None:
    data = (
        b"From: app@sender.test\r\nTo: rcpt@example.test\r\nSubject: s\r\n"
        b"X-Postern-Alias-Id: " + setup.pools["mkt"].encode() + b"\r\n\r\nbody\r\n"
    )
    code, _ = await smtp_send(
        setup.api.svc.smtp_port, "app@sender.test", ["rcpt@example.test"], data
    )
    assert code == 250
    assert await setup.marketing.wait_for_async(1)
    assert b"X-Postern" not in setup.marketing.messages[0].data


async def test_failover_when_the_first_pools_port_is_closed(setup: Setup) -> None:
    await create_pool(setup.api, setup.key, name="dead", port=free_port(), priority=1)
    row = await send(setup)
    assert row["last_pool"] == "trans" and len(setup.transactional.messages) == 1


async def test_failover_on_a_4xx_then_priority_order_again(setup: Setup) -> None:
    first = Sink().start()
    try:
        await create_pool(setup.api, setup.key, first, name="first", priority=1)
        first.fail("mail", "451 4.3.0 busy", times=1)
        row = await send(setup)
        assert row["last_pool"] == "trans"  # failed over on the 4xx
        row = await send(setup)
        assert row["last_pool"] == "first" and len(first.messages) == 1  # lowest priority first
    finally:
        first.stop()


async def test_a_failing_pool_is_skipped_until_its_cool_down_passes(setup: Setup) -> None:
    flaky = Sink().start()
    try:
        await create_pool(setup.api, setup.key, flaky, name="flaky", priority=1)
        flaky.fail("connect", "421 4.3.2 not now")
        for _ in range(3):  # three failures in a row mark the pool unhealthy
            assert (await send(setup))["last_pool"] == "trans"
        assert flaky.connections_total == 3
        live = next(p for p in setup.api.svc.registry.all() if p.name == "flaky")
        assert live.unhealthy_until > time.time()
        assert (await send(setup))["last_pool"] == "trans"
        assert flaky.connections_total == 3  # skipped: not even a connection
        flaky.clear()
        while time.time() < live.unhealthy_until:  # the cool-down (1 s here)
            await asyncio.sleep(0.05)
        assert (await send(setup))["last_pool"] == "flaky"  # tried again, and healthy
        assert live.unhealthy_until == 0.0
    finally:
        flaky.stop()


# --- no silent fallback: a route that names a pool or group is that pool or group, or nothing


def _smtp_data(alias_id: str) -> bytes:
    return (
        b"From: app@sender.test\r\nTo: rcpt@example.test\r\nSubject: s\r\n"
        b"X-Postern-Alias-Id: " + alias_id.encode() + b"\r\n\r\nbody\r\n"
    )


_SMTP_REFUSALS = {"alias_not_verified": replies.ALIAS_NOT_VERIFIED, "no_route": replies.NO_ROUTE}


async def _refused_at_both_doors(setup: Setup, alias_id: str, status: int, code: str) -> None:
    refused = await setup.api.send(payload(alias_id=alias_id), key=setup.key)
    assert (refused.status_code, refused.json().get("code")) == (status, code), refused.text
    reply = await smtp_send(
        setup.api.svc.smtp_port, "app@sender.test", ["rcpt@example.test"], _smtp_data(alias_id)
    )
    assert (reply[0], reply[1][:5]) == _SMTP_REFUSALS[code].status, reply


async def test_an_unverified_alias_cannot_be_used_to_send(setup: Setup) -> None:
    await verified_domain(setup.api, "brand.test")
    body = {"email": "promo@brand.test", "ip_pool": "marketing"}
    created = await call(setup.api, "POST", "/api/v1/aliases", setup.key, body)
    assert created.status_code == 201
    await _refused_at_both_doors(setup, created.json()["alias"]["id"], 403, "alias_not_verified")
    assert setup.marketing.messages == []


async def test_alias_id_naming_an_inactive_pool_is_refused(setup: Setup) -> None:
    mkt = setup.pools["mkt"]
    await call(setup.api, "PATCH", f"{POOLS}/{mkt}", setup.key, {"is_active": False})
    await _refused_at_both_doors(setup, mkt, 400, "no_route")
    assert setup.transactional.messages == [] and setup.marketing.messages == []


async def test_an_alias_whose_group_has_no_active_pool_is_refused(setup: Setup) -> None:
    await verified_domain(setup.api, "brand.test")
    alias_id = await verified_alias(
        setup.api, setup.transactional, setup.key, "news@brand.test", ip_pool="newsletter"
    )
    setup.transactional.messages.clear()  # the verification message
    await _refused_at_both_doors(setup, alias_id, 400, "no_route")
    # Its From claims the same group: refused too, rather than sent through another.
    refused = await setup.api.send(payload(from_={"email": "news@brand.test"}), key=setup.key)
    assert (refused.status_code, refused.json().get("code")) == (400, "no_route")
    assert setup.transactional.messages == []


async def test_queued_mail_waits_for_its_pool_and_never_takes_another(setup: Setup) -> None:
    api, mkt = setup.api, setup.pools["mkt"]
    setup.marketing.fail("mail", "451 4.3.0 not now")
    sent = await api.send(payload(alias_id=mkt), key=setup.key)
    assert sent.status_code == 202
    message_id = sent.json()["message_id"]
    await call(api, "PATCH", f"{POOLS}/{mkt}", setup.key, {"is_active": False})
    # The next attempt (retry_schedule 1 s) finds no active pool: it waits, and says why.
    row = await wait_until(lambda: _waiting(api, message_id, "no active pool"), timeout=10.0)
    assert row, await message_row(api.svc, message_id)
    assert row["status"] == "deferred"
    events = await query(
        api.svc, "SELECT type, response FROM event WHERE message_id = ?", message_id
    )
    assert any("no active pool" in (e["response"] or "") for e in events)
    await asyncio.sleep(1.5)  # past another retry interval: still nobody else takes it
    assert setup.transactional.messages == []
    assert (await message_row(api.svc, message_id))["status"] == "deferred"
    setup.marketing.clear()
    # Reactivating the pool wakes the mail waiting for it: no retry, no minute-long poll.
    await call(api, "PATCH", f"{POOLS}/{mkt}", setup.key, {"is_active": True})
    row = await wait_for_status(api.svc, message_id, {"delivered"}, timeout=10.0)
    assert row["last_pool"] == "mkt" and setup.transactional.messages == []


async def test_default_routed_mail_follows_the_new_default_after_an_outage_move(
    setup: Setup,
) -> None:
    """The usual outage move (another pool the default, the broken one off): the backlog
    routed by default goes out through the new default, over SMTP as over HTTP."""
    api, mkt, trans = setup.api, setup.pools["mkt"], setup.pools["trans"]
    await call(api, "PATCH", f"{POOLS}/{mkt}", setup.key, {"is_default": True})
    setup.marketing.fail("mail", "451 4.3.0 broken")
    code, _ = await smtp_send(api.svc.smtp_port, "app@sender.test", ["a@example.test"], MAIL)
    assert code == 250
    sent = await api.send(payload(), key=setup.key)
    ids = [row["id"] for row in await query(api.svc, "SELECT id FROM message")]
    assert sent.status_code in (200, 202) and len(ids) == 2
    for message_id in ids:
        await wait_until(lambda m=message_id: _waiting(api, m, "451"), timeout=10.0)
    await call(api, "PATCH", f"{POOLS}/{trans}", setup.key, {"is_default": True})
    await call(api, "PATCH", f"{POOLS}/{mkt}", setup.key, {"is_active": False})
    for message_id in ids:
        row = await wait_for_status(api.svc, message_id, {"delivered"}, timeout=10.0)
        assert row["last_pool"] == "trans"
    assert len(setup.transactional.messages) == 2


async def test_every_pool_inactive_pauses_the_queue_with_one_event_per_wait(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every pool off: mail is accepted and waits (never direct to MX), looked at again
    and again with a single `deferred` event; a pool back on lets it go."""
    monkeypatch.setattr(slowdown, "NO_POOL_WAIT", 0.1)
    monkeypatch.setattr(slowdown, "NO_POOL_WAIT_MAX", 0.2)
    api = setup.api
    for pool_id in setup.pools.values():
        await call(api, "PATCH", f"{POOLS}/{pool_id}", setup.key, {"is_active": False})
    code, _ = await smtp_send(api.svc.smtp_port, "app@sender.test", ["a@example.test"], MAIL)
    assert code == 250
    sent = await api.send(payload(), key=setup.key)
    assert sent.status_code == 202, sent.text
    ids = [row["id"] for row in await query(api.svc, "SELECT id FROM message")]
    for message_id in ids:
        row = await wait_until(lambda m=message_id: _waiting(api, m, "no active pool"), 10.0)
        assert row, await message_row(api.svc, message_id)
    await asyncio.sleep(1.5)  # several looks at the route later
    for message_id in ids:
        row = await message_row(api.svc, message_id)
        assert row is not None and row["status"] == "deferred" and row["attempts"] == 0
        assert "no active pool" in row["last_response"]
        deferred = await query(
            api.svc, "SELECT * FROM event WHERE message_id = ? AND type = 'deferred'", message_id
        )
        assert len(deferred) == 1, deferred
    trans = setup.pools["trans"]
    await call(api, "PATCH", f"{POOLS}/{trans}", setup.key, {"is_active": True})
    for message_id in ids:
        await wait_for_status(api.svc, message_id, {"delivered"}, timeout=10.0)


async def test_deleting_the_last_active_pool_of_a_group_is_refused(setup: Setup) -> None:
    api = setup.api
    await verified_domain(api, "brand.test")
    alias_id = await verified_alias(
        api, setup.transactional, setup.key, "news@brand.test", ip_pool="newsletter"
    )
    first = await create_pool(
        api, setup.key, setup.marketing, name="n1", ip_pool="newsletter",
        username=MKT_LOGIN[0], password=MKT_LOGIN[1],
    )  # fmt: skip
    await create_pool(api, setup.key, setup.marketing, name="n2", ip_pool="newsletter",
                      is_active=False)  # fmt: skip
    setup.marketing.fail("mail", "451 4.3.0 not now")
    sent = await api.send(payload(alias_id=alias_id), key=setup.key)
    assert sent.status_code == 202, sent.text
    deleted = await call(api, "DELETE", f"{POOLS}/{first['id']}", setup.key)
    assert (deleted.status_code, deleted.json().get("code")) == (409, "pool_in_use")


MAIL = b"From: app@sender.test\r\nTo: a@example.test\r\nSubject: hi\r\n\r\nhello\r\n"


async def _waiting(api: Api, message_id: str, reason: str) -> dict[str, Any] | None:
    row = await message_row(api.svc, message_id)
    return row if row and reason in (row["last_response"] or "") else None


async def test_a_key_kept_to_a_group_keeps_its_mail_there_when_the_default_moves(
    setup: Setup,
) -> None:
    """A `send:marketing` key's mail, routed by default into marketing, stays in marketing
    when the operator makes a transactional pool the default: the key's limit holds."""
    api, mkt, trans = setup.api, setup.pools["mkt"], setup.pools["trans"]
    await call(api, "PATCH", f"{POOLS}/{mkt}", setup.key, {"is_default": True})
    setup.marketing.fail("mail", "451 4.3.0 broken")
    marketing_only = await api.key("send:marketing")
    sent = await api.send(payload(), key=marketing_only)
    assert sent.status_code in (200, 202)
    (message_id,) = [row["id"] for row in await query(api.svc, "SELECT id FROM message")]
    await wait_until(lambda: _waiting(api, message_id, "451"), timeout=10.0)
    await call(api, "PATCH", f"{POOLS}/{trans}", setup.key, {"is_default": True})
    await call(api, "PATCH", f"{POOLS}/{mkt}", setup.key, {"is_active": False})
    await wait_until(lambda: _waiting(api, message_id, "no active pool"), timeout=10.0)
    assert setup.transactional.messages == []
