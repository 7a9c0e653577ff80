"""`postern keys create|list|revoke` and `postern suppressions add|list|remove`, text and
--json; refusals are one stderr line and exit status 2. A key made by the CLI works against
a running server.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gateway.process.cli import main
from tests.support.api import Api, ApiFactory
from tests.support.processes import child_cwd, child_env, postern_argv
from tests.support.smtp import smtp_send

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "postern.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path / "var"}"\n')
    return str(path)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_keys_create_list_revoke_json(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "keys", "create", "--config", config, "--name", "ci",
        "--scope", "send", "--scope", "sandbox", "--json",
    )  # fmt: skip
    assert code == 0
    created = json.loads(out)
    assert set(created) == {"id", "key", "name", "scopes"}
    assert created["key"].startswith("msk_") and len(created["key"]) >= 4 + 43
    assert created["scopes"] == ["send", "sandbox"]

    code, out, _ = run(capsys, "--config", config, "keys", "list", "--json")
    [listed] = json.loads(out)
    assert listed["id"] == created["id"] and listed["revoked_at"] is None
    assert created["key"] not in out

    code, out, _ = run(capsys, "--config", config, "keys", "revoke", created["id"], "--json")
    assert code == 0 and json.loads(out)["revoked_at"]
    code, out, _ = run(capsys, "--config", config, "keys", "list")
    assert "revoked" in out and created["key"] not in out


def test_keys_create_text_shows_the_key_once(
    config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        capsys, "--config", config, "keys", "create", "--name", "x", "--scope", "send"
    )
    assert code == 0
    assert "msk_" in out and "shown this once" in out


def test_suppressions_add_list_remove(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = ("--config", config, "suppressions")
    code, out, _ = run(capsys, *base, "add", "Bob@Example.COM", "--reason", "complaint", "--json")
    assert code == 0 and json.loads(out)["email"] == "bob@example.com"
    run(capsys, *base, "add", "carol@example.com")
    code, out, _ = run(capsys, *base, "list", "--json")
    assert [(s["email"], s["reason"]) for s in json.loads(out)] == [
        ("bob@example.com", "complaint"),
        ("carol@example.com", "manual"),
    ]
    code, out, _ = run(capsys, *base, "list", "--reason", "complaint")
    assert "bob@example.com" in out and "carol" not in out
    code, out, _ = run(capsys, *base, "remove", "Bob@EXAMPLE.com")
    assert code == 0 and "removed" in out
    code, out, _ = run(capsys, *base, "list", "--json")
    assert [s["email"] for s in json.loads(out)] == ["carol@example.com"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("keys", "create", "--name", "x", "--scope", "root"), "unknown scope 'root'"),
        (("keys", "create", "--name", "x"), "--scope"),
        (("keys", "revoke", "key_nope"), "no API key"),
        (("suppressions", "add", "not an address"), "is not an address"),
        (("suppressions", "add", "a@example.com", "--reason", "spite"), "invalid choice"),
        (("suppressions", "remove", "nobody@example.com"), "is not suppressed"),
    ],
)
def test_refusals_are_one_stderr_line_and_exit_2(
    config: str, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    try:
        code, out, err = run(capsys, "--config", config, *args)
    except SystemExit as exit_:  # argparse's own refusals
        code, (out, err) = int(exit_.code or 0), capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("postern: error: ") and message in err


def test_a_real_process_exits_2_with_one_line(config: str) -> None:
    done = subprocess.run(
        [*postern_argv(), "--config", config, "keys", "revoke", "key_x"],
        cwd=child_cwd(), env=child_env(), capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == "postern: error: no API key with id 'key_x'\n"


async def test_a_key_made_by_the_cli_works_on_a_running_server(api_client: ApiFactory) -> None:
    api: Api = await api_client()
    config = Path(api.svc.config.server.data_dir).parent / "cli.toml"
    config.write_text(f'[server]\ndata_dir = "{api.svc.config.server.data_dir}"\n')
    args = ["--config", str(config), "keys", "create", "--name", "live", "--scope", "sandbox"]
    secret = await asyncio.to_thread(_created_key, args)
    response = await api.send(key=secret, headers={"X-MisarMail-Sandbox": "true"})
    assert response.status_code == 200


def _created_key(args: list[str]) -> str:
    done = subprocess.run(
        [*postern_argv(), *args, "--json"],
        cwd=child_cwd(), env=child_env(), capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return str(json.loads(done.stdout)["key"])


async def test_the_cli_keys_suppressions_by_mailbox(api_client: ApiFactory) -> None:
    api: Api = await api_client()
    config = Path(api.svc.config.server.data_dir).parent / "cli.toml"
    config.write_text(f'[server]\ndata_dir = "{api.svc.config.server.data_dir}"\n')
    base = [*postern_argv(), "--config", str(config), "suppressions"]
    added = await asyncio.to_thread(_run_json, [*base, "add", '"Gone"@Example.ORG'])
    assert added["email"] == "gone@example.org"
    listed = await asyncio.to_thread(_run_json, [*base, "list"])
    assert [entry["email"] for entry in listed] == ["gone@example.org"]
    await api.svc.queue.suppressions.refresh()  # what the node does every few seconds
    data = b"From: app@sender.test\r\nTo: x@example.org\r\nSubject: s\r\n\r\nbody\r\n"
    code, _ = await smtp_send(api.svc.smtp_port, "app@sender.test", ["GONE@example.org"], data)
    assert code == 550
    removed = await asyncio.to_thread(_run_json, [*base, "remove", "gone@EXAMPLE.org"])
    assert removed == {"email": "gone@example.org", "removed": True}


def _run_json(args: list[str]) -> Any:
    done = subprocess.run(
        [*args, "--json"],
        cwd=child_cwd(), env=child_env(), capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return json.loads(done.stdout)


@pytest.mark.parametrize("args", [["--version"], ["check-config"], ["keys", "list"]])
def test_a_reader_that_went_away_ends_the_command_quietly(config: str, args: list[str]) -> None:
    """`postern CMD | head`: the reader has closed the pipe before anything is written."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [*postern_argv(), "--config", config, *args],
            cwd=child_cwd(), env=child_env(), stdout=write_end, stderr=subprocess.PIPE,
            timeout=30, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert b"Traceback" not in done.stderr and b"BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode in (0, 141)
