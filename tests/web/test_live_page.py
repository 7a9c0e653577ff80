"""The Live page through a real uvicorn, as a browser without JavaScript sees it: the last
events (a member's own only), the charts of the last hour drawn as SVG on the server, the
filters, and the script that follows the stream named, never inline."""

from __future__ import annotations

import re

import pytest

from tests.support.api import Api, payload
from tests.support.rows import wait_for_status
from tests.support.sink import Sink
from tests.support.web import Browser
from tests.web.conftest import SignIn

pytestmark = pytest.mark.timeout(60)
SANDBOX = {"X-Postern-Sandbox": "true"}


async def sent(api: Api, key: str, email: str, final: set[str]) -> str:
    answer = await api.send(payload(to=[{"email": email}]), key=key)
    assert answer.status_code in (200, 202, 422), answer.text  # 422: bounced at the handoff
    message_id: str = answer.json()["message_id"]
    await wait_for_status(api.svc, message_id, final)
    return message_id


async def test_live_shows_the_last_events_and_the_charts(
    api: Api, sink: Sink, person: SignIn
) -> None:
    owner = await person("ops@example.com")
    key = await api.key()
    sink.fail("rcpt", "550 5.1.1 no such user", match="bad@example.test")
    good = await sent(api, key, "good@example.test", {"delivered"})
    bad = await sent(api, key, "bad@example.test", {"bounced"})

    page = await owner.get("/live")
    assert page.status_code == 200 and "<h1>Live</h1>" in page.text
    text = page.text
    assert f'href="/messages/{good}"' in text and f'href="/messages/{bad}"' in text
    assert text.index(f"/messages/{bad}") < text.index(f"/messages/{good}")  # newest first
    assert '<rect class="bar delivered"' in text and '<rect class="bar bounced"' in text
    assert '<polyline class="line latency_mean"' in text
    assert "1 delivered, 0 deferred, 1 bounced" in text
    assert 'data-stream="/v1/events/stream"' in text
    assert re.search(r'<script src="/static/[0-9a-f]{16}/live\.js" defer></script>', text)
    assert "<script>" not in text and "style=" not in text
    assert '<a href="/live" aria-current="page">Live</a>' in text

    bounced = await owner.get("/live?type=bounced&recipient=bad@example.test")
    assert f"/messages/{bad}" in bounced.text and f"/messages/{good}" not in bounced.text
    assert 'data-stream="/v1/events/stream?type=bounced&amp;recipient=bad%40example.test"' in (
        bounced.text
    )
    wrong = await owner.get("/live?type=nonsense")
    assert wrong.status_code == 200 and 'role="alert"' in wrong.text
    assert f"/messages/{good}" in wrong.text  # unfiltered, with the problem said


async def test_a_member_sees_only_their_own_events(api: Api, person: SignIn) -> None:
    member = await person("m@example.com", "member")
    other = await person("o@example.com", "member")
    own = await sandboxed(member)
    theirs = await sandboxed(other)
    page = await member.get("/live")
    assert page.status_code == 200
    assert f"/messages/{own}" in page.text and f"/messages/{theirs}" not in page.text


async def sandboxed(who: Browser) -> str:
    answer = await who.http.post(
        "/v1/send",
        json=payload(),
        headers=SANDBOX | {"X-CSRF-Token": who.csrf, "Origin": who.origin},
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["message_id"])
