"""Ownership over a real uvicorn with cookie jars: keys belong to a user and never exceed its
role (at creation and at use, over HTTP and SMTP AUTH; a disabled user's keys stop), what a
user makes remembers them (`created_by`, `message.user_id`), and a member sees only their
own messages and keys (another's is a 404), while admins see everything. Each test runs on
SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from api.auth import Caller
from api.ownership import visible_to
from gateway.people.passwords import Passwords
from gateway.people.users import Users
from gateway.smtpd import replies
from storage.aliases import create_alias, delete_alias
from storage.invitations import accept, create_invitation, get_invitation
from storage.keys import CACHE_SECONDS, ApiKeyRecord
from storage.messages import message_state
from storage.shares import list_shares
from storage.users import UserRecord
from tests.support.api import Api, ApiFactory, auth, payload
from tests.support.people import Person, make_user, sign_in
from tests.support.service import wait_until
from tests.support.smtp import Dialogue, plain

pytestmark = pytest.mark.timeout(60)
SANDBOX = {"X-Postern-Sandbox": "true"}


@pytest.fixture
async def api(api_client: ApiFactory, backend: dict[str, Any]) -> Api:
    return await api_client(**backend)


@pytest.fixture
async def people() -> AsyncIterator[list[Person]]:
    """The people a test signs in: their clients are closed at its end."""
    signed_in: list[Person] = []
    yield signed_in
    for person in signed_in:
        await person.http.aclose()


async def person(api: Api, people: list[Person], email: str, role: str) -> Person:
    signed_in = await sign_in(str(api.http.base_url), await make_user(api.svc.db, email, role))
    people.append(signed_in)
    return signed_in


async def sent(who: Person) -> str:
    answer = await who.call("POST", "/v1/send", json=payload(), headers=SANDBOX)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["message_id"])


async def new_key(who: Person, *scopes: str) -> httpx.Response:
    return await who.call("POST", "/api/v1/keys", json={"name": "mine", "scopes": list(scopes)})


def ids(answer: httpx.Response, field: str = "data") -> set[str]:
    assert answer.status_code == 200, answer.text
    return {item["message_id" if field == "data" else "id"] for item in answer.json()[field]}


async def test_a_member_sees_only_their_messages_and_an_admin_all(
    api: Api, people: list[Person]
) -> None:
    member = await person(api, people, "m@example.com", "member")
    other = await person(api, people, "o@example.com", "member")
    admin = await person(api, people, "a@example.com", "admin")
    own, theirs = await sent(member), await sent(other)
    console = await api.key("send", "sandbox")
    anonymous = (await api.send(key=console, headers=SANDBOX)).json()["message_id"]
    state = await message_state(api.svc.db, own)
    assert state is not None and state.user_id == member.user.id

    assert ids(await member.call("GET", "/v1/messages")) == {own}
    assert (await member.call("GET", f"/v1/messages/{own}")).status_code == 200
    for path in (f"/v1/messages/{theirs}", f"/v1/messages/{anonymous}"):
        assert (await member.call("GET", path)).status_code == 404
        assert (await member.call("POST", path + "/cancel")).status_code == 404
    everything = ids(await admin.call("GET", "/v1/messages"))
    assert {own, theirs, anonymous} <= everything
    assert ids(await api.get("/v1/messages", key=console)) == {anonymous}  # as before

    # A key of the member acts for the member: it sees the mail sent by session, and what
    # it sends is the member's.
    key = (await new_key(member, "send", "sandbox")).json()["key"]
    assert key["user_id"] == member.user.id
    by_key = (await api.send(key=key["key"], headers=SANDBOX)).json()["message_id"]
    assert ids(await api.get("/v1/messages", key=key["key"])) == {own, by_key}
    assert (await api.get(f"/v1/messages/{theirs}", key=key["key"])).status_code == 404


async def test_a_members_keys_stay_within_member_and_their_own(
    api: Api, people: list[Person]
) -> None:
    member = await person(api, people, "m@example.com", "member")
    for scopes in (["pools"], ["send", "admin"], ["webhooks"]):
        refused = await new_key(member, *scopes)
        assert (refused.status_code, refused.json()["code"]) == (403, "role_above_own"), scopes
    mine = (await new_key(member, "send", "keys")).json()["key"]
    console_id, _ = await api.key_record("send")
    listed = await member.call("GET", "/api/v1/keys")
    assert ids(listed, "keys") == {mine["id"]}
    assert (await member.call("GET", f"/api/v1/keys/{console_id}")).status_code == 404
    assert (await member.call("DELETE", f"/api/v1/keys/{console_id}")).status_code == 404
    # The member's key may make keys too, within the same bounds.
    refused = await api.http.post(
        "/api/v1/keys", json={"name": "x", "scopes": ["pools"]}, headers=auth(mine["key"])
    )
    assert (refused.status_code, refused.json()["code"]) == (403, "role_above_own")
    admin_key = await api.key("admin")
    assert mine["id"] in ids(await api.get("/api/v1/keys", key=admin_key), "keys")
    # An admin sees every key but takes down no owner's; the owner does, and the member
    # their own.
    owner = await person(api, people, "boss@example.com", "owner")
    admin = await person(api, people, "a@example.com", "admin")
    owners = (await new_key(owner, "send")).json()["key"]["id"]
    refused = await admin.call("DELETE", f"/api/v1/keys/{owners}")
    assert (refused.status_code, refused.json()["code"]) == (403, "role_above_own")
    assert (await admin.call("DELETE", f"/api/v1/keys/{mine['id']}")).status_code == 200
    assert (await owner.call("DELETE", f"/api/v1/keys/{owners}")).status_code == 200


async def test_a_key_is_capped_at_its_users_role_as_it_is_now(
    api: Api, people: list[Person]
) -> None:
    admin = await person(api, people, "a@example.com", "admin")
    key = (await new_key(admin, "pools", "send", "sandbox")).json()["key"]["key"]
    assert (await api.get("/api/v1/smtp-pools", key=key)).status_code == 200
    await Users(api.svc.db, Passwords()).change_role(admin.user.id, "member")

    async def refused() -> bool:
        return (await api.get("/api/v1/smtp-pools", key=key)).status_code == 403

    assert await wait_until(refused, timeout=CACHE_SECONDS + 3)
    assert (await api.send(key=key, headers=SANDBOX)).status_code == 200  # member may send


async def test_a_disabled_users_keys_stop_over_http_and_smtp(
    api_client: ApiFactory, backend: dict[str, Any], people: list[Person]
) -> None:
    api = await api_client(smtp={"require_auth": True}, **backend)
    member = await person(api, people, "m@example.com", "member")
    secret = (await new_key(member, "send")).json()["key"]["key"]
    smtp = await Dialogue.open("127.0.0.1", api.svc.smtp_port)
    try:
        await smtp.say("EHLO client.test")
        assert (await smtp.say(plain(secret)))[0] == 235
        code, text = await smtp.send_message()
        assert code == 250
        state = await message_state(api.svc.db, text.rsplit(" ", 1)[-1])
        assert state is not None and state.user_id == member.user.id  # SMTP mail is theirs
        await Users(api.svc.db, Passwords()).disable(member.user.id)
        started = time.monotonic()
        while (code := (await smtp.say("MAIL FROM:<app@sender.test>"))[0]) == 250:
            assert time.monotonic() - started < CACHE_SECONDS + 3, "still sending"
            assert (await smtp.say("RSET"))[0] == 250
            await asyncio.sleep(0.2)
        assert code == replies.AUTH_KEY_REVOKED.code
        assert (await smtp.say(plain(secret)))[0] == 535  # and it logs in no more
    finally:
        smtp.close()
    assert (await api.send(key=secret)).status_code == 401


async def test_what_a_user_makes_records_them(
    api_client: ApiFactory, backend: dict[str, Any], people: list[Person]
) -> None:
    api = await api_client(webhooks={"allow_private": True}, pools=[], **backend)
    admin = await person(api, people, "a@example.com", "admin")
    made = {
        "domain": await admin.call(
            "POST", "/api/v1/domains", json={"domain": "mine.test", "verified": True}
        ),
        "alias": await admin.call("POST", "/api/v1/aliases", json={"email": "me@mine.test"}),
        "pool": await admin.call(
            "POST",
            "/api/v1/smtp-pools",
            json={"name": "p", "host": "127.0.0.1", "port": 2525, "encryption": "none"},
        ),
        "webhook": await admin.call(
            "POST", "/api/v1/webhooks", json={"url": "http://127.0.0.1:9/hook"}
        ),
    }
    for kind, answer in made.items():
        assert answer.status_code == 201, (kind, answer.text)
        body = answer.json()
        record = body if kind == "pool" else body[kind]
        assert record["created_by"] == admin.user.id, kind
    console = await api.key("admin")
    pool = await api.http.post(
        "/api/v1/smtp-pools",
        json={"name": "q", "host": "127.0.0.1", "port": 2526, "encryption": "none"},
        headers=auth(console),
    )
    assert pool.status_code == 201 and pool.json()["created_by"] is None
    listed = (await api.get("/api/v1/aliases", key=console)).json()["aliases"]
    assert [alias["created_by"] for alias in listed] == [admin.user.id]


def _user(role: str, user_id: str = "usr_1") -> UserRecord:
    return UserRecord(user_id, f"{role}@example.com", "", role, None, 0.0, 0.0, "")


async def test_visibility_is_everything_for_admins_and_console_keys_else_ones_own() -> None:
    ctx: Any = None  # pools are never shared: visible_to reads nothing for them
    member = await visible_to(ctx, Caller(user=_user("member")), "pool")
    assert member.allows("smtp_1", "usr_1") and not member.allows("smtp_2", "usr_2")
    assert not member.allows("smtp_3", None)  # a console-made one is no member's
    console = Caller(key=ApiKeyRecord("key_1", "ci", "msk_", ("aliases",), 0.0))
    for caller in (Caller(user=_user("admin")), Caller(user=_user("owner")), console):
        assert (await visible_to(ctx, caller, "alias")).everything


async def test_an_alias_shared_with_a_member_is_theirs_to_see(api: Api) -> None:
    owner = await make_user(api.svc.db, "owner@example.com", "owner")
    member = await make_user(api.svc.db, "member@example.com", "member")
    alias = await create_alias(
        api.svc.db, email="team@sender.test", name="", is_default=False, ip_pool=None,
        token_hash="0" * 64, expires_at=time.time() + 60, created_by=owner.id,
    )  # fmt: skip
    ctx = api.svc.api
    before = await visible_to(ctx, Caller(user=member), "alias")
    assert not before.allows(alias.id, owner.id)
    invitation = await create_invitation(
        api.svc.db, account=("alias", alias.id), invitee_email=member.email, role="member",
        inviter_id=owner.id, token_hash="1" * 64, now=time.time(),
    )  # fmt: skip
    assert await accept(api.svc.db, invitation.id, member.id, time.time())
    after = await visible_to(ctx, Caller(user=member), "alias")
    assert after.allows(alias.id, owner.id) and not after.allows("ali_other", owner.id)


async def test_deleting_an_alias_ends_its_shares_and_open_invitations(api: Api) -> None:
    owner = await make_user(api.svc.db, "owner@example.com", "owner")
    member = await make_user(api.svc.db, "member@example.com", "member")
    alias = await create_alias(
        api.svc.db, email="team@sender.test", name="", is_default=False, ip_pool=None,
        token_hash="0" * 64, expires_at=time.time() + 60, created_by=owner.id,
    )  # fmt: skip
    account = ("alias", alias.id)
    accepted = await create_invitation(
        api.svc.db, account=account, invitee_email=member.email, role="member",
        inviter_id=owner.id, token_hash="1" * 64, now=time.time(),
    )  # fmt: skip
    assert await accept(api.svc.db, accepted.id, member.id, time.time())
    open_one = await create_invitation(
        api.svc.db, account=account, invitee_email="later@example.com", role="member",
        inviter_id=owner.id, token_hash="2" * 64, now=time.time(),
    )  # fmt: skip
    await delete_alias(api.svc.db, alias.id)
    assert await list_shares(api.svc.db, *account) == []
    closed = await get_invitation(api.svc.db, open_one.id)
    assert closed is not None and closed.status == "revoked"
    assert not await accept(api.svc.db, open_one.id, member.id, time.time())
