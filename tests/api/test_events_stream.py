"""GET /v1/events/stream over a real uvicorn: a send's events arrive in order, Last-Event-ID
goes on without duplicates, a member sees only their own mail's events, a heartbeat keeps a
quiet stream alive, and a stream ends when its client goes and when the server stops; the
message search's subject and client filters (mail over SMTP and HTTP from several loopback
addresses) select the same mail on the stream, and their bad values are the same 400s."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from api import event_ops
from api.routes import events_stream
from tests.support.api import RCPT, SENDER, Api, auth, payload
from tests.support.people import Person, make_user, sign_in
from tests.support.smtp import smtp_send

pytestmark = pytest.mark.timeout(60)
PATH = "/v1/events/stream"
SANDBOX = {"X-Postern-Sandbox": "true"}


@pytest.fixture
async def api(api_on_both: Api) -> Api:
    """Each test on SQLite and on a clean PostgreSQL (commit order differs: by txid there)."""
    return api_on_both


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events_stream.LIMITS, "poll", 0.05)


@asynccontextmanager
async def opened(
    http: httpx.AsyncClient, headers: dict[str, str], **params: str
) -> AsyncIterator[httpx.Response]:
    async with http.stream("GET", PATH, headers=headers, params=params or None) as answer:
        assert answer.status_code == 200, await answer.aread()
        assert answer.headers["content-type"].startswith("text/event-stream")
        yield answer


async def frames(answer: httpx.Response, until: Any, within: float = 10.0) -> list[str]:
    """The stream's lines (blank ones left out) until `until(lines)` is true."""
    lines: list[str] = []
    iterator = answer.aiter_lines()
    async with asyncio.timeout(within):
        while not until(lines):
            line = await anext(iterator)
            if line:
                lines.append(line)
    return lines


def events_of(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line[len("data: ") :]) for line in lines if line.startswith("data: ")]


def has(kind: str, count: int = 1) -> Any:
    return lambda lines: sum(e["type"] == kind for e in events_of(lines)) >= count


async def test_a_sends_events_arrive_in_order_and_resume_without_duplicates(api: Api) -> None:
    key = await api.key()
    async with opened(api.http, auth(key)) as answer:
        sent = (await api.send(key=key)).json()["message_id"]
        lines = await frames(answer, has("delivered"))
    seen = events_of(lines)
    assert [e["type"] for e in seen] == ["queued", "delivered"]
    assert {e["message_id"] for e in seen} == {sent}
    ids = [line.removeprefix("id: ") for line in lines if line.startswith("id: ")]
    assert ids == [e["id"] for e in seen]
    numbers = [int(i.removeprefix("evt_")) for i in ids]
    assert numbers == sorted(numbers)

    # Reconnecting after the first goes on with the second, then what comes next, once each.
    async with opened(api.http, auth(key) | {"Last-Event-ID": ids[0]}) as answer:
        again = (await api.send(key=key)).json()["message_id"]
        resumed = events_of(await frames(answer, has("delivered", 2)))
    assert [e["id"] for e in resumed][:1] == ids[1:2]
    assert [(e["type"], e["message_id"]) for e in resumed[1:]] == [
        ("queued", again),
        ("delivered", again),
    ]
    assert len({e["id"] for e in resumed}) == len(resumed)


async def test_filters_and_bad_parameters(api: Api) -> None:
    key = await api.key()
    bad = await api.get(PATH, key=key, type="nonsense")
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_request"
    assert (await api.get(PATH, key=key, colour="red")).status_code == 400
    assert (await api.get(PATH, key=None)).status_code == 401
    refused = await api.http.get(PATH, headers=auth(key) | {"Last-Event-ID": "x"})
    assert refused.status_code == 400
    async with opened(api.http, auth(key), type="delivered") as answer:
        await api.send(key=key)
        lines = await frames(answer, has("delivered"))
    assert [e["type"] for e in events_of(lines)] == ["delivered"]


