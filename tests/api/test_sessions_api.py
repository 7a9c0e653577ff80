"""People over a real uvicorn with httpx cookie jars: login (JSON and form), logout, expiry,
rotation, CSRF refusals, throttling, role escalation attempts, the last-owner rule, and
seed 000's pool endpoints driven by a session as its fetch example does."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.people.passwords import Passwords
from tests.support.api import Api, ApiFactory, auth
from tests.support.people import PASSWORD, Person, make_user, sign_in

POOL = {
    "name": "SES", "host": "127.0.0.1", "port": 2587, "username": "", "password": "",
    "encryption": "none",
}  # fmt: skip


@pytest.fixture
async def people(api: Api) -> AsyncIterator[list[Person]]:
    """The people a test signs in: their clients are closed at its end."""
    signed_in: list[Person] = []
    yield signed_in
    for person in signed_in:
        await person.http.aclose()


async def person(api: Api, people: list[Person], email: str, role: str = "owner") -> Person:
    user = await make_user(api.svc.db, email, role)
    signed_in = await sign_in(str(api.http.base_url), user)
    people.append(signed_in)
    return signed_in


async def me_with(api: Api, token: str) -> httpx.Response:
    """GET /auth/me from a browser holding only this session token."""
    cookies = {"sb-access-token": token}
    async with httpx.AsyncClient(base_url=api.http.base_url, cookies=cookies) as browser:
        return await browser.get("/auth/me")


async def test_login_sets_a_strict_session_cookie_and_me_answers(
    api: Api, people: list[Person]
) -> None:
    owner = await make_user(api.svc.db, "Boss@Example.com", "owner")
    answer = await api.http.post(
        "/auth/login", json={"email": "boss@example.com", "password": PASSWORD}
    )
    assert answer.status_code == 200
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith("sb-access-token=") and "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie and "Path=/" in cookie and "Secure" not in cookie
    body = answer.json()
    assert body["user"]["id"] == owner.id and body["user"]["role"] == "owner"
    token = answer.cookies["sb-access-token"]
    me = await me_with(api, token)
    assert me.status_code == 200
    assert {"email", "name", "role", "csrf_token"} <= me.json().keys()
    assert me.json()["csrf_token"] == body["csrf_token"] and me.json()["via"] == "session"
    stored = await api.svc.db.read(
        lambda conn: [tuple(row) for row in conn.exec_driver_sql("SELECT * FROM sessions")]
    )
    assert stored and not any(token in str(value) for row in stored for value in row)


async def test_behind_a_tls_proxy_the_cookie_is_secure(api_client: ApiFactory) -> None:
    api = await api_client(http={"public_url": "https://mail.example.com"})
    await make_user(api.svc.db, "a@example.com")
    answer = await api.http.post(
        "/auth/login", json={"email": "a@example.com", "password": PASSWORD}
    )
    assert "Secure" in answer.headers["set-cookie"]


async def test_a_proxy_on_loopback_that_says_https_makes_it_secure(api: Api) -> None:
    await make_user(api.svc.db, "a@example.com")
    login = {"email": "a@example.com", "password": PASSWORD}
    proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.7"}
    answer = await api.http.post("/auth/login", json=login, headers=proxied)
    assert "Secure" in answer.headers["set-cookie"]
    cookies = {"sb-access-token": answer.cookies["sb-access-token"]}
    async with httpx.AsyncClient(base_url=api.http.base_url, cookies=cookies) as browser:
        sessions = (await browser.get("/auth/sessions", headers=proxied)).json()["sessions"]
    assert sessions[0]["ip"] == "198.51.100.7"  # the client the proxy named


async def test_a_form_login_goes_to_a_local_page_only(api: Api) -> None:
    await make_user(api.svc.db, "a@example.com")
    form = {"email": "a@example.com", "password": PASSWORD, "next": "/settings/pools"}
    answer = await api.http.post("/auth/login", data=form)
    assert answer.status_code == 303 and answer.headers["location"] == "/settings/pools"
    assert "sb-access-token=" in answer.headers["set-cookie"]
    for elsewhere in ("//evil.example/", "https://evil.example/"):
        answer = await api.http.post("/auth/login", data={**form, "next": elsewhere})
        assert answer.status_code == 200 and answer.json()["success"]


async def test_wrong_credentials_are_one_401_and_logged_without_the_password(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="postern.auth")
    await make_user(api.svc.db, "a@example.com")
    wrong = await api.http.post(
        "/auth/login", json={"email": "a@example.com", "password": "guess-one-two"}
    )
    unknown = await api.http.post(
        "/auth/login", json={"email": "nobody@example.com", "password": "guess-one-two"}
    )
    for answer in (wrong, unknown):
        assert answer.status_code == 401
        assert answer.json()["code"] == "invalid_credentials"
        assert answer.json()["error"] == "wrong email or password"
    assert "login failed: email='a@example.com'" in caplog.text
    assert "guess-one-two" not in caplog.text
    for bad in ({"email": "a@example.com"}, {"email": 1, "password": "x"}, "[]"):
        answer = await api.http.post(
            "/auth/login", **({"content": bad} if isinstance(bad, str) else {"json": bad})
        )
        assert answer.status_code == 400 and answer.json()["code"] == "invalid_request"


async def test_failed_logins_are_throttled_per_account_before_any_verification(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    await make_user(api.svc.db, "a@example.com")
    body = {"email": "a@example.com", "password": "wrong password"}
    codes = [(await api.http.post("/auth/login", json=body)).status_code for _ in range(10)]
    assert codes == [401] * 10
    # Counted, not timed (a 50 ms bound failed on a loaded machine): no argon2 run at all.
    verified: list[str] = []
    real_verify = Passwords._verify

    def counting(self: Passwords, stored: str | None, password: str) -> bool:
        verified.append(password)
        return real_verify(self, stored, password)

    monkeypatch.setattr(Passwords, "_verify", counting)
    refused = await api.http.post("/auth/login", json={**body, "password": PASSWORD})
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert verified == []  # refused before argon2 ran


async def test_failed_logins_are_throttled_per_address_across_accounts(api: Api) -> None:
    guesses = [{"email": f"u{n}@example.com", "password": "wrong password"} for n in range(21)]
    codes = [(await api.http.post("/auth/login", json=body)).status_code for body in guesses]
    assert codes == [401] * 20 + [429]


async def test_a_cookie_change_needs_this_origin_and_the_csrf_token(
    api: Api, people: list[Person]
) -> None:
    owner = await person(api, people, "a@example.com")
    origin = str(api.http.base_url).rstrip("/")
    missing = await owner.http.post("/api/smtp-pools", json=POOL, headers={"Origin": origin})
    assert missing.status_code == 403 and missing.json()["code"] == "csrf_failed"
    wrong = await owner.call("POST", "/api/smtp-pools", json=POOL, headers={"X-CSRF-Token": "x"})
    assert wrong.status_code == 403 and wrong.json()["code"] == "csrf_failed"
    foreign = await owner.call(
        "POST", "/api/smtp-pools", json=POOL, headers={"Origin": "https://evil.example"}
    )
    assert foreign.status_code == 403 and foreign.json()["code"] == "csrf_failed"
    cross_site = await owner.call(
        "GET", "/api/smtp-pools", headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert cross_site.status_code == 401  # a cookie never authenticates a cross-site request
    made = await owner.call("POST", "/api/smtp-pools", json=POOL)
    assert made.status_code == 201, made.text
    # A key is exempt: no browser sends it on its own, so no token is asked for.
    key = await api.key("pools")
    keyed = await owner.http.post(
        "/api/smtp-pools", json={**POOL, "name": "Other"}, headers=auth(key)
    )
    assert keyed.status_code == 201


async def test_seed_000_pool_endpoints_work_with_a_session(api: Api, people: list[Person]) -> None:
    admin = await person(api, people, "admin@example.com", "admin")
    member = await person(api, people, "member@example.com", "member")
    created = await admin.call("POST", "/api/smtp-pools", json=POOL)
    assert created.status_code == 201
    pool_id = created.json()["id"]
    listed = await admin.call("GET", "/api/smtp-pools")
    assert pool_id in [pool["id"] for pool in listed.json()]
    assert all("password" not in pool for pool in listed.json())
    tested = await admin.call("POST", f"/api/smtp-pools/{pool_id}/test")
    assert set(tested.json()) >= {"success", "message", "latencyMs"}
    refused = await member.call("GET", "/api/smtp-pools")
    assert refused.status_code == 403 and "member" in refused.json()["error"]


async def test_logout_ends_the_session_and_clears_the_cookie(
    api: Api, people: list[Person]
) -> None:
    owner = await person(api, people, "a@example.com")
    token = owner.token
    answer = await owner.call("POST", "/auth/logout")
    assert answer.status_code == 200 and "Max-Age=0" in answer.headers["set-cookie"]
    again = await me_with(api, token)
    assert again.status_code == 401


async def test_login_rotates_and_a_session_expires(api: Api, people: list[Person]) -> None:
    owner = await person(api, people, "a@example.com")
    before = owner.token
    again = await owner.http.post(
        "/auth/login", json={"email": "a@example.com", "password": PASSWORD}
    )
    assert again.status_code == 200 and owner.token != before
    old = await me_with(api, before)
    assert old.status_code == 401
    assert (await owner.call("GET", "/auth/me")).status_code == 200
    sessions = api.svc.people.sessions  # type: ignore[union-attr]
    later = time.time() + sessions.lifetimes.idle + 1
    sessions._clock = lambda: later
    assert (await owner.call("GET", "/auth/me")).status_code == 401


async def test_a_role_change_rotates_the_session_and_caps_it(
    api: Api, people: list[Person]
) -> None:
    owner = await person(api, people, "owner@example.com")
    admin = await person(api, people, "admin@example.com", "admin")
    before = admin.token
    assert (await admin.call("GET", "/api/smtp-pools")).status_code == 200
    demoted = await owner.call("PATCH", f"/api/v1/users/{admin.user.id}", json={"role": "member"})
    assert demoted.status_code == 200 and demoted.json()["user"]["role"] == "member"
    answer = await admin.call("POST", "/api/smtp-pools", json=POOL)  # the token it was given
    assert answer.status_code == 403 and answer.json()["code"] == "forbidden"  # a member now
    assert "sb-access-token=" in answer.headers["set-cookie"] and admin.token != before
    admin.csrf = answer.headers["x-csrf-token"]  # the rotated session's, for the next change
    again = await admin.call("POST", "/api/smtp-pools", json=POOL)
    assert again.json()["code"] == "forbidden"  # not csrf_failed
    old = await me_with(api, before)
    assert old.status_code == 401
    me = await admin.http.get("/auth/me")
    assert me.json()["role"] == "member"


async def test_nobody_climbs_above_their_role_and_the_last_owner_stays(
    api: Api, people: list[Person]
) -> None:
    owner = await person(api, people, "owner@example.com")
    admin = await person(api, people, "admin@example.com", "admin")
    member = await person(api, people, "member@example.com", "member")
    new = {"email": "x@example.com", "role": "owner"}
    for climber in (admin, member):
        answer = await climber.call("POST", "/api/v1/users", json=new)
        assert answer.status_code == 403 and answer.json()["code"] == "owner_required"
        answer = await climber.call(
            "PATCH", f"/api/v1/users/{climber.user.id}", json={"role": "owner"}
        )
        assert answer.status_code == 403
    key = await api.key("admin")  # an admin key, no user: it manages no one
    assert (await api.http.get("/api/v1/users", headers=auth(key))).status_code == 403
    last = await owner.call("PATCH", f"/api/v1/users/{owner.user.id}", json={"role": "admin"})
    assert last.status_code == 409 and last.json()["code"] == "last_owner"
    last = await owner.call("PATCH", f"/api/v1/users/{owner.user.id}", json={"disabled": True})
    assert last.status_code == 409
    made = await owner.call("POST", "/api/v1/users", json={"email": "new@example.com"})
    assert made.status_code == 201 and len(made.json()["password"]) >= 20
    assert made.json()["user"]["role"] == "member"
    taken = await owner.call("POST", "/api/v1/users", json={"email": "NEW@example.com"})
    assert taken.status_code == 409
    listed = await owner.call("GET", "/api/v1/users")
    assert len(listed.json()["users"]) == 4
    assert all("password_hash" not in user for user in listed.json()["users"])


async def test_disabling_a_user_ends_their_access_at_once(api: Api, people: list[Person]) -> None:
    owner = await person(api, people, "owner@example.com")
    member = await person(api, people, "member@example.com", "member")
    assert (await member.call("GET", "/auth/me")).status_code == 200
    off = await owner.call("PATCH", f"/api/v1/users/{member.user.id}", json={"disabled": True})
    assert off.status_code == 200 and off.json()["user"]["disabled_at"]
    assert (await member.call("GET", "/auth/me")).status_code == 401
    on = await owner.call("PATCH", f"/api/v1/users/{member.user.id}", json={"disabled": False})
    assert on.status_code == 200 and on.json()["user"]["disabled_at"] is None
    assert (await member.call("GET", "/auth/me")).status_code == 401  # its sessions ended


async def test_disabling_a_user_stops_their_keys_on_this_node_at_once(
    api: Api, people: list[Person]
) -> None:
    owner = await person(api, people, "owner@example.com")
    member = await person(api, people, "member@example.com", "member")
    made = await member.call("POST", "/api/v1/keys", json={"name": "ci", "scopes": ["send"]})
    assert made.status_code == 201, made.text
    key = made.json()["key"]["key"]
    assert (await api.http.get("/v1/messages", headers=auth(key))).status_code == 200
    await owner.call("PATCH", f"/api/v1/users/{member.user.id}", json={"disabled": True})
    assert (await api.http.get("/v1/messages", headers=auth(key))).status_code == 401


async def test_a_key_acts_for_its_person_only_with_the_admin_scope(
    api: Api, people: list[Person]
) -> None:
    owner = await person(api, people, "owner@example.com")
    made = await owner.call("POST", "/api/v1/keys", json={"name": "ci", "scopes": ["send"]})
    sender = auth(made.json()["key"]["key"])
    made = await owner.call("POST", "/api/v1/keys", json={"name": "ops", "scopes": ["admin"]})
    admin = auth(made.json()["key"]["key"])
    new_owner = {"email": "x@example.com", "role": "owner"}
    for method, path, body in (
        ("POST", "/api/v1/users", new_owner),
        ("POST", f"/api/v1/users/{owner.user.id}/reset-password", None),
        ("GET", "/auth/sessions", None),
        ("GET", "/mail/invitations/pending", None),
        ("POST", "/mail/accounts/ali_0000000000000000/invitations", {"email": "y@example.com"}),
        ("GET", "/mail/accounts", None),
    ):
        answer = await api.http.request(method, path, json=body, headers=sender)
        assert answer.status_code == 403, (path, answer.text)
    assert (await api.http.get("/auth/me", headers=sender)).json()["id"] == owner.user.id
    assert (await api.http.get("/auth/sessions", headers=admin)).status_code == 200
    created = await api.http.post("/api/v1/users", json=new_owner, headers=admin)
    assert created.status_code == 201


async def test_a_user_lists_and_ends_their_own_sessions(api: Api, people: list[Person]) -> None:
    laptop = await person(api, people, "a@example.com")
    phone = await sign_in(str(api.http.base_url), laptop.user)
    people.append(phone)
    listed = (await laptop.call("GET", "/auth/sessions")).json()["sessions"]
    assert len(listed) == 2 and sum(session["current"] for session in listed) == 1
    assert {"id", "created_at", "last_seen_at", "expires_at", "user_agent", "ip"} <= listed[
        0
    ].keys()
    other = next(session["id"] for session in listed if not session["current"])
    assert (await laptop.call("DELETE", f"/auth/sessions/{other}")).status_code == 200
    assert (await phone.call("GET", "/auth/me")).status_code == 401
    assert (await laptop.call("DELETE", f"/auth/sessions/{other}")).status_code == 404
    stranger = await person(api, people, "b@example.com", "member")
    mine = (await laptop.call("GET", "/auth/sessions")).json()["sessions"][0]["id"]
    assert (await stranger.call("DELETE", f"/auth/sessions/{mine}")).status_code == 404


async def test_api_keys_keep_working_without_any_user(api: Api) -> None:
    key = await api.key("send")
    answer = await api.http.get("/auth/me", headers=auth(key))
    assert answer.status_code == 403  # a key without a user is no person
    assert (await api.http.get("/v1/messages", headers=auth(key))).status_code == 200
    assert (await api.http.get("/v1/messages")).status_code == 401
