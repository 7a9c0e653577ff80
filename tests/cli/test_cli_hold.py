"""`postern queue hold|release`: by id and by filter with --dry-run, as a subprocess; a held
message is listed as held and refused a retry; refusals are one stderr line, exit 2."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.cli.test_cli_queue import _seeded, _state, config, run
from tests.support.processes import child_cwd, child_env, postern_argv

pytestmark = pytest.mark.timeout(60)
__all__ = ["config"]  # the fixture, imported for this module's tests


def _postern(config: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*postern_argv(), "--config", config, *args],
        capture_output=True, text=True, cwd=child_cwd(), env=child_env(), timeout=30, check=False,
    )  # fmt: skip


def test_hold_and_release_by_id_as_a_subprocess(config: str) -> None:
    rows = _seeded(config, 4)
    queued, deferred = rows[0]["id"], rows[1]["id"]
    done = _postern(config, "queue", "hold", queued, deferred, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "matched": 2, "held": 2, "busy": 0, "dry_run": False, "final": []
    }  # fmt: skip
    assert _state(config, queued).status == "held"
    assert _state(config, queued).next_attempt_at is None
    assert [e["type"] for e in _state(config, deferred).events] == ["held"]

    listed = _postern(config, "queue", "list", "--status", "held", "--json")
    assert sorted(m["message_id"] for m in json.loads(listed.stdout)["data"]) == sorted(
        [queued, deferred]
    )
    refused = _postern(config, "queue", "retry", queued)
    assert refused.returncode == 2 and refused.stdout == ""
    assert "on hold" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1

    released = _postern(config, "queue", "release", queued, deferred)
    assert released.returncode == 0, released.stderr
    assert released.stdout.strip() == "released 2 of 2 matching message(s)"
    assert _state(config, queued).status == "queued"
    assert _state(config, deferred).status == "deferred"
    again = _postern(config, "queue", "release", queued)
    assert again.returncode == 2 and "not on hold" in again.stderr


def test_hold_and_release_by_filter_with_dry_run(
    config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _seeded(config, 40)
    active = [r for r in rows if r["status"] in ("queued", "deferred")]
    code, out, _ = run(capsys, "--config", config, "queue", "hold", "--all", "--dry-run",
                       "--json")  # fmt: skip
    assert code == 0
    assert json.loads(out) == {"matched": len(active), "held": 0, "busy": 0, "dry_run": True}
    code, out, _ = run(capsys, "--config", config, "queue", "hold", "--status", "deferred")
    deferred = [r for r in active if r["status"] == "deferred"]
    assert (
        code == 0 and out.strip() == f"held {len(deferred)} of {len(deferred)} matching message(s)"
    )
    code, out, _ = run(capsys, "--config", config, "queue", "release", "--all", "--json")
    assert json.loads(out)["released"] == len(deferred)
    code, out, err = run(capsys, "--config", config, "queue", "hold")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
