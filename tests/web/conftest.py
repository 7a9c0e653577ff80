"""Fixtures of the dashboard's tests: signed-in browsers, closed at the end of the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.support.api import Api
from tests.support.people import make_user
from tests.support.web import Browser, sign_in

SignIn = Callable[..., Awaitable[Browser]]


@pytest.fixture
async def person(api: Api) -> AsyncIterator[SignIn]:
    """`await person(email, role="owner")`: a user made and signed in through the form."""
    opened: list[Browser] = []

    async def make(email: str, role: str = "owner") -> Browser:
        user = await make_user(api.svc.db, email, role)
        signed = await sign_in(str(api.http.base_url), user)
        opened.append(signed)
        return signed

    yield make
    for signed in opened:
        await signed.http.aclose()
