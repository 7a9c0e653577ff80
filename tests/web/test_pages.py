"""The dashboard through a real uvicorn with httpx, as a browser without JavaScript (and
htmx, by its headers) uses it: sign-in and its redirects, the security headers, roles and
CSRF refused in HTML, and the API's own JSON answers left alone around it."""

from __future__ import annotations

import re

import pytest
from markupsafe import escape

from tests.support.api import Api
from tests.support.people import PASSWORD, make_user
from tests.support.web import browser, csrf_of
from tests.web.conftest import SignIn
from web.guard import CSRF_TEXT as _CSRF_TEXT
from web.headers import CSP

pytestmark = pytest.mark.timeout(60)
CSRF_TEXT = str(escape(_CSRF_TEXT))  # as the page shows it


async def test_a_page_without_a_session_sends_to_the_sign_in_form(api: Api) -> None:
    answer = await api.http.get("/settings/pools?x=1")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/login?next=/settings/pools%3Fx%3D1"
    htmx = await api.http.get("/settings/pools", headers={"HX-Request": "true"})
    assert htmx.status_code == 401 and htmx.headers["hx-redirect"].startswith("/login?next=")
    assert "<html" not in htmx.text
    assert (await api.http.get("/")).headers["location"] == "/login"


async def test_signing_in_through_the_form_goes_to_next(api: Api) -> None:
    await make_user(api.svc.db, "ops@example.com", "owner")
    page = await api.http.get("/login?next=/settings/pools")
    assert page.status_code == 200
    assert '<input type="hidden" name="next" value="/settings/pools">' in page.text
    assert 'for="email"' in page.text and 'for="password"' in page.text
    fields = {"email": "ops@example.com", "password": PASSWORD, "next": "/settings/pools"}
    signed = await api.http.post("/login", data=fields)
    assert signed.status_code == 303 and signed.headers["location"] == "/settings/pools"
    assert signed.headers["set-cookie"].startswith("sb-access-token=")
    pools = await api.http.get("/settings/pools")
    assert pools.status_code == 200 and "<h1>SMTP Pools</h1>" in pools.text
    assert "ops@example.com" in pools.text and ">owner<" in pools.text


async def test_a_refused_sign_in_is_the_form_again_and_next_stays_local(api: Api) -> None:
    await make_user(api.svc.db, "ops@example.com", "owner")
    fields = {"email": "ops@example.com", "password": "wrong", "next": "/settings/pools"}
    refused = await api.http.post("/login", data=fields)
    assert refused.status_code == 401 and "wrong email or password" in refused.text
    assert 'value="ops@example.com"' in refused.text and "set-cookie" not in refused.headers
    outside = await api.http.get("/login?next=//evil.example/x")
    assert 'name="next" value="/"' in outside.text
    fields |= {"password": PASSWORD, "next": "//evil.example/x"}
    signed = await api.http.post("/login", data=fields)
    assert signed.status_code == 303 and signed.headers["location"] == "/"


async def test_security_headers_on_pages_fragments_static_files_and_errors(
    api: Api, person: SignIn
) -> None:
    owner = await person("ops@example.com")
    login = await api.http.get("/login")
    css = re.search(r'href="(/static/[0-9a-f]{16}/dashboard\.css)"', login.text)
    script = re.search(r'src="(/static/[0-9a-f]{16}/htmx\.min\.js)"', login.text)
    assert css and script
    static = await api.http.get(script.group(1))
    assert static.status_code == 200 and "javascript" in static.headers["content-type"]
    assert static.headers["cache-control"] == "public, max-age=31536000, immutable"
    stale = await api.http.get("/static/0000000000000000/htmx.min.js")
    assert stale.status_code == 200 and stale.headers["cache-control"] == "no-cache"
    refused = await owner.htmx("/settings/pools/smtp_none/test")
    answers = [login, static, refused, await owner.get("/"), await owner.get("/settings/pools")]
    for answer in answers:
        assert answer.headers["content-security-policy"] == CSP
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "same-origin"
        assert answer.headers["x-frame-options"] == "DENY"
    assert "<script>" not in login.text and "style=" not in login.text
    for answer in answers[3:]:
        assert "<script>" not in answer.text and "style=" not in answer.text


async def test_a_member_is_refused_the_pools_page_and_does_not_see_it(
    api: Api, person: SignIn
) -> None:
    member = await person("m@example.com", "member")
    home = await member.get("/")
    assert home.status_code == 200 and 'href="/settings/pools"' not in home.text
    assert 'href="/settings/users"' not in home.text and 'href="/settings/sessions"' in home.text
    refused = await member.get("/settings/pools")
    assert refused.status_code == 403 and "<h1>Refused</h1>" in refused.text
    assert refused.headers["content-type"].startswith("text/html")
    created = await member.post("/settings/pools", {"name": "x", "host": "127.0.0.1"})
    assert created.status_code == 403
    admin = await person("a@example.com", "admin")
    assert (await admin.get("/settings/pools")).status_code == 200
    assert (await admin.get("/settings/users")).status_code == 403


async def test_a_change_without_the_csrf_token_is_refused_readably(
    api: Api, person: SignIn
) -> None:
    owner = await person("ops@example.com")
    fields = {"name": "relay", "host": "127.0.0.1", "port": "25", "encryption": "none"}
    page = await owner.post("/settings/pools", fields, token=False)
    assert page.status_code == 403 and CSRF_TEXT in page.text and "<html" in page.text
    fragment = await owner.post(
        "/settings/pools", fields, token=False, headers={"HX-Request": "true"}
    )
    assert fragment.status_code == 403 and CSRF_TEXT in fragment.text
    assert "<html" not in fragment.text and fragment.headers["vary"] == "HX-Request"
    elsewhere = await owner.post(
        "/settings/pools", fields, headers={"Origin": "http://evil.example"}
    )
    assert elsewhere.status_code == 403 and CSRF_TEXT in elsewhere.text
    assert "relay" not in (await owner.get("/settings/pools")).text


