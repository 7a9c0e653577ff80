"""`postern queue list|show|retry|cancel|purge`: filters and pages as the API's, --json
parseable, retry and cancel by id or by filter with --dry-run, refusals one stderr line and
exit status 2.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.process.cli import main
from storage.db import create_schema, database_url, open_database
from storage.messages import message_state
from tests.support.processes import child_cwd, child_env, postern_argv
from tests.support.stored import seed

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "postern.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path / "var"}"\n')
    (tmp_path / "var").mkdir()
    return str(path)


def _seeded(config: str, n: int) -> list[dict[str, Any]]:
    """n messages as tests.support.stored.seed writes them (statuses cycle queued,
    deferred, delivered, bounced; tag t{i % 10}), straight into the config's database."""

    async def run() -> list[dict[str, Any]]:
        db = open_database(database_url("", Path(config).parent / "var"))
        try:
            await create_schema(db)
            return await seed(db, n, ["key_a"])
        finally:
            await db.dispose()

    return asyncio.run(run())


def _state(config: str, message_id: str) -> Any:
    async def run() -> Any:
        db = open_database(database_url("", Path(config).parent / "var"))
        try:
            return await message_state(db, message_id, True)
        finally:
            await db.dispose()

    return asyncio.run(run())


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as exit_:  # argparse refusals
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _newest_first(rows: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in sorted(rows, key=lambda r: (r["created_at"], r["id"]), reverse=True)]


