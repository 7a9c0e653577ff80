"""One instance per data_dir, one database per config, as users run `postern`.

Real processes throughout: `postern serve` and the CLI as subprocesses, run from folders
other than the config's, to prove that a config file's relative paths are beside it; two
real `postern serve` on one data_dir for the lock (README "Configuration", "Scaling out").
"""

from __future__ import annotations

import json
import shutil
import smtplib
import subprocess
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.security.secrets import KEY_FILE
from tests.support.databases import clean_postgresql
from tests.support.processes import child_env, free_port, postern_argv, spawn_serve
from tests.support.serve import EXIT_TIMEOUT, MakePostern, Postern, config_text, wait_until
from tests.support.sink import Sink, write_self_signed_cert

pytestmark = pytest.mark.timeout(90)


def postern(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`postern ARGS` run from `cwd`, to completion (bounded), without $POSTERN_CONFIG."""
    return subprocess.run(
        [*postern_argv(), *args], cwd=cwd, env=child_env(), capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == "" and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("postern: error: "), lines
    return lines[0]


def new_postern(folder: Path, data_dir: Path, extra: str = "", sink: Sink | None = None) -> Postern:
    """A `postern serve` (not started) whose config is folder/postern.toml; the caller
    kills what it starts."""
    folder.mkdir(parents=True, exist_ok=True)
    smtp_port, http_port = free_port(), free_port()
    path = folder / "postern.toml"
    text = config_text(
        data_dir=data_dir, smtp_port=smtp_port, http_port=http_port,
        sink_port=sink.port if sink else None,
    )  # fmt: skip
    path.write_text(text + extra)
    return Postern(path, smtp_port, http_port, folder)


def refused_serve(config: Path, log: Path) -> str:
    """Run a `postern serve` that must refuse to start; its one stderr line."""
    proc = spawn_serve(config, log)
    try:
        status = proc.wait(timeout=EXIT_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=EXIT_TIMEOUT)
    return one_error_line(subprocess.CompletedProcess([], status, "", log.read_text()))


def keys_known_to(server: Postern, key: str) -> list[str]:
    """GET /api/v1/keys on the running server with `key`: the ids it lists."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}/api/v1/keys",
        headers={"Authorization": f"Bearer {key}"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return [key["id"] for key in json.loads(answer.read())["keys"]]


# --- relative paths --------------------------------------------------------------------------


def test_relative_paths_of_a_config_are_beside_it_from_any_folder(tmp_path: Path) -> None:
    """data_dir = "var" and tls_cert = "tls/…" in /…/etc/postern.toml mean /…/etc/var and
    /…/etc/tls/…, for `serve` (run elsewhere) and for a CLI run from yet another folder."""
    etc, elsewhere = tmp_path / "etc", tmp_path / "elsewhere"
    (etc / "tls").mkdir(parents=True)
    elsewhere.mkdir()
    write_self_signed_cert(etc / "tls")
    tls = '[smtp]\ntls_cert = "tls/sink-cert.pem"\ntls_key = "tls/sink-key.pem"\n'
    server = new_postern(etc, Path("var"))
    config = server.config
    config.write_text(config.read_text().replace("[smtp]\n", tls, 1))
    server.start()  # its current folder is not etc
    try:
        assert (etc / "var" / "postern.db").is_file()
        with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as client:
            client.ehlo("client.test")
            assert client.has_extn("starttls")  # the certificate beside the config loaded

        made = postern(
            "--config", "../etc/postern.toml", "keys", "create", "--name", "ops",
            "--scope", "keys", "--json", cwd=elsewhere,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        created = json.loads(made.stdout)
        assert keys_known_to(server, created["key"]) == [created["id"]]  # the server's DB
        listed = postern("keys", "list", "--json", "--config", str(config), cwd=elsewhere)
        assert [key["id"] for key in json.loads(listed.stdout)] == [created["id"]]
        assert list(elsewhere.iterdir()) == []  # nothing made in the current folder
    finally:
        server.kill()


# --- no quiet new database ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ("keys", "list"),
        ("keys", "create", "--name", "x", "--scope", "send"),
        ("suppressions", "add", "a@example.com"),
        ("domains", "add", "example.com"),
        ("dkim", "list"),
        ("queue", "list"),
    ],
)
def test_without_a_config_a_folder_with_no_database_is_refused(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    """The usual mistake: a command run in the wrong folder, or with --config forgotten.
    It names where it looked and what creates a database, and creates nothing."""
    line = one_error_line(postern(*command, cwd=tmp_path))
    assert f"no database at {tmp_path / 'var' / 'postern.db'}" in line
    assert "`postern serve` creates it" in line and "--config" in line
    assert list(tmp_path.iterdir()) == []  # no var/, no secret.key, no empty database


def test_with_a_config_a_command_may_come_before_the_first_serve(tmp_path: Path) -> None:
    """Naming the config is the operator saying where: a key or a domain can be set up
    before the first start. Then, without a config, the folder holding ./var works too."""
    config = tmp_path / "postern.toml"
    config.write_text('[policy]\nsender = "any"\n')  # data_dir: the default, beside it
    made = postern(
        "--config", "postern.toml", "keys", "create", "--name", "early", "--scope", "send",
        "--json", cwd=tmp_path,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "var" / "postern.db").is_file()
    listed = postern("keys", "list", "--json", cwd=tmp_path)  # built-in defaults: ./var
    assert listed.returncode == 0, listed.stderr
    assert [key["id"] for key in json.loads(listed.stdout)] == [json.loads(made.stdout)["id"]]


def test_verbose_names_the_database_on_stderr(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "postern.toml"
    config.parent.mkdir()
    config.write_text('[server]\ndata_dir = "state"\n')
    database = tmp_path / "etc" / "state" / "postern.db"
    for args in (
        ("--verbose", "--config", str(config), "keys", "list", "--json"),
        ("keys", "list", "--json", "--config", str(config), "--verbose"),
    ):
        done = postern(*args, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == []  # stdout stays for the output alone
        assert done.stderr == (
            f"postern: config {config}; data_dir {config.parent / 'state'}; database {database}\n"
        )
    quiet = postern("--config", str(config), "keys", "list", cwd=tmp_path)
    assert quiet.stderr == ""
    copy = tmp_path / "copy"  # backup takes it after its name like every other command
    backed = postern("backup", str(copy), "--config", str(config), "--verbose", cwd=tmp_path)
    assert backed.returncode == 0, backed.stderr
    assert backed.stderr.splitlines()[0] == (
        f"postern: config {config}; data_dir {config.parent / 'state'}; database {database}"
    )
    refused = postern("--verbose", "queue", "list", cwd=tmp_path)  # where it looked, then why
    assert refused.returncode == 2
    assert refused.stderr.splitlines()[0] == (
        f"postern: built-in defaults; data_dir {tmp_path / 'var'}; "
        f"database {tmp_path / 'var' / 'postern.db'}"
    )
    pg = tmp_path / "pg.toml"
    pg.write_text('[storage]\nurl = "postgresql://postern:hunter2@db.internal/postern"\n')
    checked = postern("check-config", "--config", str(pg), "--verbose", cwd=tmp_path)
    assert checked.returncode == 0 and "hunter2" not in checked.stderr
    assert "database postgresql+asyncpg://postern:***@db.internal/postern" in checked.stderr


# --- one serve per data_dir ---------------------------------------------------------------------


def test_a_second_serve_on_one_data_dir_is_refused_until_the_first_dies(
    tmp_path: Path, sink: Sink, postern_process: MakePostern
) -> None:
    first = postern_process(sink.port)
    data_dir = first.log_dir / "var"
    second = new_postern(tmp_path / "second", data_dir, sink=sink)  # own ports
    line = refused_serve(second.config, tmp_path / "second" / "refused.log")
    assert line == (
        f"postern: error: another postern serve (pid {first.pid}) is running on data_dir "
        f"{data_dir} ({data_dir / 'serve.lock'} is locked); stop it first, or give this one "
        "a data_dir of its own"
    )
    assert first.healthy()
    # CLI commands are meant to run beside a server: the lock is not theirs.
    done = postern("--config", str(first.config), "queue", "list", "--json", cwd=tmp_path)
    assert done.returncode == 0 and json.loads(done.stdout)["data"] == [], done.stderr

    first.kill()  # SIGKILL: the kernel drops the lock with the process
    second.start()
    try:
        second.send(1, "second")
        assert wait_until(lambda: len(sink.messages) >= 1, 20)
    finally:
        second.close_client()
        second.kill()


@pytest.fixture
async def clean_pg() -> AsyncIterator[str]:
    """PostgreSQL with no Postern tables, held for this test alone."""
    async with clean_postgresql() as url:
        yield url


def test_on_postgresql_nodes_share_the_database_but_not_a_data_dir(
    tmp_path: Path, clean_pg: str
) -> None:
    """Several nodes on one database is the design (no lock there); two on one data_dir
    would share one node id, so that is refused on PostgreSQL as on SQLite."""
    storage = f'\n[storage]\nurl = "{clean_pg}"\n'
    first = new_postern(tmp_path / "a", tmp_path / "a" / "var", storage)
    second = new_postern(tmp_path / "b", tmp_path / "b" / "var", storage)
    first.start()
    try:
        same_dir = new_postern(tmp_path / "c", tmp_path / "a" / "var", storage)
        line = refused_serve(same_dir.config, tmp_path / "c" / "refused.log")
        assert f"another postern serve (pid {first.pid}) is running on data_dir" in line
        (tmp_path / "b" / "var").mkdir(mode=0o700)  # its own data_dir, the same secret key
        shutil.copy(tmp_path / "a" / "var" / KEY_FILE, tmp_path / "b" / "var" / KEY_FILE)
        second.start()
        assert first.healthy() and second.healthy()
        node_ids = {(tmp_path / node / "var" / "node_id").read_text() for node in "ab"}
        assert len(node_ids) == 2
    finally:
        second.kill()
        first.kill()
