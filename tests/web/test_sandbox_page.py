"""The Sandbox page through a real uvicorn with httpx: sandbox sends and mail to the
simulator listed newest first (from, to, subject, when), each linking to its message page;
a member sees only their own."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import update

from gateway.delivery import simulator
from gateway.queue.retention import Retention
from storage.models import Message
from storage.users import find_by_email
from tests.support.api import Api, payload
from tests.support.rows import wait_for_status
from tests.web.conftest import SignIn
from web.pages import sandbox

pytestmark = pytest.mark.timeout(60)
SANDBOX = {"X-Postern-Sandbox": "true"}
M = Message
IDS = re.compile(r'href="/messages/((?:sandbox_)?msg_[A-Za-z0-9_]+)"')


async def _sandboxed(api: Api, key: str, subject: str) -> str:
    sent = await api.send(payload(subject=subject), key=key, headers=SANDBOX)
    assert sent.status_code in (200, 202), sent.text
    message_id: str = sent.json()["message_id"]
    return message_id


async def test_sandbox_sends_are_listed_newest_first_and_link_to_their_page(
    api: Api, person: SignIn
) -> None:
    owner = await person("ops@example.com")
    key = await api.key("send", "sandbox")
    first = await _sandboxed(api, key, "First test")
    second = await _sandboxed(api, key, "Second test")
    real = await api.send(payload(subject="Real mail"), key=key)
    assert real.status_code in (200, 202), real.text
    page = await owner.get("/sandbox")
    assert page.status_code == 200 and "<h1>Sandbox</h1>" in page.text
    assert IDS.findall(page.text) == [second, first]
    assert "First test" in page.text and "Second test" in page.text
    assert "Real mail" not in page.text and 'href="/sandbox"' in page.text  # the nav entry
    shown = await owner.get(f"/messages/{first}")
    assert shown.status_code == 200 and "First test" in shown.text


async def test_mail_to_the_simulator_has_its_own_list(api: Api, person: SignIn) -> None:
    assert sandbox.SIMULATOR_POOL == simulator.POOL
    owner = await person("ops@example.com")
    to = [{"email": f"delivered@{simulator.DOMAIN}"}]
    sent = await api.send(payload(subject="Simulated", to=to), key=await api.key())
    assert sent.status_code in (200, 202), sent.text
    message_id = sent.json()["message_id"]
    await wait_for_status(api.svc, message_id, {"delivered"})
    page = await owner.get("/sandbox?kind=simulator")
    assert IDS.findall(page.text) == [message_id]
    # A delivered message's body stays for storage.body_retention: its subject is shown...
    assert "Simulated" in page.text and "delivered@simulator" in page.text
    writer = api.svc.writer
    assert writer is not None
    await Retention(writer, keep=86400, body_keep=0).sweep_bodies()
    page = await owner.get("/sandbox?kind=simulator")
    # ...then it goes: said, not hidden.
    assert "body no longer stored" in page.text and "delivered@simulator" in page.text
    assert IDS.findall((await owner.get("/sandbox")).text) == []


async def test_a_member_sees_only_their_own_sandbox_mail(api: Api, person: SignIn) -> None:
    member = await person("m@example.com", "member")
    me = await find_by_email(api.svc.db, "m@example.com")
    assert me is not None
    key = await api.key("send", "sandbox")
    theirs = await _sandboxed(api, key, "Not yours")
    mine = await _sandboxed(api, key, "Yours")
    own = update(M).where(M.c.id == mine).values(user_id=me.id, api_key_id=None)
    await api.svc.db.transaction(lambda conn: conn.execute(own))
    page = await member.get("/sandbox")
    assert page.status_code == 200 and IDS.findall(page.text) == [mine]
    assert "Not yours" not in page.text and "Your sandbox sends" in page.text
    assert (await member.get(f"/messages/{theirs}")).status_code == 404


def test_a_subject_is_read_from_the_header_fields_only() -> None:
    data = b"From: a@b.test\r\nSubject: =?utf-8?q?Caf=C3=A9?=\r\n\r\nSubject: not this\r\n"
    assert sandbox.subject_of(data) == "Café"
    assert sandbox.subject_of(b"no header at all") == ""
