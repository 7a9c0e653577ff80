"""The resource pages (aliases, domains, API keys, webhooks, suppressions) through a real
uvicorn with httpx, as a browser without JavaScript uses them: each lists, creates and
deletes through its forms (with the session's CSRF token), shows a refused value beside its
field, and refuses what the API refuses the same caller (a member's typed URL, a forged
form, another's record, a form without its token). Secrets are shown once."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from markupsafe import escape

from storage.suppressions import add_suppression
from tests.support.api import Api, ApiFactory
from tests.support.dnsserver import DnsServer
from tests.support.web import Browser
from tests.web.conftest import SignIn
from web.guard import CSRF_TEXT as _CSRF_TEXT

pytestmark = pytest.mark.timeout(90)
CSRF_TEXT = str(escape(_CSRF_TEXT))
REFUSED = "<h1>Refused</h1>"


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer(negative_ttl=300) as server:
        yield server


@pytest.fixture
async def api(api_client: ApiFactory, dns: DnsServer) -> Api:
    """The webhook URLs here are on loopback (`allow_private`); DNS is the test's server."""
    return await api_client(webhooks={"allow_private": True}, dns={"nameservers": [dns.nameserver]})


def one(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    assert found, pattern
    return found.group(1)


def txt(value: str) -> str:
    """Zone-file text of a long TXT value: quoted strings of at most 255 bytes."""
    return " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))


async def add_domain(owner: Browser, name: str, **fields: str) -> str:
    """A domain added through the form; its page's path."""
    added = await owner.post("/domains", {"domain": name, "algorithm": "ed25519", **fields})
    assert added.status_code == 303, added.text
    return str(added.headers["location"]).split("?")[0]


async def test_a_domain_shows_its_records_and_verifies_against_the_dns(
    api: Api, person: SignIn, dns: DnsServer
) -> None:
    owner = await person("ops@example.com")
    bad = await owner.post("/domains", {"domain": "not a domain", "algorithm": "rsa"})
    assert bad.status_code == 400 and 'id="domain-problem"' in bad.text
    assert 'value="not a domain"' in bad.text and 'aria-invalid="true"' in bad.text
    path = await add_domain(owner, "example.test")
    shown = await owner.get(path + "?done=added")
    assert shown.status_code == 200 and "<h1>example.test</h1>" in shown.text
    dkim_name = one(r'id="name-dkim" class="copy-value">([^<]+)<', shown.text)
    dkim_value = one(r'id="value-dkim" class="copy-value">([^<]+)<', shown.text)
    assert dkim_name.endswith("._domainkey.example.test") and "v=DKIM1" in dkim_value
    assert "v=spf1 a:" in shown.text and "_dmarc.example.test" in shown.text
    assert shown.text.count('data-copy="') == 6 and "copy.js" in shown.text
    assert "ed25519" in shown.text and "Not verified yet" in shown.text

    nothing = await owner.post(path + "/verify")
    assert nothing.status_code == 200 and nothing.text.count('class="state-missing"') == 3
    dns.add("example.test", "TXT", '"v=spf1 a:postern.test ~all"')
    dns.add(dkim_name, "TXT", txt(dkim_value.replace("&#34;", '"')))
    passed = await owner.post(path + "/verify")
    assert passed.text.count('class="state-verified"') == 2, passed.text
    assert "mail may be sent From this domain" in passed.text
    listed = await owner.get("/domains")
    assert 'href="' + path + '"' in listed.text and ">verified<" in listed.text

    # DKIM rotation: a pending key beside the active one, activated once DNS answers it.
    rotating = await owner.post(path + "/dkim-keys", {"algorithm": "ed25519"})
    assert rotating.status_code == 303 and "done=rotating" in rotating.headers["location"]
    shown = await owner.get(path)
    selector = one(r"Rotation in progress: <code>([^<]+)</code>", shown.text)
    new_name = one(rf'id="pending-name-{selector}" class="copy-value">([^<]+)<', shown.text)
    new_value = one(rf'id="pending-value-{selector}" class="copy-value">([^<]+)<', shown.text)
    again = await owner.post(path + "/dkim-keys", {"algorithm": "rsa"})
    assert again.status_code == 409 and "rotation in progress" in again.text
    early = await owner.post(f"{path}/dkim-keys/{selector}/activate")
    assert early.status_code == 409 and "does not carry this key yet" in early.text
    dns.add(new_name, "TXT", txt(new_value.replace("&#34;", '"')))
    activated = await owner.post(f"{path}/dkim-keys/{selector}/activate")
    assert activated.status_code == 303 and "done=activated" in activated.headers["location"]
    shown = await owner.get(path)
    assert "Rotation in progress" not in shown.text and ">retired<" in shown.text
    assert (await owner.post(f"{path}/dkim-keys/{selector}/activate")).status_code == 409

    assert "Remove the domain example.test?" in (await owner.get(path + "/delete")).text
    removed = await owner.post(path + "/delete")
    assert removed.status_code == 303
    assert "example.test" not in (await owner.get("/domains")).text


async def test_aliases_are_created_resent_made_default_and_deleted(
    api: Api, person: SignIn
) -> None:
    owner = await person("ops@example.com")
    await add_domain(owner, "mine.test", verified="on")
    bad = await owner.post("/aliases", {"email": "not-an-address"})
    assert bad.status_code == 400 and 'id="email-problem"' in bad.text
    elsewhere = await owner.post("/aliases", {"email": "me@other.test"})
    assert elsewhere.status_code == 422 and "other.test is not a verified domain" in elsewhere.text
    created = await owner.post("/aliases", {"email": "me@Mine.test", "name": "Me"})
    assert created.status_code == 303
    assert created.headers["location"] == "/aliases?done=created", created.headers["location"]
    listed = (await owner.get("/aliases")).text
    alias = one(r'id="alias-(ali_[0-9a-f]+)"', listed)
    assert "me@mine.test" in listed and "waiting for its link" in listed
    twice = await owner.post("/aliases", {"email": "me@mine.test"})
    assert twice.status_code == 409 and "already exists" in twice.text

    resent = await owner.post(f"/aliases/{alias}/resend")
    assert resent.headers["location"] == "/aliases?done=resent"
    made = await owner.post(f"/aliases/{alias}/default")
    assert made.status_code == 303
    listed = (await owner.get("/aliases")).text
    assert '<span class="badge">default</span>' in listed and "Make default" not in listed
    confirm = await owner.get(f"/aliases/{alias}/delete")
    assert "Delete the alias me@mine.test?" in confirm.text
    deleted = await owner.post(f"/aliases/{alias}/delete")
    assert deleted.status_code == 303
    assert "me@mine.test" not in (await owner.get("/aliases")).text
    assert (await owner.post(f"/aliases/{alias}/resend")).status_code == 404


async def test_a_key_secret_is_shown_once_and_the_key_revoked(api: Api, person: SignIn) -> None:
    owner = await person("ops@example.com")
    form = (await owner.get("/keys")).text
    assert 'name="scope-admin"' in form and 'name="scope-send:marketing"' in form
    empty = await owner.post("/keys", {"name": "billing"})
    assert empty.status_code == 400 and 'id="scopes-problem"' in empty.text
    nameless = await owner.post("/keys", {"name": "", "scope-send": "on"})
    assert nameless.status_code == 400 and 'id="name-problem"' in nameless.text
    created = await owner.post("/keys", {"name": "billing", "scope-send": "on", "scope-keys": "on"})
    assert created.status_code == 200 and "shown this once" in created.text
    secret = one(r'id="secret" class="copy-value">(msk_[^<]+)<', created.text)
    assert created.headers["cache-control"] == "no-store"
    listed = (await owner.get("/keys")).text
    assert secret not in listed and secret[:12] + "…" in listed and "send, keys" in listed
    key_id = one(r'href="/keys/(key_[0-9a-f]+)/revoke"', listed)
    for path in ("/keys", f"/keys/{key_id}/revoke", "/"):
        assert secret not in (await owner.get(path)).text
    works = await api.http.get("/api/v1/keys", headers={"Authorization": f"Bearer {secret}"})
    assert works.status_code == 200
    assert "Revoke the key billing?" in (await owner.get(f"/keys/{key_id}/revoke")).text
    revoked = await owner.post(f"/keys/{key_id}/revoke")
    assert revoked.status_code == 303
    assert f'href="/keys/{key_id}/revoke"' not in (await owner.get("/keys")).text
    refused = await api.http.get("/api/v1/keys", headers={"Authorization": f"Bearer {secret}"})
    assert refused.status_code == 401


async def test_a_member_grants_only_their_own_scopes_and_sees_only_their_keys(
    api: Api, person: SignIn
) -> None:
    owner = await person("ops@example.com")
    owners = await owner.post("/keys", {"name": "owner-key", "scope-admin": "on"})
    assert owners.status_code == 200
    owner_key = one(r'href="/keys/(key_[0-9a-f]+)/revoke"', (await owner.get("/keys")).text)
    member = await person("m@example.com", "member")
    form = (await member.get("/keys")).text
    assert 'name="scope-send"' in form and 'name="scope-keys"' in form
    assert 'name="scope-admin"' not in form and 'name="scope-domains"' not in form
    forged = await member.post("/keys", {"name": "sneaky", "scope-admin": "on"})
    assert forged.status_code == 403 and 'id="scopes-problem"' in forged.text
    assert "sneaky" not in (await owner.get("/keys")).text
    mine = await member.post("/keys", {"name": "mine", "scope-send": "on"})
    assert mine.status_code == 200
    listed = (await member.get("/keys")).text
    assert "mine" in listed and "owner-key" not in listed and "m@example.com" in listed
    assert (await member.get(f"/keys/{owner_key}/revoke")).status_code == 404
    assert (await member.post(f"/keys/{owner_key}/revoke")).status_code == 404
    assert f'href="/keys/{owner_key}/revoke"' in (await owner.get("/keys")).text


async def test_webhooks_are_created_edited_switched_replayed_and_deleted(
    api: Api, person: SignIn
) -> None:
    owner = await person("ops@example.com")
    assert 'name="event-delivered"' in (await owner.get("/webhooks/new")).text
    bad = await owner.post("/webhooks", {"url": "ftp://example.com/x"})
    assert bad.status_code == 400 and 'id="url-problem"' in bad.text
    fields = {"url": "http://127.0.0.1:9/hook", "description": "crm", "event-bounced": "on"}
    created = await owner.post("/webhooks", fields)
    assert created.status_code == 200 and "shown this once" in created.text
    secret = one(r'id="secret" class="copy-value">([^<]+)<', created.text)
    hook = one(r'href="/webhooks/(wh_[0-9a-f]+)"', created.text)
    page = (await owner.get(f"/webhooks/{hook}")).text
    assert secret not in page and "No delivery yet." in page and 'value="crm"' in page
    assert 'name="event-bounced" type="checkbox" checked' in page
    assert secret not in (await owner.get("/webhooks")).text

    edited = await owner.post(f"/webhooks/{hook}", fields | {"description": "billing"})
    assert edited.status_code == 303
    assert 'value="billing"' in (await owner.get(f"/webhooks/{hook}")).text
    unreceivable = fields | {"final_only": "on", "event-bounced": "", "event-queued": "on"}
    del unreceivable["event-bounced"]
    refused = await owner.post(f"/webhooks/{hook}", unreceivable)
    assert refused.status_code == 400 and 'id="event_types-problem"' in refused.text

    off = await owner.post(f"/webhooks/{hook}/active", {"is_active": "off"})
    assert off.headers["location"] == f"/webhooks/{hook}?done=off"
    inactive = await owner.post(f"/webhooks/{hook}/replay", {"since": "2020-01-01T00:00:00Z"})
    assert inactive.status_code == 409 and "switch it on first" in inactive.text
    await owner.post(f"/webhooks/{hook}/active", {"is_active": "on"})
    badly = await owner.post(f"/webhooks/{hook}/replay", {"since": "yesterday"})
    assert badly.status_code == 400 and 'id="since-problem"' in badly.text
    replayed = await owner.post(f"/webhooks/{hook}/replay", {"since": "1700000000"})
    assert replayed.status_code == 303 and "done=replayed&queued=" in replayed.headers["location"]
    assert "Replay queued." in (await owner.get(replayed.headers["location"])).text

    assert "Delete the webhook" in (await owner.get(f"/webhooks/{hook}/delete")).text
    assert (await owner.post(f"/webhooks/{hook}/delete")).status_code == 303
    assert hook not in (await owner.get("/webhooks")).text


async def test_suppressions_are_listed_looked_up_added_and_removed(
    api: Api, person: SignIn
) -> None:
    owner = await person("ops@example.com")
    bad = await owner.post("/suppressions", {"email": "nobody", "reason": "manual"})
    assert bad.status_code == 400 and 'id="email-problem"' in bad.text
    added = await owner.post("/suppressions", {"email": "Bob@Example.org", "reason": "manual"})
    assert added.status_code == 303
    found = await owner.get(added.headers["location"])
    assert "Address suppressed." in found.text and "<strong>bob@example.org</strong>" in found.text
    assert "added by hand" in found.text
    again = await owner.post("/suppressions", {"email": "bob@example.org", "reason": "complaint"})
    assert "done=updated" in again.headers["location"]
    assert "marked a message as spam" in (await owner.get(again.headers["location"])).text

    for n in range(55):
        await add_suppression(api.svc.db, f"user{n:02}@example.net", "bounced")
    first = (await owner.get("/suppressions?reason=bounced")).text
    assert first.count("@example.net</th>") == 50 and "bob@example.org</th>" not in first
    following = one(r'href="(/suppressions\?[^"]*cursor=[^"]+)">Next page', first)
    second = (await owner.get(following.replace("&amp;", "&"))).text
    assert second.count("@example.net</th>") == 5 and "First page" in second
    assert (await owner.get("/suppressions?reason=nope")).status_code == 400

    confirm = await owner.get("/suppressions/remove?email=bob%40example.org")
    assert "Stop suppressing bob@example.org?" in confirm.text
    removed = await owner.post("/suppressions/remove", {"email": "bob@example.org"})
    assert removed.status_code == 303
    looked_up = (await owner.get("/suppressions?q=bob%40example.org")).text
    assert "is not suppressed" in looked_up
    gone = await owner.post("/suppressions/remove", {"email": "bob@example.org"})
    assert gone.status_code == 404


async def test_a_member_is_refused_the_pages_of_scopes_it_lacks(api: Api, person: SignIn) -> None:
    member = await person("m@example.com", "member")
    home = (await member.get("/")).text
    assert 'href="/keys"' in home
    for path in ("/aliases", "/domains", "/webhooks", "/suppressions"):
        assert f'href="{path}"' not in home, path
        refused = await member.get(path)
        assert refused.status_code == 403 and REFUSED in refused.text, path
    posts = {
        "/aliases": {"email": "me@mine.test"},
        "/domains": {"domain": "m.test"},
        "/webhooks": {"url": "http://127.0.0.1:9/hook"},
        "/suppressions": {"email": "x@example.org"},
        "/suppressions/remove": {"email": "x@example.org"},
    }
    for path, fields in posts.items():
        assert (await member.post(path, fields)).status_code == 403, path
    admin = await person("a@example.com", "admin")
    for path in ("/aliases", "/domains", "/webhooks", "/suppressions", "/keys"):
        assert (await admin.get(path)).status_code == 200, path


async def test_a_form_without_its_csrf_token_changes_nothing(api: Api, person: SignIn) -> None:
    owner = await person("ops@example.com")
    for path, fields in (
        ("/suppressions", {"email": "x@example.org", "reason": "manual"}),
        ("/keys", {"name": "k", "scope-send": "on"}),
        ("/domains", {"domain": "csrf.test"}),
    ):
        refused = await owner.post(path, fields, token=False)
        assert refused.status_code == 403 and CSRF_TEXT in refused.text, path
    assert "x@example.org" not in (await owner.get("/suppressions")).text
    assert "csrf.test" not in (await owner.get("/domains")).text
    keys = (await owner.get("/keys")).text
    assert 'href="/keys/key_' not in keys
