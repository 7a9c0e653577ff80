"""People over the real HTTP door: a user made through the product's own storage, signed in
through POST /auth/login with a cookie jar of its own, as a browser would be."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from gateway.people.passwords import Passwords
from gateway.people.users import Users
from storage.db import Database
from storage.users import UserRecord

PASSWORD = "correct horse battery staple"


@dataclass
class Person:
    """A signed-in browser: its own cookie jar, and the CSRF token /auth/login gave it."""

    http: httpx.AsyncClient
    user: UserRecord
    csrf: str

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request as the dashboard's script makes it: cookie, X-CSRF-Token, same origin."""
        headers = {"X-CSRF-Token": self.csrf, "Origin": str(self.http.base_url).rstrip("/")}
        headers |= kwargs.pop("headers", {})
        return await self.http.request(method, path, headers=headers, **kwargs)

    @property
    def token(self) -> str:
        return self.http.cookies.get("sb-access-token") or ""


async def make_user(db: Database, email: str, role: str = "owner", **kwargs: Any) -> UserRecord:
    return await Users(db, Passwords()).create(email, role, kwargs.get("password", PASSWORD))


async def sign_in(base_url: str, user: UserRecord, password: str = PASSWORD) -> Person:
    """`user` signed in through POST /auth/login; the caller closes `person.http`."""
    http = httpx.AsyncClient(base_url=base_url, timeout=15.0)
    answer = await http.post("/auth/login", json={"email": user.email, "password": password})
    assert answer.status_code == 200, answer.text
    return Person(http, user, answer.json()["csrf_token"])
