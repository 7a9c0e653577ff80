"""`postern routes list|add|remove` as a subprocess: the config's entries listed and winning,
stored ones added and removed with the API's checks; refusals one stderr line, exit 2."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.processes import child_cwd, child_env, postern_argv

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "postern.toml"
    path.write_text(
        f'[server]\ndata_dir = "{tmp_path / "var"}"\n'
        '[[pools]]\nname = "relay"\nhost = "127.0.0.1"\nencryption = "none"\n'
        '[[routes]]\nrecipient_domain = "gmail.test"\nip_pool = "bulk"\n'
    )
    (tmp_path / "var").mkdir()
    return str(path)


def _postern(config: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*postern_argv(), "--config", config, "routes", *args],
        capture_output=True, text=True, cwd=child_cwd(), env=child_env(), timeout=30, check=False,
    )  # fmt: skip


def test_list_add_remove(config: str) -> None:
    listed = _postern(config, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(r["recipient_domain"], r["source"]) for r in json.loads(listed.stdout)] == [
        ("gmail.test", "config")
    ]
    added = _postern(config, "add", ".Example.test", "--pool", "relay", "--json")
    assert added.returncode == 0, added.stderr
    route = json.loads(added.stdout)
    assert route["recipient_domain"] == ".example.test" and route["pool"] == "relay"
    text = _postern(config, "list").stdout
    assert "gmail.test  -> ip_pool bulk  (config)" in text
    assert f".example.test  -> pool relay  (api {route['id']})" in text

    for args, words in (
        (("add", "gmail.test", "--pool", "relay"), "config file"),
        (("add", ".example.test", "--ip-pool", "x"), "exists already"),
        (("add", "a.test", "--pool", "nope"), "no pool is named 'nope'"),
        (("add", "a b.test", "--pool", "relay"), "recipient_domain"),
    ):
        refused = _postern(config, *args)
        assert refused.returncode == 2 and refused.stdout == "", args
        assert words in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    removed = _postern(config, "remove", ".example.test")
    assert removed.returncode == 0 and removed.stdout.startswith(f"removed route {route['id']}")
    missing = _postern(config, "remove", route["id"])
    assert missing.returncode == 1 and "no such route" in missing.stderr
