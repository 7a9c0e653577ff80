"""/api/v1/domains and `postern domains`: the DKIM key generated, the records to publish,
verification against a real DNS server on loopback, and `verified: true` for admins."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.process.cli import main
from storage import dkim_keys
from tests.support.api import Api, ApiFactory
from tests.support.dnsserver import DnsServer
from tests.support.resources import call

pytestmark = pytest.mark.timeout(60)
DOMAINS = "/api/v1/domains"


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer(negative_ttl=300) as server:
        yield server


def records(domain: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {record["purpose"]: record for record in domain["records"]}


async def test_adding_a_domain_generates_its_dkim_key_and_records(api: Api) -> None:
    key = await api.key("domains")
    response = await call(api, "POST", DOMAINS, key, {"domain": "Example.COM"})
    assert response.status_code == 201, response.text
    domain = response.json()["domain"]
    assert domain["domain"] == "example.com" and domain["id"].startswith("dom_")
    assert domain["is_verified"] is False
    [stored] = await dkim_keys.list_keys(api.svc.db, "example.com")
    assert stored.status == "active" and stored.algorithm == "rsa"
    published = records(domain)
    assert published["dkim"]["name"] == f"{stored.selector}._domainkey.example.com"
    assert published["dkim"]["value"] == f"v=DKIM1; k=rsa; p={stored.public_key}"
    assert published["spf"] == {
        "purpose": "spf", "type": "TXT", "name": "example.com",
        "value": "v=spf1 a:postern.test ~all", "required": True,
    }  # fmt: skip
    assert published["dmarc"]["name"] == "_dmarc.example.com"
    assert published["dmarc"]["value"].startswith("v=DMARC1") and not published["dmarc"]["required"]

    twin = await call(api, "POST", DOMAINS, key, {"domain": "example.com"})
    assert (twin.status_code, twin.json()["code"]) == (409, "conflict")
    listed = (await call(api, "GET", DOMAINS, key)).json()["domains"]
    assert [d["domain"] for d in listed] == ["example.com"]
    for ref in (domain["id"], "example.com"):
        assert (await call(api, "GET", f"{DOMAINS}/{ref}", key)).json()["domain"] == domain


async def test_an_existing_dkim_key_is_kept(api: Api) -> None:
    # A key made earlier (as `postern dkim generate` does) is the one to publish.
    from gateway.dkim.keys import generate_key

    pair = generate_key("ed25519")
    await dkim_keys.add_key(
        api.svc.db, api.svc.box, domain="kept.test", selector="mine",
        algorithm=pair.algorithm, private_pem=pair.private_pem, public_key=pair.public_key,
    )  # fmt: skip
    key = await api.key("domains")
    domain = (await call(api, "POST", DOMAINS, key, {"domain": "kept.test"})).json()["domain"]
    assert records(domain)["dkim"]["name"] == "mine._domainkey.kept.test"
    assert len(await dkim_keys.list_keys(api.svc.db, "kept.test")) == 1


@pytest.mark.parametrize("domain", ["", "a b.test", "-x.test", "x" * 64 + ".test", "a..test"])
async def test_bad_domains_are_400(api: Api, domain: str) -> None:
    key = await api.key("domains")
    assert (await call(api, "POST", DOMAINS, key, {"domain": domain})).status_code == 400


async def test_only_an_admin_may_add_a_verified_domain(api: Api) -> None:
    key = await api.key("domains")
    refused = await call(api, "POST", DOMAINS, key, {"domain": "a.test", "verified": True})
    assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")
    admin = await api.key("admin")
    body = {"domain": "a.test", "verified": True, "algorithm": "ed25519"}
    made = await call(api, "POST", DOMAINS, admin, body)
    assert made.status_code == 201 and made.json()["domain"]["is_verified"] is True
    assert api.svc.identities.verified("anyone@a.test")
    assert (await call(api, "GET", DOMAINS, await api.key("send"))).status_code == 403


async def test_verification_against_the_dns(api_client: ApiFactory, dns: DnsServer) -> None:
    api = await api_client(dns={"nameservers": [dns.nameserver]})
    key = await api.key("domains")
    body = {"domain": "example.test", "algorithm": "ed25519"}
    domain = (await call(api, "POST", DOMAINS, key, body)).json()["domain"]
    path = f"{DOMAINS}/{domain['id']}/verify"

    nothing = (await call(api, "POST", path, key)).json()  # nothing published yet
    assert nothing["verified"] is False and nothing["domain"]["checked_at"]
    assert {c["purpose"]: c["status"] for c in nothing["checks"]} == {
        "dkim": "missing", "spf": "missing", "dmarc": "missing",
    }  # fmt: skip
    assert not api.svc.identities.verified("app@example.test")

    published = records(domain)
    dns.add("example.test", "TXT", '"v=spf1 a:postern.test ~all"')
    dns.add(published["dkim"]["name"], "TXT", '"v=DKIM1; k=ed25519; p=WRONGKEY"')
    wrong = (await call(api, "POST", path, key)).json()
    assert wrong["verified"] is False
    statuses = {c["purpose"]: c["status"] for c in wrong["checks"]}
    assert statuses["dkim"] == "mismatch" and statuses["spf"] == "verified"

    dns.set(published["dkim"]["name"], "TXT", _txt(published["dkim"]["value"]))
    passed = (await call(api, "POST", path, key)).json()  # the negative answer was not cached
    assert passed["verified"] is True and passed["domain"]["is_verified"] is True
    assert {c["purpose"]: c["status"] for c in passed["checks"]}["dmarc"] == "missing"
    assert api.svc.identities.verified("app@example.test")  # intake sees it at once

    dns.fail(None, "servfail")
    flaky = (await call(api, "POST", path, key)).json()
    assert {c["status"] for c in flaky["checks"]} == {"temporary_error"}
    assert flaky["verified"] is True  # a bad minute of DNS un-verifies nothing


def _txt(value: str) -> str:
    """Zone-file text of a long TXT value: quoted strings of at most 255 bytes."""
    return " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))


async def test_unknown_domain_and_delete(api: Api) -> None:
    key = await api.key("domains")
    for method, suffix in (("GET", ""), ("POST", "/verify"), ("DELETE", "")):
        assert (await call(api, method, f"{DOMAINS}/dom_nope{suffix}", key)).status_code == 404
    admin = await api.key("admin")
    await call(
        api,
        "POST",
        DOMAINS,
        admin,
        {"domain": "gone.test", "verified": True, "algorithm": "ed25519"},
    )
    assert api.svc.identities.verified("a@gone.test")
    assert (await call(api, "DELETE", f"{DOMAINS}/gone.test", key)).json() == {"success": True}
    assert not api.svc.identities.verified("a@gone.test")


def test_cli_domains_add_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "postern.toml"
    config.write_text(
        f'[server]\ndata_dir = "{tmp_path / "var"}"\nhostname = "relay.example.net"\n'
    )
    args = ["--config", str(config), "domains", "add", "example.com", "--verified", "--json"]
    assert main([*args, "--algorithm", "ed25519"]) == 0
    added = json.loads(capsys.readouterr().out)
    assert (added["domain"], added["verified"]) == ("example.com", True)
    purposes = {r["purpose"]: r for r in added["records"]}
    assert purposes["spf"]["value"] == "v=spf1 a:relay.example.net ~all"
    assert purposes["dkim"]["value"].startswith("v=DKIM1; k=ed25519; p=")

    assert main(["--config", str(config), "domains", "add", "other.example"]) == 0
    text = capsys.readouterr().out
    assert "_domainkey.other.example. IN TXT" in text and "other.example. IN TXT" in text

    assert main(["--config", str(config), "domains", "list", "--json"]) == 0
    listed = {d["domain"]: d["verified"] for d in json.loads(capsys.readouterr().out)}
    assert listed == {"example.com": True, "other.example": False}
    assert main(["--config", str(config), "domains", "list"]) == 0
    assert "example.com  verified" in capsys.readouterr().out

    assert main(["--config", str(config), "domains", "add", "example.com"]) == 2
    assert "already registered" in capsys.readouterr().err
    assert main(["--config", str(config), "domains", "add", "not a domain"]) == 2
