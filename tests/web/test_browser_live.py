"""The Live page in a real browser (Debian's Chromium, headless, through Playwright) against
a real `postern serve` and a loopback sink: a message sent over SMTP while the page is open
appears in its table without a reload (the page follows GET /v1/events/stream). No console
error, no request to any origin but Postern's; screenshots in tmp_path."""

from __future__ import annotations

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
from tests.support.serve import Postern
from tests.support.sink import Sink
from tests.support.smtp import queued_id

pytestmark = [skip_without_a_browser(), pytest.mark.timeout(120)]
PASSWORD = "correct horse battery staple"
OWNER = "owner@example.com"


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    running = Sink().start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def postern(tmp_path_factory: pytest.TempPathFactory, sink: Sink) -> Iterator[Postern]:
    with serve_with_users(
        tmp_path_factory.mktemp("postern"), {OWNER: "owner"}, PASSWORD, sink.port
    ) as running:
        yield running


@pytest.fixture
def tab(postern: Postern) -> Iterator[Watched]:
    with chromium_browser() as browser:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        yield Watched(context.new_page(), f"http://127.0.0.1:{postern.http_port}")


def send(postern: Postern, to: str) -> str:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "app@example.com", to, "Watched live"
    msg.set_content("Hello.\n")
    with smtplib.SMTP("127.0.0.1", postern.smtp_port, "client.test", timeout=10) as client:
        client.ehlo()
        assert client.mail("app@example.com")[0] == 250
        assert client.rcpt(to)[0] == 250
        code, reply = client.data(msg.as_bytes(policy=SMTP))
    return queued_id((code, reply.decode()))


def test_a_message_sent_over_smtp_appears_live(
    tab: Watched, postern: Postern, tmp_path: Path
) -> None:
    page: Any = tab.page
    page.goto(tab.origin + "/live")
    page.get_by_label("Email").fill(OWNER)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()
    assert page.url == tab.origin + "/live"
    assert page.locator("#chart-outcomes").count() == 1
    status = page.locator("#live-status")
    status.filter(has_text="Live: new events").wait_for(timeout=10_000)  # the stream is open
    tab.check(tmp_path / "live-empty.png")

    message_id = send(postern, "watcher@example.org")
    delivered = page.locator(f'#live-events tr.fresh:has(a[href="/messages/{message_id}"])')
    delivered.filter(has_text="delivered").wait_for(timeout=20_000)  # no reload
    assert page.locator(f'#live-events a[href="/messages/{message_id}"]').count() == 2
    assert page.url == tab.origin + "/live"
    tab.check(tmp_path / "live-events.png")
    page.reload()  # and rendered by the server once reloaded, with the charts
    assert page.locator(f'#live-events a[href="/messages/{message_id}"]').count() == 2
    assert page.locator("#chart-outcomes rect.bar.delivered").count() >= 1
    tab.check(tmp_path / "live-reloaded.png")
    print(f"screenshots: {tmp_path}")
