"""Settings → Accounts through a real uvicorn with httpx, as a browser without JavaScript
uses it: the accounts listed with their sync state, a refused field beside the form, a
login that failed shown with its side and stage (a closed port: no IMAP server needed), the
password never shown back, a disconnect confirmed first; a member sees only theirs."""

from __future__ import annotations

import pytest
from markupsafe import escape

from gateway.accounts.accounts import seal
from storage import mail_accounts
from storage.mail_accounts import MailAccountRecord
from storage.shares import put_share
from storage.users import UserRecord
from tests.support.api import Api, ApiFactory
from tests.support.people import make_user
from tests.support.processes import free_port
from tests.support.web import Browser, sign_in

pytestmark = pytest.mark.timeout(60)
SECRET = "s3cret-never-shown"


@pytest.fixture
async def api(api_client: ApiFactory) -> Api:
    return await api_client(accounts={"sync_interval": "1h", "timeout": "5s"})


async def stored(api: Api, email: str, user_id: str) -> MailAccountRecord:
    """An account made directly in storage (no login proved), as the sync tests make one."""
    box, db = api.svc.box, api.svc.db
    assert box is not None and db is not None
    values = {
        "email": email, "name": "", "imap_host": "127.0.0.1", "imap_port": 993,
        "imap_security": "ssl", "smtp_host": "127.0.0.1", "smtp_port": 465,
        "smtp_security": "ssl", "tls_verify": True, "username": email,
    }  # fmt: skip
    return await mail_accounts.create_account(
        db, values, lambda account_id: seal(box, account_id, SECRET), user_id, 10
    )


async def signed(api: Api, email: str, role: str) -> tuple[Browser, UserRecord]:
    user = await make_user(api.svc.db, email, role)
    return await sign_in(str(api.http.base_url), user), user


def form(**changed: str) -> dict[str, str]:
    port = str(free_port())  # nothing listens there: the IMAP connect fails
    fields = {
        "email": "me@example.test", "name": "Me", "imap_host": "127.0.0.1", "imap_port": port,
        "imap_security": "none", "smtp_host": "127.0.0.1", "smtp_port": port,
        "smtp_security": "none", "username": "me", "password": SECRET,
    }  # fmt: skip
    return fields | changed


async def test_accounts_are_listed_refused_and_disconnected(api: Api) -> None:
    owner, user = await signed(api, "ops@example.com", "owner")
    try:
        record = await stored(api, "box@example.test", user.id)
        listed = await owner.get("/accounts")
        assert listed.status_code == 200 and f'id="account-{record.id}"' in listed.text
        assert "box@example.test" in listed.text and ">pending<" in listed.text
        assert 'href="/accounts"' in listed.text and SECRET not in listed.text

        bad = await owner.post("/accounts", form(email="not an address"))
        assert bad.status_code == 400 and 'id="email-problem"' in bad.text
        assert 'value="not an address"' in bad.text and SECRET not in bad.text
        failed = await owner.post("/accounts", form())
        assert failed.status_code == 400, failed.text
        assert 'id="verify-failure"' in failed.text and "IMAP side failed" in failed.text
        assert "connect stage" in failed.text and SECRET not in failed.text
        assert 'value="me@example.test"' in failed.text

        asked = await owner.get(f"/accounts/{record.id}/disconnect")
        assert "Disconnect the account box@example.test?" in asked.text
        gone = await owner.post(f"/accounts/{record.id}/disconnect")
        assert gone.status_code == 303
        assert gone.headers["location"] == "/accounts?done=disconnected"
        assert "box@example.test" not in (await owner.get("/accounts")).text
        assert (await owner.post(f"/accounts/{record.id}/disconnect")).status_code == 404
    finally:
        await owner.http.aclose()


