"""The Hold and Release buttons of a message's page and the bulk hold and release of the
search, through a real uvicorn with httpx as a
browser without JavaScript (and htmx, by its headers) uses them; CSRF refused as for retry."""

from __future__ import annotations

import pytest

from tests.support.api import Api
from tests.support.people import make_user
from tests.support.rows import message_row
from tests.support.sink import Sink
from tests.support.web import Browser
from tests.web.conftest import SignIn
from tests.web.test_messages_pages import CSRF_TEXT, deferred, later, seeded, statuses

pytestmark = pytest.mark.timeout(60)
__all__ = ["later"]  # the fixture, imported for this module's tests


async def test_hold_then_release_from_the_message_page(
    later: tuple[Api, Browser], sink: Sink
) -> None:
    api, owner = later
    message_id = await deferred(api, sink)
    page = await owner.get(f"/messages/{message_id}")
    assert f'action="/messages/{message_id}/hold"' in page.text
    assert f'action="/messages/{message_id}/release"' not in page.text

    refused = await owner.post(f"/messages/{message_id}/hold", token=False)
    assert refused.status_code == 403 and CSRF_TEXT in refused.text
    assert (await message_row(api.svc, message_id))["status"] == "deferred"

    held = await owner.post(f"/messages/{message_id}/hold")
    assert held.status_code == 303
    assert held.headers["location"] == f"/messages/{message_id}?done=held"
    shown = await owner.get(held.headers["location"])
    assert "Held: no worker takes it until it is released." in shown.text
    assert '<span class="status status-held">held</span>' in shown.text
    assert f'action="/messages/{message_id}/release"' in shown.text
    assert "Retry now" not in shown.text and "on hold until released" in shown.text
    assert (await message_row(api.svc, message_id))["status"] == "held"

    retried = await owner.post(f"/messages/{message_id}/retry")
    assert retried.status_code == 409 and "on hold: release it first" in retried.text

    released = await owner.htmx(f"/messages/{message_id}/release")
    assert released.status_code == 200 and "<html" not in released.text
    assert "Released: the message is due now." in released.text and "Retry now" in released.text
    again = await owner.htmx(f"/messages/{message_id}/release")
    assert again.status_code == 409 and "not on hold" in again.text


async def test_bulk_hold_then_release_from_the_search(api: Api, person: SignIn) -> None:
    owner = await person("ops@example.com")
    rows = await seeded(api, 20, [await make_user(api.svc.db, "x@example.com", "member")])
    queued = {r["id"] for r in rows if r["status"] == "queued"}
    search = await owner.get("/messages?status=queued")
    assert "/messages/bulk?status=queued&amp;action=hold" in search.text
    counted = await owner.get("/messages/bulk?action=hold&status=queued")
    assert f"This will hold <strong>{len(queued)}</strong> messages" in counted.text
    done = await owner.post("/messages/bulk", {"action": "hold", "status": "queued"})
    assert done.status_code == 303
    notice = await owner.get(done.headers["location"])
    assert f"{len(queued)} messages held." in notice.text
    assert await statuses(api, queued) == {"held"}
    released = await owner.post("/messages/bulk", {"action": "release", "status": "held"})
    assert released.status_code == 303 and "done=released" in released.headers["location"]
    # Back in the queue, and so due: the running Service may already have delivered some
    # (seen in a parallel run), which is what a release is for.
    after = await statuses(api, queued)
    assert after and after <= {"queued", "delivered"}, after  # none held any more
