"""PATCH /mail/accounts/{id} (also under /api/v1/mail/accounts and /api/v1/accounts) through a
real uvicorn, against a real IMAP server (dovecot, tests/support/imap.py) and real SMTP
servers (the sink, with AUTH and STARTTLS): name and default changed without a login; a new
password or a moved server proved by a real IMAP login and SMTP AUTH first (a failure
changes nothing); a host or port moved without a password clears the stored one; 404 for
another's account, 403 for a member it is shared with, 409 for an address taken. And
`tls_verify: false`: an admin's choice, or anyone's for loopback hosts (403
tls_verify_admin_only otherwise), on connect and on change. On SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from gateway.people.passwords import Passwords
from gateway.people.users import Users
from storage.mail_accounts import NO_PASSWORD
from storage.models import MailAccount
from storage.shares import put_share
from storage.users import UserRecord
from tests.api.test_accounts_api import syncer
from tests.support.api import Api, ApiFactory
from tests.support.imap import Dovecot, available
from tests.support.people import PASSWORD, sign_in
from tests.support.sink import Sink

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not available(), reason="dovecot-imapd is not installed (.ci/run does)"),
]

ALICE, ALICE_PW = "alice@example.test", "imap-and-smtp secret 1"
NEW_PW = "alice's new secret 3"
ACCOUNTS = "/mail/accounts"
MA = MailAccount


@pytest.fixture(scope="module")
def imap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    with Dovecot(tmp_path_factory.mktemp("imap"), {ALICE: ALICE_PW}) as server:
        yield server


@pytest.fixture
def smtp() -> Iterator[Sink]:
    with Sink(auth=(ALICE, ALICE_PW), tls="starttls") as server:
        yield server


@pytest.fixture
async def app(api_client: ApiFactory, backend: dict[str, Any]) -> Api:
    settings = {"sync_interval": "1h", "max_per_user": 3, "timeout": "5s"}
    return await api_client(**backend, accounts=settings)


@pytest.fixture
async def clients() -> AsyncIterator[list[httpx.AsyncClient]]:
    made: list[httpx.AsyncClient] = []
    yield made
    for client in made:
        await client.aclose()


async def person(
    app: Api, clients: list[httpx.AsyncClient], address: str, role: str = "member"
) -> tuple[UserRecord, Any]:
    made = await Users(app.svc.db, Passwords()).create(address, role, PASSWORD)
    signed_in = await sign_in(str(app.http.base_url), made)
    clients.append(signed_in.http)
    return made, signed_in


def body(imap: Dovecot, smtp: Sink, **changes: Any) -> dict[str, Any]:
    base = {
        "email": ALICE, "name": "Alice", "imap_host": "127.0.0.1", "imap_port": imap.port,
        "smtp_host": "127.0.0.1", "smtp_port": smtp.port, "username": ALICE,
        "password": ALICE_PW, "imap_security": "starttls", "smtp_security": "starttls",
        "tls_verify": False,
    }  # fmt: skip
    return base | changes


async def connect(who: Any, imap: Dovecot, smtp: Sink, **changes: Any) -> str:
    created = await who.call("POST", ACCOUNTS, json=body(imap, smtp, **changes))
    assert created.status_code == 201, created.text
    return str(created.json()["account"]["id"])


async def sealed(app: Api, account_id: str) -> str:
    query = select(MA.c.password_enc).where(MA.c.id == account_id)
    return str(await app.svc.db.read(lambda c: c.execute(query).scalar()))


async def shown(who: Any, account_id: str) -> dict[str, Any]:
    answer = await who.call("GET", ACCOUNTS)
    assert answer.status_code == 200, answer.text
    return next(a for a in answer.json()["accounts"] if a["id"] == account_id)


async def test_name_and_default_change_without_a_login(
    app: Api, clients: list[httpx.AsyncClient], imap: Dovecot, smtp: Sink
) -> None:
    _, alice = await person(app, clients, "owner@example.test")
    first = await connect(alice, imap, smtp)
    second = await connect(alice, imap, smtp, email="two@example.test")
    logins = len(smtp.auth_attempts)
    before = await sealed(app, first)

    renamed = await alice.call("PATCH", f"{ACCOUNTS}/{first}", json={"name": "Alice B."})
    assert renamed.status_code == 200, renamed.text
    account = renamed.json()["account"]
    assert (account["name"], account["sync_status"], account["is_default"]) == (
        "Alice B.", "pending", True,
    )  # fmt: skip
    assert "password" not in renamed.text and ALICE_PW not in renamed.text
    assert len(smtp.auth_attempts) == logins  # nothing to prove: no login
    assert await sealed(app, first) == before

    # The default moves; the default one cannot just stop being it.
    moved = await alice.call("PATCH", f"/api/v1/accounts/{second}", json={"is_default": True})
    assert moved.status_code == 200, moved.text
    assert (await shown(alice, first))["is_default"] is False
    assert (await shown(alice, second))["is_default"] is True
    refused = await alice.call(
        "PATCH", f"/api/v1/mail/accounts/{second}", json={"is_default": False}
    )
    assert (refused.status_code, refused.json()["details"][0]["field"]) == (400, "is_default")
    # The address: another account's is a 409, its own in another case is no clash.
    taken = await alice.call("PATCH", f"{ACCOUNTS}/{second}", json={"email": "ALICE@example.test"})
    assert (taken.status_code, taken.json()["code"]) == (409, "already_connected")
    same = await alice.call("PATCH", f"{ACCOUNTS}/{first}", json={"email": "Alice@Example.Test"})
    assert same.status_code == 200, same.text
    assert len(smtp.auth_attempts) == logins  # the same address: nothing to prove
    # A new address is a new sending identity: both logins proved first, as on connect.
    renamed = await alice.call("PATCH", f"{ACCOUNTS}/{second}", json={"email": "new@example.test"})
    assert renamed.status_code == 200 and renamed.json()["account"]["email"] == "new@example.test"
    assert len(smtp.auth_attempts) == logins + 1
    strict = await alice.call("PATCH", f"{ACCOUNTS}/{first}", json={"nope": 1})
    assert strict.status_code == 400
    bad_host = await alice.call("PATCH", f"{ACCOUNTS}/{first}", json={"imap_host": "not a host"})
    assert bad_host.status_code == 400


async def test_a_new_password_is_proved_on_both_sides_first(
    app: Api, clients: list[httpx.AsyncClient], imap: Dovecot, smtp: Sink
) -> None:
    _, alice = await person(app, clients, "owner@example.test")
    account_id = await connect(alice, imap, smtp)
    assert await syncer(app).sync_due() == 1
    before = await sealed(app, account_id)

    wrong = await alice.call("PATCH", f"{ACCOUNTS}/{account_id}", json={"password": NEW_PW})
    assert wrong.status_code == 400, wrong.text
    assert (wrong.json()["code"], wrong.json()["side"]) == ("imap_login_failed", "imap")
    assert await sealed(app, account_id) == before  # nothing changed
    assert (await shown(alice, account_id))["sync_status"] == "synced"

    imap.set_password(ALICE, NEW_PW)
    try:
        # IMAP takes it, the SMTP server does not: refused at its AUTH, nothing stored.
        refused = await alice.call("PATCH", f"{ACCOUNTS}/{account_id}", json={"password": NEW_PW})
        assert (refused.status_code, refused.json()["code"]) == (400, "smtp_auth_failed")
        assert await sealed(app, account_id) == before
        with Sink(auth=(ALICE, NEW_PW), tls="starttls") as renewed:
            changed = await alice.call(
                "PATCH", f"{ACCOUNTS}/{account_id}",
                json={"password": NEW_PW, "smtp_port": renewed.port},
            )  # fmt: skip
            assert changed.status_code == 200, changed.text
            assert renewed.auth_logins == [ALICE]  # the SMTP AUTH was real
        account = changed.json()["account"]
        assert (account["sync_status"], account["smtp_port"], account["smtp_security"]) == (
            "pending", renewed.port, "starttls",
        )  # fmt: skip
        assert NEW_PW not in changed.text
        assert await sealed(app, account_id) not in ("", before)
        assert await syncer(app).sync_due() == 1  # the new password logs in
        assert (await shown(alice, account_id))["sync_status"] == "synced"
    finally:
        imap.set_password(ALICE, ALICE_PW)


async def test_a_moved_server_without_a_password_clears_it(
    app: Api, clients: list[httpx.AsyncClient], imap: Dovecot, smtp: Sink
) -> None:
    _, alice = await person(app, clients, "owner@example.test")
    account_id = await connect(alice, imap, smtp)
    with Sink(auth=(ALICE, ALICE_PW), tls="starttls") as other:
        moved = await alice.call(
            "PATCH", f"{ACCOUNTS}/{account_id}", json={"smtp_port": other.port}
        )
        assert moved.status_code == 200, moved.text
        assert other.auth_attempts == []  # the password never went to the new server
        account = moved.json()["account"]
        assert (account["sync_status"], account["last_error"]) == ("error", NO_PASSWORD)
        assert await sealed(app, account_id) == ""
        # Given again: proved against where it now goes, stored, pending.
        given = await alice.call("PATCH", f"{ACCOUNTS}/{account_id}", json={"password": ALICE_PW})
        assert given.status_code == 200, given.text
        assert other.auth_logins == [ALICE]
    assert given.json()["account"]["sync_status"] == "pending"
    assert given.json()["account"]["last_error"] is None
    assert await sealed(app, account_id) != ""
    # The username is bound to the password too; the name is not.
    renamed = await alice.call("PATCH", f"{ACCOUNTS}/{account_id}", json={"username": "al"})
    assert renamed.status_code == 200 and await sealed(app, account_id) == ""


async def test_who_may_change_an_account(
    app: Api, clients: list[httpx.AsyncClient], imap: Dovecot, smtp: Sink
) -> None:
    _, owner = await person(app, clients, "boss@example.test")
    member_user, member = await person(app, clients, "member@example.test")
    helper_user, helper = await person(app, clients, "helper@example.test")
    _, stranger = await person(app, clients, "stranger@example.test")
    _, admin = await person(app, clients, "admin@example.test", "admin")
    account_id = await connect(owner, imap, smtp)
    path = f"{ACCOUNTS}/{account_id}"
    hidden = await stranger.call("PATCH", path, json={"name": "mine now"})
    assert (hidden.status_code, hidden.json()["code"]) == (404, "not_found")
    missing = await owner.call("PATCH", f"{ACCOUNTS}/{'a' * 5000}", json={"name": "x"})
    assert missing.status_code == 404
    for user, role in ((member_user, "member"), (helper_user, "admin")):
        await app.svc.db.transaction(
            lambda c, u=user, r=role: put_share(c, "account", account_id, u.id, r, 1.0, None)
        )
    seen_only = await member.call("PATCH", path, json={"name": "member's"})
    assert (seen_only.status_code, seen_only.json()["code"]) == (403, "owner_required")
    assert (await helper.call("PATCH", path, json={"name": "helper's"})).status_code == 200
    assert (await admin.call("PATCH", path, json={"name": "admin's"})).status_code == 200
    assert (await shown(owner, account_id))["name"] == "admin's"


async def test_tls_verify_off_is_for_admins_or_loopback(
    app: Api, clients: list[httpx.AsyncClient], imap: Dovecot, smtp: Sink
) -> None:
    _, member = await person(app, clients, "member@example.test")
    _, admin = await person(app, clients, "admin@example.test", "admin")
    # Loopback on both sides: anyone (no network to sit on between Postern and the server).
    account_id = await connect(member, imap, smtp)
    path = f"{ACCOUNTS}/{account_id}"
    # Off loopback: a member is refused before any connection is made.
    for given in (
        body(imap, smtp, email="far@example.test", imap_host="imap.example.com"),
        body(imap, smtp, email="far@example.test", smtp_host="smtp.example.com"),
    ):
        refused = await member.call("POST", ACCOUNTS, json=given)
        assert refused.status_code == 403, refused.text
        answer = refused.json()
        assert answer["code"] == "tls_verify_admin_only"
        assert answer["details"][0]["field"] == "tls_verify"
        assert "only an admin" in answer["error"]
    moved = await member.call("PATCH", path, json={"imap_host": "imap.example.com"})
    assert (moved.status_code, moved.json()["code"]) == (403, "tls_verify_admin_only")
    # With verification on, the same host is no refusal of this kind (the login then fails:
    # there is no such server).
    verified = await member.call(
        "PATCH", path, json={"imap_host": "imap.invalid", "tls_verify": True}
    )
    assert verified.status_code == 200, verified.text  # no password to prove: cleared
    assert verified.json()["account"]["tls_verify"] is True
    off_again = await member.call("PATCH", path, json={"tls_verify": False})
    assert (off_again.status_code, off_again.json()["code"]) == (403, "tls_verify_admin_only")
    # An admin may: the request goes on to the login (which fails: no such host).
    by_admin = await admin.call(
        "POST", ACCOUNTS,
        json=body(imap, smtp, email="far@example.test", imap_host="imap.invalid"),
    )  # fmt: skip
    assert (by_admin.status_code, by_admin.json()["code"]) == (400, "imap_connect_failed")
    assert (await admin.call("PATCH", path, json={"tls_verify": False})).status_code == 200
