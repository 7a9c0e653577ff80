"""Bounce reports follow their message's visibility over a real uvicorn (api.bounce_ops): an
admin sees every report; a member those of their own mail, and of a connected account they
own (mail that left through it, reports that arrived in its mailbox, matched or not), not
the reports of another's mail through an account shared with them; a key made at the
console those of the mail it sent; any other report matched to no message is an admin's
only. Another's report
is a 404 (never a 403), to read and to reclassify; reclassifying is an admin's, or the
sender's holding the `suppressions` scope (a member, a send-only key: 403). The inbox mail
an account's sync skipped is listed to whoever sees the account.
A report uploaded without the `admin` scope acts only on the uploader's own mail. On SQLite
and on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from gateway.accounts.accounts import seal
from gateway.bounces.ingest import Source
from gateway.bounces.returnpath import VERP_KEY, ReturnPath
from storage import mail_accounts
from storage.accounts import ACCOUNT
from storage.inbox import Skipped, skip
from storage.keys import create_key
from storage.mail_accounts import MailAccountRecord
from storage.messages import message_state
from storage.shares import put_share
from tests.support.api import Api, ApiFactory, auth, payload
from tests.support.people import Person, make_user, sign_in
from tests.support.reports import dsn
from tests.support.service import wait_until
from tests.support.sink import Sink

pytestmark = pytest.mark.timeout(90)

DOMAIN = "bounce.postern.test"
ALICE, ALICE_PW = "alice@mailbox.test", "alice's mailbox secret"
GONE = "gone@example.test"


@pytest.fixture
def mailbox() -> Iterator[Sink]:
    """The connected account's own SMTP server (AUTH required: Alice's credentials)."""
    with Sink(auth=(ALICE, ALICE_PW), tls="starttls") as server:
        yield server


@pytest.fixture
async def api(api_client: ApiFactory, backend: dict[str, Any]) -> Api:
    return await api_client(**backend, bounces={"domain": DOMAIN})


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
    it; the credentials' proof is tests/api/test_accounts_api.py's), then followed."""
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
    """The node follows the accounts (and shares) as the API's changes make it."""
    assert api.svc.identities is not None and api.svc.account_routes is not None
    await api.svc.identities.reload()
    await api.svc.account_routes.changed()


def checked(answer: httpx.Response) -> str:
    assert answer.status_code == 200, answer.text
    return str(answer.json()["message_id"])


async def bounced(api: Api, uploader: str, message_id: str | None) -> int:
    """A DSN for `message_id` (None: a forged token, so unmatched) uploaded; its report id."""
    assert api.svc.box is not None
    if message_id is None:
        verp = f"bounces+msg_00000000000000000000000000a-aaaaaaaaaaaaaaaa@{DOMAIN}"
    else:
        verp = ReturnPath(DOMAIN, api.svc.box.derive(VERP_KEY)).address(message_id, "")
    headers = auth(uploader) | {"Content-Type": "message/rfc822"}
    raw = dsn(GONE, to=verp, nonce=message_id or "forged")
    answer = await api.http.post("/api/v1/bounces", content=raw, headers=headers)
    assert answer.status_code == 201, answer.text
    assert answer.json()["outcome"] == ("unmatched" if message_id is None else "processed")
    return int(answer.json()["report_id"])


def listed(answer: httpx.Response) -> set[int]:
    assert answer.status_code == 200, answer.text
    return {bounce["id"] for bounce in answer.json()["bounces"]}


