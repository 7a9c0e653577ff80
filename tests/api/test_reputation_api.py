"""Sender reputation (issue 21, seed 004) through a real uvicorn: `GET /mail/accounts/reputation`
field for field as the seed (plus reputation_status and components) for a session and an
admin key, 403 for a key without admin; `GET /api/v1/reputation` by kind and scope;
`/api/v1/reputation/{kind}/{id}` with 404s; the domain's records looked up on a loopback DNS
server; a crossing below the threshold writes one `reputation_at_risk` event and, when
asked to, pauses the pool's sending in the same commit; `blacklist_status` read from the
verdicts of what the DNSBL check asks about (an account's domain, a domain, the configured
sending IPs for a pool)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from gateway.people.passwords import Passwords
from gateway.people.users import Users
from storage import blocklists, mail_accounts, pools, reputation, warmup
from storage.blocklists import Verdict
from storage.models import Event, Warmup
from tests.support.api import Api, ApiFactory, auth
from tests.support.dnsserver import DnsServer
from tests.support.people import sign_in
from tests.support.reputation import record_sends
from tests.support.service import metric, wait_until
from tests.support.webhook_receiver import Receiver

pytestmark = pytest.mark.timeout(60)

SEED_FIELDS = [
    "account_id", "email", "reputation_score", "warmup_status", "daily_limit", "sent_today",
    "blacklist_status", "last_checked_at",
]  # fmt: skip
ADDED_FIELDS = ["reputation_status", "components"]
COMPONENT_FIELDS = {"signal", "value", "points", "window_days", "rule"}
EV = Event
W = Warmup
LATER = reputation.MARGIN + 60  # sends recorded now are past the roll-up's margin by then


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


async def _account(api: Api, email: str, user_id: str) -> mail_accounts.MailAccountRecord:
    values = {
        "email": email, "name": "", "imap_host": "imap.example.test", "imap_port": 993,
        "imap_security": "ssl", "smtp_host": "smtp.example.test", "smtp_port": 465,
        "smtp_security": "ssl", "tls_verify": True, "username": email,
    }  # fmt: skip
    return await mail_accounts.create_account(api.svc.db, values, lambda _: "", user_id, 10)


async def _setup(
    api_client: ApiFactory, dns: DnsServer, sending_ips: tuple[str, ...] = (), **settings: Any
) -> tuple[Api, Any]:
    api = await api_client(
        dns={"nameservers": [dns.nameserver]},
        reputation=settings,
        webhooks={"allow_private": True},
        blocklists={"enabled": False, "sending_ips": list(sending_ips)},
    )
    assert api.svc.reputation is not None
    # sends recorded now are past the roll-up's margin by this clock
    api.svc.reputation.clock = lambda: time.time() + LATER
    owner = await Users(api.svc.db, Passwords()).create("owner@example.test", "owner", "pw-" * 6)
    return api, owner


async def test_the_seed_shape_field_for_field(api_client: ApiFactory, dns: DnsServer) -> None:
    api, owner = await _setup(api_client, dns)
    dns.add("good.test", "TXT", '"v=spf1 a:postern.test ~all"')
    dns.add("_dmarc.good.test", "TXT", '"v=DMARC1; p=none"')
    good = await _account(api, "news@good.test", owner.id)
    quiet = await _account(api, "hello@quiet.test", owner.id)
    now = time.time()
    await record_sends(api.svc.db, "news@good.test", "news@good.test", now, delivered=400)
    await record_sends(api.svc.db, "news@good.test", "news@good.test", now, complaints=2)
    await record_sends(api.svc.db, "hello@quiet.test", "hello@quiet.test", now, delivered=3)
    assert api.svc.reputation is not None
    assert await api.svc.reputation.run_once() is not None

    person = await sign_in(str(api.http.base_url), owner, "pw-" * 6)
    try:
        answer = await person.http.get("/mail/accounts/reputation")
    finally:
        await person.http.aclose()
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert list(body) == ["success", "data"] and body["success"] is True
    rows = {row["account_id"]: row for row in body["data"]}
    assert set(rows) == {good.id, quiet.id}
    for row in rows.values():
        assert list(row) == SEED_FIELDS + ADDED_FIELDS
        assert all(set(c) == COMPONENT_FIELDS for c in row["components"])
    scored = rows[good.id]
    # 2 complaints in 400 delivered: 0.5 %, SES's pause level (80 points); SPF and DMARC
    # published; DKIM not known (no key of Postern's: the account's provider signs)
    assert scored["email"] == "news@good.test"
    assert scored["reputation_status"] == "at_risk"
    costs = {c["signal"]: c["points"] for c in scored["components"]}
    assert costs["complaint_rate"] == 80 and costs["spf_missing"] == 0
    assert costs["dmarc_missing"] == 0 and costs["dkim_missing"] == 0
    assert scored["reputation_score"] == 20
    assert scored["warmup_status"] == "not_started" and scored["daily_limit"] is None
    assert scored["sent_today"] == 400
    # its domain (what the DNSBL check asks about) has no verdict yet: unknown
    assert scored["blacklist_status"] == "unknown" and scored["last_checked_at"] is None
    collecting = rows[quiet.id]
    assert collecting["reputation_score"] is None
    assert collecting["reputation_status"] == "collecting"

    # the same through the other prefixes and an admin key; a key without admin is 403
    admin = await api.key("admin")
    for prefix in ("/api/v1/mail/accounts", "/api/v1/accounts"):
        again = await api.get(prefix + "/reputation", key=admin)
        assert again.status_code == 200 and len(again.json()["data"]) == 2
    assert (
        await api.get("/mail/accounts/reputation", key=await api.key("send"))
    ).status_code == 403
    assert (await api.http.get("/mail/accounts/reputation")).status_code == 401


async def test_a_member_sees_only_their_accounts(api_client: ApiFactory, dns: DnsServer) -> None:
    api, owner = await _setup(api_client, dns)
    member = await Users(api.svc.db, Passwords()).create("m@example.test", "member", "pw-" * 6)
    await _account(api, "owner@a.test", owner.id)
    mine = await _account(api, "member@b.test", member.id)
    person = await sign_in(str(api.http.base_url), member, "pw-" * 6)
    try:
        seen = (await person.http.get("/mail/accounts/reputation")).json()["data"]
        assert [row["account_id"] for row in seen] == [mine.id]
        overview = (await person.http.get("/api/v1/reputation")).json()["data"]
        assert [row["id"] for row in overview["accounts"]] == [mine.id]
        assert overview["pools"] is None and overview["domains"] is None  # a member's scopes
    finally:
        await person.http.aclose()


async def test_pools_and_domains_by_scope(api_client: ApiFactory, dns: DnsServer) -> None:
    api, _ = await _setup(api_client, dns)
    pool = await pools.create_pool(
        api.svc.db, {"name": "relay", "host": "127.0.0.1", "port": 2525}, lambda _: ""
    )
    admin = await api.key("admin")
    made = await api.http.post(
        "/api/v1/domains", json={"domain": "mail.test", "verified": True}, headers=auth(admin)
    )
    assert made.status_code == 201, made.text
    now = time.time()
    await record_sends(api.svc.db, "relay", "app@mail.test", now, delivered=150, bounced=9)
    await record_sends(api.svc.db, "relay", "app@mail.test", now, late_bounces=1)
    assert api.svc.reputation is not None
    await api.svc.reputation.run_once()

    pools_key = await api.key("pools")
    overview = (await api.get("/api/v1/reputation", key=pools_key)).json()["data"]
    assert overview["accounts"] is None and overview["domains"] is None
    relay = next(row for row in overview["pools"] if row["id"] == pool.id)
    costs = {c["signal"]: c["points"] for c in relay["components"]}
    assert costs["hard_bounce_rate"] == 35  # 10 of 160: 6.25 %, SES's review level
    assert relay["reputation_score"] == 65 and relay["reputation_status"] == "at_risk"
    assert relay["window_days"] == 7 and relay["evaluated_at"]
    assert "spf_missing" not in costs  # a pool has no domain of its own

    one = await api.get(f"/api/v1/reputation/pool/{pool.id}", key=pools_key)
    assert one.status_code == 200 and one.json()["data"]["reputation_score"] == 65
    domain = (await api.get("/api/v1/reputation/domain/mail.test", key=admin)).json()["data"]
    assert domain["kind"] == "domain" and domain["warmup_status"] is None
    assert {c["signal"]: c["points"] for c in domain["components"]}["spf_missing"] == 10
    assert (await api.get("/api/v1/reputation/domain/mail.test", key=pools_key)).status_code == 403
    for path in ("/api/v1/reputation/pool/smtp_nope", "/api/v1/reputation/planet/x"):
        assert (await api.get(path, key=admin)).status_code == 404


async def test_a_crossing_fires_one_event_and_the_pause(
    api_client: ApiFactory, dns: DnsServer
) -> None:
    api, _ = await _setup(api_client, dns, pause_on_risk=True, threshold=90)
    pool = await pools.create_pool(
        api.svc.db, {"name": "relay", "host": "127.0.0.1", "port": 2525}, lambda _: ""
    )
    receiver = await Receiver().start()
    key = await api.key("webhooks")
    hook = await api.http.post(
        "/api/v1/webhooks",
        json={"url": receiver.url, "event_types": ["reputation_at_risk"]},
        headers=auth(key),
    )
    assert hook.status_code == 201, hook.text
    receiver.secrets[hook.json()["webhook"]["id"]] = hook.json()["webhook"]["secret"]
    watch = api.svc.reputation
    assert watch is not None

    def risky(conn: Any) -> list[Any]:
        return list(conn.execute(select(EV).where(EV.c.type == "reputation_at_risk")))

    def held(conn: Any) -> list[Any]:
        return list(conn.execute(select(W)))

    now = time.time()
    # 30 receivers' deferrals, and Postern's own waiting for a limit (no reply: not counted)
    await record_sends(api.svc.db, "relay", "a@x.test", now, delivered=200, deferred=30, waited=500)
    watch.clock = lambda: now + LATER
    await watch.run_once()  # 30 of 230 deferred: 5 points, 95: fine at 90
    assert await api.svc.db.read(held) == []
    # written after the first run's roll-up (which reached its clock's now less the margin)
    await record_sends(api.svc.db, "relay", "a@x.test", now + 61, complaints=1)

    # the crossing's transaction fails after the pause (a crash): nothing of it is kept
    def crash(*_: Any) -> None:
        raise RuntimeError("the node died mid-commit")

    real = reputation.evaluated
    reputation.evaluated = crash  # type: ignore[assignment]
    try:
        watch.clock = lambda: now + LATER + 120
        with pytest.raises(RuntimeError):
            await watch.run_once()
    finally:
        reputation.evaluated = real
    assert await api.svc.db.read(risky) == [] and await api.svc.db.read(held) == []
    states = await api.svc.db.read(reputation.states)
    assert not states[("pool", pool.id)].at_risk  # not at risk and never paused: not half

    watch.clock = lambda: now + LATER + 180
    await watch.run_once()  # 0.5 % complaints: 80 more
    await watch.run_once()  # still at risk: no second event
    rows = await api.svc.db.read(risky)
    assert len(rows) == 1 and rows[0].pool == "relay" and rows[0].message_id == ""
    assert '"score":15' in rows[0].detail
    # the pause, committed with the event: the pool's sending held until a person resumes
    record = await warmup.get_warmup(api.svc.db, "pool", pool.id, now + LATER + 180)
    assert record is not None and record.status == "paused"
    assert record.paused_reason is not None and "complaint_rate 80" in record.paused_reason
    # labelled with the pool's id, never a name (an account's would be its address)
    assert metric("postern_reputation_score", kind="pool", subject=pool.id) == 15
    assert metric("postern_reputation_score", kind="pool", subject="relay") == 0  # no sample
    signal = {"kind": "pool", "subject": pool.id, "signal": "complaint_rate"}
    assert metric("postern_reputation_points", **signal) == 80
    try:
        assert await wait_until(lambda: bool(receiver.events), timeout=10)
    finally:
        await receiver.stop()
    event = receiver.events[0]
    assert event["type"] == "reputation_at_risk" and event["message_id"] == ""
    assert event["reputation"]["kind"] == "pool" and event["reputation"]["score"] == 15
    assert event["reputation"]["threshold"] == 90


async def test_blacklist_status_reads_what_the_dnsbl_check_asks_about(
    api_client: ApiFactory, dns: DnsServer
) -> None:
    api, owner = await _setup(api_client, dns, sending_ips=("192.0.2.10", "192.0.2.11"))
    account = await _account(api, "news@clean.test", owner.id)
    pool = await pools.create_pool(
        api.svc.db, {"name": "relay", "host": "smtp.provider.test", "port": 2525}, lambda _: ""
    )
    admin = await api.key("admin")
    made = await api.http.post(
        "/api/v1/domains", json={"domain": "clean.test", "verified": True}, headers=auth(admin)
    )
    assert made.status_code == 201, made.text
    checked = time.time()
    clean = [
        Verdict("clean.test", "domain", "clean"),
        Verdict("192.0.2.10", "ip", "clean"),
        Verdict("192.0.2.11", "ip", "clean"),
    ]
    await blocklists.record(api.svc.db, clean, checked)

    async def statuses() -> dict[str, tuple[str, Any]]:
        data = (await api.get("/api/v1/reputation", key=admin)).json()["data"]
        rows = [row for kind in ("accounts", "pools", "domains") for row in data[kind]]
        return {row["id"]: (row["blacklist_status"], row["last_checked_at"]) for row in rows}

    found = await statuses()
    # the account's email domain, the domain itself, every sending IP: all clean
    for key in (account.id, pool.id, "clean.test"):  # (and the test service's own pool)
        assert found[key][0] == "clean" and found[key][1] is not None, key
    seed = (await api.get("/mail/accounts/reputation", key=admin)).json()["data"]
    assert seed[0]["blacklist_status"] == "clean" and seed[0]["last_checked_at"]

    # one sending IP listed: the pool is listed, the account and the domain stay clean
    listing = {"list": "spamcop", "code": "127.0.0.2", "meaning": "listed"}
    listed = Verdict("192.0.2.11", "ip", "listed", (listing,))
    await blocklists.record(api.svc.db, [listed], checked + 1)
    found = await statuses()
    assert found[pool.id][0] == "listed" and found[account.id][0] == "clean"
    # one not answered: unknown (never "clean" on what was not seen)
    await blocklists.record(api.svc.db, [Verdict("clean.test", "domain", "unknown")], checked + 2)
    found = await statuses()
    assert found[account.id][0] == "unknown" and found["clean.test"][0] == "unknown"


async def test_a_pool_without_sending_ips_is_unknown(
    api_client: ApiFactory, dns: DnsServer
) -> None:
    api, _ = await _setup(api_client, dns)
    pool = await pools.create_pool(
        api.svc.db, {"name": "relay", "host": "smtp.provider.test", "port": 2525}, lambda _: ""
    )
    # a verdict about the pool's host name is not what receivers see: never read
    await blocklists.record(api.svc.db, [Verdict("smtp.provider.test", "domain", "clean")])
    one = await api.get(f"/api/v1/reputation/pool/{pool.id}", key=await api.key("pools"))
    assert one.status_code == 200 and one.json()["data"]["blacklist_status"] == "unknown"


def _txt(value: str) -> str:
    return " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))


async def test_the_domain_records_as_dns_has_them(api_client: ApiFactory, dns: DnsServer) -> None:
    api, _ = await _setup(api_client, dns, setup_interval="100s")
    admin = await api.key("admin")
    body = {"domain": "signed.test", "verified": True, "algorithm": "ed25519"}
    made = await api.http.post("/api/v1/domains", json=body, headers=auth(admin))
    assert made.status_code == 201, made.text
    published = {r["purpose"]: r for r in made.json()["domain"]["records"]}
    dns.add("signed.test", "TXT", '"v=spf1 a:postern.test ~all"')
    dns.add(published["dkim"]["name"], "TXT", _txt(published["dkim"]["value"]))
    dns.add("_dmarc.signed.test", "TXT", '"v=DMARC1; p=none"')
    watch = api.svc.reputation
    assert watch is not None
    path = "/api/v1/reputation/domain/signed.test"

    async def setup_costs(at: float) -> dict[str, Any]:
        watch.clock = lambda: at
        await watch.run_once()
        data = (await api.get(path, key=admin)).json()["data"]
        return {c["signal"]: (c["value"], c["points"]) for c in data["components"]}

    now = time.time()
    costs = await setup_costs(now + 120)
    assert costs["spf_missing"] == costs["dkim_missing"] == costs["dmarc_missing"] == (False, 0)

    dns.set(published["dkim"]["name"], "TXT", '"v=DKIM1; k=ed25519; p=SOMEONEELSE"')
    costs = await setup_costs(now + 240)
    assert costs["dkim_missing"] == (True, 10)
    assert costs["dmarc_missing"] == (True, 10)  # published, but nothing aligned signs

    dns.fail(None, "servfail")  # not answered now: the last known answer stays
    costs = await setup_costs(now + 360)
    assert costs["spf_missing"] == (False, 0) and costs["dkim_missing"] == (True, 10)
    made = await api.http.post(
        "/api/v1/domains", json={"domain": "new.test", "verified": True}, headers=auth(admin)
    )
    assert made.status_code == 201
    await setup_costs(now + 361)  # a domain never answered for: not known, costs nothing
    fresh = (await api.get("/api/v1/reputation/domain/new.test", key=admin)).json()["data"]
    setup = {c["signal"]: (c["value"], c["points"]) for c in fresh["components"]}
    assert setup["spf_missing"] == setup["dkim_missing"] == (None, 0)

    dns.heal()  # asked again at the next evaluation, not setup_interval later
    dns.set(published["dkim"]["name"], "TXT", _txt(published["dkim"]["value"]))
    costs = await setup_costs(now + 362)
    assert costs["dkim_missing"] == (False, 0) and costs["dmarc_missing"] == (False, 0)
