"""Debian's Chromium driven by Playwright for Python, for the dashboard's browser tests:
whether to run them, and a page that records every console error and every request to an
origin other than Postern's, so a test can say none happened.

Playwright never downloads a browser here: it launches /usr/bin/chromium. Without it the
tests skip, unless POSTERN_TEST_BROWSER is set (CI sets it): then they fail.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.support.processes import child_cwd, child_env, postern_argv
from tests.support.serve import Launcher, Postern, config_text

CHROMIUM = Path("/usr/bin/chromium")
REQUIRED = bool(os.environ.get("POSTERN_TEST_BROWSER"))


def skip_without_a_browser() -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not CHROMIUM.exists() and not REQUIRED,
        reason="no /usr/bin/chromium (apt-get install chromium) and POSTERN_TEST_BROWSER unset",
    )


@dataclass
class Watched:
    """A page and what it did that it should not have: console errors, foreign requests.
    `expected` console errors (a substring each) are the ones a test causes on purpose."""

    page: Any  # playwright.sync_api.Page
    origin: str
    errors: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        self.page.on("request", self._request)

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(f"{message.text} ({message.location.get('url', '')})")

    def _request(self, request: Any) -> None:
        parts = urlsplit(request.url)
        if parts.scheme in ("data", "blob"):
            return
        if f"{parts.scheme}://{parts.netloc}" != self.origin:
            self.foreign.append(request.url)

    def check(self, screenshot: Path) -> None:
        """Save a screenshot, then: no unexpected console error, no foreign request."""
        self.page.screenshot(path=str(screenshot), full_page=True)
        unexpected = [e for e in self.errors if not any(x in e for x in self.expected)]
        assert not unexpected, f"console errors: {unexpected}"
        assert not self.foreign, f"requests to other origins: {self.foreign}"


def create_user(config: Path, email: str, role: str, password: str) -> None:
    """`postern users create` as an operator runs it, the password on stdin."""
    argv = [*postern_argv(), "--config", str(config), "users", "create"]
    argv += ["--email", email, "--role", role, "--password-stdin"]
    done = subprocess.run(
        argv, input=password + "\n", cwd=child_cwd(), env=child_env(),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


@contextmanager
def chromium_browser() -> Iterator[Any]:
    """Debian's Chromium, headless, through Playwright; closed on the way out."""
    from playwright.sync_api import sync_playwright  # only the browser tests need it

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def serve_with_users(
    folder: Path, users: Mapping[str, str], password: str, sink_port: int | None = None,
    edit: Callable[[str], str] = lambda text: text,
) -> Iterator[Postern]:  # fmt: skip
    """A real `postern serve` (its pool the sink at `sink_port`, if any; `edit` changes its
    config text) with `users` (email -> role, each with `password`) made at the console
    before it starts; stopped on the way out."""
    launcher = Launcher(folder)

    def write(data: Path, smtp_port: int, http_port: int) -> str:
        return edit(
            config_text(
                data_dir=data / "var", smtp_port=smtp_port, http_port=http_port,
                sink_port=sink_port,
            )
        )  # fmt: skip

    try:
        running = launcher.launch(write, start=False)
        for email, role in users.items():
            create_user(running.config, email, role, password)
        running.start()
        yield running
    finally:
        launcher.close()
