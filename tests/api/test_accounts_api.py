"""Connected accounts (seed 004) through a real uvicorn, against a real IMAP server (Debian's
dovecot, tests/support/imap.py) and a real SMTP server (the sink, with AUTH and TLS): connect
with good credentials on both sides (STARTTLS and implicit TLS) -> 201 pending -> synced;
a bad IMAP or SMTP password -> 400 naming the side and the stage, nothing stored; duplicate
-> 409; quota -> 403; disconnect -> gone, 404 for another's; the sync status through its
states; the SSRF guard; and the password in no answer and no log line."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from gateway.accounts.sync import AccountSync, SyncSettings
from gateway.people.passwords import Passwords
from gateway.people.users import Users
from gateway.security.hostguard import HostGuard
from storage.db import Database
from storage.models import MailAccount
from storage.shares import put_share
from storage.users import UserRecord
from tests.support.api import Api, ApiFactory, auth
from tests.support.imap import Dovecot, available
from tests.support.people import PASSWORD, sign_in
from tests.support.service import wait_until
from tests.support.sink import Sink

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(not available(), reason="dovecot-imapd is not installed (.ci/run does)"),
]

ALICE, ALICE_PW = "alice@example.test", "imap-and-smtp secret 1"
BOB, BOB_PW = "bob@example.test", "bob's own secret 2"
ACCOUNTS = "/mail/accounts"
SEED_FIELDS = {
    "id", "email", "name", "imap_host", "imap_port", "smtp_host", "smtp_port", "sync_status",
    "is_default", "created_at",
}  # fmt: skip
ADDED_FIELDS = {"last_error", "last_synced_at"}
MA = MailAccount


@pytest.fixture(scope="module")
def imap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    with Dovecot(tmp_path_factory.mktemp("imap"), {ALICE: ALICE_PW, BOB: BOB_PW}) as server:
        yield server


@pytest.fixture
def smtp() -> Iterator[Sink]:
    with Sink(auth=(ALICE, ALICE_PW), tls="starttls") as server:
        yield server


@pytest.fixture
async def app(api_client: ApiFactory) -> Api:
    """The service, its background sync idle (the tests run it), quota 2."""
    return await api_client(accounts={"sync_interval": "1h", "max_per_user": 2, "timeout": "5s"})


class People:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.clients: list[httpx.AsyncClient] = []

    async def __call__(self, address: str, role: str = "member") -> tuple[UserRecord, Any]:
        made = await Users(self.api.svc.db, Passwords()).create(address, role, PASSWORD)
        person = await sign_in(str(self.api.http.base_url), made)
        self.clients.append(person.http)
        return made, person

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()


@pytest.fixture
async def people(app: Api) -> AsyncIterator[People]:
    made = People(app)
    try:
        yield made
    finally:
        await made.close()


def body(imap: Dovecot, smtp: Sink, **changes: Any) -> dict[str, Any]:
    base = {
        "email": ALICE, "name": "Alice", "imap_host": "127.0.0.1", "imap_port": imap.port,
        "smtp_host": "127.0.0.1", "smtp_port": smtp.port, "username": ALICE,
        "password": ALICE_PW, "imap_security": "starttls", "smtp_security": "starttls",
        "tls_verify": False,
    }  # fmt: skip
    return {k: v for k, v in (base | changes).items() if v is not None}


def syncer(api: Api, node: str = "node-t", guard: HostGuard | None = None) -> AccountSync:
    assert api.svc.db is not None and api.svc.box is not None
    settings = SyncSettings(node, interval=3600, timeout=5)
    return AccountSync(api.svc.db, api.svc.box, guard or HostGuard(), settings)


async def listed(person: Any, path: str = ACCOUNTS) -> list[dict[str, Any]]:
    answer = await person.call("GET", path)
    assert answer.status_code == 200, answer.text
    assert answer.json()["success"] is True
    return list(answer.json()["accounts"])


async def _due_now(db: Database) -> None:
    await db.transaction(lambda c: c.execute(update(MA).values(next_sync_at=0.0)))


async def test_connect_sync_list_and_disconnect(
    app: Api, people: People, imap: Dovecot, smtp: Sink
) -> None:
    _, alice = await people("owner@example.test", "owner")
    created = await alice.call("POST", ACCOUNTS, json=body(imap, smtp))
    assert created.status_code == 201, created.text
    account = created.json()["account"]
    assert created.json() == {
        "success": True,
        "account": {"id": account["id"], "email": ALICE, "sync_status": "pending"},
    }
    assert smtp.auth_logins == [ALICE]  # the SMTP AUTH was real
    [shown] = await listed(alice)
    assert set(shown) >= SEED_FIELDS | ADDED_FIELDS
    assert (shown["sync_status"], shown["is_default"], shown["imap_port"]) == (
        "pending", True, imap.port,
    )  # fmt: skip
    assert await listed(alice, "/api/v1/accounts") == [shown]
    assert await listed(alice, "/api/v1/mail/accounts") == [shown]

    assert await syncer(app).sync_due() == 1
    [synced] = await listed(alice)
    assert synced["sync_status"] == "synced" and synced["last_error"] is None
    assert synced["last_synced_at"].endswith("Z")
    row = await app.svc.db.read(lambda c: c.execute(select(MA)).one())  # type: ignore[union-attr]
    assert row.uidvalidity and row.uidnext == 1

    gone = await alice.call("DELETE", f"{ACCOUNTS}/{account['id']}")
    assert (gone.status_code, gone.json()) == (200, {"success": True})
    assert await listed(alice) == []
    again = await alice.call("DELETE", f"/api/v1/accounts/{account['id']}")
    assert (again.status_code, again.json()["code"]) == (404, "not_found")


async def test_implicit_tls_on_both_sides(app: Api, people: People, imap: Dovecot) -> None:
    _, alice = await people("owner@example.test", "owner")
    with Sink(auth=(ALICE, ALICE_PW), tls="implicit") as tls_sink:
        given = body(imap, tls_sink, imap_port=imap.tls_port, imap_security="ssl")
        created = await alice.call("POST", ACCOUNTS, json=given | {"smtp_security": "ssl"})
    assert created.status_code == 201, created.text
    assert await syncer(app).sync_due() == 1
    [shown] = await listed(alice)
    assert (shown["sync_status"], shown["imap_security"], shown["smtp_security"]) == (
        "synced", "ssl", "ssl",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "code", "side", "stage", "words"),
    [
        ({"password": "wrong"}, "imap_login_failed", "imap", "login", "IMAP login failed"),
        ({"imap_port": 1}, "imap_connect_failed", "imap", "connect", "IMAP connect failed"),
        ({"imap_security": "ssl"}, "imap_tls_failed", "imap", "tls", "IMAP tls failed"),
        ({"tls_verify": True}, "imap_tls_failed", "imap", "tls", "certificate verify failed"),
        # An SMTP server where IMAP was expected: refused at its greeting, at once.
        ({"imap_port": "smtp"}, "imap_greeting_failed", "imap", "greeting", "not greet in IMAP"),
    ],
)
async def test_imap_failures_name_side_and_stage(
    app: Api, people: People, imap: Dovecot, smtp: Sink, changes: dict[str, Any], code: str,
    side: str, stage: str, words: str,
) -> None:  # fmt: skip
    _, alice = await people("owner@example.test", "owner")
    if changes.get("imap_port") == "smtp":
        changes = {"imap_port": smtp.port}
    refused = await alice.call("POST", ACCOUNTS, json=body(imap, smtp, **changes))
    assert refused.status_code == 400, refused.text
    answer = refused.json()
    assert (answer["code"], answer["side"], answer["stage"]) == (code, side, stage)
    assert words in answer["error"] and answer["success"] is False
    assert smtp.auth_attempts == []  # IMAP first: no AUTH went to the SMTP server
    assert await listed(alice) == []


async def test_a_bad_smtp_password_names_smtp_auth(app: Api, people: People, imap: Dovecot) -> None:
    _, alice = await people("owner@example.test", "owner")
    with Sink(auth=(ALICE, "the SMTP server's other password"), tls="starttls") as other:
        refused = await alice.call("POST", ACCOUNTS, json=body(imap, other))
    assert refused.status_code == 400, refused.text
    answer = refused.json()
    assert (answer["code"], answer["side"], answer["stage"]) == ("smtp_auth_failed", "smtp", "auth")
    assert answer["error"].startswith("SMTP login failed") and "535" in answer["error"]
    assert await listed(alice) == []


async def test_duplicate_is_409_and_the_quota_403(
    app: Api, people: People, imap: Dovecot, smtp: Sink
) -> None:
    _, alice = await people("owner@example.test", "owner")
    _, other = await people("other@example.test", "member")
    assert (await alice.call("POST", ACCOUNTS, json=body(imap, smtp))).status_code == 201
    for who, email in ((alice, ALICE), (other, "ALICE@Example.Test")):
        again = await who.call("POST", ACCOUNTS, json=body(imap, smtp, email=email))
        assert (again.status_code, again.json()["code"]) == (409, "already_connected")
    second = await alice.call("POST", ACCOUNTS, json=body(imap, smtp, email="two@example.test"))
    assert second.status_code == 201, second.text
    over = await alice.call("POST", ACCOUNTS, json=body(imap, smtp, email="three@example.test"))
    assert (over.status_code, over.json()["code"]) == (403, "account_quota")
    shown = await listed(alice)
    assert [a["is_default"] for a in shown] == [True, False]


async def test_another_users_account_is_404_and_a_shared_one_is_seen(
    app: Api, people: People, imap: Dovecot, smtp: Sink
) -> None:
    owner_user, owner = await people("boss@example.test", "member")
    member_user, member = await people("member@example.test", "member")
    _, admin = await people("admin@example.test", "admin")
    account_id = (await owner.call("POST", ACCOUNTS, json=body(imap, smtp))).json()["account"]["id"]
    assert await listed(member) == []
    refused = await member.call("DELETE", f"{ACCOUNTS}/{account_id}")
    assert (refused.status_code, refused.json()["code"]) == (404, "not_found")
    assert [a["id"] for a in await listed(admin)] == [account_id]
    db = app.svc.db
    assert db is not None
    await db.transaction(
        lambda c: put_share(c, "account", account_id, member_user.id, "member", 1.0, None)
    )
    assert [a["id"] for a in await listed(member)] == [account_id]
    # Shared as member: seen, not the member's to disconnect (the owner's, as a change is).
    kept = await member.call("DELETE", f"{ACCOUNTS}/{account_id}")
    assert (kept.status_code, kept.json()["code"]) == (403, "owner_required")
    assert [a["id"] for a in await listed(owner)] == [account_id]
    # The account's owner manages its invitations (seed 004's routes know the kind).
    invited = await owner.call("GET", f"/mail/accounts/{account_id}/shares")
    assert invited.status_code == 200, invited.text
    assert [s["user_id"] for s in invited.json()["shares"]] == [member_user.id]
    assert owner_user.id != member_user.id


async def test_the_sync_status_goes_through_its_states(
    app: Api, people: People, imap: Dovecot, smtp: Sink, tmp_path: Path
) -> None:
    _, alice = await people("owner@example.test", "owner")
    given = body(imap, smtp, email=BOB, username=BOB, password=BOB_PW)
    with Sink(auth=(BOB, BOB_PW), tls="starttls") as bob_smtp:
        created = await alice.call("POST", ACCOUNTS, json=given | {"smtp_port": bob_smtp.port})
    assert created.status_code == 201, created.text
    assert [a["sync_status"] for a in await listed(alice)] == ["pending"]
    sync = syncer(app)
    job = await sync._claim(created.json()["account"]["id"])
    assert job is not None
    assert [a["sync_status"] for a in await listed(alice)] == ["syncing"]
    await sync._sync(job)
    assert [a["sync_status"] for a in await listed(alice)] == ["synced"]

    imap.set_password(BOB, "changed since")  # the account's password no longer works
    try:
        assert app.svc.db is not None
        await _due_now(app.svc.db)
        assert await sync.sync_due() == 1
        [failed] = await listed(alice)
        assert failed["sync_status"] == "error"
        assert failed["last_error"].startswith("IMAP login failed")
        assert failed["last_synced_at"] is not None  # the last good one
    finally:
        imap.set_password(BOB, BOB_PW)


async def test_the_ssrf_guard_refuses_denied_hosts(
    app: Api, people: People, imap: Dovecot, smtp: Sink
) -> None:
    _, alice = await people("owner@example.test", "owner")
    for field, host in (
        ("imap_host", "169.254.169.254"),
        ("smtp_host", "metadata.google.internal"),
        ("imap_host", "[fe80::1]"),
    ):
        refused = await alice.call("POST", ACCOUNTS, json=body(imap, smtp, **{field: host}))
        assert refused.status_code == 400, refused.text
        assert refused.json()["code"] == "host_not_allowed"
        assert refused.json()["details"][0]["field"] == field
    # Loopback is allowed as for pools, unless the operator denies it; the sync asks too.
    assert (await alice.call("POST", ACCOUNTS, json=body(imap, smtp))).status_code == 201
    denying = HostGuard(["127.0.0.0/8"])
    assert await syncer(app, guard=denying).sync_due() == 1
    [shown] = await listed(alice)
    assert shown["sync_status"] == "error" and "denied network" in shown["last_error"]


async def test_operators_can_deny_loopback_too(
    api_client: ApiFactory, imap: Dovecot, smtp: Sink
) -> None:
    strict = await api_client(security={"deny_networks": ["127.0.0.0/8"]})
    strict_people = People(strict)
    try:
        _, someone = await strict_people("owner@example.test", "owner")
        refused = await someone.call("POST", ACCOUNTS, json=body(imap, smtp))
        assert (refused.status_code, refused.json()["code"]) == (400, "host_not_allowed")
        assert "denied network" in refused.json()["error"]
    finally:
        await strict_people.close()


async def test_input_is_bounded_and_strict(
    app: Api, people: People, imap: Dovecot, smtp: Sink
) -> None:
    _, alice = await people("owner@example.test", "owner")
    bad = [
        body(imap, smtp, imap_port=0),
        body(imap, smtp, smtp_port=65536),
        body(imap, smtp, imap_port="993"),
        body(imap, smtp, imap_host="not a host"),
        body(imap, smtp, email="nobody"),
        body(imap, smtp, password=""),
        body(imap, smtp, username="a\r\nb"),
        body(imap, smtp, extra=1),
        body(imap, smtp, imap_security="tls"),
        body(imap, smtp, imap_host="imap.example.com", imap_security="none"),
        body(imap, smtp, password="x" * 1025),
    ]
    for given in bad:
        refused = await alice.call("POST", ACCOUNTS, json=given)
        assert refused.status_code == 400, (given, refused.text)
        assert refused.json()["code"] == "invalid_request"
    clear = await alice.call(
        "POST", ACCOUNTS, json=body(imap, smtp, imap_host="imap.example.com", imap_security="none")
    )
    assert clear.json()["details"][0]["field"] == "imap_security"
    long_id = await alice.call("DELETE", f"{ACCOUNTS}/{'a' * 5000}")
    assert long_id.status_code == 404
    # Plain IMAP and SMTP, to loopback only: allowed.
    with Sink(auth=(ALICE, ALICE_PW)) as plain:
        given = body(imap, plain, imap_security="none", smtp_security="none")
        assert (await alice.call("POST", ACCOUNTS, json=given)).status_code == 201


async def test_a_key_acts_as_its_user_and_a_console_key_connects_nothing(
    app: Api, imap: Dovecot, smtp: Sink
) -> None:
    console = await app.key("admin")
    refused = await app.http.post(ACCOUNTS, json=body(imap, smtp), headers=auth(console))
    assert (refused.status_code, refused.json()["code"]) == (403, "user_required")
    listed_by_key = await app.http.get(ACCOUNTS, headers=auth(console))
    assert listed_by_key.json() == {"success": True, "accounts": []}
    assert (await app.http.get(ACCOUNTS)).status_code == 401


async def test_the_password_is_in_no_answer_and_no_log(
    app: Api, people: People, imap: Dovecot, smtp: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _, alice = await people("owner@example.test", "owner")
    answers = [await alice.call("POST", ACCOUNTS, json=body(imap, smtp))]
    wrong = 'a "quoted\\ wrong password'
    given = body(imap, smtp, email="two@example.test", password=wrong)
    answers.append(await alice.call("POST", ACCOUNTS, json=given))
    answers.append(
        await alice.call("POST", ACCOUNTS, json=body(imap, smtp, email=BOB, password=wrong))
    )
    await syncer(app).sync_due()
    answers.append(await alice.call("GET", ACCOUNTS))
    answers.append(await alice.call("GET", "/openapi.json"))
    assert [a.status_code for a in answers[:3]] == [201, 400, 400]
    row = await app.svc.db.read(lambda c: c.execute(select(MA)).one())  # type: ignore[union-attr]
    assert row.password_enc.startswith("pst1.")
    for secret in (ALICE_PW, wrong):
        assert secret not in caplog.text
        assert secret not in row.password_enc
        for answer in answers:
            assert secret not in answer.text


async def test_serve_syncs_connected_accounts_in_the_background(
    api_client: ApiFactory, imap: Dovecot, smtp: Sink
) -> None:
    running = await api_client(accounts={"sync_interval": "1s", "timeout": "5s"})
    made = People(running)
    try:
        _, alice = await made("owner@example.test", "owner")
        created = await alice.call("POST", ACCOUNTS, json=body(imap, smtp))
        assert created.json()["account"]["sync_status"] == "pending"

        async def synced() -> bool:
            return [a["sync_status"] for a in await listed(alice)] == ["synced"]

        assert await wait_until(synced, timeout=10)
    finally:
        await made.close()
