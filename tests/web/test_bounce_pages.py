"""The Bounces pages through a real uvicorn with httpx: a DSN uploaded as providers forward
them (POST /api/v1/bounces: the one ingest), listed with its class, rule, message and
recipient, unmatched ones filtered, one opened with its raw text escaped, reclassified as
`postern bounces reclassify` does; a member sees and reclassifies the reports of their own
mail only (another's is a 404)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.bounces.returnpath import VERP_KEY, ReturnPath
from storage.keys import create_key
from tests.support.api import Api, ApiFactory, auth, payload
from tests.support.people import make_user
from tests.support.reports import dsn
from tests.support.web import sign_in
from tests.web.conftest import SignIn

pytestmark = pytest.mark.timeout(60)
DOMAIN = "bounce.postern.test"
FORGED = f"bounces+msg_00000000000000000000000000a-aaaaaaaaaaaaaaaa@{DOMAIN}"


@pytest.fixture
async def api(api_client: ApiFactory) -> Api:
    return await api_client(bounces={"domain": DOMAIN, "max_report_size": 20_000})


async def upload(api: Api, key: str, raw: bytes) -> Any:
    headers = auth(key) | {"Content-Type": "message/rfc822"}
    answer = await api.http.post("/api/v1/bounces", content=raw, headers=headers)
    assert answer.status_code == 201, answer.text
    return answer.json()


async def bounced(
    api: Api, key: str, uploader: str = "", to: str = "gone@example.test"
) -> tuple[str, int]:
    """A message sent with `key` and its DSN uploaded (with `uploader`, else the same
    key): (message id, report id)."""
    sent = await api.send(payload(to=[{"email": to}]), key=key)
    assert sent.status_code == 200, sent.text
    message_id = sent.json()["message_id"]
    assert api.svc.box is not None
    verp = ReturnPath(DOMAIN, api.svc.box.derive(VERP_KEY)).address(message_id, "")
    answer = await upload(api, uploader or key, dsn(to, to=verp, nonce=message_id))
    assert answer["outcome"] == "processed"
    return message_id, int(answer["report_id"])


async def test_reports_are_listed_opened_and_reclassified(api: Api, person: SignIn) -> None:
    key = await api.key("send", "suppressions")
    message_id, report_id = await bounced(api, key)
    odd = dsn("x@example.test", diagnostic="550 <script>alert(1)</script>", to=FORGED, nonce="2")
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


async def test_a_member_sees_the_reports_of_their_own_mail_only(api: Api, person: SignIn) -> None:
    key = await api.key("send", "suppressions")
    _, others = await bounced(api, key)
    unmatched = await upload(api, key, dsn("x@example.test", to=FORGED, nonce="3"))
    user = await make_user(api.svc.db, "member@example.com", "member")
    _, members_key = await create_key(api.svc.db, "mine", ["send"], user_id=user.id)
    # uploaded by a forwarder for everyone: an admin key (without `admin`, an upload acts
    # only on the uploader's own mail, tests/api/test_bounce_ownership.py)
    forwarder = await api.key("admin")
    message_id, own = await bounced(api, members_key, forwarder, "also@example.test")
    member = await sign_in(str(api.http.base_url), user)
    stranger = await person("stranger@example.com", role="member")
    try:
        assert 'href="/bounces"' in (await member.get("/")).text
        listed = (await member.get("/bounces")).text
        assert f'id="report-{own}"' in listed and f'href="/messages/{message_id}"' in listed
        assert f'id="report-{others}"' not in listed
        assert f'id="report-{unmatched["report_id"]}"' not in listed
        assert f'id="report-{own}"' not in (await stranger.get("/bounces")).text
        shown = await member.get(f"/bounces/{own}")
        # theirs to read, not to change: a member's role has no `suppressions` scope (a
        # new class adds or lifts installation-wide suppressions)
        assert shown.status_code == 200 and 'action="/bounces/' not in shown.text
        refused_own = await member.post(f"/bounces/{own}/reclassify", {"class": "ignore"})
        assert refused_own.status_code == 403
        for report in (others, unmatched["report_id"]):  # another's: as if there were none
            assert (await member.get(f"/bounces/{report}")).status_code == 404
            refused = await member.post(f"/bounces/{report}/reclassify", {"class": "soft"})
            assert refused.status_code == 404
        assert (await stranger.get(f"/bounces/{own}")).status_code == 404
    finally:
        await member.http.aclose()
