"""`postern queue cat` (the stored bytes, exactly; exit 1 and one stderr line when unknown or
the body is gone) and `postern tail` (events in the stream's order, text or JSON lines,
filters, --since-id, --once; a follow that prints new events and ends on SIGTERM, exit 0),
each run as a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import Connection, delete, insert, update

from gateway.process.cli import main
from gateway.queue import events
from storage.db import create_schema, database_url, open_database
from storage.models import Event, MessageBody
from tests.support.processes import child_cwd, child_env, line_within, postern_argv
from tests.support.stored import seed

pytestmark = pytest.mark.timeout(60)

E = Event
B = MessageBody
RAW = b"From: a@x.test\r\nSubject: caf\xe9\r\n\r\nline one\r\n.dot\r\nno newline at end"


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "postern.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path / "var"}"\n')
    (tmp_path / "var").mkdir()
    return str(path)


def _in_db(config: str, work: object) -> None:
    async def run() -> None:
        db = open_database(database_url("", Path(config).parent / "var"))
        try:
            await create_schema(db)
            await seed(db, 4, ["key_a"])
            await db.transaction(work)  # type: ignore[arg-type]
        finally:
            await db.dispose()

    asyncio.run(run())


def _events(config: str, rows: list[tuple[str, str, str]]) -> None:
    """Add events (type, message id, recipient) to the config's database."""

    async def run() -> None:
        db = open_database(database_url("", Path(config).parent / "var"))
        try:
            made = [events.row(t, m, "queued", time.time(), r) for t, m, r in rows]
            await db.transaction(lambda conn: conn.execute(insert(E), made))
        finally:
            await db.dispose()

    asyncio.run(run())


def postern(config: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*postern_argv(), "--config", config, *args],
        cwd=child_cwd(), env=child_env(), capture_output=True, timeout=30,
    )  # fmt: skip


def test_queue_cat_prints_the_stored_bytes_exactly(config: str) -> None:
    def store(conn: Connection) -> None:
        conn.execute(update(B).where(B.c.message_id == "msg_seed00000").values(data=RAW))
        conn.execute(delete(B).where(B.c.message_id == "msg_seed00002"))

    _in_db(config, store)
    done = postern(config, "queue", "cat", "msg_seed00000")
    assert done.returncode == 0, done.stderr
    assert done.stdout == RAW and done.stderr == b""

    gone = postern(config, "queue", "cat", "msg_seed00002")
    assert gone.returncode == 1 and gone.stdout == b""
    assert b"body of msg_seed00002 is gone" in gone.stderr
    assert len(gone.stderr.strip().splitlines()) == 1


def test_queue_cat_of_an_unknown_message(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    _in_db(config, lambda conn: None)
    code, out, err = cli(capsys, "queue", "cat", "--config", config, "msg_nope")
    assert code == 1 and out == "" and "no message with id 'msg_nope'" in err


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`postern` in this process (quicker than a child; the follow test runs one)."""
    try:
        code = main(list(args))
    except SystemExit as exit_:  # argparse refusals
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_tail_once_prints_the_last_events_in_order_with_filters(
    config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _in_db(config, lambda conn: None)
    _events(config, [
        (events.QUEUED, "msg_seed00000", "r0@example.test"),
        (events.DELIVERED, "msg_seed00000", "r0@example.test"),
        (events.DEFERRED, "msg_seed00001", "r1@example.test"),
    ])  # fmt: skip
    code, out, err = cli(capsys, "tail", "--config", config, "--once", "--json")
    assert code == 0, err
    found = [json.loads(line) for line in out.splitlines()]
    assert [(e["type"], e["message_id"]) for e in found] == [
        ("queued", "msg_seed00000"), ("delivered", "msg_seed00000"), ("deferred", "msg_seed00001")
    ]  # fmt: skip
    first = int(found[0]["id"].removeprefix("evt_"))

    _, after, _ = cli(
        capsys, "tail", "--config", config, "--once", "--json", "--since-id", str(first)
    )
    assert [json.loads(x)["type"] for x in after.splitlines()] == [
        "delivered", "deferred"
    ]  # fmt: skip
    _, only, _ = cli(capsys, "tail", "--config", config, "--once", "--type", "deferred",
                     "--recipient", "r1@example.test")  # fmt: skip
    lines = only.splitlines()
    assert len(lines) == 1 and "msg_seed00001" in lines[0] and "deferred" in lines[0]
    assert "r1@example.test" in lines[0]
    assert cli(capsys, "tail", "--config", config, "--once", "-n", "1")[1].count("\n") == 1

    code, _, err = cli(capsys, "tail", "--config", config, "--once", "--type", "nonsense")
    assert code == 2 and "--type" in err


def test_tail_follows_new_events_and_stops_on_sigterm(config: str) -> None:
    _in_db(config, lambda conn: None)
    _events(config, [(events.QUEUED, "msg_seed00002", "r2@example.test")])
    child = subprocess.Popen(
        [*postern_argv(), "--config", config, "tail", "--json"],
        cwd=child_cwd(), env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:  # the event there before it started, printed: it is reading; then a new one
        assert (
            json.loads(line_within(child, time.monotonic() + 20))["message_id"] == "msg_seed00002"
        )
        _events(config, [(events.DELIVERED, "msg_seed00003", "r3@example.test")])
        line = line_within(child, deadline=time.monotonic() + 10)
        assert json.loads(line)["message_id"] == "msg_seed00003"
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=10) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
