"""Invitations and shares (seed 004) through a real uvicorn, people on httpx cookie jars: the
full flow (invite -> email at the loopback sink -> link -> accept, creating the user ->
share listed -> pending list empty), accept and decline by id, expiry, resend and revoke,
invitations bound to their address, a double accept that shares once, the seed's exact
answer shapes, and every refusal in the API's one JSON shape."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from sqlalchemy import update

from api.auth import COOKIE, csrf_token
from gateway.people.passwords import Passwords
from gateway.people.users import Users
from storage import aliases, domains
from storage.db import Database
from storage.models import Invitation, SenderAlias, SenderDomain
from storage.users import UserRecord
from tests.support.api import Api, ApiFactory, auth
from tests.support.databases import clean_postgresql
from tests.support.people import PASSWORD, sign_in
from tests.support.sink import Sink

pytestmark = pytest.mark.timeout(60)

CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)  # tests' own speed
LINK = re.compile(r"(http://\S+)(/invitations/accept\?token=([A-Za-z0-9_\-]+))")
INVITATION_KEYS = {"id", "invitee_email", "role", "status", "created_at", "expires_at"}
SHARE_KEYS = {"user_id", "email", "role", "shared_at"}
RECEIVED_KEYS = {"id", "account_email", "inviter_name", "role", "created_at"}
ERROR_KEYS = {"success", "code", "error", "details"}


class Persons:
    """Users of the running service, each signed in through POST /auth/login with a cookie
    jar of its own, sending the CSRF token as the dashboard's script does."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.clients: list[httpx.AsyncClient] = []

    @property
    def db(self) -> Database:
        return self.api.svc.db

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        made = httpx.AsyncClient(base_url=self.api.http.base_url, timeout=15.0)
        if token is not None:
            made.cookies.set(COOKIE, token)
            made.headers["X-CSRF-Token"] = csrf_token(token)
        self.clients.append(made)
        return made

    async def user(
        self, address: str, role: str = "member", name: str = ""
    ) -> tuple[UserRecord, httpx.AsyncClient]:
        users = Users(self.db, Passwords(CHEAP))  # a login rehashes it with today's parameters
        made = await users.create(address, role, PASSWORD, name or address)
        person = await sign_in(str(self.api.http.base_url), made)
        person.http.headers["X-CSRF-Token"] = person.csrf
        self.clients.append(person.http)
        return made, person.http

    async def close(self) -> None:
        for made in self.clients:
            await made.aclose()


@pytest.fixture
async def people(api: Api) -> AsyncIterator[Persons]:
    made = Persons(api)
    try:
        yield made
    finally:
        await made.close()


# --- accounts ---------------------------------------------------------------------------------


async def _owned_by(db: Database, table: Any, row_id: str, user_id: str | None) -> None:
    query = update(table).where(table.c.id == row_id).values(created_by=user_id)
    await db.transaction(lambda conn: conn.execute(query))


async def alias_of(db: Database, owner: UserRecord | None, address: str) -> str:
    """A verified alias created by `owner` (the account shared)."""
    created = await aliases.create_alias(
        db,
        email=address,
        name="",
        is_default=False,
        ip_pool=None,
        token_hash=address,
        expires_at=time.time() + 3600,
    )
    table = SenderAlias
    await _owned_by(db, table, created.id, owner.id if owner else None)
    return created.id


async def domain_of(db: Database, owner: UserRecord | None, name: str, verified: bool) -> str:
    created = await domains.add_domain(db, name, verified=verified)
    table = SenderDomain
    await _owned_by(db, table, created.id, owner.id if owner else None)
    return created.id


def invitations_of(account: str) -> str:
    return f"/mail/accounts/{account}/invitations"