async def test_reports_follow_their_messages_visibility(
    api: Api, people: list[Person], sink: Sink, mailbox: Sink
) -> None:
    admin = await person(api, people, "admin@people.test", "admin")
    owner = await person(api, people, "owner@people.test")  # connects Alice's mailbox
    sharer = await person(api, people, "shared@people.test")  # Alice's mailbox is shared
    stranger = await person(api, people, "stranger@people.test")
    account = await connected(api, owner, mailbox)
    await api.svc.db.transaction(
        lambda c: put_share(c, ACCOUNT, account.id, sharer.user.id, "member", 0.0, None)
    )
    await followed(api)
    # A provider's forwarder acting for everyone: an admin key (without `admin`, an upload
    # acts only on the uploader's own mail: test_an_upload_acts_only_on_the_uploaders_mail).
    uploader = await api.key("admin")
    forwarder = await api.key("suppressions")
    console = await api.key("send")

    via_account = payload(from_={"email": ALICE}, to=[{"email": GONE}], account_id=account.id)
    owners = checked(await owner.call("POST", "/v1/send", json=via_account))
    sharers = checked(await sharer.call("POST", "/v1/send", json=via_account))
    strangers = checked(await stranger.call("POST", "/v1/send", json=payload(to=[{"email": GONE}])))
    consoles = checked(await api.send(payload(to=[{"email": GONE}]), key=console))
    state = await message_state(api.svc.db, owners)
    assert state is not None and state.user_id == owner.user.id
    reports = {
        name: await bounced(api, uploader, message_id)
        for name, message_id in (
            ("owner", owners), ("sharer", sharers), ("stranger", strangers),
            ("console", consoles), ("unmatched", None),
        )
    }  # fmt: skip
    # What arrived in the owner's mailbox, matched to nothing: the owner's to read.
    assert api.svc.bounces is not None
    place = Source("imap", account_id=account.id, mailbox="INBOX", uidvalidity=1, uid=9)
    inboxed = await api.svc.bounces.ingest(dsn(GONE, nonce="inbox"), place)
    assert inboxed.outcome == "unmatched" and inboxed.report_id is not None
    reports["inbox"] = inboxed.report_id

    def only(*names: str) -> set[int]:
        return {reports[name] for name in names}

    assert listed(await admin.call("GET", "/api/v1/bounces")) == set(reports.values())
    # the account's owner: their own, what the one it is shared with sent through it, and
    # what arrived in its mailbox
    owned = only("owner", "sharer", "inbox")
    assert listed(await owner.call("GET", "/api/v1/bounces")) == owned
    in_box = await owner.call("GET", "/api/v1/bounces", params={"status": "unmatched"})
    assert listed(in_box) == only("inbox")
    assert (await owner.call("GET", f"/api/v1/bounces/{reports['inbox']}")).status_code == 200
    # the one it is shared with: their own only (another's report names its recipients)
    assert listed(await sharer.call("GET", "/api/v1/bounces")) == only("sharer")
    assert listed(await stranger.call("GET", "/api/v1/bounces")) == only("stranger")
    assert listed(await api.get("/api/v1/bounces", key=console)) == only("console")
    assert listed(await api.get("/api/v1/bounces", key=forwarder)) == set()  # sent nothing
    unmatched = await stranger.call("GET", "/api/v1/bounces", params={"status": "unmatched"})
    assert listed(unmatched) == set()
    # A key of a member acts for the member.
    _, members_key = await create_key(api.svc.db, "mine", ["send"], user_id=stranger.user.id)
    assert listed(await api.get("/api/v1/bounces", key=members_key)) == only("stranger")

    for who, name in (
        (stranger, "owner"), (stranger, "unmatched"), (owner, "stranger"),
        (owner, "unmatched"), (sharer, "console"), (sharer, "owner"), (sharer, "inbox"),
        (stranger, "inbox"),
    ):  # fmt: skip
        path = f"/api/v1/bounces/{reports[name]}"
        answer = await who.call("GET", path)
        assert (answer.status_code, answer.json()["code"]) == (404, "not_found"), (who, name)
        again = await who.call("POST", path + "/reclassify", json={"class": "soft"})
        assert again.status_code == 404, (who, name)
    shown = await sharer.call("GET", f"/api/v1/bounces/{reports['sharer']}")
    assert shown.status_code == 200 and shown.json()["bounce"]["message_id"] == sharers
    assert (await admin.call("GET", f"/api/v1/bounces/{reports['unmatched']}")).status_code == 200

    # Reclassifying: an admin, or the sender holding `suppressions`; seeing it is not
    # enough, nor is sending it (a member's role and a send-only key lack the scope: a
    # suppression is installation-wide).
    path = f"/api/v1/bounces/{reports['owner']}/reclassify"
    for who in (owner,):
        refused = await who.call("POST", path, json={"class": "ignore"})
        assert (refused.status_code, refused.json()["code"]) == (403, "forbidden"), who
    by_send_key = await api.http.post(
        f"/api/v1/bounces/{reports['console']}/reclassify",
        json={"class": "ignore"}, headers=auth(console),
    )  # fmt: skip
    assert (by_send_key.status_code, by_send_key.json()["code"]) == (403, "forbidden")
    done = await admin.call("POST", path, json={"class": "soft"})
    assert done.status_code == 200, done.text
    assert done.json()["outcome"] == "changed"
    assert done.json()["bounce"]["classification"] == "soft"
    same = await admin.call("POST", path, json={"class": "soft"})
    assert same.json()["outcome"] == "unchanged"
    bad = await admin.call("POST", path, json={"class": "bogus"})
    assert bad.status_code == 400
    unknown = await admin.call("POST", path, json={"class": "soft", "other": 1})
    assert unknown.status_code == 400
    by_admin = await admin.call(
        "POST", f"/api/v1/bounces/{reports['unmatched']}/reclassify", json={"class": "ignore"}
    )
    assert by_admin.status_code == 200 and by_admin.json()["outcome"] == "changed"
    # A console key of `send` and `suppressions`: its own mail's reports, not another's.
    _, both = await create_key(api.svc.db, "console+", ["send", "suppressions"])
    mine = checked(await api.send(payload(to=[{"email": "other@example.test"}]), key=both))
    own = await bounced(api, uploader, mine)
    by_console = await api.http.post(
        f"/api/v1/bounces/{own}/reclassify", json={"class": "policy"}, headers=auth(both)
    )
    assert by_console.status_code == 200, by_console.text
    not_its = await api.http.post(
        f"/api/v1/bounces/{reports['stranger']}/reclassify",
        json={"class": "ignore"}, headers=auth(both),
    )  # fmt: skip
    assert not_its.status_code == 404


