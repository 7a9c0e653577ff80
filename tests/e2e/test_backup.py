"""`postern backup PATH` against a real `postern serve` receiving mail, and a restore.

While SMTP clients stream mail at the server, `postern backup` copies its data_dir; a second
server then runs on the copy. Every message acknowledged (250 after DATA) before the backup
started is in the copy exactly once; no message is in it twice or half (messages
acknowledged after the backup started may or may not be in it). The copy holds the secret
key (mode 0600), so the restored server can open the secrets sealed with it; without the
key (--without-key) it refuses to start. PostgreSQL storage is pointed at pg_dump.
"""

from __future__ import annotations

import contextlib
import json
import signal
import smtplib
import sqlite3
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path

import pytest

from tests.support.processes import child_cwd, child_env, postern_argv
from tests.support.serve import MakePostern, Postern, wait_until
from tests.support.sink import Sink

pytestmark = pytest.mark.timeout(180)

SENDERS = 3
BEFORE = 150  # messages acknowledged before the backup starts (at least)
AFTER = 30  # ... and after it ended: mail flows on throughout
SENDER_JOIN = 15.0


@pytest.fixture(autouse=True)
def key_from_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """The secret key lives in data_dir/secret.key, as with a default install."""
    monkeypatch.delenv("POSTERN_SECRET_KEY", raising=False)


def postern(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`postern ARGS` as a child process, to completion (bounded)."""
    return subprocess.run(
        [*postern_argv(), *args],
        cwd=child_cwd(),
        env=child_env() | (env or {}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class Senders:
    """SMTP clients sending until stopped; each 250 noted with the moment it arrived."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acked: dict[str, float] = {}  # recipient -> time.monotonic() of its 250
        self.sent: set[str] = set()
        self.errors: list[str] = []
        self.threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(SENDERS)
        ]

    def __enter__(self) -> Senders:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(SENDER_JOIN)
        assert not any(thread.is_alive() for thread in self.threads), "a sender hung"

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def _run(self, number: int) -> None:
        try:
            with smtplib.SMTP(
                "127.0.0.1", self.port, local_hostname="c.test", timeout=10
            ) as client:
                seq = 0
                while not self.stop.is_set():
                    rcpt = f"s{number}-{seq}@example.org"
                    seq += 1
                    with self.lock:
                        self.sent.add(rcpt)
                    client.sendmail("backup@example.com", [rcpt], _content(rcpt))
                    now = time.monotonic()  # sendmail raises unless DATA got its 250
                    with self.lock:
                        self.acked[rcpt] = now
        except (smtplib.SMTPException, OSError) as error:
            self.errors.append(f"sender {number}: {error!r}")


def _content(rcpt: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "backup@example.com"
    msg["To"] = rcpt
    msg["Subject"] = f"backup test {rcpt}"
    msg.set_content("a line of mail to fill the database a little\n" * 40)
    return msg.as_bytes(policy=SMTP_POLICY)


def _copies(database: Path) -> Counter[str]:
    """Recipient -> how many messages the database holds for it."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        return Counter(email for (email,) in conn.execute("SELECT email FROM recipient"))


def _half_written(database: Path) -> list[str]:
    """Messages without recipients or events, or with work left and no body."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        rows = conn.execute(
            "SELECT m.id FROM message m WHERE (m.status IN ('queued', 'deferred') AND NOT "
            "EXISTS (SELECT 1 FROM message_body b WHERE b.message_id = m.id)) OR NOT EXISTS "
            "(SELECT 1 FROM recipient r WHERE r.message_id = m.id) OR NOT EXISTS "
            "(SELECT 1 FROM event e WHERE e.message_id = m.id)"
        ).fetchall()
    return [row[0] for row in rows]


def _serve_on(make: MakePostern, data_dir: Path, sink: Sink) -> Postern:
    """A second server (own ports, own upstream) whose data_dir is `data_dir`."""
    restored = make(sink.port, start=False)
    text = restored.config.read_text()
    restored.config.write_text(text.replace(str(restored.log_dir / "var"), str(data_dir)))
    return restored


def _ready(server: Postern) -> bool:
    url = f"http://127.0.0.1:{server.http_port}/readyz"
    with urllib.request.urlopen(url, timeout=5) as response:
        return bool(response.status == 200 and json.load(response) == {"status": "ready"})


@pytest.fixture
def second_sink() -> Iterator[Sink]:
    running = Sink().start()
    try:
        yield running
    finally:
        running.stop()


