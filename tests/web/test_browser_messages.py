"""Messages and the invitation banner in a real browser (Debian's Chromium, headless, through
Playwright) against a real `postern serve` and a loopback sink: a message sent over SMTP is
found on /messages, opened (timeline, recipients, text, its HTML in the sandboxed frame with
neither its script run nor its remote image fetched), retried, held, released and
cancelled; a second user accepts an invitation from the banner. On every page: no console
error but those the test causes on purpose, and no request to any origin but Postern's.
Screenshots in tmp_path.
"""

from __future__ import annotations

import json
import re
import smtplib
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import (
    Watched,
    chromium_browser,
    serve_with_users,
    skip_without_a_browser,
)
from tests.support.serve import Postern, run_cli
from tests.support.sink import Sink
from tests.support.smtp import queued_id

pytestmark = [skip_without_a_browser(), pytest.mark.timeout(180)]
PASSWORD = "correct horse battery staple"
OWNER, MEMBER = "owner@example.com", "member@example.com"
LATER, NOW = "later@example.org", "now@example.org"
DOMAIN = "yourdomain.test"
REMOTE_IMAGE = "http://remote.example/pixel.png"
HTML = f'<p>Hello <b>there</b></p><img src="{REMOTE_IMAGE}" alt="x"><script>alert(1)</script>'
# What the message's HTML makes the frame say, on purpose: its script and image refused.
FRAME_REFUSALS = ["Blocked script execution", "Refused to load the image", "img-src"]


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    running = Sink().start()
    try:
        yield running
    finally:
        running.stop()


def _an_hour_between_attempts(text: str) -> str:
    return text.replace('retry_schedule = ["1s"]', 'retry_schedule = ["1h"]')


