"""What an attacker found that the suite did not cover: pool secrets that followed a changed
host, a pool test that echoed a non-SMTP banner, test sends without a send scope, revoked
keys that kept their SMTP sessions, unbounded AUTH guessing, and SMTP sessions outside the
key's rate limit.

Against a real `postern serve` process where the attack needs nothing but its doors (HTTP,
SMTP, the CLI as another process sharing the database), else through the real HTTP and
SMTP doors of an in-process Service (where a delay must be shortened or a limit set).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from gateway.smtpd import auth as smtp_auth
from gateway.smtpd import replies
from storage import pools
from storage.keys import CACHE_SECONDS
from storage.pools import config_pool_id
from tests.support.api import Api, ApiFactory, auth, payload
from tests.support.resources import POOLS, call, create_pool
from tests.support.serve import MakePostern, Postern, run_cli
from tests.support.sink import Sink

pytestmark = pytest.mark.timeout(90)

CONFIGS = "/api/v1/smtp/configs"
USER = "relay-user"
SECRET = "Prod-pw-9f2c71-never-elsewhere"
BANNER_SECRET = "secretpassword"
MESSAGE = b"From: app@sender.test\r\nTo: rcpt@example.test\r\nSubject: s\r\n\r\nbody\r\n.\r\n"
READ_TIMEOUT = 20.0


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def sinks() -> Iterator[list[Sink]]:
    """Sinks a test starts (append them); all stopped at teardown."""
    started: list[Sink] = []
    try:
        yield started
    finally:
        for sink in started:
            sink.stop()


def cli_key(postern: Postern, *scopes: str) -> tuple[str, str]:
    """(id, secret) of a key made with `postern keys create` (another process)."""
    args = [arg for scope in scopes for arg in ("--scope", scope)]
    result = run_cli("--config", str(postern.config), "keys", "create", "--name", "t", *args,
                     "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    return created["id"], created["key"]


async def http_for(postern: Postern, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{postern.http_port}", headers=auth(key), timeout=20.0
    )


class Smtp:
    """A raw SMTP client: exactly the bytes given, every reply read with a bound."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, source: str = "127.0.0.1") -> Smtp:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), READ_TIMEOUT
        )
        client = cls(reader, writer)
        assert (await client.reply())[0] == 220
        assert (await client.say("EHLO client.test"))[0] == 250
        return client

    async def reply(self) -> tuple[int, str]:
        """(code, text); (0, "") when the server closed the connection."""
        lines = []
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), READ_TIMEOUT)
            if not raw:
                return 0, ""
            line = raw.decode().rstrip("\r\n")
            lines.append(line[4:])
            if line[3:4] != "-":
                return int(line[:3]), "\n".join(lines)

    async def say(self, line: str | bytes) -> tuple[int, str]:
        self.writer.write(line if isinstance(line, bytes) else line.encode() + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def send_message(self) -> tuple[int, str]:
        for line in ("MAIL FROM:<app@sender.test>", "RCPT TO:<rcpt@example.test>"):
            code, text = await self.say(line)
            if code != 250:
                return code, text
        assert (await self.say("DATA"))[0] == 354
        return await self.say(MESSAGE)

    async def closed(self) -> bool:
        """Whether the server has closed the connection (EOF within the bound)."""
        try:
            return await asyncio.wait_for(self.reader.read(1), READ_TIMEOUT) == b""
        except ConnectionError:
            return True

    def close(self) -> None:
        self.writer.close()


def plain(secret: str) -> str:
    return "AUTH PLAIN " + base64.b64encode(f"\0apikey\0{secret}".encode()).decode()


async def wait_for(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


# --- pool secrets stay with their endpoint ---------------------------------------------------


async def test_repointing_a_pool_clears_its_password_before_anything_is_sent(
    postern_process: MakePostern, sinks: list[Sink]
) -> None:
    """A `pools` key that moves a pool to its own server must not receive the password
    (through the test or through delivery): before the fix, /test sent it in AUTH PLAIN."""
    production = Sink(auth=(USER, SECRET)).start()
    attacker = Sink(auth=(USER, "whatever")).start()
    sinks += [production, attacker]
    postern = postern_process(None)
    _, key = cli_key(postern, "pools", "send")
    async with await http_for(postern, key) as http:
        created = await http.post(POOLS, json={
            "name": "prod", "host": "127.0.0.1", "port": production.port,
            "encryption": "none", "username": USER, "password": SECRET,
        })  # fmt: skip
        assert created.status_code == 201 and created.json()["has_password"] is True
        pool_id = created.json()["id"]
        assert (await http.post(f"{POOLS}/{pool_id}/test")).json()["success"] is True
        assert (USER, SECRET) in production.auth_attempts  # the password is the right one

        # A change that leaves the endpoint as it was keeps the password.
        kept = await http.patch(f"{POOLS}/{pool_id}", json={"name": "prod2", "host": "127.0.0.1"})
        assert kept.status_code == 200 and kept.json()["has_password"] is True

        moved = await http.patch(f"{POOLS}/{pool_id}", json={"port": attacker.port})
        assert moved.status_code == 200 and moved.json()["has_password"] is False
        tested = (await http.post(f"{POOLS}/{pool_id}/test")).json()
        assert (tested["success"], tested["reason"]) == (False, "auth_failed")
        sent = await http.post("/v1/send", json=payload(alias_id=pool_id))
        assert sent.status_code in (200, 202), sent.text
        assert await wait_for(lambda: attacker.connections_total >= 2, 15)  # test + delivery
        assert not [pw for _, pw in attacker.auth_attempts if pw == SECRET]

        # The MailSage view over the same record: back with a password, then a changed
        # username (the same server, another account) clears it again.
        back = await http.put(
            f"{CONFIGS}/{pool_id}", json={"port": production.port, "password": SECRET}
        )
        assert back.status_code == 200 and back.json()["has_password"] is True
        renamed = await http.put(f"{CONFIGS}/{pool_id}", json={"username": "someone-else"})
        assert renamed.status_code == 200 and renamed.json()["has_password"] is False
        shown = (await http.get(f"{POOLS}/{pool_id}")).json()
        assert shown["has_password"] is False and SECRET not in json.dumps(shown)


@pytest.mark.parametrize(
    "change",
    [{"encryption": "tls"}, {"tls_verify": False}, {"host": "localhost"}],
    ids=["encryption", "tls_verify", "host"],
)
async def test_every_endpoint_field_clears_the_password_unless_one_is_given(
    api: Api, change: dict[str, Any]
) -> None:
    key = await api.key("pools")
    pool_id = (await create_pool(api, key, username=USER, password=SECRET))["id"]
    cleared = await call(api, "PATCH", f"{POOLS}/{pool_id}", key, change)
    assert cleared.status_code == 200 and cleared.json()["has_password"] is False
    live = {pool.id: pool for pool in api.svc.registry.settings()}[pool_id]
    assert live.password == ""  # delivery has dropped it too
    restored = await call(
        api, "PATCH", f"{POOLS}/{pool_id}", key, {"port": 2526, "password": "new-pw"}
    )
    assert restored.json()["has_password"] is True


async def test_a_config_pool_password_goes_only_to_the_endpoint_its_file_declares(
    api_client: ApiFactory, sinks: list[Sink], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nodes sharing a database sync their own `[[pools]]` into the same row: when another
    node's file (here: an UPDATE as its sync would make) moved the pool, this node's
    password from its environment must not follow the stored host."""
    production = Sink(auth=(USER, SECRET)).start()
    attacker = Sink(auth=(USER, "whatever")).start()
    sinks += [production, attacker]
    monkeypatch.setenv("POSTERN_TEST_POOL_PW", SECRET)
    declared = {
        "name": "cfg", "host": "127.0.0.1", "port": production.port, "encryption": "none",
        "username": USER, "password_env": "POSTERN_TEST_POOL_PW",
    }  # fmt: skip
    api = await api_client(pools=[declared])
    key = await api.key("pools")
    pool_id = config_pool_id("cfg")
    assert (await call(api, "POST", f"{POOLS}/{pool_id}/test", key)).json()["success"] is True
    moved = update(pools.P).where(pools.P.c.id == pool_id).values(port=attacker.port)
    await api.svc.db.transaction(lambda conn: conn.execute(moved))
    answer = (await call(api, "POST", f"{POOLS}/{pool_id}/test", key)).json()
    assert answer["success"] is False
    assert not [pw for _, pw in attacker.auth_attempts if pw == SECRET]


@pytest.fixture
async def ssh_banner() -> AsyncIterator[int]:
    """A loopback TCP service that is not SMTP: it greets with an SSH banner carrying a
    password, then reads whatever comes (bounded) and hangs up."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"SSH-2.0-OpenSSH {BANNER_SECRET}\r\n".encode())
        try:
            await writer.drain()
            await asyncio.wait_for(reader.read(4096), 2.0)
        except (TimeoutError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_a_non_smtp_banner_is_never_echoed(
    postern_process: MakePostern, ssh_banner: int
) -> None:
    postern = postern_process(None)
    _, key = cli_key(postern, "pools", "send")
    async with await http_for(postern, key) as http:
        created = await http.post(POOLS, json={
            "name": "ssh", "host": "127.0.0.1", "port": ssh_banner, "encryption": "none",
        })  # fmt: skip
        pool_id = created.json()["id"]
        tested = await http.post(f"{POOLS}/{pool_id}/test")
        mailsage = await http.post(f"{CONFIGS}/{pool_id}/test", json={"recipient": "t@x.test"})
        for answer in (tested.text, mailsage.text):
            assert BANNER_SECRET not in answer and "SSH" not in answer, answer
        assert tested.status_code == 200
        body = tested.json()
        assert (body["success"], body["code"], body["reason"]) == (
            False,
            "smtp_connection_error",
            "not_smtp",
        )
        assert body["reply"] is None
        assert mailsage.status_code == 400 and mailsage.json()["reason"] == "not_smtp"


async def test_an_smtp_reply_is_repeated_only_sanitised_and_truncated(
    api: Api, sinks: list[Sink]
) -> None:
    sink = Sink().start()
    sinks.append(sink)
    sink.fail("connect", "554 5.7.0 go away \x1b[31m" + "x" * 600)
    key = await api.key("pools")
    pool_id = (await create_pool(api, key, sink))["id"]
    body = (await call(api, "POST", f"{POOLS}/{pool_id}/test", key)).json()
    assert (body["reason"], body["code"]) == ("rejected", "smtp_connection_error")
    reply = body["reply"]
    assert reply.startswith("554 5.7.0 go away") and len(reply) <= 200
    assert all(" " <= c <= "~" for c in reply + body["error"])


# --- a test send is a send -------------------------------------------------------------------


async def test_a_pool_test_that_sends_needs_a_send_scope(api: Api, sink: Sink) -> None:
    pools_only = await api.key("pools")
    pool_id = (await create_pool(api, pools_only, sink))["id"]  # ip_pool "transactional"
    path = f"{POOLS}/{pool_id}/test"
    assert (await call(api, "POST", path, pools_only)).json()["success"] is True  # no send
    for key in (pools_only, await api.key("pools", "send:marketing")):
        for url in (path, f"{CONFIGS}/{pool_id}/test"):
            refused = await call(api, "POST", url, key, {"recipient": "me@example.test"})
            assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")
    send_only = await call(api, "POST", path, await api.key("send"), {"recipient": "a@x.test"})
    assert send_only.status_code == 403  # and `pools` is needed too
    await asyncio.sleep(0.3)
    assert sink.messages == []  # nothing went out for the refused tests
    allowed = await api.key("pools", "send:transactional")
    sent = await call(api, "POST", path, allowed, {"recipient": "me@example.test"})
    assert sent.status_code == 200 and sent.json()["message_id"]
    assert await sink.wait_for_async(1, timeout=10)


# --- a revoked key ends its sessions -------------------------------------------------------


async def test_a_revoked_key_loses_its_smtp_session_within_the_stated_bound(
    postern_process: MakePostern, sinks: list[Sink]
) -> None:
    sink = Sink().start()
    sinks.append(sink)
    postern = postern_process(sink.port)
    revoked_id, revoked = cli_key(postern, "send")
    _, spare = cli_key(postern, "send")
    smtp = await Smtp.open(postern.smtp_port)
    try:
        assert (await smtp.say(plain(revoked)))[0] == 235
        assert (await smtp.send_message())[0] == 250
        # Revoked by another process sharing the database (as another node would).
        result = run_cli("--config", str(postern.config), "keys", "revoke", revoked_id)
        assert result.returncode == 0, result.stderr
        revoked_at = time.monotonic()
        while True:
            code, text = await smtp.say("MAIL FROM:<app@sender.test>")
            if code != 250:
                break
            assert time.monotonic() - revoked_at < CACHE_SECONDS + 3, "still sending"
            assert (await smtp.say("RSET"))[0] == 250
            await asyncio.sleep(0.2)
        assert (code, text.split(" ")[0]) == replies.AUTH_KEY_REVOKED.status, text
        # Logged out: another (valid) key may log in on the same connection.
        assert (await smtp.say(plain(spare)))[0] == 235
        assert (await smtp.send_message())[0] == 250
    finally:
        smtp.close()


async def test_a_key_revoked_through_this_nodes_api_is_refused_at_the_next_mail(
    api: Api,
) -> None:
    key_id, secret = await api.key_record("send")
    admin = await api.key("keys", "send")
    smtp = await Smtp.open(api.svc.smtp_port)
    try:
        assert (await smtp.say(plain(secret)))[0] == 235
        assert (await smtp.send_message())[0] == 250
        assert (await call(api, "DELETE", f"/api/v1/keys/{key_id}", admin)).status_code == 200
        code, text = await smtp.say("MAIL FROM:<app@sender.test>")
        assert (code, text.split(" ")[0]) == replies.AUTH_KEY_REVOKED.status
    finally:
        smtp.close()


# --- AUTH guessing is bounded ---------------------------------------------------------------


async def test_a_session_gets_three_failures_then_421_and_is_closed(
    api_client: ApiFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(smtp_auth, "BASE_DELAY", 0.01)
    api = await api_client(smtp={"require_auth": True})
    smtp = await Smtp.open(api.svc.smtp_port)
    try:
        for attempt in range(3):
            assert (await smtp.say(plain(f"msk_wrong{attempt}")))[0] == 535
        code, text = await smtp.reply()  # unsolicited, right after the third 535
        assert (code, text.split(" ")[0]) == replies.AUTH_TOO_MANY_FAILURES.status
        assert await smtp.closed()
    finally:
        smtp.close()


async def _guess(port: int, source: str = "127.0.0.1", attempts: int = 3) -> list[int]:
    """Reply codes to `attempts` wrong passwords on one connection, until it closes."""
    smtp = await Smtp.open(port, source)
    codes: list[int] = []
    try:
        for attempt in range(attempts):
            code, _ = await smtp.say(plain(f"msk_guess_{source}_{attempt}"))
            codes.append(code)
            if code != 535:
                break
        return codes
    finally:
        smtp.close()


async def test_parallel_connections_share_one_address_budget(
    postern_process: MakePostern,
) -> None:
    """200 connections from one address, three guesses each (600 before the fix): on the
    defaults, at most 30 guesses are checked; every other attempt is 421 4.7.0 unchecked."""
    postern = postern_process(None)
    results = await asyncio.wait_for(
        asyncio.gather(*(_guess(postern.smtp_port) for _ in range(200))), 60
    )
    checked = sum(codes.count(535) for codes in results)
    refused = sum(codes.count(421) for codes in results)
    assert checked == 30, checked  # 30 in any hour, counted in storage
    assert refused >= 200 - checked  # each connection ends with a 421
    assert all(code in (535, 421) for codes in results for code in codes)


async def test_the_global_failure_limit_holds_across_addresses(
    api_client: ApiFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(smtp_auth, "BASE_DELAY", 0.01)
    api = await api_client(
        smtp={"auth_failures_per_minute": 4, "auth_failures_per_address": "1000/h"}
    )
    sources = [f"127.0.0.{n}" for n in range(1, 7)]
    results = await asyncio.gather(*(_guess(api.svc.smtp_port, source, 2) for source in sources))
    assert sum(codes.count(535) for codes in results) == 4  # 4 in any minute
    # Spent for everyone: even a valid key is refused until the minute refills.
    smtp = await Smtp.open(api.svc.smtp_port, "127.0.0.9")
    try:
        assert (await smtp.say(plain(await api.key("send"))))[0] == 421
    finally:
        smtp.close()


async def test_a_valid_login_does_not_use_up_the_budget(api_client: ApiFactory) -> None:
    api = await api_client(smtp={"auth_failures_per_address": "2/h"})
    secret = await api.key("send")
    for _ in range(5):
        smtp = await Smtp.open(api.svc.smtp_port)
        assert (await smtp.say(plain(secret)))[0] == 235
        smtp.close()


# --- one rate limit per key, for both doors --------------------------------------------------


async def test_the_keys_rate_limit_applies_to_its_smtp_messages(api_client: ApiFactory) -> None:
    api = await api_client(http={"rate_limit": "3/m"})
    secret = await api.key("send")
    smtp = await Smtp.open(api.svc.smtp_port)
    try:
        assert (await smtp.say(plain(secret)))[0] == 235
        for _ in range(3):
            assert (await smtp.send_message())[0] == 250
        code, text = await smtp.say("MAIL FROM:<app@sender.test>")
        assert (code, text.split(" ")[0]) == replies.AUTH_KEY_RATE.status, text  # clients retry
        # The same bucket as the HTTP API's.
        assert (await api.send(key=secret)).status_code == 429
        # The other way round: a key that used its rate over HTTP is held at MAIL.
        other = await api.key("send")
        for _ in range(3):
            assert (await api.send(key=other)).status_code in (200, 202)
        fresh = await Smtp.open(api.svc.smtp_port)
        try:
            assert (await fresh.say(plain(other)))[0] == 235
            assert (await fresh.say("MAIL FROM:<app@sender.test>"))[0] == 451
        finally:
            fresh.close()
    finally:
        smtp.close()
