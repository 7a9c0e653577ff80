"""The dashboard in a real browser (Debian's Chromium, headless, through Playwright) against
a real `postern serve` (the installed one when POSTERN_BIN is set) and a loopback sink:
signing in, creating a pool and testing it, signing out; a member refused the pools page
typed directly; a CSRF refusal shown in place. On every page: no console error and no
request to any origin but Postern's. Each test leaves screenshots in its tmp_path.

One browser and one Postern for the module; each test has a browser context of its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
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

pytestmark = [skip_without_a_browser(), pytest.mark.timeout(120)]
PASSWORD = "correct horse battery staple"
OWNER, MEMBER = "owner@example.com", "member@example.com"
REFUSED_LOAD = "the server responded with a status of 403"


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    running = Sink().start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def postern(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postern]:
    with serve_with_users(
        tmp_path_factory.mktemp("postern"), {OWNER: "owner", MEMBER: "member"}, PASSWORD
    ) as running:
        yield running


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with chromium_browser() as browser:
        yield browser


@pytest.fixture
def tab(chromium: Any, postern: Postern) -> Iterator[Watched]:
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    try:
        yield Watched(context.new_page(), base(postern))
    finally:
        context.close()


def base(postern: Postern) -> str:
    return f"http://127.0.0.1:{postern.http_port}"


def sign_in(tab: Watched, email: str, start: str = "/") -> None:
    tab.page.goto(tab.origin + start)
    tab.page.get_by_label("Email").fill(email)
    tab.page.get_by_label("Password").fill(PASSWORD)
    tab.page.get_by_role("button", name="Sign in").click()
    tab.page.wait_for_load_state()


def test_an_owner_creates_a_pool_tests_it_and_signs_out(
    tab: Watched, sink: Sink, tmp_path: Path
) -> None:
    page = tab.page
    sign_in(tab, OWNER, "/settings/pools")
    assert page.url == tab.origin + "/settings/pools"  # `next` kept through the sign-in
    page.get_by_role("link", name="New pool").click()
    page.get_by_label("Name", exact=True).fill("relay")
    page.get_by_label("Host").fill("127.0.0.1")
    page.get_by_label("Port").fill(str(sink.port))
    page.get_by_label("Encryption").select_option("none")
    page.get_by_role("button", name="Create pool").click()
    page.wait_for_load_state()
    assert page.get_by_role("status").inner_text() == "Pool created."
    page.screenshot(path=str(tmp_path / "pools-created.png"), full_page=True)
    page.get_by_role("button", name="Test connection of relay").click()
    result = page.locator(".test-result .ok")
    result.wait_for(timeout=15_000)
    assert re.fullmatch(r"Connected in \d+ ms\.", result.inner_text())
    page.set_viewport_size({"width": 320, "height": 800})
    assert page.evaluate("document.documentElement.scrollWidth") <= 320
    tab.check(tmp_path / "pools-tested-320px.png")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.get_by_role("link", name="My sessions").click()
    assert page.locator("time[data-local]").count() >= 3  # shown in the browser's zone
    tab.check(tmp_path / "sessions.png")
    page.get_by_role("button", name="Sign out").first.click()
    page.wait_for_load_state()
    assert page.url == tab.origin + "/login"
    page.goto(tab.origin + "/settings/pools")
    assert page.url.startswith(tab.origin + "/login?next=")
    tab.check(tmp_path / "signed-out.png")


def test_a_member_typing_the_pools_url_is_refused(tab: Watched, tmp_path: Path) -> None:
    sign_in(tab, MEMBER)
    page = tab.page
    assert page.get_by_role("navigation").get_by_role("link", name="SMTP Pools").count() == 0
    assert page.get_by_role("navigation").get_by_text("Messages").count() == 1
    tab.check(tmp_path / "member-overview.png")
    tab.expected.append(REFUSED_LOAD)
    answer = page.goto(tab.origin + "/settings/pools")
    assert answer is not None and answer.status == 403
    assert page.get_by_role("heading", level=1).inner_text() == "Refused"
    tab.check(tmp_path / "member-refused.png")


def test_a_csrf_refusal_is_shown_in_place(tab: Watched, sink: Sink, tmp_path: Path) -> None:
    sign_in(tab, OWNER, "/settings/pools")
    page = tab.page
    tab.expected.append(REFUSED_LOAD)
    page.evaluate(  # a stale page: its token no longer the session's
        """() => {
            document.querySelector('meta[name="csrf-token"]').setAttribute("content", "stale");
            document.querySelectorAll('input[name="csrf_token"]').forEach(i => i.value = "stale");
        }"""
    )
    page.get_by_role("button", name=re.compile("^Test connection")).first.click()
    alert = page.locator(".test-result [role=alert]").first
    alert.wait_for(timeout=15_000)
    assert "could not be accepted" in alert.inner_text()
    assert page.get_by_role("heading", level=1).inner_text() == "SMTP Pools"  # still the page
    tab.check(tmp_path / "csrf-refused.png")


def test_every_page_of_an_owner_is_clean_and_reachable_by_keyboard(
    tab: Watched, tmp_path: Path
) -> None:
    sign_in(tab, OWNER)
    page = tab.page
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    for name, path in (
        ("overview", "/"),
        ("pool-new", "/settings/pools/new"),
        ("users", "/settings/users"),
        ("sessions", "/settings/sessions"),
    ):
        answer = page.goto(tab.origin + path)
        assert answer is not None and answer.status == 200, path
        unlabelled = page.evaluate(
            """() => [...document.querySelectorAll('input:not([type=hidden]), select')]
                .filter(e => !e.labels || e.labels.length === 0).map(e => e.name)"""
        )
        assert unlabelled == [], (path, unlabelled)
        tab.check(tmp_path / f"{name}.png")
