"""Messages in the dashboard through a real uvicorn with httpx, as a browser without
JavaScript (and htmx, by its headers) uses them: the search with each of the API's filters
and its cursor pages, a member's own mail only (another's is a 404 everywhere), a message's
page (timeline, recipients, header fields, text), its HTML only in the frame route under its
own strict policy, the raw source, retry and cancel of a deferred message, bulk actions
counted before they act, and the invitation banner with accept and decline; CSRF refused."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from markupsafe import escape
from sqlalchemy import update

from gateway.mailview import SHOWN_CHARACTERS, view
from gateway.people.invitations import Actor, Invitations
from gateway.queue.retention import Retention
from storage import aliases
from storage.models import Message, SenderAlias
from storage.users import UserRecord, find_by_email
from tests.support.api import Api, ApiFactory, payload
from tests.support.people import make_user
from tests.support.rows import message_row, wait_for_status
from tests.support.service import SINK_POOL, wait_until
from tests.support.sink import Sink
from tests.support.stored import seed
from tests.support.web import Browser, sign_in
from tests.web.conftest import SignIn
from web.guard import CSRF_TEXT as _CSRF_TEXT
from web.pages.message import FRAME_CSP

pytestmark = pytest.mark.timeout(60)
CSRF_TEXT = str(escape(_CSRF_TEXT))
LATER = {"delivery": {"retry_schedule": ["1h"], "handoff_timeout": "3s"}}
M = Message
IDS = re.compile(r'href="/messages/(msg_[A-Za-z0-9_]+)"')
HTML_PART = "<p>Hello <b>there</b></p><script>alert(1)</script>"


def ids_of(html: str) -> list[str]:
    return IDS.findall(html)


async def seeded(api: Api, n: int, owners: list[UserRecord]) -> list[dict[str, Any]]:
    """tests.support.stored.seed's messages, message i belonging to owners[i % len]."""
    rows = await seed(api.svc.db, n, [owner.id for owner in owners])
    mine = update(M).values(user_id=M.c.api_key_id, api_key_id=None)
    await api.svc.db.transaction(lambda conn: conn.execute(mine))
    return rows


def newest_first(rows: list[dict[str, Any]]) -> list[str]:
    ordered = sorted(rows, key=lambda row: (row["created_at"], row["id"]), reverse=True)
    return [row["id"] for row in ordered]


async def deferred(api: Api, sink: Sink) -> str:
    """A message the sink deferred (451), due again in an hour: a text and an HTML part."""
    sink.fail("rcpt", "451 4.3.0 try later")
    body = payload(subject="Quarterly report", text="Plain words.\n", html=HTML_PART)
    sent = await api.send(body, key=await api.key())
    assert sent.status_code == 202, sent.text
    message_id: str = sent.json()["message_id"]
    await wait_for_status(api.svc, message_id, {"deferred"})
    return message_id


# --- the search -----------------------------------------------------------------------------


