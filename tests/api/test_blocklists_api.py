"""GET /api/v1/blocklists on a running service: the scheduled round runs at start through
`[dns] nameservers` (a loopback DNS server) and its verdicts come back, listed first; the
`admin` scope; the status filter and its refusals."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from storage import blocklists
from storage.db import open_database
from tests.support.api import ApiFactory
from tests.support.dnsbl import list_subject, working_lists
from tests.support.dnsserver import DnsServer
from tests.support.resources import call
from tests.support.service import metric, wait_until

pytestmark = pytest.mark.timeout(60)
BLOCKLISTS = "/api/v1/blocklists"


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


async def test_round_at_start_and_the_verdicts(api_client: ApiFactory, dns: DnsServer) -> None:
    working_lists(dns, ("spamhaus-zen", "spamcop"))
    list_subject(dns, "192.0.2.7", "spamcop", "127.0.0.2", "Blocked - see spamcop")
    api = await api_client(
        dns={"nameservers": [dns.nameserver]},
        blocklists={
            "enabled": True, "timeout": "1s", "sending_ips": ["192.0.2.8", "192.0.2.7"],
            "lists": ["spamhaus-zen", "spamcop"],
        },
    )  # fmt: skip
    admin = await api.key("admin")

    async def checked() -> bool:
        answer = await call(api, "GET", BLOCKLISTS, admin)
        return answer.json()["last_completed_at"] is not None

    await wait_until(checked, timeout=20)
    body = (await call(api, "GET", BLOCKLISTS, admin)).json()
    assert body["success"] is True
    first, second = body["subjects"]
    assert (first["subject"], first["status"], first["kind"]) == ("192.0.2.7", "listed", "ip")
    assert first["listings"] == [
        {"list": "spamcop", "code": "127.0.0.2", "meaning": "SpamCop: reported as a spam source",
         "text": "Blocked - see spamcop"},
    ]  # fmt: skip
    assert first["last_checked_at"].endswith("Z") and first["listed_since"] is not None
    assert (second["subject"], second["status"], second["errors"]) == ("192.0.2.8", "clean", [])
    only = (await call(api, "GET", f"{BLOCKLISTS}?status=clean", admin)).json()["subjects"]
    assert [s["subject"] for s in only] == ["192.0.2.8"]

    listed = await wait_until(lambda: metric("postern_blocklist_subjects", status="listed") == 1)
    assert listed and metric("postern_blocklist_subjects", status="clean") == 1
    assert metric("postern_blocklist_last_completed_timestamp_seconds") > 0

    sender = await api.key("send")
    assert (await call(api, "GET", BLOCKLISTS, sender)).status_code == 403
    assert (await call(api, "GET", BLOCKLISTS, None)).status_code == 401
    bad = await call(api, "GET", f"{BLOCKLISTS}?status=dirty", admin)
    assert (bad.status_code, bad.json()["code"]) == (400, "invalid_request")
    odd = await call(api, "GET", f"{BLOCKLISTS}?page=2", admin)
    assert odd.status_code == 400


async def test_a_stop_mid_round_gives_the_lease_back(
    api_client: ApiFactory, dns: DnsServer
) -> None:
    working_lists(dns, ("spamcop",))
    dns.fail("7.2.0.192.bl.spamcop.net", "timeout")  # the round waits on it
    api = await api_client(
        dns={"nameservers": [dns.nameserver]},
        blocklists={"enabled": True, "timeout": "3s", "sending_ips": ["192.0.2.7"],
                    "lists": ["spamcop"]},
    )  # fmt: skip
    assert await wait_until(lambda: dns.count("7.2.0.192.bl.spamcop.net", "A") > 0, timeout=10)
    state = await blocklists.run_state(api.svc.db)
    assert state is not None and state.claimed_by is not None and state.completed_at is None
    db_url = api.svc.db.url
    await api.svc.stop()
    reopened = open_database(db_url)
    try:
        after = await blocklists.run_state(reopened)
    finally:
        await reopened.dispose()
    assert after is not None and after.claimed_by is None and after.completed_at is None
