"""Settings → Reputation through a real uvicorn with httpx: each account, pool and domain
with its score or "collecting", its status and the components that cost points (with the
rule reached); a member sees their own accounts only, no pools or domains."""

from __future__ import annotations

import time

import pytest

from storage import domains, mail_accounts, pools, reputation
from tests.support.api import Api, ApiFactory
from tests.support.people import make_user
from tests.support.reputation import record_sends
from tests.support.web import sign_in

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def api(api_client: ApiFactory) -> Api:
    return await api_client(dns={"nameservers": ["127.0.0.1:9"]})  # nothing answers


async def account(api: Api, email: str, user_id: str) -> mail_accounts.MailAccountRecord:
    values = {
        "email": email, "name": "", "imap_host": "127.0.0.1", "imap_port": 993,
        "imap_security": "ssl", "smtp_host": "127.0.0.1", "smtp_port": 465,
        "smtp_security": "ssl", "tls_verify": True, "username": email,
    }  # fmt: skip
    return await mail_accounts.create_account(api.svc.db, values, lambda _: "", user_id, 10)


async def test_scores_status_and_components_per_kind(api: Api) -> None:
    owner = await make_user(api.svc.db, "ops@example.com", "owner")
    member = await make_user(api.svc.db, "m@example.com", "member")
    mine = await account(api, "box@example.test", member.id)
    await account(api, "other@example.test", owner.id)
    relay = await pools.create_pool(
        api.svc.db, {"name": "relay", "host": "127.0.0.1", "port": 2525}, lambda _: ""
    )
    await domains.add_domain(api.svc.db, "example.test", verified=True)
    now = time.time()
    await record_sends(api.svc.db, "relay", "app@example.test", now, delivered=600, complaints=1)
    watch = api.svc.reputation
    assert watch is not None
    watch.clock = lambda: now + reputation.MARGIN + 60
    await watch.run_once()

    browser = await sign_in(str(api.http.base_url), owner)
    try:
        shown = await browser.get("/reputation")
        assert shown.status_code == 200, shown.text
        text = shown.text
        assert 'href="/reputation"' in text  # the navigation's entry, no longer "coming"
        for section in ("account", "pool", "domain"):
            assert f'id="reputation-{section}"' in text
        row = text.split(f'id="reputation-pool-{relay.id}"', 1)[1].split("</tr>", 1)[0]
        assert "<strong>65</strong>" in row and "at risk" in row
        assert "complaint rate:" in row and "0.17 %" in row and "−35" in row
        assert "gmail: keep spam rate under 0.1 %" in row
        quiet = text.split(f'id="reputation-account-{mine.id}"', 1)[1].split("</tr>", 1)[0]
        assert "collecting" in quiet
    finally:
        await browser.http.aclose()

    person = await sign_in(str(api.http.base_url), member)
    try:
        text = (await person.get("/reputation")).text
        assert f'id="reputation-account-{mine.id}"' in text and "other@example.test" not in text
        assert 'id="reputation-pool"' not in text and 'id="reputation-domain"' not in text
    finally:
        await person.http.aclose()