async def test_the_inbox_mail_the_sync_skipped_is_listed_to_who_sees_the_account(
    api: Api, people: list[Person], mailbox: Sink
) -> None:
    owner = await person(api, people, "owner@people.test")
    sharer = await person(api, people, "shared@people.test")
    stranger = await person(api, people, "stranger@people.test")
    admin = await person(api, people, "admin@people.test", "admin")
    account = await connected(api, owner, mailbox)
    await api.svc.db.transaction(
        lambda c: put_share(c, ACCOUNT, account.id, sharer.user.id, "member", 0.0, None)
    )
    for uid, at in ((4, 1_800_000_000.0), (5, 1_800_000_060.0)):
        record = Skipped(account.id, "INBOX", 11, uid, 12_000_000, "over 10485760 bytes", at)
        await api.svc.db.transaction(lambda conn, record=record: skip(conn, record))

    path = f"/api/v1/accounts/{account.id}/skipped"
    for who in (owner, sharer, admin):
        answer = await who.call("GET", path)
        assert answer.status_code == 200, answer.text
        found = answer.json()["skipped"]
        assert [(s["uid"], s["size"], s["mailbox"]) for s in found] == [
            (5, 12_000_000, "INBOX"),  # newest first
            (4, 12_000_000, "INBOX"),
        ]
        assert found[0]["created_at"].startswith("2027-01-15T08:01:00")
    assert (await owner.call("GET", f"/mail/accounts/{account.id}/skipped")).status_code == 200
    refused = await stranger.call("GET", path)
    assert (refused.status_code, refused.json()["code"]) == (404, "not_found")
    assert (await owner.call("GET", "/api/v1/accounts/nope/skipped")).status_code == 404