async def test_pools_are_created_edited_tested_and_deleted_through_forms(
    api: Api, person: SignIn
) -> None:
    owner = await person("ops@example.com")
    form = (await owner.get("/settings/pools/new")).text
    assert 'name="csrf_token"' in form and 'value="587"' in form
    sink_port = api.svc.config.pools[0].port
    fields = {
        "name": "relay", "host": "127.0.0.1", "port": "x", "encryption": "none",
        "ip_pool": "transactional", "priority": "100", "max_connections": "5",
        "rate": "often", "daily_limit": "0", "is_active": "on", "from_email": "",
        "username": "",
    }  # fmt: skip
    bad = await owner.post("/settings/pools", fields)
    assert bad.status_code == 400 and 'id="port-problem"' in bad.text
    assert 'aria-invalid="true"' in bad.text and 'value="relay"' in bad.text
    fields["port"] = str(sink_port)
    bad = await owner.post("/settings/pools", fields)
    assert bad.status_code == 400 and 'id="rate-problem"' in bad.text
    fields["rate"] = "100/minute"
    created = await owner.post("/settings/pools", fields)
    assert created.status_code == 303, created.text
    listed = await owner.get(created.headers["location"])
    assert "Pool created." in listed.text and f"127.0.0.1:{sink_port}" in listed.text
    pool_id = re.search(
        r'id="pool-(smtp_[^"]+)"', listed.text.split("relay")[0][-400:] + listed.text
    )
    ids = re.findall(r'href="/settings/pools/(smtp_[^"/]+)"', listed.text)
    assert ids and pool_id
    pool = ids[0]
    edited = await owner.post(f"/settings/pools/{pool}", fields | {"name": "relay-2"})
    assert edited.status_code == 303
    assert "relay-2" in (await owner.get("/settings/pools")).text
    tested = await owner.htmx(f"/settings/pools/{pool}/test")
    assert tested.status_code == 200 and "Connected in" in tested.text
    assert "<html" not in tested.text and tested.headers["vary"] == "HX-Request"
    page = await owner.post(f"/settings/pools/{pool}/test")
    assert page.status_code == 200 and "<html" in page.text and "Connected in" in page.text
    confirm = await owner.get(f"/settings/pools/{pool}/delete")
    assert "Delete the pool relay-2?" in confirm.text
    deleted = await owner.post(f"/settings/pools/{pool}/delete", {"move_to": ""})
    assert deleted.status_code == 303
    assert "relay-2" not in (await owner.get("/settings/pools")).text


async def test_the_api_keeps_its_json_answers_around_the_dashboard(api: Api) -> None:
    unknown = await api.http.get("/api/v1/nothing")
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
    wrong = await api.http.put("/api/v1/smtp-pools")
    assert wrong.status_code == 405 and wrong.json()["code"] == "method_not_allowed"
    assert "content-security-policy" not in unknown.headers


async def test_signing_out_ends_the_session(api: Api, person: SignIn) -> None:
    owner = await person("ops@example.com")
    out = await owner.post("/logout")
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert "Max-Age=0" in out.headers["set-cookie"]
    assert (await owner.get("/")).status_code == 303


async def test_my_sessions_lists_and_ends_them(api: Api, person: SignIn) -> None:
    owner = await person("ops@example.com")
    other = browser(str(api.http.base_url))
    try:
        fields = {"email": "ops@example.com", "password": PASSWORD, "next": "/"}
        assert (await other.post("/login", fields, token=False)).status_code == 303
        page = await owner.get("/settings/sessions")
        assert page.text.count('/end"') == 2 and "(this one)" in page.text
        ended = await owner.post("/settings/sessions/end-others")
        assert ended.status_code == 303
        assert (await other.get("/")).status_code == 303
        assert (await owner.get("/")).status_code == 200
    finally:
        await other.http.aclose()


async def test_owners_manage_users_from_the_users_page(api: Api, person: SignIn) -> None:
    owner = await person("ops@example.com")
    created = await owner.post(
        "/settings/users", {"email": "new@example.com", "name": "New", "role": "admin"}
    )
    assert created.status_code == 200 and "shown this once" in created.text
    password = re.search(r'<code class="secret">([^<]+)</code>', created.text)
    assert password
    user_id = re.findall(r'action="/settings/users/(usr_[^"]+)"', created.text)
    assert user_id
    new = browser(str(api.http.base_url))
    try:
        fields = {"email": "new@example.com", "password": password.group(1), "next": "/"}
        assert (await new.post("/login", fields, token=False)).status_code == 303
        new.csrf = csrf_of((await new.get("/")).text)
    finally:
        await new.http.aclose()
    target = next(uid for uid in user_id if uid != owner_id(created.text))
    changed = await owner.post(f"/settings/users/{target}", {"action": "role", "role": "member"})
    assert changed.status_code == 303
    disabled = await owner.post(f"/settings/users/{target}", {"action": "disable"})
    assert disabled.status_code == 303
    page = (await owner.get("/settings/users")).text
    assert "Role changed." not in page and "disabled" in page
    upward = await owner.post(f"/settings/users/{target}", {"action": "role", "role": "king"})
    assert upward.status_code == 400 and 'class="problem"' in upward.text


def owner_id(html: str) -> str:
    """The signed-in owner's own row has no disable form: its id is in one form only."""
    ids = re.findall(r'action="/settings/users/(usr_[^"]+)"', html)
    return next(uid for uid in ids if ids.count(uid) == 1)