async def test_each_filter_of_the_api_narrows_the_search(api: Api, person: SignIn) -> None:
    owner = await person("ops@example.com")
    rows = await seeded(api, 40, [await make_user(api.svc.db, "x@example.com", "member")])
    wanted = newest_first(rows)
    page = await owner.get("/messages?limit=100")
    assert page.status_code == 200 and "<h1>Messages</h1>" in page.text
    assert ids_of(page.text) == wanted
    assert 'name="message_id_header"' in page.text  # the form has the field
    assert 'name="subject"' in page.text and 'name="client"' in page.text
    assert "via 198.51.100." in page.text  # each row says which client sent it
    cases: dict[str, Any] = {
        "status=deferred": lambda r: r["status"] == "deferred",
        "status=queued&status=bounced": lambda r: r["status"] in ("queued", "bounced"),
        "from=s1%40sender.test": lambda r: r["mail_from"] == "s1@sender.test",
        "recipient=r3%40example.test": lambda r: r["id"][-2:] in ("03", "13", "23", "33"),
        "tag=t4": lambda r: r["id"][-2:] in ("04", "14", "24", "34"),
        "message_id_header=m3%40app.test": lambda r: int(r["id"][-2:]) % 7 == 3,
        "message_id_header=%3Cm5%40app.test%3E": lambda r: int(r["id"][-2:]) % 7 == 5,
        # Subject "Order {i % 9} shipped", client 198.51.100.{i % 6} (tests.support.stored)
        "subject=Shipped+ORDER+4": lambda r: int(r["id"][-2:]) % 9 == 4,
        "subject=shipped": lambda r: True,
        "subject=order+7+missing": lambda r: False,
        "client=198.51.100.5": lambda r: int(r["id"][-2:]) % 6 == 5,
        "client=198.51.100.2%2F31": lambda r: int(r["id"][-2:]) % 6 in (2, 3),
        "client=198.51.100.0%2F24&subject=2": lambda r: int(r["id"][-2:]) % 9 == 2,
        f"pool={SINK_POOL}": lambda r: r["last_pool"] == SINK_POOL,
        f"since={rows[30]['created_at']:.0f}": lambda r: r["created_at"] >= rows[30]["created_at"],
        f"until={rows[10]['created_at']:.0f}": lambda r: r["created_at"] < rows[10]["created_at"],
    }
    for query, keep in cases.items():
        found = ids_of((await owner.get(f"/messages?limit=100&{query}")).text)
        assert found == newest_first([r for r in rows if keep(r)]), query
    refused = await owner.get("/messages?since=yesterday")
    assert refused.status_code == 400 and "since:" in refused.text and "<form" in refused.text
    empty = await owner.get("/messages?message_id_header=%3C%3E")
    assert empty.status_code == 400 and "message_id_header:" in empty.text
    for query, field in (("subject=%21%21", "subject:"), ("client=198.51.100.1%2F40", "client:")):
        bad = await owner.get(f"/messages?{query}")
        assert bad.status_code == 400 and field in bad.text and "<form" in bad.text
    kept = await owner.get("/messages?subject=order+4&client=198.51.100.0%2F24")
    assert 'value="order 4"' in kept.text and 'value="198.51.100.0/24"' in kept.text


async def test_pages_follow_the_cursor_and_htmx_gets_the_results_only(
    api: Api, person: SignIn
) -> None:
    owner = await person("ops@example.com")
    rows = await seeded(api, 60, [await make_user(api.svc.db, "x@example.com", "member")])
    seen: list[str] = []
    path = "/messages?limit=25&status=queued&status=deferred"
    for _ in range(5):  # bounded: two pages and a half
        page = await owner.get(path)
        assert page.status_code == 200
        seen += ids_of(page.text)
        older = re.search(r'href="([^"]+)" rel="next"', page.text)
        if older is None:
            break
        path = older.group(1).replace("&amp;", "&")
        assert "cursor=" in path and "status=queued" in path and "limit=25" in path
    active = [r for r in rows if r["status"] in ("queued", "deferred")]
    assert seen == newest_first(active) and len(seen) == 30
    fragment = await owner.get("/messages?status=delivered", headers={"HX-Request": "true"})
    assert fragment.status_code == 200 and "<html" not in fragment.text
    assert fragment.text.startswith('<section id="results"')
    assert fragment.headers["vary"] == "HX-Request"
    assert ids_of(fragment.text) == newest_first([r for r in rows if r["status"] == "delivered"])
    bad = await owner.get("/messages?cursor=nonsense")
    assert bad.status_code == 400 and "start again" in bad.text


