"""A connected account is a sending identity and a route (issue 20, seed 002): mail From
its address (over HTTP or SMTP), or with `account_id` in /v1/send, leaves through the
account's own SMTP server (a sink that requires AUTH) with its credentials, never the
default pool's; only its owner, users it is shared with and admins may send as it; its
address satisfies `[policy] sender = "verified"`; disconnected, its route is gone. On SQLite
and PostgreSQL, through a real Service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from gateway.accounts.accounts import seal
from storage import mail_accounts
from storage.accounts import ACCOUNT
from storage.keys import create_key
from storage.mail_accounts import MailAccountRecord
from storage.shares import put_share
from tests.support.api import Api, ApiFactory, auth, payload
from tests.support.people import Person, make_user, sign_in
from tests.support.service import metric, wait_until
from tests.support.sink import Sink
from tests.support.smtp import Dialogue, plain

pytestmark = pytest.mark.timeout(90)

ALICE, ALICE_PW = "alice@mailbox.test", "alice's mailbox secret"
RCPT = "friend@example.test"


@pytest.fixture
def mailbox() -> Iterator[Sink]:
    """The account's own SMTP server: STARTTLS, AUTH required (only Alice's credentials)."""
    with Sink(auth=(ALICE, ALICE_PW), tls="starttls") as server:
        yield server


@pytest.fixture
async def api(api_client: ApiFactory, backend: dict[str, Any]) -> Api:
    return await api_client(**backend, policy={"sender": "verified"})


@pytest.fixture
async def people() -> AsyncIterator[list[Person]]:
    signed_in: list[Person] = []
    yield signed_in
    for person in signed_in:
        await person.http.aclose()


async def person(api: Api, people: list[Person], email: str, role: str = "member") -> Person:
    signed_in = await sign_in(str(api.http.base_url), await make_user(api.svc.db, email, role))
    people.append(signed_in)
    return signed_in


async def connected(api: Api, owner: Person, mailbox: Sink) -> MailAccountRecord:
    """Alice's mailbox connected as `owner`'s account (stored as the connect route stores
    it: the credentials' proof is tests/api/test_accounts_api.py's), then followed by this
    node as the API's connect makes it follow."""
    values = {
        "email": ALICE, "name": "Alice", "imap_host": "127.0.0.1", "imap_port": 1,
        "imap_security": "none", "smtp_host": "127.0.0.1", "smtp_port": mailbox.port,
        "smtp_security": "starttls", "tls_verify": False, "username": ALICE,
    }  # fmt: skip
    box = api.svc.box
    assert box is not None
    record = await mail_accounts.create_account(
        api.svc.db, values, lambda account_id: seal(box, account_id, ALICE_PW),
        owner.user.id, max_per_user=5,
    )  # fmt: skip
    await followed(api)
    return record


async def followed(api: Api) -> None:
    assert api.svc.identities is not None and api.svc.account_routes is not None
    await api.svc.identities.reload()
    await api.svc.account_routes.changed()


async def smtp_from_alice(api: Api, secret: str) -> tuple[int, str]:
    """One message From Alice over the SMTP door, AUTH with `secret`: the first reply that
    refuses it, else the reply to its final dot."""
    content = f"From: Alice <{ALICE}>\r\nTo: {RCPT}\r\nSubject: hi\r\n\r\nhello\r\n.\r\n"
    steps = [
        ("EHLO client.test", 250), (plain(secret), 235), (f"MAIL FROM:<{ALICE}>", 250),
        (f"RCPT TO:<{RCPT}>", 250), ("DATA", 354),
    ]  # fmt: skip
    smtp = await Dialogue.open("127.0.0.1", api.svc.smtp_port)
    try:
        for line, expected in steps:
            code, text = await smtp.say(line)
            if code != expected:
                return code, text
        return await smtp.say(content.encode())
    finally:
        smtp.close()


def from_alice(**fields: Any) -> dict[str, Any]:
    return payload(from_={"email": ALICE, "name": "Alice"}, to=[{"email": RCPT}], **fields)


async def test_http_with_account_id_and_with_its_from(
    api: Api, people: list[Person], sink: Sink, mailbox: Sink
) -> None:
    owner = await person(api, people, "owner@people.test")
    account = await connected(api, owner, mailbox)
    sent_before = metric("postern_upstream_send_seconds_count", pool=ALICE)

    by_id = payload(from_={"email": ALICE}, to=[{"email": RCPT}], account_id=account.id)
    answer = await owner.call("POST", "/v1/send", json=by_id)
    assert answer.status_code == 200, answer.text
    answer = await owner.call("POST", "/v1/send", json=from_alice())
    assert answer.status_code == 200, answer.text

    assert await mailbox.wait_for_async(2)
    assert [m.rcpt_tos for m in mailbox.messages] == [[RCPT], [RCPT]]
    assert {m.mail_from for m in mailbox.messages} == {ALICE}
    assert ALICE in mailbox.auth_logins  # with the account's own credentials
    assert sink.messages == []  # never the default pool's server
    assert metric("postern_upstream_send_seconds_count", pool=ALICE) == sent_before + 2
    exported = (await api.http.get("/metrics")).text
    assert f'postern_messages_delivered_total{{pool="{ALICE}"}}' in exported
    status = await owner.call("GET", f"/v1/messages/{answer.json()['message_id']}")
    assert status.json()["status"] == "delivered", status.text


