"""A pool's password is write-only and encrypted at rest: it reaches the upstream's AUTH
and nothing else — no answer, no log line, no metric, no file under data_dir."""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.security.pool_secrets import unseal
from tests.support.api import Api, ApiFactory, auth, payload
from tests.support.resources import POOLS, call, create_pool, live_pools
from tests.support.rows import query, wait_for_status
from tests.support.service import sink_pool
from tests.support.sink import Sink

pytestmark = pytest.mark.timeout(60)

PASSWORDS = ("Pw-first-7f3a9c", "Pw-mailsage-51be0d", "Pw-patched-c0ffee")
USER = "relay-user"


@pytest.fixture
def auth_sink() -> Iterator[Sink]:
    running = Sink(auth=(USER, PASSWORDS[2])).start()
    try:
        yield running
    finally:
        running.stop()


def files_under(directory: Path) -> list[Path]:
    return [Path(root) / name for root, _, names in os.walk(directory) for name in names]


async def test_the_password_appears_nowhere_but_in_the_upstream_auth(
    api_client: ApiFactory, auth_sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    api = await api_client()
    key = await api.key("pools", "send")
    answers: list[str] = []

    created = await api.http.post(
        POOLS,
        json={"name": "auth", "host": "127.0.0.1", "port": auth_sink.port, "encryption": "none",
              "username": USER, "password": PASSWORDS[0]},
        headers=auth(key),
    )  # fmt: skip
    answers.append(created.text)
    pool_id = created.json()["id"]
    mailsage = await call(
        api, "POST", "/api/v1/smtp/configs", key,
        {"name": "ms", "host": "127.0.0.1", "port": auth_sink.port, "use_tls": False,
         "username": USER, "password": PASSWORDS[1], "from_email": "noreply@sender.test"},
    )  # fmt: skip
    answers.append(mailsage.text)
    # A wrong password first: the failed test's answer names the failure, not the password.
    failed = await call(api, "POST", f"{POOLS}/{pool_id}/test", key)
    answers.append(failed.text)
    assert failed.json()["code"] == "smtp_auth_error"
    patched = await call(api, "PATCH", f"{POOLS}/{pool_id}", key, {"password": PASSWORDS[2]})
    answers.append(patched.text)
    tested = await call(api, "POST", f"{POOLS}/{pool_id}/test", key)
    answers.append(tested.text)
    assert tested.json()["success"] is True

    sent = await api.send(payload(alias_id=pool_id), key=key)
    assert sent.status_code == 200, sent.text
    assert USER in auth_sink.auth_logins  # the decrypted password reached the upstream
    for path in (POOLS, f"{POOLS}/{pool_id}", "/api/v1/smtp/configs"):
        answers.append((await call(api, "GET", path, key)).text)
    answers.append((await api.http.get("/metrics")).text)
    answers.append((await api.http.get("/openapi.json")).text)

    rows = await query(api.svc, "SELECT id, password_enc FROM smtp_pool WHERE source = 'api'")
    assert all(row["password_enc"].startswith("pst1.") for row in rows)
    await api.svc.stop()  # flush the WAL, close the files

    for secret in PASSWORDS:
        # In clear, and as AUTH LOGIN / AUTH PLAIN would carry it.
        encoded = [
            base64.b64encode(secret.encode()).decode(),
            base64.b64encode(f"\0{USER}\0{secret}".encode()).decode(),
        ]
        for text in answers:
            assert secret not in text
        for form in (secret, *encoded):
            assert form not in caplog.text
        for path in files_under(api.svc.config.server.data_dir):
            data = path.read_bytes()
            assert secret.encode() not in data, path
            assert secret.encode("utf-16-le") not in data, path


async def test_a_ciphertext_copied_to_another_pool_does_not_decrypt(api: Api) -> None:
    key = await api.key("pools")
    first = await create_pool(api, key, name="a", username="u", password="secret-a")
    second = await create_pool(api, key, name="b", username="u", password="secret-b")
    rows = {r["id"]: r for r in await query(api.svc, "SELECT * FROM smtp_pool")}

    class Row:
        id = second["id"]
        name = "b"
        password_enc = rows[first["id"]]["password_enc"]

    assert unseal(api.svc.box, Row()) == ""  # bound to pool a's id: refused, not leaked
    Row.id = first["id"]
    assert unseal(api.svc.box, Row()) == "secret-a"


async def test_config_pools_keep_their_environment_password(
    api_client: ApiFactory, auth_sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTERN_TEST_RELAY_PASSWORD", PASSWORDS[2])
    pool = sink_pool(
        auth_sink, name="cfg", username=USER, password_env="POSTERN_TEST_RELAY_PASSWORD"
    )
    api = await api_client(pools=[pool])
    key = await api.key("pools", "send")
    await create_pool(api, key, name="other", password="x", is_active=False)  # reloads
    assert live_pools(api)["cfg"].password == PASSWORDS[2]
    [listed] = [p for p in (await call(api, "GET", POOLS, key)).json() if p["name"] == "cfg"]
    assert PASSWORDS[2] not in str(listed)
    sent = await api.send(payload(), key=key)
    assert sent.status_code == 200, sent.text
    await wait_for_status(api.svc, sent.json()["message_id"], {"delivered"})
    assert auth_sink.auth_logins == [USER]