async def test_a_member_sees_and_disconnects_only_theirs(api: Api) -> None:
    member, mine = await signed(api, "member@example.com", "member")
    _, other = await signed(api, "other@example.com", "member")
    try:
        own = await stored(api, "mine@example.test", mine.id)
        theirs = await stored(api, "theirs@example.test", other.id)
        listed = (await member.get("/accounts")).text
        assert "mine@example.test" in listed and "theirs@example.test" not in listed
        assert (await member.get(f"/accounts/{theirs.id}/disconnect")).status_code == 404
        assert (await member.post(f"/accounts/{theirs.id}/disconnect")).status_code == 404
        forged = await member.post(f"/accounts/{own.id}/disconnect", token=False)
        assert forged.status_code == 403 and str(escape("security token")) in forged.text
        assert (await member.post(f"/accounts/{own.id}/disconnect")).status_code == 303
    finally:
        await member.http.aclose()


async def test_a_member_it_is_shared_with_may_not_disconnect_it(api: Api) -> None:
    member, mine = await signed(api, "member@example.com", "member")
    _, other = await signed(api, "other@example.com", "member")
    try:
        theirs = await stored(api, "theirs@example.test", other.id)
        await api.svc.db.transaction(
            lambda c: put_share(c, "account", theirs.id, mine.id, "member", 1.0, None)
        )
        assert "theirs@example.test" in (await member.get("/accounts")).text
        refused = await member.post(f"/accounts/{theirs.id}/disconnect")
        assert refused.status_code == 403, refused.text
        record = await mail_accounts.get_account(api.svc.db, theirs.id)
        assert record is not None  # still connected
    finally:
        await member.http.aclose()


def edited(record: MailAccountRecord, **changed: str) -> dict[str, str]:
    """The edit form as the page shows it (password empty: kept), with `changed`."""
    fields = {
        "email": record.email, "name": record.name, "imap_host": record.imap_host,
        "imap_port": str(record.imap_port), "imap_security": record.imap_security,
        "smtp_host": record.smtp_host, "smtp_port": str(record.smtp_port),
        "smtp_security": record.smtp_security, "username": record.username, "password": "",
        "tls_verify": "on", "is_default": "on",
    }  # fmt: skip
    return {name: value for name, value in (fields | changed).items() if value is not None}


async def test_an_account_is_changed_on_its_own_page(api: Api) -> None:
    member, mine = await signed(api, "member@example.com", "member")
    _, other = await signed(api, "other@example.com", "member")
    try:
        own = await stored(api, "mine@example.test", mine.id)
        theirs = await stored(api, "theirs@example.test", other.id)
        listed = (await member.get("/accounts")).text
        assert f'href="/accounts/{own.id}"' in listed
        page = await member.get(f"/accounts/{own.id}")
        assert page.status_code == 200 and 'value="mine@example.test"' in page.text
        assert 'id="password"' in page.text and SECRET not in page.text
        assert (await member.get(f"/accounts/{theirs.id}")).status_code == 404
        assert (await member.post(f"/accounts/{theirs.id}", edited(theirs))).status_code == 404

        # A new name, the password left empty: saved, no login tried, the password kept.
        saved = await member.post(f"/accounts/{own.id}", edited(own, name="Mine"))
        assert saved.status_code == 303 and saved.headers["location"] == "/accounts?done=changed"
        after = await mail_accounts.get_account(api.svc.db, own.id)
        assert after is not None and after.name == "Mine" and after.has_password
        # A new password is proved first: nothing listens there, so the IMAP side fails.
        port = str(free_port())
        failed = await member.post(
            f"/accounts/{own.id}",
            edited(own, imap_port=port, imap_security="none", password=SECRET),
        )  # fmt: skip
        assert failed.status_code == 400, failed.text
        assert 'id="verify-failure"' in failed.text and "IMAP side failed" in failed.text
        assert SECRET not in failed.text
        # Certificates unchecked towards a host off loopback: an admin's choice.
        refused = await member.post(
            f"/accounts/{own.id}", edited(own, imap_host="imap.example.com", tls_verify=None)
        )
        assert refused.status_code == 403 and 'id="tls_verify-problem"' in refused.text
        kept = await mail_accounts.get_account(api.svc.db, own.id)
        assert kept is not None and (kept.imap_port, kept.imap_host) == (993, "127.0.0.1")
    finally:
        await member.http.aclose()
