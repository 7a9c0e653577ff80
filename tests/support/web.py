"""The dashboard as a browser without JavaScript sees it: forms posted over httpx with a
cookie jar of its own, the CSRF token read from the page, htmx requests made by hand."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import httpx

from storage.users import UserRecord
from tests.support.people import PASSWORD

_CSRF = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "no CSRF token in the page"
    return found.group(1)


@dataclass
class Browser:
    """A signed-in browser on the dashboard: its client and the CSRF token of its pages."""

    http: httpx.AsyncClient
    csrf: str = ""

    @property
    def origin(self) -> str:
        return str(self.http.base_url).rstrip("/")

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.get(path, **kwargs)

    async def post(
        self, path: str, fields: dict[str, str] | None = None, token: bool = True, **kwargs: Any
    ) -> httpx.Response:
        """A form posted from one of the dashboard's pages (Origin: this server)."""
        data = dict(fields or {})
        if token:
            data.setdefault("csrf_token", self.csrf)
        headers = {"Origin": self.origin} | kwargs.pop("headers", {})
        return await self.http.post(path, data=data, headers=headers, **kwargs)

    async def htmx(self, path: str, fields: dict[str, str] | None = None) -> httpx.Response:
        """A POST as htmx makes it: HX-Request and the X-CSRF-Token header."""
        headers = {"HX-Request": "true", "X-CSRF-Token": self.csrf}
        return await self.post(path, fields, token=False, headers=headers)


def browser(base_url: str) -> Browser:
    return Browser(httpx.AsyncClient(base_url=base_url, timeout=15.0))


async def sign_in(
    base_url: str, user: UserRecord, next_page: str = "/", password: str = PASSWORD
) -> Browser:
    """`user` signed in through the sign-in page's form; the caller closes `.http`."""
    signed = browser(base_url)
    fields = {"email": user.email, "password": password, "next": next_page}
    answer = await signed.post("/login", fields, token=False)
    assert answer.status_code == 303, answer.text
    signed.csrf = csrf_of((await signed.get("/")).text)
    return signed
