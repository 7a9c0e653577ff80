"""`postern pools|aliases|webhooks list|show|remove` and `postern domains verify|remove`, run
as the operator runs them (a subprocess): text and --json, an unknown id one stderr line and
exit status 1, bad input exit status 2, what storage refuses one line and exit status 2."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load
from storage import aliases, pools, webhooks
from storage.db import create_schema, database_url, open_database
from tests.support.processes import child_cwd, child_env, postern_argv

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "postern.toml"
    path.write_text(
        f'[server]\ndata_dir = "{tmp_path / "var"}"\n[dns]\nnameservers = ["127.0.0.1"]\n'
    )
    return str(path)


def postern(config: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*postern_argv(), "--config", config, *args], capture_output=True, text=True,
        timeout=60, env=child_env(), cwd=child_cwd(), check=False,
    )  # fmt: skip


def seed(config: str) -> dict[str, str]:
    """One pool, one alias and one webhook, stored as the API stores them."""

    async def work() -> dict[str, str]:
        loaded = load(config)
        db = open_database(database_url(loaded.storage.url, loaded.server.data_dir))
        try:
            await create_schema(db)
            pool = await pools.create_pool(
                db, {"name": "relay", "host": "127.0.0.1", "port": 2525}, lambda _: b""
            )
            alias = await aliases.create_alias(
                db, email="team@example.com", name="Team", is_default=False, ip_pool=None,
                token_hash="h", expires_at=time.time() + 60,
            )  # fmt: skip
            hook = await webhooks.create_webhook(
                db, {"url": "https://hooks.example.com/x"}, lambda _: b""
            )
            return {"pools": pool.id, "aliases": alias.id, "webhooks": hook.id}
        finally:
            await db.dispose()

    return asyncio.run(work())


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_list_show_remove_each_resource(config: str) -> None:
    assert postern(config, "pools", "list").returncode == 0  # creates the database
    ids = seed(config)
    for group, record_id in ids.items():
        listed = as_json(postern(config, group, "list", "--json"))
        assert [row["id"] for row in listed] == [record_id]
        assert record_id in postern(config, group, "list").stdout
        shown = as_json(postern(config, group, "show", record_id, "--json"))
        assert shown["id"] == record_id and shown["created_at"].endswith("+00:00")
        removed = postern(config, group, "remove", record_id)
        assert removed.returncode == 0 and record_id in removed.stdout, removed.stderr
        assert as_json(postern(config, group, "list", "--json")) == []


def test_unknown_ids_exit_1_and_bad_input_exit_2(config: str) -> None:
    for group in ("pools", "aliases", "webhooks"):
        for action in ("show", "remove"):
            missing = postern(config, group, action, "nope")
            assert missing.returncode == 1 and missing.stdout == ""
            assert (
                missing.stderr.startswith("postern: error: no such")
                and missing.stderr.count("\n") == 1
            )
    for action in ("verify", "remove"):
        missing = postern(config, "domains", action, "absent.example")
        assert (missing.returncode, missing.stderr) == (
            1,
            "postern: error: no such domain: absent.example\n",
        )
    bad = postern(config, "pools", "remove")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_a_pool_queued_mail_needs_is_kept_without_move_to(config: str) -> None:
    """storage's refusal reaches the operator as one line (exit 2), not a traceback."""
    assert postern(config, "pools", "list").returncode == 0
    ids = seed(config)
    bad_target = postern(config, "pools", "remove", ids["pools"], "--move-to", "smtp_absent")
    assert bad_target.returncode == 2 and bad_target.stderr.count("\n") == 1
    assert "Traceback" not in bad_target.stderr


def test_domains_verify_and_remove(config: str) -> None:
    added = as_json(postern(config, "domains", "add", "mail.example.com", "--json"))
    assert added["verified"] is False
    checked = postern(config, "domains", "verify", "mail.example.com", "--json")
    result = as_json(checked)  # the nameserver (127.0.0.1) does not answer: not verified
    assert result["verified"] is False and {c["purpose"] for c in result["checks"]} >= {"spf"}
    removed = as_json(postern(config, "domains", "remove", added["id"], "--json"))
    assert removed["removed"] is True
    assert as_json(postern(config, "domains", "list", "--json")) == []


def test_webhooks_add_checks_as_the_api_does(config: str) -> None:
    """The API's checks (webhook_ops.create_with): a private address is refused, one line and
    exit status 2; a public one is stored and its secret printed once."""
    private = postern(config, "webhooks", "add", "http://127.0.0.1:9/hook")
    assert private.returncode == 2 and private.stderr.count("\n") == 1, private.stderr
    bad = postern(config, "webhooks", "add", "https://93.184.216.34/h", "--event", "nope")
    assert bad.returncode == 2
    added = as_json(postern(
        config, "webhooks", "add", "https://93.184.216.34/hook", "--event", "delivered",
        "--final-only", "--json",
    ))  # fmt: skip
    assert added["secret"].startswith("whsec_") and added["event_types"] == ["delivered"]
    listed = as_json(postern(config, "webhooks", "list", "--json"))
    assert [row["id"] for row in listed] == [added["id"]] and "secret" not in listed[0]
