"""`postern tail --subject/--client`, run as a subprocess on SQLite and on a clean PostgreSQL:
the message search's filters (`postern queue list`'s names, parser and meaning) select the
events of the matching messages, an event about no message matches neither, a follow
prints only what matches, and a bad value is one stderr line naming the option, exit 2,
worded as `queue list` words it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import insert

from gateway.queue import events
from storage.db import create_schema, database_url, open_database
from storage.models import Event
from tests.support.databases import clean_postgresql
from tests.support.processes import child_cwd, child_env, line_within, postern_argv
from tests.support.stored import seed

pytestmark = pytest.mark.timeout(120)

E = Event
# tests.support.stored.seed: message i has Subject "Order {i % 9} shipped" and client
# 198.51.100.{i % 6}.
SEEDED = [f"msg_seed{i:05d}" for i in range(6)]


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """(config path, database URL): SQLite in the data_dir, or a clean PostgreSQL."""
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    config = tmp_path / "postern.toml"
    text = f'[server]\ndata_dir = "{data_dir}"\n'
    if request.param == "sqlite":
        config.write_text(text)
        yield str(config), database_url("", data_dir)
        return
    async with clean_postgresql() as url:
        config.write_text(text + f'[storage]\nurl = "{url}"\n')
        yield str(config), url


async def _fill(url: str, rows: list[tuple[str, str]], messages: bool = False) -> None:
    """Add events (type, message id); first the seeded messages when `messages`."""
    db = open_database(url)
    try:
        if messages:
            await create_schema(db)
            await seed(db, len(SEEDED), ["key_a"])
        made = [events.row(t, m, "queued", time.time()) for t, m in rows]
        if made:
            await db.transaction(lambda conn: conn.execute(insert(E), made))
    finally:
        await db.dispose()


async def postern(config: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    argv = [*postern_argv(), "--config", config, *args]
    return await asyncio.to_thread(
        subprocess.run, argv, cwd=child_cwd(), env=child_env(), capture_output=True, timeout=30
    )


async def tailed(config: str, *filters: str) -> list[str]:
    """The message ids of what `tail --once --json` prints with `filters`, in order."""
    done = await postern(config, "tail", "--once", "--json", "-n", "100", *filters)
    assert done.returncode == 0, done.stderr
    return [json.loads(line)["message_id"] for line in done.stdout.splitlines()]


async def test_tail_selects_by_subject_words_and_client_address(store: tuple[str, str]) -> None:
    config, url = store
    rows = [(events.QUEUED, m) for m in SEEDED] + [(events.REPUTATION_AT_RISK, "")]
    await _fill(url, rows, messages=True)

    assert await tailed(config) == [*SEEDED, ""]
    assert await tailed(config, "--subject", "SHIPPED order 3") == [SEEDED[3]]
    assert await tailed(config, "--subject", "shipped") == SEEDED  # not the event about none
    assert await tailed(config, "--subject", "shipp") == []  # whole words only
    assert await tailed(config, "--client", "198.51.100.2") == [SEEDED[2]]
    assert await tailed(config, "--client", "::ffff:198.51.100.4") == [SEEDED[4]]
    assert await tailed(config, "--client", "198.51.100.0/31") == SEEDED[:2]
    both = ("--subject", "order shipped", "--client", "198.51.100.4/30", "--type", "queued")
    assert await tailed(config, *both) == SEEDED[4:]


async def test_bad_values_are_refused_as_queue_list_refuses_them(tmp_path: Path) -> None:
    # Refused before the database is opened: one backend is enough.
    config = tmp_path / "postern.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path}"\n')
    for option, bad in (("--subject", "— !"), ("--client", "10.0.0.1/33")):
        done = await postern(str(config), "tail", "--once", option, bad)
        assert done.returncode == 2, (option, bad, done.stderr)
        assert done.stdout == b"" and len(done.stderr.splitlines()) == 1
        assert done.stderr.startswith(f"postern: error: {option}: ".encode()), done.stderr
        listed = await postern(str(config), "queue", "list", option, bad)
        assert (listed.returncode, listed.stderr) == (2, done.stderr)


async def test_a_follow_prints_only_what_matches(store: tuple[str, str]) -> None:
    config, url = store
    await _fill(url, [(events.QUEUED, SEEDED[1])], messages=True)
    argv = [*postern_argv(), "--config", config, "tail", "--json", "-n", "1"]
    child = subprocess.Popen(
        [*argv, "--client", "198.51.100.1", "--subject", "order 1"],
        cwd=child_cwd(), env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:  # the event there before it started, printed: it is reading
        first = json.loads(line_within(child, time.monotonic() + 20))
        assert (first["type"], first["message_id"]) == ("queued", SEEDED[1])
        await _fill(url, [
            (events.DELIVERED, SEEDED[2]), (events.REPUTATION_AT_RISK, ""),
            (events.DELIVERED, SEEDED[1]),
        ])  # fmt: skip
        line = json.loads(line_within(child, time.monotonic() + 10))
        assert (line["type"], line["message_id"]) == ("delivered", SEEDED[1])
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=10) == 0
        assert child.stdout is not None and child.stdout.read() == b""
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
