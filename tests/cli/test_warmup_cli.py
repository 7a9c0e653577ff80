"""`postern warmup`: set (preset and linear), list, show, pause, resume, clear, on the
database `serve` uses; refusals are exit 2, what is not there exit 1."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.process.cli import main
from storage import pools
from storage.db import create_schema, database_url, open_database, prepare_data_dir

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "postern.toml"
    path.write_text(
        f'[server]\ndata_dir = "{tmp_path / "var"}"\n[warmup]\ntimezone = "Europe/Paris"\n'
    )
    asyncio.run(_seed(tmp_path / "var"))
    return str(path)


async def _seed(data_dir: Path) -> None:
    prepare_data_dir(data_dir)
    db = open_database(database_url("", data_dir))
    try:
        await create_schema(db)
        await pools.create_pool(
            db, {"name": "relay", "host": "127.0.0.1", "port": 2525}, lambda _: b""
        )
    finally:
        await db.dispose()


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def as_json(capsys: pytest.CaptureFixture[str], config: str, *args: str) -> Any:
    code, out, err = run(capsys, "warmup", *args, "--config", config, "--json")
    assert code == 0, err
    return json.loads(out)


def test_set_list_pause_resume_clear(capsys: pytest.CaptureFixture[str], config: str) -> None:
    shown = as_json(capsys, config, "set", "pool", "relay", "--preset", "conservative")
    assert (shown["status"], shown["day"], shown["daily_limit"], shown["days"]) == (
        "active", 1, 20, 30,
    )  # fmt: skip
    assert shown["timezone"] == "Europe/Paris" and shown["hourly_limit"] == 2
    linear = ("set", "pool", "relay", "--start", "50", "--step", "25", "--cap", "500")
    shown = as_json(capsys, config, *linear)
    assert shown["schedule"] == "start 50, +25 a day, up to 500" and shown["daily_limit"] == 50
    [listed] = as_json(capsys, config, "list")
    assert (listed["name"], listed["sent_today"]) == ("relay", 0)
    paused = as_json(capsys, config, "pause", "pool", "relay", "--reason", "looking at it")
    assert (paused["status"], paused["paused_reason"]) == ("paused", "looking at it")
    code, out, _ = run(capsys, "warmup", "list", "--config", config)
    assert code == 0 and "paused: looking at it" in out and "relay" in out
    resumed = as_json(capsys, config, "resume", "pool", "relay")
    assert (resumed["status"], resumed["paused_reason"]) == ("active", None)
    code, out, _ = run(capsys, "warmup", "clear", "pool", "relay", "--config", config)
    assert (code, out.strip()) == (0, "warmup of pool relay cleared")
    code, out, _ = run(capsys, "warmup", "list", "--config", config)
    assert out.strip() == "no warmups"


def test_refusals(capsys: pytest.CaptureFixture[str], config: str) -> None:
    code, _, err = run(capsys, "warmup", "show", "pool", "relay", "--config", config)
    assert code == 1 and "has no warmup" in err
    code, _, err = run(capsys, "warmup", "set", "pool", "nope", "--preset", "aggressive",
                       "--config", config)  # fmt: skip
    assert code == 1 and "no pool 'nope'" in err
    both = ("set", "pool", "relay", "--preset", "aggressive", "--start", "5", "--cap", "9")
    code, _, err = run(capsys, "warmup", *both, "--config", config)
    assert code == 2 and "not both" in err
    never = ("set", "pool", "relay", "--start", "5", "--cap", "90000", "--step", "1")
    code, _, err = run(capsys, "warmup", *never, "--config", config)
    assert code == 2 and "days" in err
    zone = ("set", "pool", "relay", "--preset", "aggressive", "--timezone", "Mars/Base")
    code, _, err = run(capsys, "warmup", *zone, "--config", config)
    assert code == 2 and "unknown time zone" in err