async def test_smtp_with_the_accounts_from(
    api: Api, people: list[Person], sink: Sink, mailbox: Sink
) -> None:
    owner = await person(api, people, "owner@people.test")
    await connected(api, owner, mailbox)
    _, secret = await create_key(api.svc.db, "alice's app", ("send",), owner.user.id)
    code, text = await smtp_from_alice(api, secret)
    assert code == 250, text
    assert await mailbox.wait_for_async(1)
    assert mailbox.messages[0].mail_from == ALICE and ALICE in mailbox.auth_logins
    assert sink.messages == []


async def test_only_the_owner_shares_and_admins_send_as_it(
    api: Api, people: list[Person], sink: Sink, mailbox: Sink
) -> None:
    owner = await person(api, people, "owner@people.test")
    account = await connected(api, owner, mailbox)
    stranger = await person(api, people, "stranger@people.test")

    refused = await stranger.call("POST", "/v1/send", json=from_alice())
    assert refused.status_code == 403, refused.text
    assert "not shared with you" in refused.json()["error"]
    unseen = payload(to=[{"email": RCPT}], account_id=account.id)
    hidden = await stranger.call("POST", "/v1/send", json=unseen)
    assert (hidden.status_code, hidden.json()["code"]) == (400, "unknown_account")
    # ... with the stranger's own key, over HTTP and over SMTP
    _, secret = await create_key(api.svc.db, "stranger's", ("send",), stranger.user.id)
    answer = await api.http.post("/v1/send", json=from_alice(), headers=auth(secret))
    assert answer.status_code == 403, answer.text
    code, text = await smtp_from_alice(api, secret)  # refused at MAIL FROM: no body sent
    assert (code, text.split()[0]) == (550, "5.7.1") and "not shared with you" in text

    await api.svc.db.transaction(
        lambda c: put_share(c, ACCOUNT, account.id, stranger.user.id, "member", 0.0, None)
    )
    await followed(api)
    shared = await stranger.call("POST", "/v1/send", json=from_alice())
    assert shared.status_code == 200, shared.text
    admin = await person(api, people, "admin@people.test", "admin")
    by_admin = await admin.call("POST", "/v1/send", json=from_alice())
    assert by_admin.status_code == 200, by_admin.text
    assert await mailbox.wait_for_async(2) and sink.messages == []


async def test_disconnected_the_route_is_gone(
    api: Api, people: list[Person], sink: Sink, mailbox: Sink
) -> None:
    owner = await person(api, people, "owner@people.test")
    account = await connected(api, owner, mailbox)
    gone = await owner.call("DELETE", f"/mail/accounts/{account.id}")
    assert gone.status_code == 200, gone.text
    assert api.svc.registry is not None and api.svc.registry.account_ids() == frozenset()

    by_id = payload(from_={"email": ALICE}, to=[{"email": RCPT}], account_id=account.id)
    answer = await owner.call("POST", "/v1/send", json=by_id)
    assert (answer.status_code, answer.json()["code"]) == (400, "unknown_account")
    answer = await owner.call("POST", "/v1/send", json=from_alice())
    assert (answer.status_code, answer.json()["code"]) == (403, "unverified_sender")
    assert mailbox.messages == [] and sink.messages == []


async def test_another_nodes_connect_is_followed_within_the_watch(
    api: Api, people: list[Person], sink: Sink, mailbox: Sink
) -> None:
    """Stored without this node being told (another node's connect): identities within
    2 s, the live upstream within its watch interval."""
    owner = await person(api, people, "owner@people.test")
    box = api.svc.box
    assert box is not None and api.svc.registry is not None
    values = {
        "email": ALICE, "imap_host": "127.0.0.1", "imap_port": 1, "imap_security": "none",
        "smtp_host": "127.0.0.1", "smtp_port": mailbox.port, "smtp_security": "starttls",
        "tls_verify": False, "username": ALICE,
    }  # fmt: skip
    account = await mail_accounts.create_account(
        api.svc.db, values, lambda i: seal(box, i, ALICE_PW), owner.user.id, 5
    )
    registry = api.svc.registry
    assert await wait_until(lambda: account.id in registry.account_ids(), timeout=6)

    async def accepted() -> bool:
        answer = await owner.call("POST", "/v1/send", json=from_alice())
        return answer.status_code == 200

    assert await wait_until(accepted, timeout=6, interval=0.5)
    assert await mailbox.wait_for_async(1) and sink.messages == []


async def test_account_id_with_alias_id_is_refused(api: Api, people: list[Person]) -> None:
    owner = await person(api, people, "owner@people.test")
    body = payload(account_id="0b9c5f4e-1d2a-4c3b-8e7f-111111111111", alias_id="pool_x")
    answer = await owner.call("POST", "/v1/send", json=body)
    assert (answer.status_code, answer.json()["code"]) == (400, "invalid_request")
    malformed = await owner.call("POST", "/v1/send", json=payload(account_id="not-a-uuid"))
    assert (malformed.status_code, malformed.json()["code"]) == (400, "invalid_request")