async def test_a_member_sees_only_their_own_mail(api: Api, person: SignIn) -> None:
    member = await person("m@example.com", "member")
    me = await find_by_email(api.svc.db, "m@example.com")
    assert me is not None
    rows = await seeded(api, 12, [await make_user(api.svc.db, "o@example.com", "member"), me])
    theirs = [r for i, r in enumerate(rows) if i % 2 == 0]
    mine = [r for i, r in enumerate(rows) if i % 2 == 1]
    page = await member.get("/messages?limit=100")
    assert ids_of(page.text) == newest_first(mine) and "Your mail" in page.text
    assert (await member.get(f"/messages/{mine[0]['id']}")).status_code == 200
    for suffix in ("", "/raw", "/html"):
        answer = await member.get(f"/messages/{theirs[0]['id']}{suffix}")
        assert answer.status_code == 404 and "no such message" in answer.text, suffix
    active = next(r for r in theirs if r["status"] == "queued")
    refused = await member.post(f"/messages/{active['id']}/cancel")
    assert refused.status_code == 404
    assert (await message_row(api.svc, active["id"]))["status"] == "queued"
    counted = await member.get("/messages/bulk?action=cancel")
    mine_active = [r for r in mine if r["due_at"] is not None]
    assert f"<strong>{len(mine_active)}</strong>" in counted.text


# --- one message ----------------------------------------------------------------------------


async def test_a_message_page_shows_timeline_recipients_headers_and_text(
    later: tuple[Api, Browser], sink: Sink
) -> None:
    api, owner = later
    message_id = await deferred(api, sink)
    page = await owner.get(f"/messages/{message_id}")
    assert page.status_code == 200, page.text
    text = page.text
    assert "Quarterly report" in text  # the subject, from the stored header fields
    assert '<span class="status status-deferred">deferred</span>' in text
    assert "451 4.3.0 try later" in text and "rcpt@example.test" in text  # the recipient's reply
    timeline = text.split('id="timeline-heading"')[1].split("</section>")[0]
    assert timeline.index(">queued<") < timeline.index(">deferred<")
    assert "<dt>Subject</dt><dd>Quarterly report</dd>" in text
    assert "<dt>Client</dt><dd>127.0.0.1</dd>" in text  # where it was sent from (HTTP)
    assert '<pre class="mail-text">Plain words.\n</pre>' in text
    assert f'<iframe class="mail-html" sandbox="" src="/messages/{message_id}/html"' in text
    assert "<b>there</b>" not in text and "alert(1)" not in text  # never inside the page
    framed = await owner.get(f"/messages/{message_id}/html")
    assert framed.status_code == 200 and "<b>there</b>" in framed.text
    assert framed.headers.get_list("content-security-policy") == [FRAME_CSP]
    assert framed.headers.get_list("x-frame-options") == ["SAMEORIGIN"]
    assert framed.headers["x-content-type-options"] == "nosniff"
    raw = await owner.get(f"/messages/{message_id}/raw")
    assert raw.headers["content-type"] == "text/plain; charset=utf-8"
    assert "Subject: Quarterly report" in raw.text and "content-disposition" not in raw.headers
    download = await owner.get(f"/messages/{message_id}/raw?download=1")
    assert download.headers["content-disposition"] == f'attachment; filename="{message_id}.eml"'
    assert download.content == raw.content


@pytest.fixture
async def later(api_client: ApiFactory) -> AsyncIterator[tuple[Api, Browser]]:
    """A service whose retries wait an hour, and its owner signed in."""
    api = await api_client(**LATER)
    user = await make_user(api.svc.db, "ops@example.com", "owner")
    owner = await sign_in(str(api.http.base_url), user)
    try:
        yield api, owner
    finally:
        await owner.http.aclose()


