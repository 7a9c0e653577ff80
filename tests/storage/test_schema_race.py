"""Schema upgrades from several processes at once (`postern serve` and a CLI command after
an upgrade): on SQLite the upgrade takes the write lock before it reads the schema version,
as PostgreSQL's takes its advisory lock, so one process upgrades and the others find it done
(they crashed on `duplicate column name: retried_at`).

The processes are real CLI runs (`postern keys list`). On SQLite the test holds the write
lock while they start, as a long transaction of another process would: each one gets as far
as it can without writing, then they all go at once when it is released.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import Connection, inspect, text

from storage.db import Database
from storage.models import SCHEMA_VERSION
from tests.support.processes import child_cwd, child_env, postern_argv

pytestmark = pytest.mark.timeout(120)

PROCESSES = 3


def _to_schema_4(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE message DROP COLUMN retried_at"))
    conn.execute(text("ALTER TABLE message DROP COLUMN forced_attempts"))
    conn.execute(text("UPDATE postern_meta SET value = '4' WHERE key = 'schema_version'"))


def _state(conn: Connection) -> tuple[set[str], str | None]:
    columns = {c["name"] for c in inspect(conn).get_columns("message")}
    version = conn.execute(
        text("SELECT value FROM postern_meta WHERE key = 'schema_version'")
    ).scalar()
    return columns, version


async def test_processes_upgrading_one_database_at_once_all_succeed(
    backend: Database, tmp_path: Path
) -> None:
    await backend.transaction(_to_schema_4)
    config = tmp_path / "postern.toml"
    config.write_text(
        f'[server]\ndata_dir = "{tmp_path / "var"}"\n[storage]\nurl = "{backend.url}"\n'
    )
    blocker = None
    if backend.is_sqlite:
        blocker = sqlite3.connect(backend.url.removeprefix("sqlite:///"), isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
    argv = [*postern_argv(), "--config", str(config), "keys", "list", "--json"]
    children = [
        subprocess.Popen(
            argv, cwd=child_cwd(), env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(PROCESSES)
    ]
    try:
        time.sleep(4.0)  # they start, read what they can, and wait for the lock
    finally:
        if blocker is not None:
            blocker.execute("ROLLBACK")
            blocker.close()
    for child in children:
        _, err = child.communicate(timeout=90)
        assert child.returncode == 0, err.decode(errors="replace")
    columns, version = await backend.read(_state)
    assert {"retried_at", "forced_attempts"} <= columns
    assert version == str(SCHEMA_VERSION)