def test_backup_while_mail_flows_restores_every_acknowledged_message_once(
    sink: Sink, second_sink: Sink, postern_process: MakePostern, tmp_path: Path
) -> None:
    server = postern_process(sink.port)
    target = tmp_path / "backup"
    with Senders(server.smtp_port) as senders:
        assert wait_until(lambda: senders.count() >= BEFORE, 60), senders.errors
        started = time.monotonic()
        done = postern("backup", str(target), "--config", str(server.config))
        ended = time.monotonic()
        count_at_end = senders.count()
        assert wait_until(lambda: senders.count() >= count_at_end + AFTER, 30), senders.errors
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "WARNING" in done.stderr and "secret.key is a copy of the secret key" in done.stderr
    assert not senders.errors, senders.errors
    during = [rcpt for rcpt, at in senders.acked.items() if started <= at <= ended]
    assert during, "no message was acknowledged while the backup ran"
    assert server.stop()[0] == 0

    assert sorted(p.name for p in target.iterdir()) == ["node_id", "postern.db", "secret.key"]
    assert target.stat().st_mode & 0o777 == 0o700
    for path in target.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path

    copies = _copies(target / "postern.db")
    before = {rcpt for rcpt, at in senders.acked.items() if at < started}
    missing = sorted(rcpt for rcpt in before if copies[rcpt] != 1)
    assert not missing, f"acknowledged before the backup, not in it once: {missing[:10]}"
    assert not [rcpt for rcpt, n in copies.items() if n > 1], "a message is in the copy twice"
    assert set(copies) <= senders.sent
    assert not _half_written(target / "postern.db")

    # Restore: a server on the copy (it would refuse a secret key other than the one its
    # database's secrets are sealed with), ready, taking and relaying mail.
    restored = _serve_on(postern_process, target, second_sink)
    restored.start()
    assert _ready(restored)
    client = smtplib.SMTP("127.0.0.1", restored.smtp_port, local_hostname="c.test", timeout=10)
    with client:
        client.sendmail("backup@example.com", ["restored@example.org"], _content("restored"))
    assert wait_until(lambda: "restored@example.org" in second_sink.recipients(), 20)
    assert restored.stop(signal.SIGTERM)[0] == 0
    assert "Traceback" not in restored.stderr()
    after_restore = _copies(target / "postern.db")
    assert after_restore == copies + Counter(["restored@example.org"])
    print(
        f"\n[backup] acknowledged before it: {len(before)}, while it ran: {len(during)}, "
        f"in the copy: {len(copies)}, the backup command took {ended - started:.2f}s"
    )


def test_a_backup_without_the_key_says_so_and_cannot_restore_secrets(
    sink: Sink, postern_process: MakePostern, tmp_path: Path
) -> None:
    server = postern_process(sink.port)
    target = tmp_path / "nokey"
    done = postern("backup", str(target), "--without-key", "--config", str(server.config))
    assert done.returncode == 0, done.stderr
    assert "WARNING: secret.key was left out" in done.stderr
    assert sorted(p.name for p in target.iterdir()) == ["node_id", "postern.db"]
    server.stop()

    restored = _serve_on(postern_process, target, sink)
    with pytest.raises(AssertionError, match="sealed with key"):
        restored.start()  # it made itself a new key: the database's secrets are not its
    assert restored.proc is not None and restored.proc.returncode == 2


def test_a_key_from_the_environment_is_not_in_the_backup(
    sink: Sink, postern_process: MakePostern, tmp_path: Path
) -> None:
    server = postern_process(sink.port)
    server.stop()
    env = {"POSTERN_SECRET_KEY": "A" * 43}
    done = postern(
        "backup", str(tmp_path / "env"), "--json", "--config", str(server.config), env=env
    )
    assert done.returncode == 0, done.stderr
    assert '"secret_key": "environment"' in done.stdout
    assert "is NOT in this backup" in done.stderr
    assert not (tmp_path / "env" / "secret.key").exists()


def test_backup_refusals_are_one_line_and_exit_2(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    config = tmp_path / "postern.toml"
    config.write_text(f'[server]\ndata_dir = "{data_dir}"\n')
    nothing = postern("backup", str(tmp_path / "out"), "--config", str(config))
    assert nothing.returncode == 2 and "no database" in nothing.stderr

    assert (
        postern("keys", "create", "--name=k", "--scope=send", "--config", str(config)).returncode
        == 0
    )
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "something").write_text("x")
    not_empty = postern("backup", str(tmp_path / "full"), "--config", str(config))
    assert not_empty.returncode == 2 and "not empty" in not_empty.stderr

    pg = tmp_path / "pg.toml"
    pg.write_text(
        f'[server]\ndata_dir = "{data_dir}"\n[storage]\nurl = "postgresql://u@127.0.0.1/db"\n'
    )
    refused = postern("backup", str(tmp_path / "pg"), "--config", str(pg))
    assert refused.returncode == 2 and "pg_dump" in refused.stderr
    for result in (nothing, not_empty, refused):
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("postern: error:")
        assert result.stdout == ""
    assert not (tmp_path / "pg").exists() and not (tmp_path / "out").exists()
