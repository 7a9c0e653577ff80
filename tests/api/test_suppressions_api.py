"""/api/v1/suppressions (scope `suppressions`): add, list (paginated, by reason), show,
remove; one entry per mailbox (case and quotes do not matter) at both doors; changes apply
to sending at once.
"""

from __future__ import annotations

import pytest

from api.schemas import SuppressionList, SuppressionResponse
from gateway.smtpd import replies
from tests.support.api import Api, auth, payload
from tests.support.sink import Sink
from tests.support.smtp import smtp_send

pytestmark = pytest.mark.timeout(30)


async def test_add_blocks_sending_and_remove_allows_it_again(api: Api, sink: Sink) -> None:
    key = await api.key("send", "suppressions")
    added = await api.http.post(
        "/api/v1/suppressions",
        json={"email": "Someone@Example.TEST", "reason": "complaint"},
        headers=auth(key),
    )
    assert added.status_code == 201
    SuppressionResponse.model_validate(added.json())
    assert added.json()["suppression"]["email"] == "someone@example.test"

    blocked = await api.send(payload(to=[{"email": "Someone@EXAMPLE.test"}]), key=key)
    assert blocked.status_code == 422

    removed = await api.http.delete("/api/v1/suppressions/Someone@example.TEST", headers=auth(key))
    assert removed.status_code == 200 and removed.json() == {"success": True}
    sent = await api.send(payload(to=[{"email": "Someone@example.test"}]), key=key)
    assert sent.status_code == 200
    assert len(sink.messages) == 1


async def test_adding_again_updates_the_reason(api: Api) -> None:
    key = await api.key("suppressions")
    first = await api.http.post(
        "/api/v1/suppressions", json={"email": "a@example.test"}, headers=auth(key)
    )
    assert first.status_code == 201 and first.json()["suppression"]["reason"] == "manual"
    again = await api.http.post(
        "/api/v1/suppressions",
        json={"email": "a@EXAMPLE.test", "reason": "unsubscribed"},
        headers=auth(key),
    )
    assert again.status_code == 200
    assert again.json()["suppression"]["reason"] == "unsubscribed"
    shown = await api.get("/api/v1/suppressions/a@example.test", key=key)
    assert shown.json()["suppression"]["reason"] == "unsubscribed"


async def test_list_pages_with_a_cursor_and_filters_by_reason(api: Api) -> None:
    key = await api.key("suppressions")
    for i, reason in enumerate(["bounced", "manual", "bounced", "complaint", "bounced"]):
        await api.http.post(
            "/api/v1/suppressions",
            json={"email": f"u{i}@example.test", "reason": reason},
            headers=auth(key),
        )
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = await api.get("/api/v1/suppressions", key=key, **params)
        SuppressionList.model_validate(page.json())
        seen += [s["email"] for s in page.json()["suppressions"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"u{i}@example.test" for i in range(5)]
    bounced = await api.get("/api/v1/suppressions", key=key, reason="bounced")
    assert len(bounced.json()["suppressions"]) == 3


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/v1/suppressions", {"email": "x@example.test", "reason": "spite"}),
        ("POST", "/api/v1/suppressions", {"email": "not an address"}),
        ("POST", "/api/v1/suppressions", {"email": "a@example.test\r\nb"}),
        ("GET", "/api/v1/suppressions?limit=0", None),
        ("GET", "/api/v1/suppressions?limit=abc", None),
        ("GET", "/api/v1/suppressions?reason=spite", None),
    ],
)
async def test_bad_requests_are_400(
    api: Api, method: str, path: str, body: dict[str, str] | None
) -> None:
    key = await api.key("suppressions")
    response = await api.http.request(method, path, json=body, headers=auth(key))
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"


async def test_unknown_entries_are_404_and_the_scope_is_required(api: Api) -> None:
    key = await api.key("suppressions")
    missing = await api.http.delete("/api/v1/suppressions/none@example.test", headers=auth(key))
    assert missing.status_code == 404
    assert (await api.get("/api/v1/suppressions/none@example.test", key=key)).status_code == 404
    assert (await api.get("/api/v1/suppressions", key=await api.key("send"))).status_code == 403


# --- one mailbox, one key: the whole address compares case-insensitively, quotes unquoted ---

GONE = "gone@example.org"
SPELLINGS = ["GONE@EXAMPLE.ORG", "Gone@example.org", '"gone"@example.org', '"GONE"@Example.Org']


async def test_every_spelling_of_a_suppressed_address_is_refused_over_http(api: Api) -> None:
    key = await api.key("send", "suppressions")
    added = await api.http.post("/api/v1/suppressions", json={"email": GONE}, headers=auth(key))
    assert added.status_code == 201
    for spelling in SPELLINGS:
        refused = await api.send(payload(to=[{"email": spelling}]), key=key)
        assert (refused.status_code, refused.json().get("code")) == (422, "suppressed"), spelling


async def test_every_spelling_of_a_suppressed_address_is_refused_at_rcpt(api: Api) -> None:
    key = await api.key("suppressions")
    await api.http.post("/api/v1/suppressions", json={"email": GONE}, headers=auth(key))
    data = b"From: app@sender.test\r\nTo: x@example.org\r\nSubject: s\r\n\r\nbody\r\n"
    for spelling in SPELLINGS:
        code, text = await smtp_send(api.svc.smtp_port, "app@sender.test", [spelling], data)
        assert (code, text[:5]) == replies.SUPPRESSED.status, spelling


async def test_the_api_keys_entries_by_the_normalised_address(api: Api, sink: Sink) -> None:
    key = await api.key("send", "suppressions")
    added = await api.http.post(
        "/api/v1/suppressions", json={"email": '"Bob"@Dest.TEST'}, headers=auth(key)
    )
    assert added.status_code == 201
    assert added.json()["suppression"]["email"] == "bob@dest.test"
    again = await api.http.post(
        "/api/v1/suppressions", json={"email": "BOB@dest.test", "reason": "bounced"},
        headers=auth(key),
    )  # fmt: skip
    assert again.status_code == 200  # the same entry, not a second one
    listed = await api.get("/api/v1/suppressions", key=key)
    assert [s["email"] for s in listed.json()["suppressions"]] == ["bob@dest.test"]
    for spelling in ("bob@dest.test", "BOB@DEST.TEST", '"bob"@dest.test'):
        shown = await api.get(f"/api/v1/suppressions/{spelling}", key=key)
        assert shown.status_code == 200, spelling
        assert shown.json()["suppression"]["email"] == "bob@dest.test"
    removed = await api.http.delete('/api/v1/suppressions/"BoB"@dest.test', headers=auth(key))
    assert removed.status_code == 200
    assert (await api.send(payload(to=[{"email": "Bob@dest.test"}]), key=key)).status_code == 200
