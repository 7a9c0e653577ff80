"""The resource pages in a real browser (Debian's Chromium, headless, through Playwright)
against a real `postern serve`: add a domain and see the records to publish with their copy
buttons (the copied value read back from the clipboard), create an API key and see its
secret once, add and remove a suppression, add and remove a route beside the config file's
read-only one; then every page of an owner checked by axe-core (vendored in
tests/support/vendor, never in the package) for serious or critical violations. On every
page: no console error, no request to any origin but Postern's. Each test leaves
screenshots in its tmp_path.

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

pytestmark = [skip_without_a_browser(), pytest.mark.timeout(180)]
PASSWORD = "correct horse battery staple"
OWNER = "owner@example.com"
AXE = Path(__file__).resolve().parents[1] / "support" / "vendor" / "axe.min.js"
SERIOUS = ("serious", "critical")
CONFIG_ROUTE = """
[[routes]]
recipient_domain = "gmail.test"
ip_pool = "transactional"
"""


@pytest.fixture(scope="module")
def postern(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postern]:
    with serve_with_users(
        tmp_path_factory.mktemp("postern"), {OWNER: "owner"}, PASSWORD,
        edit=lambda text: text + CONFIG_ROUTE,
    ) as running:  # fmt: skip
        yield running


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with chromium_browser() as browser:
        yield browser


def open_tab(chromium: Any, postern: Postern, **options: Any) -> Iterator[Watched]:
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, **options)
    try:
        yield Watched(context.new_page(), f"http://127.0.0.1:{postern.http_port}")
    finally:
        context.close()


@pytest.fixture
def tab(chromium: Any, postern: Postern) -> Iterator[Watched]:
    yield from open_tab(chromium, postern)


@pytest.fixture
def audit_tab(chromium: Any, postern: Postern) -> Iterator[Watched]:
    """A tab whose pages take the injected axe-core script: the CSP (no inline script) is
    bypassed in this context only; every other test runs under it."""
    yield from open_tab(chromium, postern, bypass_csp=True)


def sign_in(tab: Watched, start: str = "/") -> None:
    tab.page.goto(tab.origin + start)
    tab.page.get_by_label("Email").fill(OWNER)
    tab.page.get_by_label("Password").fill(PASSWORD)
    tab.page.get_by_role("button", name="Sign in").click()
    tab.page.wait_for_load_state()


def test_a_domain_shows_its_records_with_copy_buttons(tab: Watched, tmp_path: Path) -> None:
    tab.page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=tab.origin)
    sign_in(tab, "/domains")
    page = tab.page
    page.get_by_label("Domain", exact=True).fill("example.test")
    page.get_by_label("DKIM key").select_option("ed25519")
    page.get_by_role("button", name="Add domain").click()
    page.wait_for_load_state()
    assert page.get_by_role("heading", level=1).inner_text() == "example.test"
    assert page.get_by_role("status").first.inner_text().startswith("Domain added")
    value = page.locator("#value-dkim").inner_text()
    assert value.startswith("v=DKIM1; k=ed25519; p=")
    assert page.locator("#name-dkim").inner_text().endswith("._domainkey.example.test")
    copy = page.get_by_role("button", name="Copy DKIM record value")
    copy.wait_for(state="visible")  # shown by copy.js: without it, the text is there to select
    assert page.locator("button[data-copy]:visible").count() == 6
    copy.click()
    page.get_by_text("Copied").wait_for(timeout=5_000)
    assert page.evaluate("navigator.clipboard.readText()") == value
    tab.check(tmp_path / "domain-records.png")
    page.set_viewport_size({"width": 320, "height": 800})
    assert page.evaluate("document.documentElement.scrollWidth") <= 320
    tab.check(tmp_path / "domain-records-320px.png")


def test_a_key_secret_is_shown_once(tab: Watched, tmp_path: Path) -> None:
    sign_in(tab, "/keys")
    page = tab.page
    page.get_by_label("Name").fill("billing app")
    page.get_by_label("send", exact=True).check()
    page.get_by_role("button", name="Create key").click()
    page.wait_for_load_state()
    secret = page.locator("#secret").inner_text()
    assert re.fullmatch(r"msk_[A-Za-z0-9_-]{40,}", secret)
    assert page.get_by_role("button", name="Copy the key").is_visible()
    tab.check(tmp_path / "key-created.png")
    page.get_by_role("link", name="Back to API keys").click()
    page.wait_for_load_state()
    assert page.get_by_role("row", name=re.compile("billing app")).count() == 1
    assert secret not in page.content() and secret[:12] in page.content()
    page.reload()
    assert secret not in page.content()
    tab.check(tmp_path / "keys.png")


def test_a_suppression_is_added_and_removed(tab: Watched, tmp_path: Path) -> None:
    sign_in(tab, "/suppressions")
    page = tab.page
    page.get_by_label("Address", exact=True).fill("bob@example.org")
    page.get_by_label("Why").select_option("complaint")
    page.get_by_role("button", name="Suppress").click()
    page.wait_for_load_state()
    assert page.get_by_role("status").inner_text() == "Address suppressed."
    result = page.get_by_role("region", name="Lookup result")
    assert "marked a message as spam" in result.inner_text()
    assert page.get_by_role("row", name=re.compile("bob@example.org")).count() == 1
    tab.check(tmp_path / "suppression-added.png")
    result.get_by_role("link", name="Remove bob@example.org").click()
    page.wait_for_load_state()
    assert page.get_by_role("heading", level=1).inner_text() == "Stop suppressing bob@example.org?"
    page.get_by_role("button", name="Remove bob@example.org").click()
    page.wait_for_load_state()
    assert page.get_by_role("status").inner_text() == "Address no longer suppressed."
    assert page.get_by_role("row", name=re.compile("bob@example.org")).count() == 0
    tab.check(tmp_path / "suppression-removed.png")


def test_a_route_is_added_and_removed(tab: Watched, tmp_path: Path) -> None:
    sign_in(tab, "/settings/routes")
    page = tab.page
    config = page.get_by_role("row", name=re.compile("gmail.test"))
    assert "read-only" in config.inner_text() and config.get_by_role("link").count() == 0
    tab.expected.append("status of 400")  # the empty form, sent on purpose
    page.get_by_role("button", name="Add route").click()
    page.wait_for_load_state()
    assert page.locator("#recipient_domain-problem").is_visible()
    assert page.get_by_role("alert").inner_text() == "Some fields need another look."
    page.get_by_label("Recipient domain").fill(".Example.org")
    page.get_by_label("Or an ip_pool group").fill("bulk")
    page.get_by_role("button", name="Add route").click()
    page.wait_for_load_state()
    assert page.get_by_role("status").inner_text().startswith("Route added")
    row = page.get_by_role("row", name=re.compile(r"\.example\.org"))
    assert "every subdomain of example.org" in row.inner_text()
    assert "group bulk" in row.inner_text()
    tab.check(tmp_path / "route-added.png")
    page.set_viewport_size({"width": 320, "height": 800})
    assert page.evaluate("document.documentElement.scrollWidth") <= 320
    tab.check(tmp_path / "route-added-320px.png")
    page.set_viewport_size({"width": 1280, "height": 900})
    row.get_by_role("link", name="Remove the route for .example.org").click()
    page.wait_for_load_state()
    heading = page.get_by_role("heading", level=1).inner_text()
    assert heading == "Remove the route for .example.org?"
    page.get_by_role("button", name="Remove the route for .example.org").click()
    page.wait_for_load_state()
    assert page.get_by_role("status").inner_text().startswith("Route removed")
    assert page.get_by_role("row", name=re.compile(r"\.example\.org")).count() == 0
    tab.check(tmp_path / "route-removed.png")


def violations(page: Any) -> list[str]:
    """axe-core's serious and critical findings on the page, one line each."""
    page.add_script_tag(path=str(AXE))
    results = page.evaluate("async () => await axe.run(document)")
    assert results["passes"], "axe checked nothing"  # it ran, on a page with content
    return [
        f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:5]}"
        for v in results["violations"]
        if v["impact"] in SERIOUS
    ]