async def test_a_member_sees_only_their_own_mails_events(api: Api) -> None:
    base = str(api.http.base_url)
    member = await sign_in(base, await make_user(api.svc.db, "m@example.com", "member"))
    other = await sign_in(base, await make_user(api.svc.db, "o@example.com", "member"))
    try:
        async with member.http.stream("GET", PATH) as answer:
            assert answer.status_code == 200
            theirs = await send_as(other)
            own = await send_as(member)
            lines = await frames(answer, lambda ls: any(own in line for line in ls))
            await asyncio.sleep(0.3)  # anything of theirs would have come by now
        assert {e["message_id"] for e in events_of(lines)} == {own}
        assert theirs not in "".join(lines)
    finally:
        await member.http.aclose()
        await other.http.aclose()


async def send_as(who: Person) -> str:
    answer = await who.call("POST", "/v1/send", json=payload(), headers=SANDBOX)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["message_id"])


async def test_heartbeat_on_a_quiet_stream(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events_stream.LIMITS, "heartbeat", 0.2)
    key = await api.key()
    async with opened(api.http, auth(key)) as answer:
        lines = await frames(answer, lambda ls: ": heartbeat" in ls, within=5)
    assert lines[0] == "retry: 2000"


async def test_a_stream_ends_with_its_client_and_the_cap_counts_open_ones(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(event_ops, "MAX_STREAMS", 2)
    key = await api.key()
    async with opened(api.http, auth(key)), opened(api.http, auth(key)):
        third = await api.get(PATH, key=key)
        assert third.status_code == 429 and third.json()["code"] == "too_many_streams"
    # Both clients went: their streams ended and gave their places back.
    deadline = time.monotonic() + 5
    while await status_of(api, key) == 429:
        assert time.monotonic() < deadline, "the closed streams still count"
        await asyncio.sleep(0.1)


async def status_of(api: Api, key: str) -> int:
    async with api.http.stream("GET", PATH, headers=auth(key)) as answer:
        return answer.status_code


async def test_a_stream_ends_when_the_server_stops(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_stream.LIMITS, "max_duration", 3600.0)
    key = await api.key()
    async with opened(api.http, auth(key)) as answer:
        lines = answer.aiter_lines()
        assert await anext(lines) == "retry: 2000"
        started = time.monotonic()
        await api.svc.stop()
        async with asyncio.timeout(10):
            rest = [line async for line in lines if line]
    assert rest == [] and time.monotonic() - started < 4  # not the drain's 5 s timeout


async def test_a_stream_ends_after_its_time(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events_stream.LIMITS, "max_duration", 0.5)
    key = await api.key()
    async with opened(api.http, auth(key)) as answer:
        started = time.monotonic()
        body = await answer.aread()
    assert body.startswith(b"retry: 2000") and time.monotonic() - started < 5


# --- subject and client: the message search's filters, on the stream ---------------------------

FACTURE = "=?utf-8?q?Facture_n=C2=B0_4711?= ACME"  # "Facture n° 4711 ACME", RFC 2047


async def smtp_from(api: Api, subject: str, source: str) -> str:
    """A message over SMTP from the loopback address `source`: its id."""
    data = f"From: {SENDER}\r\nTo: {RCPT}\r\nSubject: {subject}\r\n\r\nHi\r\n"
    code, text = await smtp_send(api.svc.smtp_port, SENDER, [RCPT], data.encode(), source=source)
    assert code == 250, text
    found = re.search(r"msg_\w+", text)
    assert found is not None
    return found.group(0)


async def http_from(api: Api, key: str, subject: str, source: str) -> str:
    """A message over HTTP from the loopback address `source`: its id."""
    transport = httpx.AsyncHTTPTransport(local_address=source)
    async with httpx.AsyncClient(base_url=api.http.base_url, transport=transport) as client:
        sent = await client.post("/v1/send", json=payload(subject=subject), headers=auth(key))
    assert sent.status_code in (200, 202), sent.text
    return str(sent.json()["message_id"])


async def delivered(api: Api, key: str, *ids: str) -> None:
    """Wait until every message is delivered (its events all committed)."""
    async with asyncio.timeout(10):
        for message_id in ids:
            path = f"/v1/messages/{message_id}"
            while (await api.get(path, key=key)).json()["status"] != "delivered":
                await asyncio.sleep(0.05)


def per_message(seen: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Each message's event types, in the order they came (messages interleave)."""
    found: dict[str, list[str]] = {}
    for event in seen:
        found.setdefault(event["message_id"], []).append(event["type"])
    return found


def delivered_of(message_id: str) -> Any:
    return lambda lines: any(
        e["type"] == "delivered" and e["message_id"] == message_id for e in events_of(lines)
    )


async def test_subject_and_client_filter_as_the_message_search_does(api: Api) -> None:
    admin, sender = await api.key("admin"), await api.key()
    by_subject = {"subject": "4711 INVOICE"}  # every word, any case and order
    by_client = {"client": "127.0.0.2/31"}  # 127.0.0.2 and 127.0.0.3
    async with (
        opened(api.http, auth(admin), **by_subject) as words,
        opened(api.http, auth(admin), **by_client) as block,
    ):
        report = await http_from(api, sender, "Weekly report", "127.0.0.1")
        copy = await http_from(api, sender, "Invoice 4711, a copy", "127.0.0.1")
        facture = await smtp_from(api, FACTURE, "127.0.0.2")
        invoice = await http_from(api, sender, "Your invoice 4711 is ready", "127.0.0.3")
        await delivered(api, admin, report, copy, facture, invoice)
        # Events come in commit order: once the last one's events are there, every earlier
        # event has been read past (sent when it matched).
        last = await http_from(api, sender, "invoice 4711 (last)", "127.0.0.2")
        seen_words = events_of(await frames(words, delivered_of(last)))
        seen_block = events_of(await frames(block, delivered_of(last)))
    both = ["queued", "delivered"]
    assert per_message(seen_words) == {copy: both, invoice: both, last: both}
    assert per_message(seen_block) == {facture: both, invoice: both, last: both}

    # One address (an IPv4-mapped spelling too) and the words of an encoded Subject.
    async with opened(api.http, auth(admin), client="::ffff:127.0.0.3", subject="n° acme") as one:
        elsewhere = await smtp_from(api, FACTURE, "127.0.0.2")
        other_words = await smtp_from(api, "Weekly report", "127.0.0.3")
        await delivered(api, admin, elsewhere, other_words)
        again = await smtp_from(api, FACTURE, "127.0.0.3")
        seen = events_of(await frames(one, delivered_of(again)))
    assert per_message(seen) == {again: both}


async def test_bad_subject_and_client_values_are_400s_naming_them(api: Api) -> None:
    key = await api.key()
    for field, bad in (
        ("subject", "— !"),
        ("subject", " ".join(f"w{i}" for i in range(9))),
        ("client", "not-an-address"),
        ("client", "127.0.0.1/33"),
    ):
        refused = await api.get(PATH, key=key, **{field: bad})
        assert refused.status_code == 400, (field, bad)
        body = refused.json()
        assert body["code"] == "invalid_request" and body["details"][0]["field"] == field
        searched = await api.get("/v1/messages", key=key, **{field: bad})
        assert searched.status_code == 400 and searched.json()["details"] == body["details"]

    spec = (await api.http.get("/openapi.json")).json()["paths"]
    stream = {p["name"]: p for p in spec[PATH]["get"]["parameters"]}
    search = {p["name"]: p for p in spec["/v1/messages"]["get"]["parameters"]}
    assert stream["subject"] == search["subject"] and stream["client"] == search["client"]