def test_list_filters_and_pages_as_json(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _seeded(config, 120)
    seen: list[str] = []
    cursor: list[str] = []
    while True:
        code, out, _ = run(capsys, "queue", "list", "--config", config, "--json", "--limit", "25",
                           "--status", "deferred", *cursor)  # fmt: skip
        assert code == 0
        page = json.loads(out)
        seen += [m["message_id"] for m in page["data"]]
        if page["next_cursor"] is None:
            break
        cursor = ["--cursor", page["next_cursor"]]
    assert seen == _newest_first([r for r in rows if r["status"] == "deferred"])

    code, out, _ = run(capsys, "queue", "list", "--config", config, "--tag", "t3", "--json")
    listed = json.loads(out)["data"]
    assert [m["message_id"] for m in listed] == _newest_first(rows[3::10])
    assert listed[0]["tags"] == ["t3"] and listed[0]["recipients"] == ["r3@example.test"]

    code, out, _ = run(capsys, "queue", "list", "--config", config, "--limit", "2")
    assert code == 0 and out.count("msg_seed") == 2 and "--cursor" in out


def test_show_prints_status_recipients_and_events(
    config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _seeded(config, 4)
    deferred = rows[1]["id"]
    code, out, _ = run(capsys, "--config", config, "queue", "cancel", deferred, "--json")
    assert code == 0 and json.loads(out)["cancelled"] == 1

    code, out, _ = run(capsys, "--config", config, "queue", "show", deferred, "--json")
    shown = json.loads(out)
    assert shown["status"] == "cancelled"
    assert shown["recipients"][0]["status"] == "cancelled"
    assert [e["type"] for e in shown["events"]] == ["cancelled"]

    code, out, _ = run(capsys, "--config", config, "queue", "show", deferred)
    assert code == 0 and "cancelled" in out and "r1@example.test" in out and "events:" in out


def test_retry_by_id_makes_it_due_now(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _seeded(config, 4)
    deferred, delivered = rows[1]["id"], rows[2]["id"]
    before = time.time()
    code, out, _ = run(capsys, "--config", config, "queue", "retry", deferred, "--json")
    assert code == 0
    assert json.loads(out) == {
        "matched": 1, "retried": 1, "busy": 0, "dry_run": False, "final": []
    }  # fmt: skip
    state = _state(config, deferred)
    assert state.next_attempt_at is not None and before <= state.next_attempt_at <= time.time()

    code, out, err = run(capsys, "--config", config, "queue", "retry", delivered)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "no work left" in err
    code, _, err = run(capsys, "--config", config, "queue", "retry", "msg_nope")
    assert code == 2 and "no message" in err


def test_bulk_cancel_dry_run_then_purge(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _seeded(config, 40)
    active = [r for r in rows if r["status"] in ("queued", "deferred")]
    t1 = [r for r in active if r["id"] in {x["id"] for x in rows[1::10]}]

    code, out, _ = run(capsys, "--config", config, "queue", "cancel", "--tag", "t1",
                       "--dry-run", "--json")  # fmt: skip
    assert code == 0
    assert json.loads(out) == {"matched": len(t1), "cancelled": 0, "busy": 0, "dry_run": True}
    code, out, _ = run(capsys, "--config", config, "queue", "cancel", "--tag", "t1", "--json")
    assert json.loads(out)["cancelled"] == len(t1)

    code, out, err = run(capsys, "--config", config, "queue", "purge")
    assert code == 2 and out == "" and "--all" in err and len(err.strip().splitlines()) == 1
    code, out, _ = run(capsys, "--config", config, "queue", "purge", "--all", "--dry-run")
    assert code == 0 and f"{len(active) - len(t1)} message(s)" in out
    code, out, _ = run(capsys, "--config", config, "queue", "purge", "--all", "--json")
    assert json.loads(out)["cancelled"] == len(active) - len(t1)
    code, out, _ = run(capsys, "--config", config, "queue", "list", "--status", "queued,deferred")
    assert out.strip() == "no messages"


@pytest.mark.parametrize(
    "args",
    [
        ["list", "--status", "lost"],
        ["list", "--since", "yesterday"],
        ["list", "--limit", "0"],
        ["list", "--cursor", "garbage"],
        ["list", "--subject", "!!"],
        ["list", "--client", "198.51.100.0/99"],
        ["list", "--message-id", "<>"],
        ["retry", "msg_x", "--tag", "t1"],
        ["cancel"],
    ],
)
def test_refusals_are_one_line_and_exit_2(
    config: str, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    code, out, err = run(capsys, "--config", config, "queue", *args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_the_installed_command_runs(config: str) -> None:
    _seeded(config, 8)
    done = subprocess.run(
        [*postern_argv(), "--config", config, "queue", "list", "--json"],
        capture_output=True, text=True, cwd=child_cwd(), env=child_env(), timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["data"]) == 8


def test_list_by_subject_words_client_and_message_id_in_a_subprocess(config: str) -> None:
    """The installed command finds by Subject words (any case and order), by the client's
    address or block, and by the Message-ID header: the same filters as the API's."""
    rows = _seeded(config, 60)

    def listed(*args: str) -> list[dict[str, Any]]:
        done = subprocess.run(
            [*postern_argv(), "--config", config, "queue", "list", "--json", "--limit", "100",
             *args],
            capture_output=True, text=True, cwd=child_cwd(), env=child_env(), timeout=30,
            check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return list(json.loads(done.stdout)["data"])

    found = listed("--subject", "SHIPPED order 4")
    assert [m["message_id"] for m in found] == _newest_first(
        [r for i, r in enumerate(rows) if i % 9 == 4]
    )
    by_client = listed("--client", "198.51.100.5")
    assert [m["message_id"] for m in by_client] == _newest_first(
        [r for i, r in enumerate(rows) if i % 6 == 5]
    )
    assert {m["client_address"] for m in by_client} == {"198.51.100.5"}
    block = listed("--client", "198.51.100.4/31", "--subject", "4")
    assert [m["message_id"] for m in block] == _newest_first(
        [r for i, r in enumerate(rows) if i % 6 in (4, 5) and i % 9 == 4]
    )
    by_header = listed("--message-id", "m3@app.test")
    assert [m["message_id"] for m in by_header] == _newest_first(
        [r for i, r in enumerate(rows) if i % 7 == 3]
    )
    refused = subprocess.run(
        [*postern_argv(), "--config", config, "queue", "list", "--client", "nowhere"],
        capture_output=True, text=True, cwd=child_cwd(), env=child_env(), timeout=30,
        check=False,
    )  # fmt: skip
    assert refused.returncode == 2 and "--client: an IP address" in refused.stderr