def made_pages(tab: Watched) -> list[str]:
    """A domain, a webhook and a route made through their forms: the pages they lead to."""
    page = tab.page
    page.goto(tab.origin + "/domains")
    page.get_by_label("Domain", exact=True).fill("audit.test")
    page.get_by_label("DKIM key").select_option("ed25519")
    page.get_by_role("button", name="Add domain").click()
    page.wait_for_load_state()
    domain = page.url.split("?")[0].removeprefix(tab.origin)
    page.goto(tab.origin + "/webhooks/new")
    page.get_by_label("URL").fill("https://hooks.example.com/postern")
    page.get_by_role("button", name="Create webhook").click()
    page.wait_for_load_state()
    webhook = str(page.get_by_role("link", name="See the webhook").get_attribute("href"))
    page.goto(tab.origin + "/settings/routes")
    page.get_by_label("Recipient domain").fill("audit.test")
    page.get_by_label("Or an ip_pool group").fill("bulk")
    page.get_by_role("button", name="Add route").click()
    page.wait_for_load_state()
    link = page.get_by_role("link", name="Remove the route for audit.test")
    route = str(link.get_attribute("href"))
    return [domain, domain + "/delete", webhook, webhook + "/delete", route]


def test_every_page_of_an_owner_passes_axe(audit_tab: Watched, tmp_path: Path) -> None:
    sign_in(audit_tab)
    page = audit_tab.page
    pages = ["/", "/settings/pools", "/settings/pools/new", "/settings/users"]
    pages += ["/settings/sessions", "/aliases", "/domains", "/keys", "/webhooks", "/live"]
    pages += ["/webhooks/new", "/suppressions", "/messages", "/sandbox", "/accounts", "/bounces"]
    pages += ["/reputation", "/settings/routes"]
    pages += made_pages(audit_tab)
    found = {}
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        for path in pages:
            answer = page.goto(audit_tab.origin + path)
            assert answer is not None and answer.status == 200, path
            problems = violations(page)
            if problems:
                found[f"{path} ({scheme})"] = problems
            name = path.strip("/").replace("/", "-") or "overview"
            page.screenshot(path=str(tmp_path / f"axe-{scheme}-{name}.png"), full_page=True)
    assert found == {}
    assert not audit_tab.foreign, audit_tab.foreign
