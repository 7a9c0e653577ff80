"""`postern reputation`, run as the operator runs it (a subprocess), over a database the
evaluation filled: the table and --json, --kind."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import pytest

from gateway.config import load
from gateway.dns import Resolver
from gateway.reputation.watch import ReputationWatch, WatchSettings
from storage import pools, reputation
from storage.db import create_schema, database_url, open_database, prepare_data_dir
from tests.support.processes import child_cwd, child_env, postern_argv
from tests.support.reputation import record_sends

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "postern.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path / "var"}"\n')
    return str(path)


def postern(config: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*postern_argv(), "--config", config, *args], capture_output=True, text=True,
        timeout=60, env=child_env(), cwd=child_cwd(), check=False,
    )  # fmt: skip


def evaluate(config: str) -> None:
    """Two pools, one with bounces, and one evaluation (no domains: no DNS asked)."""

    async def work() -> None:
        loaded = load(config)
        prepare_data_dir(loaded.server.data_dir)
        db = open_database(database_url(loaded.storage.url, loaded.server.data_dir))
        try:
            await create_schema(db)
            for name in ("relay", "quiet"):
                values = {"name": name, "host": "127.0.0.1", "port": 2525}
                await pools.create_pool(db, values, lambda _: "")
            now = time.time()
            await record_sends(db, "relay", "a@x.test", now, delivered=190, bounced=10)
            watch = ReputationWatch(db, Resolver(["127.0.0.1"]), WatchSettings("cli-test"))
            watch.clock = lambda: now + reputation.MARGIN + 60
            assert await watch.run_once() is not None
        finally:
            await db.dispose()

    asyncio.run(work())


def test_the_table_and_json(config: str) -> None:
    evaluate(config)
    shown = postern(config, "reputation")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].split() == [
        "KIND", "NAME", "SCORE", "STATUS", "WARMUP", "LIMIT", "TODAY", "BLOCKLIST", "COSTS",
    ]  # fmt: skip
    relay = next(line for line in lines if " relay " in line).split()
    assert relay[:8] == ["pool", "relay", "65", "at_risk", "not_started", "-", "200", "unknown"]
    assert "hard_bounce_rate -35" in shown.stdout
    quiet = next(line for line in lines if " quiet " in line).split()
    assert quiet[2:4] == ["-", "collecting"]
    assert lines[-1].startswith("last evaluation: 20")

    data = json.loads(postern(config, "reputation", "--json", "--kind", "pool").stdout)
    assert {row["name"]: row["reputation_score"] for row in data} == {"relay": 65, "quiet": None}
    assert postern(config, "reputation", "--kind", "account").stdout.startswith("no accounts")
