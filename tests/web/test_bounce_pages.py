"""The Bounces pages through a real uvicorn with httpx: a DSN uploaded as providers forward
them (POST /api/v1/bounces: the one ingest), listed with its class, rule, message and
recipient, unmatched ones filtered, one opened with its raw text escaped, reclassified as
`postern bounces reclassify` does; a member (no `suppressions`) refused."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.bounces.returnpath import VERP_KEY, ReturnPath
from tests.support.api import Api, ApiFactory, auth, payload
from tests.support.reports import dsn
from tests.web.conftest import SignIn

pytestmark = pytest.mark.timeout(60)
DOMAIN = "bounce.postern.test"
REFUSED = "<h1>Refused</h1>"


@pytest.fixture
async def api(api_client: ApiFactory) -> Api:
    return await api_client(bounces={"domain": DOMAIN, "max_report_size": 20_000})


async def upload(api: Api, key: str, raw: bytes) -> Any:
    headers = auth(key) | {"Content-Type": "message/rfc822"}
    answer = await api.http.post("/api/v1/bounces", content=raw, headers=headers)
    assert answer.status_code == 201, answer.text
    return answer.json()


async def bounced(api: Api, key: str) -> tuple[str, int]:
    """A message sent and its DSN uploaded: (message id, report id)."""
    sent = await api.send(payload(to=[{"email": "gone@example.test"}]), key=key)
    assert sent.status_code == 200, sent.text
    message_id = sent.json()["message_id"]
    assert api.svc.box is not None
    verp = ReturnPath(DOMAIN, api.svc.box.derive(VERP_KEY)).address(message_id, "")
    answer = await upload(api, key, dsn("gone@example.test", to=verp))
    assert answer["outcome"] == "processed"
    return message_id, int(answer["report_id"])


async def test_reports_are_listed_opened_and_reclassified(api: Api, person: SignIn) -> None:
    key = await api.key("send", "suppressions")
    message_id, report_id = await bounced(api, key)
    forged = f"bounces+msg_00000000000000000000000000a-aaaaaaaaaaaaaaaa@{DOMAIN}"
    odd = dsn("x@example.test", diagnostic="550 <script>alert(1)</script>", to=forged, nonce="2")
    unmatched = int((await upload(api, key, odd))["report_id"])
    owner = await person("ops@example.com")

    listed = (await owner.get("/bounces")).text
    assert f'id="report-{report_id}"' in listed and f'id="report-{unmatched}"' in listed
    assert f'href="/messages/{message_id}"' in listed and "gone@example.test" in listed
    assert ">hard<" in listed and 'href="/bounces"' in listed
    only = (await owner.get("/bounces?status=unmatched")).text
    assert f'id="report-{unmatched}"' in only and f'id="report-{report_id}"' not in only
    assert (await owner.get("/bounces?status=nope")).status_code == 400

    shown = await owner.get(f"/bounces/{unmatched}")
    assert shown.status_code == 200 and "&lt;script&gt;alert(1)&lt;/script&gt;" in shown.text
    assert "<script>alert" not in shown.text
    report = f"/bounces/{report_id}"
    changed = await owner.post(report + "/reclassify", {"class": "soft"})
    assert changed.status_code == 303 and changed.headers["location"] == report + "?done=changed"
    again = (await owner.get(report)).text
    assert 'id="report-class">soft<' in again and "operator" in again
    same = await owner.post(report + "/reclassify", {"class": "soft"})
    assert same.headers["location"] == report + "?done=unchanged"
    assert (await owner.post(report + "/reclassify", {"class": "bogus"})).status_code == 400
    assert (await owner.get("/bounces/999999")).status_code == 404
    assert (await owner.get("/bounces/x1")).status_code == 400


async def test_a_member_is_refused(api: Api, person: SignIn) -> None:
    key = await api.key("send", "suppressions")
    _, report_id = await bounced(api, key)
    member = await person("member@example.com", role="member")
    assert 'href="/bounces"' not in (await member.get("/")).text
    for answer in (
        await member.get("/bounces"),
        await member.get(f"/bounces/{report_id}"),
        await member.post(f"/bounces/{report_id}/reclassify", {"class": "soft"}),
    ):
        assert answer.status_code == 403 and REFUSED in answer.text