async def test_retry_then_cancel_a_deferred_message(later: tuple[Api, Browser], sink: Sink) -> None:
    api, owner = later
    message_id = await deferred(api, sink)
    retried = await owner.post(f"/messages/{message_id}/retry")
    assert retried.status_code == 303
    assert retried.headers["location"] == f"/messages/{message_id}?done=retried"

    async def tried(times: int) -> bool:
        row = await message_row(api.svc, message_id)
        return row is not None and row["attempts"] == times and row["status"] == "deferred"

    assert await wait_until(lambda: tried(2), timeout=10)
    shown = await owner.get(retried.headers["location"])
    assert "Retried: the message is due now." in shown.text
    again = await owner.htmx(f"/messages/{message_id}/retry")  # htmx: the status part again
    assert again.status_code == 200 and "<html" not in again.text
    assert "Retried: the message is due now." in again.text and owner.csrf in again.text
    assert await wait_until(lambda: tried(3), timeout=10)
    cancelled = await owner.htmx(f"/messages/{message_id}/cancel")
    assert cancelled.status_code == 200 and "<html" not in cancelled.text
    assert '<span class="status status-cancelled">cancelled</span>' in cancelled.text
    assert "Message cancelled." in cancelled.text and "Retry now" not in cancelled.text
    final = await owner.post(f"/messages/{message_id}/retry")
    assert final.status_code == 409 and "no work left (it is cancelled)" in final.text
    page = await owner.get(f"/messages/{message_id}")  # final: body kept for body_retention
    assert "The body is gone" not in page.text and "Raw source" in page.text
    assert (await owner.get(f"/messages/{message_id}/raw")).status_code == 200
    writer = api.svc.writer
    assert writer is not None
    await Retention(writer, keep=86400, body_keep=0).sweep_bodies()
    page = await owner.get(f"/messages/{message_id}")
    assert "The body is gone" in page.text and "Raw source" not in page.text
    assert (await owner.get(f"/messages/{message_id}/raw")).status_code in (404, 410)
    refused = await owner.post(f"/messages/{message_id}/retry", token=False)
    assert refused.status_code == 403 and CSRF_TEXT in refused.text


async def statuses(api: Api, ids: set[str]) -> set[str]:
    return {(await message_row(api.svc, message_id))["status"] for message_id in ids}


# --- bulk -----------------------------------------------------------------------------------


async def test_bulk_counts_first_then_acts_once_confirmed(api: Api, person: SignIn) -> None:
    owner = await person("ops@example.com")
    rows = await seeded(api, 40, [await make_user(api.svc.db, "x@example.com", "member")])
    deferred_ids = {r["id"] for r in rows if r["status"] == "deferred"}
    counted = await owner.get("/messages/bulk?action=cancel&status=deferred")
    assert counted.status_code == 200
    assert f"This will cancel <strong>{len(deferred_ids)}</strong> messages" in counted.text
    assert await statuses(api, deferred_ids) == {"deferred"}
    fields = {"action": "cancel", "status": "deferred"}
    refused = await owner.post("/messages/bulk", fields, token=False)
    assert refused.status_code == 403 and CSRF_TEXT in refused.text
    done = await owner.post("/messages/bulk", fields)
    assert done.status_code == 303
    count = len(deferred_ids)
    assert done.headers["location"] == f"/messages?status=deferred&done=cancelled&count={count}"
    notice = await owner.get(done.headers["location"])
    assert f"{len(deferred_ids)} messages cancelled." in notice.text
    assert await statuses(api, deferred_ids) == {"cancelled"}
    by_subject = [r for r in rows if int(r["id"][-2:]) % 9 == 1 and r["status"] == "queued"]
    counted = await owner.get("/messages/bulk?action=retry&subject=order+1&status=queued")
    assert by_subject and f"retry <strong>{len(by_subject)}</strong> message" in counted.text
    everything = await owner.get("/messages/bulk?action=retry")
    assert "every message with work left you can see" in everything.text
    assert '<input type="hidden" name="all" value="1">' in everything.text
    without = await owner.post("/messages/bulk", {"action": "retry"})
    assert without.status_code == 400 and "confirm every message" in without.text


# --- the invitation banner ------------------------------------------------------------------


