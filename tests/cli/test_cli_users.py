"""`postern users create|list|disable|reset-password`, text and --json: a generated password
shown once, --password-stdin reading one line, the last owner kept, bad input one stderr
line and exit status 2. The passwords set here log in through gateway.people."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest

from gateway.config import load
from gateway.people.passwords import Passwords
from gateway.people.users import LoginRefused, Users
from gateway.process.cli import main
from storage.db import create_schema, database_url, open_database

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "postern.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path / "var"}"\n')
    return str(path)


def run(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str,
    stdin: str = "",
) -> tuple[int, str, str]:  # fmt: skip
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    try:
        code = main(list(args))
    except SystemExit as exit:  # argparse's refusals
        code = int(exit.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def logs_in(config: str, email: str, password: str) -> bool:
    async def attempt() -> bool:
        loaded = load(config)
        db = open_database(database_url(loaded.storage.url, loaded.server.data_dir))
        try:
            await create_schema(db)
            await Users(db, Passwords()).login(email, password)
            return True
        except LoginRefused:
            return False
        finally:
            await db.dispose()

    return asyncio.run(attempt())


def test_create_prints_a_generated_password_once(
    config: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ("--config", config, "users")
    code, out, _ = run(capsys, monkeypatch, *base, "create", "--email", "Ann@Example.COM",
                       "--role", "owner", "--name", "Ann", "--json")  # fmt: skip
    assert code == 0
    created = json.loads(out)
    assert created["email"] == "ann@example.com" and created["role"] == "owner"
    assert created["id"].startswith("usr_") and len(created["password"]) >= 20
    assert logs_in(config, "ann@example.com", created["password"])

    code, out, _ = run(capsys, monkeypatch, *base, "list", "--json")
    [listed] = json.loads(out)
    assert listed["email"] == "ann@example.com" and listed["disabled_at"] is None
    assert created["password"] not in out and "argon2" not in out

    code, out, _ = run(capsys, monkeypatch, *base, "create", "--email", "bob@example.com",
                       "--role", "member")  # fmt: skip
    assert code == 0 and "shown this once" in out
    code, out, _ = run(capsys, monkeypatch, *base, "list")
    assert "bob@example.com" in out and "member" in out


def test_password_stdin_reads_one_line(
    config: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ("--config", config, "users")
    code, out, _ = run(capsys, monkeypatch, *base, "create", "--email", "a@example.com",
                       "--role", "owner", "--password-stdin", "--json",
                       stdin="first line secret\nsecond line\n")  # fmt: skip
    assert code == 0 and "password" not in json.loads(out)
    assert logs_in(config, "a@example.com", "first line secret")
    assert not logs_in(config, "a@example.com", "second line")

    code, out, _ = run(capsys, monkeypatch, *base, "reset-password", "A@example.com",
                       "--password-stdin", stdin="a brand new secret")  # fmt: skip
    assert code == 0 and "password:" not in out
    assert logs_in(config, "a@example.com", "a brand new secret")
    assert not logs_in(config, "a@example.com", "first line secret")

    code, out, _ = run(capsys, monkeypatch, *base, "reset-password", "a@example.com", "--json")
    assert code == 0 and logs_in(config, "a@example.com", json.loads(out)["password"])


def test_disable_keeps_the_last_owner(
    config: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ("--config", config, "users")
    run(capsys, monkeypatch, *base, "create", "--email", "o@example.com", "--role", "owner")
    run(capsys, monkeypatch, *base, "create", "--email", "m@example.com", "--role", "member")
    code, out, err = run(capsys, monkeypatch, *base, "disable", "o@example.com")
    assert code == 2 and out == "" and err.count("\n") == 1 and "last owner" in err
    code, out, _ = run(capsys, monkeypatch, *base, "disable", "m@example.com", "--json")
    assert code == 0 and json.loads(out)["disabled_at"]
    code, out, _ = run(capsys, monkeypatch, *base, "list")
    assert "disabled" in out


@pytest.mark.parametrize(
    ("args", "stdin"),
    [
        (("create", "--email", "not an address", "--role", "owner"), ""),
        (("create", "--email", "a@example.com", "--role", "root"), ""),
        (("create", "--email", "a@example.com", "--role", "owner", "--password-stdin"), ""),
        (("create", "--email", "a@example.com", "--role", "owner", "--password-stdin"), "short\n"),
        (("create", "--email", "a@example.com", "--role", "owner", "--name", "a\x00b"), ""),
        (("disable", "nobody@example.com"), ""),
        (("reset-password", "nobody@example.com"), ""),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    config: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: tuple[str, ...],
    stdin: str,
) -> None:
    code, out, err = run(capsys, monkeypatch, "--config", config, "users", *args, stdin=stdin)
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("postern:")


def test_an_email_is_created_once(
    config: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ("--config", config, "users", "create", "--role", "owner", "--email")
    assert run(capsys, monkeypatch, *base, "a@example.com")[0] == 0
    code, _, err = run(capsys, monkeypatch, *base, "A@EXAMPLE.com")
    assert code == 2 and "exists" in err