@pytest.fixture(scope="module")
def postern(tmp_path_factory: pytest.TempPathFactory, sink: Sink) -> Iterator[Postern]:
    """Postern with the sink as its pool; a deferred message waits an hour (until retried)."""
    with serve_with_users(
        tmp_path_factory.mktemp("postern"),
        {OWNER: "owner", MEMBER: "member"},
        PASSWORD,
        sink.port,
        edit=_an_hour_between_attempts,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def domain_id(postern: Postern) -> str:
    """A verified domain made at the console: an account the owner can share."""
    argv = ["--config", str(postern.config), "domains", "add", DOMAIN, "--verified", "--json"]
    done = run_cli(*argv)
    assert done.returncode == 0, done.stderr
    found: str = json.loads(done.stdout)["id"]
    return found


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with chromium_browser() as browser:
        yield browser


@pytest.fixture
def tabs(chromium: Any, postern: Postern) -> Iterator[Any]:
    """`tabs()`: a new watched tab in a browser context of its own (its own cookies)."""
    contexts: list[Any] = []

    def make() -> Watched:
        context = chromium.new_context(viewport={"width": 1280, "height": 900})
        contexts.append(context)
        return Watched(context.new_page(), f"http://127.0.0.1:{postern.http_port}")

    try:
        yield make
    finally:
        for context in contexts:
            context.close()


def sign_in(tab: Watched, email: str, start: str = "/") -> None:
    tab.page.goto(tab.origin + start)
    tab.page.get_by_label("Email").fill(email)
    tab.page.get_by_label("Password").fill(PASSWORD)
    tab.page.get_by_role("button", name="Sign in").click()
    tab.page.wait_for_load_state()


def send(postern: Postern, to: str, subject: str) -> str:
    """One message over SMTP (a text and an HTML part); its id from the 250 reply."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "app@example.com", to, subject
    msg.set_content("Plain words for the text part.\n")
    msg.add_alternative(HTML, subtype="html")
    with smtplib.SMTP("127.0.0.1", postern.smtp_port, "client.test", timeout=10) as client:
        client.ehlo()
        assert client.mail("app@example.com")[0] == 250
        assert client.rcpt(to)[0] == 250
        code, reply = client.data(msg.as_bytes(policy=SMTP))
    return queued_id((code, reply.decode()))


def shows(tab: Watched, path: str, text: str, tries: int = 40) -> None:
    """Reload `path` until `text` is on it (bounded: delivery is asynchronous)."""
    for _ in range(tries):
        tab.page.goto(tab.origin + path)
        if text in tab.page.content():
            return
        tab.page.wait_for_timeout(250)
    raise AssertionError(f"{text!r} never appeared on {path}")


def unlabelled(page: Any) -> list[str]:
    """The names of the controls with no label (every one must have one)."""
    found: list[str] = page.evaluate(
        """() => [...document.querySelectorAll('input:not([type=hidden]), select')]
            .filter(e => !e.labels || e.labels.length === 0).map(e => e.name)"""
    )
    return found


def fits(page: Any, width: int = 320) -> bool:
    """Readable at `width` px: nothing wider than the screen but the tables' own scroll."""
    page.set_viewport_size({"width": width, "height": 800})
    scroll_width: int = page.evaluate("document.documentElement.scrollWidth")
    page.set_viewport_size({"width": 1280, "height": 900})
    return scroll_width <= width


def check(tab: Watched, blocked: list[str], screenshot: Path) -> None:
    """tab.check, where the requests the frame's CSP refused (Chromium announces them, then
    fails them as `csp`: none left the browser) are not counted as made."""
    tab.foreign = [url for url in tab.foreign if url not in blocked]
    tab.check(screenshot)


def test_an_owner_finds_opens_retries_holds_releases_and_cancels_a_message(
    tabs: Any, postern: Postern, sink: Sink, tmp_path: Path
) -> None:
    sink.fail("rcpt", "451 4.3.0 try later", match=LATER)
    later = send(postern, LATER, "Quarterly report")
    delivered = send(postern, NOW, "Welcome")
    tab = tabs()
    page = tab.page
    tab.expected += FRAME_REFUSALS
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
    blocked: list[str] = []  # refused by the frame's CSP: announced, never sent
    page.on("requestfailed", lambda r: r.failure == "csp" and blocked.append(r.url))
    sign_in(tab, OWNER, "/messages")
    assert page.url == tab.origin + "/messages"
    shows(tab, "/messages?status=delivered", delivered)
    page.get_by_role("link", name="Clear").click()
    page.get_by_label("deferred").check()
    page.get_by_role("button", name="Search").click()  # htmx: the results swapped in
    page.wait_for_url(re.compile(r"status=deferred"))
    assert page.get_by_role("link", name=later).count() == 1
    assert page.get_by_role("link", name=delivered).count() == 0
    assert unlabelled(page) == [] and fits(page)
    tab.check(tmp_path / "1-messages-deferred.png")

    page.get_by_role("link", name=later).click()
    page.wait_for_load_state()
    assert page.get_by_role("heading", level=1).inner_text() == f"Message {later}"
    timeline = page.locator("ol.timeline")
    assert timeline.locator(".event").all_inner_texts()[:2] == ["queued", "deferred"]
    assert "451 4.3.0 try later" in page.locator("#message-summary").inner_text()
    assert page.locator("pre.mail-text").inner_text().startswith("Plain words")
    frame = page.frame_locator("iframe.mail-html")
    assert frame.locator("b").inner_text() == "there"  # the HTML, shown in its frame
    page.wait_for_timeout(300)  # the frame's refusals reach the console
    assert blocked == [REMOTE_IMAGE]
    # A full-page screenshot leaves the frame (another process) blank: this one shows it.
    page.locator("iframe.mail-html").scroll_into_view_if_needed()
    page.screenshot(path=str(tmp_path / "2b-message-html-frame.png"))
    check(tab, blocked, tmp_path / "2-message-deferred.png")
    assert dialogs == []  # the message's script never ran
    assert unlabelled(page) == [] and fits(page)

    page.get_by_role("button", name="Retry now").click()
    page.get_by_text("Retried: the message is due now.").wait_for(timeout=10_000)
    shows(tab, f"/messages/{later}", "attempt 2")  # tried again, deferred again
    check(tab, blocked, tmp_path / "3-message-retried.png")

    page.get_by_role("button", name="Hold").click()
    page.get_by_text("Held: no worker takes it until it is released.").wait_for(timeout=10_000)
    assert page.locator("#message-summary .status").first.inner_text() == "held"
    assert page.get_by_role("button", name="Retry now").count() == 0
    check(tab, blocked, tmp_path / "3b-message-held.png")
    page.get_by_role("button", name="Release").click()
    page.get_by_text("Released: the message is due now.").wait_for(timeout=10_000)
    shows(tab, f"/messages/{later}", "attempt 3")  # released: tried at once, deferred again
    kinds = timeline.locator(".event").all_inner_texts()
    assert [kind for kind in kinds if kind in ("held", "released")] == ["held", "released"]

    page.get_by_role("button", name="Cancel message").click()
    page.get_by_text("Message cancelled.").wait_for(timeout=10_000)
    assert len(dialogs) == 1 and dialogs[0].startswith("Cancel this message?")
    summary = page.locator("#message-summary")
    assert summary.locator(".status").first.inner_text() == "cancelled"
    assert page.get_by_role("button", name="Retry now").count() == 0
    check(tab, blocked, tmp_path / "4-message-cancelled.png")


def test_a_second_user_accepts_an_invitation_from_the_banner(
    tabs: Any, domain_id: str, tmp_path: Path
) -> None:
    owner = tabs()
    sign_in(owner, OWNER)
    token = owner.page.locator('meta[name="csrf-token"]').get_attribute("content")
    invited = owner.page.request.post(
        f"{owner.origin}/mail/accounts/{domain_id}/invitations",
        data={"email": MEMBER, "role": "member"},
        headers={"X-CSRF-Token": token, "Origin": owner.origin},
    )
    assert invited.status == 201, invited.text()

    member = tabs()
    sign_in(member, MEMBER)
    page = member.page
    banner = page.get_by_role("region", name="You’ve been invited")
    assert DOMAIN in banner.inner_text() and OWNER in banner.inner_text()
    member.check(tmp_path / "5-banner.png")
    banner.get_by_role("button", name=f"Accept the invitation to {DOMAIN}").click()
    page.get_by_text("Invitation accepted").wait_for(timeout=10_000)
    member.check(tmp_path / "6-banner-accepted.png")
    page.get_by_role("link", name="Messages", exact=True).click()
    page.wait_for_load_state()
    assert page.get_by_role("region", name="You’ve been invited").count() == 0
    member.check(tmp_path / "7-member-messages.png")