async def _invite(api: Api, inviter: UserRecord, address: str, invitee: str) -> str:
    created = await aliases.create_alias(
        api.svc.db, email=address, name="", is_default=False, ip_pool=None,
        token_hash=address, expires_at=time.time() + 3600,
    )  # fmt: skip
    table = SenderAlias
    owned = update(table).where(table.c.id == created.id).values(created_by=inviter.id)
    await api.svc.db.transaction(lambda conn: conn.execute(owned))
    invitations = Invitations(api.svc.db)
    invitation, _ = await invitations.invite(Actor(inviter.id, inviter), created.id, invitee)
    return invitation.id


async def test_the_banner_offers_pending_invitations_to_accept_or_decline(
    api: Api, person: SignIn
) -> None:
    boss = await make_user(api.svc.db, "boss@example.com", "owner")
    first = await _invite(api, boss, "team@yourdomain.test", "bob@example.com")
    second = await _invite(api, boss, "sales@yourdomain.test", "bob@example.com")
    member = await person("bob@example.com", "member")  # its pages read them (web.banner)
    page = await member.get("/messages")
    assert "You’ve been invited" in page.text
    assert "team@yourdomain.test" in page.text and "sales@yourdomain.test" in page.text
    assert "<strong>boss@example.com</strong> invited you" in page.text and "(member)" in page.text
    refused = await member.post(f"/invitations/{first}/accept", {"next": "/messages"}, token=False)
    assert refused.status_code == 403 and CSRF_TEXT in refused.text
    accepted = await member.post(f"/invitations/{first}/accept", {"next": "/messages"})
    assert accepted.status_code == 303 and accepted.headers["location"] == "/messages"
    after = await member.get("/messages")
    assert "team@yourdomain.test" not in after.text and "sales@yourdomain.test" in after.text
    declined = await member.htmx(f"/invitations/{second}/decline")
    assert declined.status_code == 200 and "Invitation declined." in declined.text
    assert "You’ve been invited" not in (await member.get("/")).text
    again = await member.post(f"/invitations/{first}/accept", {"next": "/"})
    assert again.status_code == 409
    shared = await api.svc.db.read(
        lambda conn: list(conn.exec_driver_sql("SELECT user_id FROM shares"))
    )
    assert len(shared) == 1
    stranger = await person("eve@example.com", "member")
    third = await _invite(api, boss, "ops@yourdomain.test", "bob@example.com")
    assert (await stranger.post(f"/invitations/{third}/accept", {"next": "/"})).status_code == 404


# --- hostile mail, as the message page shows it ------------------------------------------------


def test_mail_that_breaks_the_rules_is_still_shown() -> None:
    unknown_charset = (
        b"Subject: =?x-unknown?q?odd?=\r\nContent-Type: text/plain; charset=x-unknown\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=E9\r\n"
    )
    shown = view(unknown_charset)
    assert shown.text is not None and shown.text.startswith("caf") and shown.subject
    html_only = b"Content-Type: text/html\r\n\r\n<p>hi</p>\r\n"
    assert view(html_only).html == "<p>hi</p>\n" and view(html_only).text is None
    broken = b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nno end\x00\xff"
    assert view(broken).headers  # whatever it holds, no error
    long = b"Subject: long\r\n\r\n" + b"x" * (SHOWN_CHARACTERS + 10)
    cut = view(long)
    assert cut.cut and cut.text is not None and len(cut.text) == SHOWN_CHARACTERS
    attached = (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain"
        b"\r\n\r\nsee attached\r\n--b\r\nContent-Type: application/pdf\r\n"
        b"Content-Disposition: attachment; filename=report.pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--b--\r\n"
    )
    shown = view(attached)
    assert shown.text == "see attached"  # the line end before a boundary is the boundary's
    assert [(a.name, a.content_type, a.size) for a in shown.attachments] == [
        ("report.pdf", "application/pdf", 5)
    ]
