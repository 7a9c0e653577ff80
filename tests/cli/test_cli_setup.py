"""`postern pools add|test` and `postern aliases add|resend`, run as the operator runs them
(a subprocess): a pool added with its password from stdin and tested against a real aiosmtpd
sink that checks AUTH (exit 1 once it is gone), the API's checks refusing bad input with one
line and exit status 2, and aliases added with a verification link that works, or verified
at once."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from api import alias_ops
from gateway.config import load
from storage import aliases, domains
from storage.db import create_schema, database_url, open_database
from tests.support.processes import child_cwd, child_env, postern_argv
from tests.support.sink import Sink

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "postern.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path / "var"}"\n')
    return str(path)


def postern(config: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*postern_argv(), "--config", config, *args], capture_output=True, text=True,
        input=stdin, timeout=60, env=child_env(), cwd=child_cwd(), check=False,
    )  # fmt: skip


def in_db(config: str, work: Any) -> Any:
    async def run() -> Any:
        loaded = load(config)
        db = open_database(database_url(loaded.storage.url, loaded.server.data_dir))
        try:
            await create_schema(db)
            return await work(db)
        finally:
            await db.dispose()

    return asyncio.run(run())


def test_a_pool_is_added_with_its_password_and_tested(config: str) -> None:
    sink = Sink(auth=("relay", "s3cret word")).start()
    try:
        added = postern(
            config, "pools", "add", "relay", "--host", "127.0.0.1", "--port", str(sink.port),
            "--encryption", "none", "--username", "relay", "--password-stdin",
            "--rate", "100/minute", "--json", stdin="s3cret word\n",
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        pool = json.loads(added.stdout)
        assert pool["name"] == "relay" and pool["has_password"] is True
        assert "s3cret" not in added.stdout and pool["rate"] == "100/minute"
        tested = postern(config, "pools", "test", pool["id"])
        assert tested.returncode == 0, tested.stdout + tested.stderr
        assert tested.stdout.startswith("relay: OK in ")
        assert ("relay", "s3cret word") in sink.auth_attempts
    finally:
        sink.stop()
    gone = postern(config, "pools", "test", pool["id"], "--json")
    assert gone.returncode == 1 and json.loads(gone.stdout)["success"] is False
    unknown = postern(config, "pools", "test", "pool_nope")
    assert unknown.returncode == 1 and "no such SMTP pool" in unknown.stderr


@pytest.mark.parametrize(
    "args, says",
    [
        (["--host", "127.0.0.1", "--port", "0"], "port"),
        (["--host", "smtp.example.com", "--encryption", "none", "--username", "u"], "in clear"),
        (["--host", "bad host!"], "host"),
        (["--host", "127.0.0.1", "--rate", "lots"], "rate"),
        (["--host", "127.0.0.1", "--password-stdin"], "no password on stdin"),
    ],
)
def test_bad_pools_are_refused_in_one_line(config: str, args: list[str], says: str) -> None:
    refused = postern(config, "pools", "add", "p", *args)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert says in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert "Traceback" not in refused.stderr


def test_aliases_are_added_with_a_link_or_verified(config: str) -> None:
    refused = postern(config, "aliases", "add", "team@example.com")
    assert refused.returncode == 2 and "example.com is not a verified domain" in refused.stderr
    in_db(config, lambda db: domains.add_domain(db, "example.com", verified=True))

    added = postern(config, "aliases", "add", "team@example.com", "--name", "Team", "--json")
    assert added.returncode == 0, added.stderr
    alias = json.loads(added.stdout)
    assert (
        alias["is_verified"] is False
        and "/api/v1/aliases/verify?token=" in alias["verification_link"]
    )
    resent = postern(config, "aliases", "resend", alias["id"])
    assert resent.returncode == 0 and "within 48 hours" in resent.stdout
    link = resent.stdout.strip().splitlines()[-1]
    token = parse_qs(urlparse(link).query)["token"][0]
    old = parse_qs(urlparse(alias["verification_link"]).query)["token"][0]
    assert in_db(config, lambda db: aliases.redeem_token(db, alias_ops.token_hash(old))) is None
    redeemed = in_db(config, lambda db: aliases.redeem_token(db, alias_ops.token_hash(token)))
    assert redeemed is not None and redeemed.is_verified
    again = postern(config, "aliases", "resend", alias["id"])
    assert again.returncode == 2 and "verified already" in again.stderr

    at_once = postern(config, "aliases", "add", "ops@example.com", "--verified")
    assert at_once.returncode == 0 and at_once.stdout.strip().endswith("is verified")
    twice = postern(config, "aliases", "add", "ops@example.com")
    assert twice.returncode == 2 and "Traceback" not in twice.stderr
    bad = postern(config, "aliases", "add", "not an address")
    assert bad.returncode == 2 and bad.stderr.startswith("postern: error: email")