async def invite(
    client: httpx.AsyncClient,
    account: str,
    address: str,
    role: str | None = "member",
    status: int = 201,
) -> dict[str, Any]:
    body = {"email": address} | ({"role": role} if role else {})
    response = await client.post(invitations_of(account), json=body)
    assert response.status_code == status, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def link_to(sink: Sink, address: str) -> tuple[str, str]:
    """The link emailed to `address`: (its path and query, its token)."""
    ok = await _eventually(lambda: any(address in m.rcpt_tos for m in sink.messages))
    assert ok, f"no invitation email to {address}"
    [message] = [m for m in sink.messages if address in m.rcpt_tos][-1:]
    parsed = email.message_from_bytes(message.data, policy=email.policy.default)
    found = LINK.search(parsed.get_content())  # type: ignore[attr-defined]
    assert found, parsed.get_content()  # type: ignore[attr-defined]
    return found.group(2), found.group(3)


async def _eventually(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return condition()


def _error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= ERROR_KEYS and body["success"] is False
    assert body["code"] == code, body


# --- the flow ---------------------------------------------------------------------------------


async def test_invite_email_link_accept_creates_the_user_and_shares(
    api: Api, people: Persons, sink: Sink
) -> None:
    boss, boss_client = await people.user("boss@example.test", name="Boss Person")
    account = await alias_of(people.db, boss, "team@yourdomain.test")
    created = await invite(boss_client, account, "New.Person@Example.TEST")
    assert set(created) == {"success", "invitation", "email_sent"}
    assert created["success"] is True and created["email_sent"] is True
    invitation = created["invitation"]
    assert set(invitation) == INVITATION_KEYS
    assert invitation["id"].startswith("inv_")
    assert (invitation["invitee_email"], invitation["role"], invitation["status"]) == (
        "new.person@example.test",
        "member",
        "pending",
    )
    assert invitation["expires_at"] > invitation["created_at"]

    path, token = await link_to(sink, "new.person@example.test")
    [message] = sink.messages
    assert message.mail_from == "postmaster@postern.test"
    assert b"Boss Person" in message.data and b"team@yourdomain.test" in message.data
    page = await api.http.get(path)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'name="token"' in page.text and "password" in page.text and "<script" not in page.text
    assert page.headers["referrer-policy"] == "no-referrer"

    accepted = await api.http.post(
        "/invitations/accept", json={"token": token, "password": PASSWORD, "name": "New Person"}
    )
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["account_email"] == "team@yourdomain.test"
    user = accepted.json()["user"]
    assert (user["email"], user["name"], user["role"]) == (
        "new.person@example.test",
        "New Person",
        "member",
    )
    cookie = accepted.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "httponly" in cookie.lower()
    assert "samesite=lax" in cookie.lower() and "path=/" in cookie.lower()

    newcomer = people.client(accepted.cookies[COOKIE])
    pending = await newcomer.get("/mail/invitations/pending")
    assert pending.status_code == 200 and pending.json() == {"success": True, "invitations": []}
    shares = await boss_client.get(f"/mail/accounts/{account}/shares")
    assert set(shares.json()) == {"success", "shares"}
    [share] = shares.json()["shares"]
    assert set(share) == SHARE_KEYS
    assert (share["user_id"], share["email"], share["role"]) == (
        user["id"],
        "new.person@example.test",
        "member",
    )
    listed = await boss_client.get(invitations_of(account))
    assert listed.json() == {"success": True, "invitations": []}  # neither pending nor expired
    answered = await boss_client.get(invitations_of(account), params={"status": "accepted"})
    assert [i["status"] for i in answered.json()["invitations"]] == ["accepted"]
    _error(await api.http.post("/invitations/accept", json={"token": token}), 404, "not_found")
    assert (await api.http.get(path)).status_code == 404  # the link worked once


async def test_pending_accept_and_decline_by_id(api: Api, people: Persons) -> None:
    boss, boss_client = await people.user("boss@example.test", name="Boss Person")
    bob, bob_client = await people.user("bob@example.test")
    first = await alias_of(people.db, boss, "team@yourdomain.test")
    second = await domain_of(people.db, boss, "second.test", verified=True)
    one = (await invite(boss_client, first, "bob@example.test", role=None))["invitation"]
    other = (await invite(boss_client, second, "BOB@example.test"))["invitation"]
    assert one["role"] == "member"  # the default

    pending = await bob_client.get("/mail/invitations/pending")
    assert set(pending.json()) == {"success", "invitations"}
    received = {i["id"]: i for i in pending.json()["invitations"]}
    assert set(received) == {one["id"], other["id"]}
    assert all(set(i) == RECEIVED_KEYS for i in received.values())
    assert received[one["id"]]["account_email"] == "team@yourdomain.test"
    assert received[other["id"]]["account_email"] == "second.test"
    assert received[one["id"]]["inviter_name"] == "Boss Person"

    accepted = await bob_client.post("/mail/invitations/accept", json={"invitation_id": one["id"]})
    assert accepted.status_code == 200, accepted.text
    assert set(accepted.json()) == {"success", "invitation"}
    assert accepted.json()["invitation"]["status"] == "accepted"
    declined = await bob_client.post(
        "/mail/invitations/decline", json={"invitation_id": other["id"]}
    )
    assert declined.json()["invitation"]["status"] == "declined"
    again = await bob_client.post("/mail/invitations/decline", json={"invitation_id": other["id"]})
    _error(again, 409, "invitation_closed")
    assert (await bob_client.get("/mail/invitations/pending")).json()["invitations"] == []
    shares = (await boss_client.get(f"/mail/accounts/{first}/shares")).json()["shares"]
    assert [s["user_id"] for s in shares] == [bob.id]
    # Declined: the address may be invited again; shared already: 409 already_shared.
    await invite(boss_client, second, "bob@example.test")
    _error(
        await boss_client.post(invitations_of(first), json={"email": "bob@example.test"}),
        409,
        "already_shared",
    )
    # The same under /api/v1/mail.
    mirrored = await bob_client.get("/api/v1/mail/invitations/pending")
    assert [i["account_email"] for i in mirrored.json()["invitations"]] == ["second.test"]


async def test_an_invitation_is_bound_to_its_address(api: Api, people: Persons) -> None:
    boss, boss_client = await people.user("boss@example.test")
    await people.user("bob@example.test")
    _, carol_client = await people.user("carol@example.test")
    account = await alias_of(people.db, boss, "team@yourdomain.test")
    invitation = (await invite(boss_client, account, "bob@example.test"))["invitation"]
    assert (await carol_client.get("/mail/invitations/pending")).json()["invitations"] == []
    for action in ("accept", "decline"):
        path = f"/mail/invitations/{action}"
        theirs = await carol_client.post(path, json={"invitation_id": invitation["id"]})
        unknown = await carol_client.post(path, json={"invitation_id": "inv_0000000000000000"})
        _error(theirs, 404, "not_found")
        assert theirs.json() == unknown.json()  # nothing tells it exists
    # Carol cannot see the account at all: 404, as for an account that does not exist.
    for path in (invitations_of(account), f"/mail/accounts/{account}/shares"):
        _error(await carol_client.get(path), 404, "not_found")
        missing = await carol_client.get(path.replace(account, "ali_0000000000000000"))
        assert missing.json() == (await carol_client.get(path)).json()
    stranger = await carol_client.post(invitations_of(account), json={"email": "x@example.test"})
    _error(stranger, 404, "not_found")


async def test_an_admin_it_is_shared_with_manages_it(api: Api, people: Persons, sink: Sink) -> None:
    boss, boss_client = await people.user("boss@example.test", "owner")
    _, bob_client = await people.user("bob@example.test")  # a member, shared with as admin
    account = await alias_of(people.db, boss, "team@yourdomain.test")
    invited = (await invite(boss_client, account, "bob@example.test", role="admin"))["invitation"]
    await bob_client.post("/mail/invitations/accept", json={"invitation_id": invited["id"]})
    assert (await bob_client.get(f"/mail/accounts/{account}/shares")).status_code == 200
    made = await bob_client.post(invitations_of(account), json={"email": "x@example.test"})
    assert made.status_code == 201, made.text


async def test_a_member_it_is_shared_with_is_not_its_owner(
    api: Api, people: Persons, sink: Sink
) -> None:
    boss, boss_client = await people.user("boss@example.test")
    bob, bob_client = await people.user("bob@example.test")
    account = await alias_of(people.db, boss, "team@yourdomain.test")
    invitation = (await invite(boss_client, account, "bob@example.test"))["invitation"]
    await bob_client.post("/mail/invitations/accept", json={"invitation_id": invitation["id"]})
    for path in (invitations_of(account), f"/mail/accounts/{account}/shares"):
        _error(await bob_client.get(path), 403, "owner_required")
    _error(
        await bob_client.post(invitations_of(account), json={"email": "x@example.test"}),
        403,
        "owner_required",
    )
    # A member owner grants no role above their own; an admin user may.
    _error(
        await boss_client.post(
            invitations_of(account), json={"email": "x@example.test", "role": "admin"}
        ),
        403,
        "role_above_own",
    )
    _, admin_client = await people.user("admin@example.test", role="admin")
    made = await invite(admin_client, account, "x@example.test", role="admin")
    assert made["invitation"]["role"] == "admin"
    # Bob leaves the account himself; then he no longer sees it.
    left = await bob_client.delete(f"/mail/accounts/{account}/shares/{bob.id}")
    assert left.json() == {"success": True}
    _error(await bob_client.get(invitations_of(account)), 404, "not_found")


async def test_expiry_resend_and_revoke(api: Api, people: Persons, sink: Sink) -> None:
    boss, boss_client = await people.user("boss@example.test")
    _, bob_client = await people.user("bob@example.test")
    account = await alias_of(people.db, boss, "team@yourdomain.test")
    invitation = (await invite(boss_client, account, "bob@example.test"))["invitation"]
    path, _ = await link_to(sink, "bob@example.test")
    await _expire(people.db, invitation["id"])
    listed = (await boss_client.get(invitations_of(account))).json()["invitations"]
    assert [(i["id"], i["status"]) for i in listed] == [(invitation["id"], "expired")]
    assert (await bob_client.get("/mail/invitations/pending")).json()["invitations"] == []
    late = await bob_client.post(
        "/mail/invitations/accept", json={"invitation_id": invitation["id"]}
    )
    _error(late, 409, "invitation_closed")
    assert "expired" in late.json()["error"]
    assert (await api.http.get(path)).status_code == 404

    # Resend renews it: a new link, the old one dead.
    sink.messages.clear()
    resent = await boss_client.post(f"{invitations_of(account)}/{invitation['id']}/resend")
    assert resent.status_code == 200, resent.text
    assert set(resent.json()) == {"success", "invitation", "email_sent"}
    assert resent.json()["invitation"]["status"] == "pending"
    new_path, _ = await link_to(sink, "bob@example.test")
    assert new_path != path and (await api.http.get(new_path)).status_code == 200
    # Revoked: the link is dead, a second revoke is refused, the address may be invited again.
    revoked = await boss_client.post(f"{invitations_of(account)}/{invitation['id']}/revoke")
    assert revoked.json()["invitation"]["status"] == "revoked"
    assert (await api.http.get(new_path)).status_code == 404
    twice = await boss_client.post(f"{invitations_of(account)}/{invitation['id']}/revoke")
    _error(twice, 409, "invitation_closed")
    fresh = (await invite(boss_client, account, "bob@example.test"))["invitation"]
    # Expired, then invited again: the old one stays listed as expired.
    await _expire(people.db, fresh["id"])
    again = (await invite(boss_client, account, "bob@example.test"))["invitation"]
    listed = (await boss_client.get(invitations_of(account))).json()["invitations"]
    assert [(i["id"], i["status"]) for i in listed] == [
        (again["id"], "pending"),
        (fresh["id"], "expired"),
    ]
    every = await boss_client.get(invitations_of(account), params={"status": "all"})
    assert len(every.json()["invitations"]) == 3
    _error(
        await boss_client.get(invitations_of(account), params={"status": "nope"}),
        400,
        "invalid_request",
    )
    pending = await boss_client.post(invitations_of(account), json={"email": "bob@example.test"})
    _error(pending, 409, "invitation_pending")
    assert pending.json()["invitation_id"] == again["id"]


async def _expire(db: Database, invitation_id: str) -> None:
    table = Invitation
    query = update(table).where(table.c.id == invitation_id).values(expires_at=time.time() - 1)
    await db.transaction(lambda conn: conn.execute(query))


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_a_double_accept_shares_once(
    api_client: ApiFactory, sink: Sink, database: str
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        storage = {}
        if database == "postgresql":
            storage = {"storage": {"url": await stack.enter_async_context(clean_postgresql())}}
        people = Persons(await api_client(**storage))
        stack.push_async_callback(people.close)
        await _accept_together(people, sink)


async def _accept_together(people: Persons, sink: Sink) -> None:
    boss, boss_client = await people.user("boss@example.test")
    _, bob_client = await people.user("bob@example.test")
    account = await alias_of(people.db, boss, "team@yourdomain.test")
    invitation = (await invite(boss_client, account, "bob@example.test"))["invitation"]
    body = {"invitation_id": invitation["id"]}
    answers = await asyncio.gather(
        *[bob_client.post("/mail/invitations/accept", json=body) for _ in range(6)]
    )
    assert sorted(a.status_code for a in answers) == [200] + [409] * 5
    # By the link, for a user not yet made: one user, one share.
    await invite(boss_client, account, "new@example.test")
    _, token = await link_to(sink, "new@example.test")
    tries = await asyncio.gather(
        *[
            people.client().post("/invitations/accept", json={"token": token, "password": PASSWORD})
            for _ in range(4)
        ]
    )
    assert sum(t.status_code == 200 for t in tries) == 1, [t.text for t in tries]
    assert all(t.status_code in (200, 401, 404, 409) for t in tries)
    shares = (await boss_client.get(f"/mail/accounts/{account}/shares")).json()["shares"]
    assert sorted(s["email"] for s in shares) == ["bob@example.test", "new@example.test"]


async def test_an_existing_user_signs_in_to_accept_the_link(
    api: Api, people: Persons, sink: Sink
) -> None:
    boss, boss_client = await people.user("boss@example.test")
    bob, _ = await people.user("bob@example.test")
    account = await alias_of(people.db, boss, "team@yourdomain.test")
    await invite(boss_client, account, "bob@example.test")
    path, token = await link_to(sink, "bob@example.test")
    page = await api.http.get(path)
    assert "sign in" in page.text and 'name="name"' not in page.text
    _error(
        await api.http.post("/invitations/accept", json={"token": token}), 401, "sign_in_required"
    )
    wrong = {"token": token, "password": "not the password"}
    _error(await api.http.post("/invitations/accept", json=wrong), 401, "unauthorized")
    # The page's own form (url-encoded), from another site: refused; from this one: accepted.
    form = {"token": token, "password": PASSWORD}
    evil = await api.http.post(
        "/invitations/accept", data=form, headers={"Origin": "http://evil.test"}
    )
    _error(evil, 403, "csrf_failed")
    accepted = await people.client().post("/invitations/accept", data=form)
    assert accepted.status_code == 200 and "text/html" in accepted.headers["content-type"]
    assert "team@yourdomain.test" in accepted.text and COOKIE in accepted.cookies
    shares = (await boss_client.get(f"/mail/accounts/{account}/shares")).json()["shares"]
    assert [s["user_id"] for s in shares] == [bob.id]
    # A form that fails is the page again, with the reason.
    await invite(boss_client, account, "weak@example.test")
    _, weak = await link_to(sink, "weak@example.test")
    short = await api.http.post("/invitations/accept", data={"token": weak, "password": "short"})
    assert short.status_code == 400 and "12 characters" in short.text and "<form" in short.text


async def test_refusals(api: Api, people: Persons, sink: Sink) -> None:
    boss, boss_client = await people.user("boss@example.test")
    account = await alias_of(people.db, boss, "team@yourdomain.test")
    unverified = await domain_of(people.db, boss, "later.test", verified=False)
    for method, path in [
        ("GET", invitations_of(account)),
        ("POST", invitations_of(account)),
        ("GET", f"/mail/accounts/{account}/shares"),
        ("GET", "/mail/invitations/pending"),
        ("POST", "/mail/invitations/accept"),
        ("POST", "/mail/invitations/decline"),
        ("DELETE", f"/mail/accounts/{account}/shares/usr_x"),
    ]:
        _error(await api.http.request(method, path, json={}), 401, "unauthorized")
    for body in (
        {"email": "x@example.test", "role": "owner"},
        {"email": "no-at-sign"},
        {"email": "x" * 250 + "@example.test"},
        {"email": "a\r\nBcc: x@evil.test"},
        {"email": "x@example.test", "extra": 1},
        {"role": "member"},
    ):
        _error(await boss_client.post(invitations_of(account), json=body), 400, "invalid_request")
    _error(
        await boss_client.post(invitations_of(unverified), json={"email": "x@example.test"}),
        400,
        "invalid_request",
    )
    for missing in ("ali_0000000000000000", "nope", "x" * 500):
        _error(await boss_client.get(invitations_of(missing)), 404, "not_found")
    _error(
        await boss_client.post("/mail/invitations/accept", json={"invitation_id": ""}),
        400,
        "invalid_request",
    )
    # A cookie's change without the CSRF token.
    bare = people.client(boss_client.cookies[COOKIE])
    del bare.headers["X-CSRF-Token"]
    _error(
        await bare.post(invitations_of(account), json={"email": "x@example.test"}),
        403,
        "csrf_failed",
    )

    # API keys: one without a user acts on accounts only with the admin scope, as itself;
    # it receives no invitations.
    plain_key = await api.key("aliases")
    _error(await api.http.get(invitations_of(account), headers=auth(plain_key)), 403, "forbidden")
    admin = await api.key("admin", name="Ops key")
    made = await api.http.post(
        invitations_of(account), json={"email": "k@example.test"}, headers=auth(admin)
    )
    assert made.status_code == 201, made.text
    _error(
        await api.http.get("/mail/invitations/pending", headers=auth(admin)), 403, "user_required"
    )
    _, k_client = await people.user("k@example.test")
    [received] = (await k_client.get("/mail/invitations/pending")).json()["invitations"]
    assert received["inviter_name"] == "Ops key"

    # The email refused (a suppressed address): the invitation stands, email_sent false.
    suppressed = await api.http.post(
        "/api/v1/suppressions", json={"email": "gone@example.test"}, headers=auth(admin)
    )
    assert suppressed.status_code in (200, 201), suppressed.text
    refused = await invite(boss_client, account, "gone@example.test")
    assert refused["email_sent"] is False and refused["invitation"]["status"] == "pending"


async def test_hostile_input_is_a_4xx(api: Api, people: Persons) -> None:
    boss, boss_client = await people.user("boss@example.test")
    account = await alias_of(people.db, boss, "team@yourdomain.test")
    json_type = {"Content-Type": "application/json"}
    form_type = {"Content-Type": "application/x-www-form-urlencoded"}
    tries = [
        ("POST", invitations_of(account), b'{"email": "\\ud800@example.test"}', json_type),
        ("POST", invitations_of(account), b'{"email": "a@b.test", "email": "c@d.test"}', json_type),
        ("POST", "/mail/invitations/accept", b'{"invitation_id": "\\ud800"}', json_type),
        ("POST", "/mail/invitations/decline", b"[]", json_type),
        ("GET", "/mail/accounts/%ED%A0%80/invitations", b"", {}),
        ("DELETE", f"/mail/accounts/{account}/shares/%00", b"", {}),
        ("POST", f"{invitations_of(account)}/%ff/resend", b"", {}),
        ("GET", "/invitations/accept?token=%ED%A0%80", b"", {}),
        ("GET", "/invitations/accept?token=" + "x" * 5000, b"", {}),
        ("POST", "/invitations/accept", b'{"token": "\\ud800"}', json_type),
        ("POST", "/invitations/accept", b"token=%ff%fe&password=x", form_type),
        ("POST", "/invitations/accept", b"token=abc&password=" + b"x" * 2000, form_type),
        ("POST", "/invitations/accept", b"not json", json_type),
    ]
    for method, path, body, headers in tries:
        answer = await boss_client.request(method, path, content=body, headers=headers)
        assert 400 <= answer.status_code < 500, (path, body, answer.status_code, answer.text)