async def upload(api: Api, key: str, raw: bytes) -> httpx.Response:
    headers = auth(key) | {"Content-Type": "message/rfc822"}
    return await api.http.post("/api/v1/bounces", content=raw, headers=headers)


async def suppressed(api: Api, key: str, email: str) -> bool:
    answer = await api.get(f"/api/v1/suppressions/{email}", key=key)
    assert answer.status_code in (200, 404), answer.text
    return answer.status_code == 200


async def test_an_upload_acts_only_on_the_uploaders_mail(
    api: Api, people: list[Person], sink: Sink
) -> None:
    """Two users: Bob (an admin, uploading with a key of scope `suppressions` only, so
    without `admin`) and Carol (a member). Bob's reports naming Carol's message, by VERP
    token or by Message-ID, are kept unmatched and change nothing (answered as a report for
    an unknown message); naming his own, they act; an admin's act on anyone's. A console key
    without `admin` acts on the mail it sent only."""
    bob = await person(api, people, "bob@people.test", "admin")
    carol = await person(api, people, "carol@people.test")
    _, bobs_key = await create_key(api.svc.db, "forwarder", ["suppressions"], user_id=bob.user.id)
    admin_key = await api.key("admin")
    console = await api.key("suppressions")
    assert api.svc.box is not None
    path = ReturnPath(DOMAIN, api.svc.box.derive(VERP_KEY))

    carols = checked(await carol.call("POST", "/v1/send", json=payload(to=[{"email": GONE}])))
    bobs = checked(await bob.call("POST", "/v1/send", json=payload(to=[{"email": "b@x.test"}])))
    for message_id in (carols, bobs):
        assert await wait_until(lambda m=message_id: _delivered(api, m), timeout=20)

    by_token = dsn(GONE, to=path.address(carols, ""), nonce="t")
    by_message_id = dsn(GONE, message_id=f"<{carols}@postern.test>", nonce="m")
    for raw in (by_token, by_message_id):
        for key in (bobs_key, console):
            answer = await upload(api, key, raw + key[-4:].encode())  # each its own bytes
            assert answer.status_code == 201, answer.text
            assert answer.json()["outcome"] == "unmatched"
            report = await api.get(f"/api/v1/bounces/{answer.json()['report_id']}", key=admin_key)
            shown = report.json()["bounce"]
            assert (shown["status"], shown["message_id"]) == ("unmatched", None)
            assert "did not send" in shown["error"]
            # nobody but an admin sees it: not Carol, whose message it named
            assert listed(await carol.call("GET", "/api/v1/bounces")) == set()
    state = await message_state(api.svc.db, carols, True)
    assert state is not None and state.status == "delivered"
    assert [r.status for r in state.recipients] == ["delivered"]
    assert not await suppressed(api, admin_key, GONE)
    shown_to_carol = await carol.call("GET", f"/v1/messages/{carols}")
    assert shown_to_carol.json()["status"] == "delivered"
    kinds = {event["type"] for event in shown_to_carol.json()["events"]}
    assert "delivered" in kinds and not kinds & {"bounced", "soft_bounce", "complaint"}

    # Bob's report for his own message acts; so does an admin's for Carol's.
    own = await upload(api, bobs_key, dsn("b@x.test", to=path.address(bobs, ""), nonce="own"))
    assert own.json()["outcome"] == "processed", own.text
    assert await suppressed(api, admin_key, "b@x.test")
    by_admin = await upload(api, admin_key, by_token)
    assert by_admin.json()["outcome"] == "processed", by_admin.text
    assert await suppressed(api, admin_key, GONE)
    state = await message_state(api.svc.db, carols, True)
    assert state is not None and [r.status for r in state.recipients] == ["bounced"]
    assert listed(await carol.call("GET", "/api/v1/bounces")) == {by_admin.json()["report_id"]}


async def _delivered(api: Api, message_id: str) -> bool:
    state = await message_state(api.svc.db, message_id)
    return state is not None and state.status == "delivered"
