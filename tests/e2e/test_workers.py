"""`postern serve` with `[server] workers = 2` (issue 22), as a user runs it: the supervisor
and its workers are real processes, mail goes over real SMTP to a real sink. What one
process promises (tests/e2e/test_process.py) holds with several: nothing acknowledged is
lost when a worker is killed, nothing is delivered twice by two workers, a port in use or a
worker that cannot start ends `serve` with one line and status 2, SIGTERM drains."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import smtplib
import socket
import sqlite3
import threading
import time
import urllib.request
from collections.abc import Iterator
from email.policy import SMTP
from pathlib import Path

import pytest

from tests.support.processes import children_running, free_port, writer_process_of
from tests.support.serve import (
    SENDER,
    MakePostern,
    Postern,
    config_text,
    message,
    run_cli,
    seqs_received,
    wait_until,
    with_workers,
)
from tests.support.sink import Sink

DELIVERY_TIMEOUT = 30.0
SETTLE = 2.5  # watch for late duplicates (> the 1 s retry)
STOP_BOUND = 30.0

pytestmark = pytest.mark.timeout(120)


def two_workers(
    postern_process: MakePostern, sink_port: int | None, storage_url: str = ""
) -> Postern:
    """A started `serve` with two workers (the [server] table carries `workers`)."""
    extra = f'\n[storage]\nurl = "{storage_url}"\n' if storage_url else ""
    postern = postern_process(sink_port, extra=extra, start=False)
    text = postern.config.read_text()
    postern.config.write_text(with_workers(text, 2))
    postern.start(timeout=60.0)
    running = "supervisor: 2 workers running"  # every worker has started
    assert wait_until(lambda: running in postern.stderr(), 60.0), postern.stderr()
    assert len(workers_of(postern.pid)) == 2, postern.stderr()
    return postern


def workers_of(pid: int) -> list[int]:
    """The supervisor's worker processes (its children running `serve`)."""
    return children_running(pid, b"serve")


def worker_pid(postern: Postern, index: int) -> int:
    """The pid of worker `index`, from the supervisor's log (its last start)."""
    pids = re.findall(rf"worker {index} started \(pid (\d+)\)", postern.stderr())
    assert pids, postern.stderr()
    return int(pids[-1])


def claimed_by_worker_1(database: Path) -> int:
    with contextlib.closing(sqlite3.connect(database, timeout=10)) as conn:
        row = conn.execute("SELECT count(*) FROM message WHERE claimed_by LIKE '%-w1'").fetchone()
    return int(row[0])


def send_over(postern: Postern, tag: str, sessions: int, per_session: int) -> None:
    """`sessions` SMTP sessions at once (each from its own port, so the kernel spreads them
    over the workers), `per_session` messages each; every one must get its 250."""
    errors: list[BaseException] = []

    def one(session: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", postern.smtp_port, timeout=20) as client:
                for n in range(per_session):
                    msg = message(session * per_session + n, tag)
                    client.sendmail(SENDER, [str(msg["To"])], msg.as_bytes(policy=SMTP))
        except BaseException as error:  # reported in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=one, args=(s,)) for s in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors


def expected(tag: str, count: int) -> list[str]:
    return sorted(f"{tag}-{seq}" for seq in range(count))


def all_delivered(sink: Sink, tag: str, count: int) -> list[str]:
    wait_until(lambda: len(set(seqs_received(sink, tag))) >= count, DELIVERY_TIMEOUT)
    time.sleep(SETTLE)
    return seqs_received(sink, tag)


def metric(postern: Postern, name: str) -> float:
    url = f"http://127.0.0.1:{postern.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """ "" (SQLite in data_dir) or a fresh PostgreSQL database of this test's own."""
    if request.param == "sqlite":
        yield ""
        return
    import asyncio

    import asyncpg

    from tests.support.databases import PG_URL, asyncpg_dsn

    base = asyncpg_dsn(PG_URL)
    name = f"postern_workers_{os.getpid()}_{int(time.time() * 1000)}"
    server = base.rsplit("/", 1)[0] + "/postgres"

    async def admin(statement: str) -> None:
        conn = await asyncpg.connect(server, timeout=5)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        if os.environ.get("POSTERN_TEST_PG"):
            raise
        pytest.skip(f"PostgreSQL unavailable: {error}")
    try:
        yield base.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_two_workers_deliver_each_message_once(
    sink: Sink, postern_process: MakePostern, storage_url: str
) -> None:
    """Both workers take mail at the door and claim due mail from the same storage: with the
    upstream down first, every message waits in storage and both pollers race for it
    (SQLite: BEGIN IMMEDIATE; PostgreSQL: FOR UPDATE SKIP LOCKED)."""
    sink.stop()
    postern = two_workers(postern_process, sink.port, storage_url)
    send_over(postern, "once", sessions=8, per_session=10)
    sink.start()
    send_over(postern, "live", sessions=8, per_session=10)
    got = all_delivered(sink, "once", 80)
    live = all_delivered(sink, "live", 80)
    assert sorted(got) == expected("once", 80), postern.stderr()
    assert sorted(live) == expected("live", 80), postern.stderr()
    # /metrics (served by worker 0) counts what both workers received and delivered.
    assert metric(postern, "postern_messages_received_total") == 160
    assert metric(postern, "postern_messages_delivered_total") == 160
    status, _ = postern.stop(signal.SIGTERM, timeout=STOP_BOUND)
    assert status == 0, postern.stderr()
    assert "Traceback" not in postern.stderr()
    # Nothing of prometheus-client's multiprocess mode on stderr (clear() warned there at
    # each reputation evaluation of a worker without the lease).
    assert "Warning" not in postern.stderr(), postern.stderr()


def test_sigkill_of_a_worker_mid_delivery_loses_nothing(
    sink: Sink, postern_process: MakePostern
) -> None:
    sink.hang("data", seconds=20)  # every delivery stops mid-transaction
    postern = two_workers(postern_process, sink.port)
    send_over(postern, "kill", sessions=10, per_session=3)
    assert wait_until(lambda: sink.connections_open > 0, 10.0), "delivery never started"
    # Worker 1 (node id `<node>-w1`) holds some of the 30 (10 sessions spread by the
    # kernel: all on worker 0 has a chance of 1 in 1024).
    database = postern.config.parent / "var" / "postern.db"
    claimed = wait_until(lambda: claimed_by_worker_1(database) > 0, 10.0)
    assert claimed, "worker 1 holds no message: nothing would be tested"
    victim = worker_pid(postern, 1)
    os.kill(victim, signal.SIGKILL)
    # The supervisor starts another in its place; the upstream comes back.
    assert wait_until(
        lambda: victim not in workers_of(postern.pid) and len(workers_of(postern.pid)) == 2, 30.0
    ), postern.stderr()
    sink.clear()
    got = all_delivered(sink, "kill", 30)
    assert sorted(set(got)) == expected("kill", 30), postern.stderr()
    assert "was killed by SIGKILL; starting it again" in postern.stderr()
    assert postern.proc is not None and postern.proc.poll() is None, "the supervisor died"
    status, _ = postern.stop(signal.SIGTERM, timeout=STOP_BOUND)
    assert status == 0, postern.stderr()


def test_the_writer_process_is_started_again_then_given_up(
    sink: Sink, postern_process: MakePostern
) -> None:
    """On SQLite the workers' writes go through the node's writer process (its line's loss
    is logged by the workers); killed, it is started again, and mail goes on; killed five
    times within a minute, it is given up and the workers write on their own."""
    postern = two_workers(postern_process, sink.port)
    first = writer_process_of(postern.pid)
    assert first is not None, postern.stderr()
    send_over(postern, "before", sessions=4, per_session=5)
    assert sorted(all_delivered(sink, "before", 20)) == expected("before", 20)
    victim: int | None = first
    for kill in range(5):
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        if kill < 4:
            assert wait_until(
                lambda v=victim: writer_process_of(postern.pid) not in (None, v), 10.0
            ), postern.stderr()
            victim = writer_process_of(postern.pid)
    assert wait_until(lambda: "given up" in postern.stderr(), 10.0), postern.stderr()
    # The workers had lines to it (each tells of losing its own, written to or not).
    told = ("the line to the writer process was lost", "writer process is gone with")
    assert any(line in postern.stderr() for line in told), postern.stderr()
    assert writer_process_of(postern.pid) is None
    said = f"the writer process (pid {first}) was killed by SIGKILL; starting it again"
    assert said in postern.stderr()
    # The workers (started again where they had writes unanswered) write on their own.
    assert wait_until(lambda: len(workers_of(postern.pid)) == 2, 30.0), postern.stderr()
    send_over(postern, "after", sessions=4, per_session=5)
    assert sorted(set(all_delivered(sink, "after", 20))) == expected("after", 20)
    status, _ = postern.stop(signal.SIGTERM, timeout=STOP_BOUND)
    assert status == 0, postern.stderr()
    assert "Traceback" not in postern.stderr()


def delivered_after_restart(postern: Postern, sink: Sink, tag: str, count: int) -> None:
    """No worker outlived the drained supervisor, and started again it delivers every
    message the drain handed back (at least once)."""
    assert not running_with(postern.config), "a worker outlived the supervisor"
    sink.clear()
    postern.start(timeout=60.0)
    got = all_delivered(sink, tag, count)
    assert sorted(set(got)) == expected(tag, count), postern.stderr()


def test_sigterm_with_a_slow_upstream_drains(sink: Sink, postern_process: MakePostern) -> None:
    sink.hang("data", seconds=30)
    postern = two_workers(postern_process, sink.port)
    send_over(postern, "slow", sessions=6, per_session=2)
    assert wait_until(lambda: sink.connections_open > 0, 10.0), "delivery never started"
    status, took = postern.stop(signal.SIGTERM, timeout=STOP_BOUND)
    assert status == 0, postern.stderr()
    assert took < 20.0, f"drain took {took:.1f}s"  # drain_timeout 10 s, then cut off
    assert "Traceback" not in postern.stderr()
    delivered_after_restart(postern, sink, "slow", 12)


def test_sigterm_to_every_process_at_once_still_drains(
    sink: Sink, postern_process: MakePostern
) -> None:
    """systemd's default KillMode=control-group sends SIGTERM to the supervisor and each
    worker at once, then the supervisor passes its own on: a worker must take the second
    SIGTERM as the same stop (drain, exit 0), not as "at once" (cut sessions, exit 1)."""
    sink.hang("data", seconds=30)
    postern = two_workers(postern_process, sink.port)
    send_over(postern, "group", sessions=6, per_session=2)
    assert wait_until(lambda: sink.connections_open > 0, 10.0), "delivery never started"
    for pid in workers_of(postern.pid):
        os.kill(pid, signal.SIGTERM)
    status, _ = postern.stop(signal.SIGTERM, timeout=STOP_BOUND)
    assert status == 0, postern.stderr()
    assert "second stop signal" not in postern.stderr()
    delivered_after_restart(postern, sink, "group", 12)


def test_a_second_signal_to_the_supervisor_ends_the_workers_at_once(
    sink: Sink, postern_process: MakePostern
) -> None:
    sink.hang("data", seconds=60)
    postern = two_workers(postern_process, sink.port)
    send_over(postern, "twice", sessions=4, per_session=1)
    assert wait_until(lambda: sink.connections_open > 0, 10.0), "delivery never started"
    assert postern.proc is not None
    postern.proc.send_signal(signal.SIGTERM)
    assert wait_until(lambda: "stopping the workers" in postern.stderr(), 5), postern.stderr()
    status, took = postern.stop(signal.SIGINT, timeout=STOP_BOUND)
    assert status == 1, postern.stderr()
    assert took < 5, f"took {took:.1f}s"
    assert "second stop signal (SIGUSR1): exiting at once" in postern.stderr()
    assert not running_with(postern.config), "a worker outlived the supervisor"


def workers_config(tmp_path: Path, smtp_port: int, http_port: int) -> Path:
    path = tmp_path / "workers.toml"
    text = config_text(
        data_dir=tmp_path / "var", smtp_port=smtp_port, http_port=http_port, sink_port=None
    )
    path.write_text(with_workers(text, 2))
    return path


def check_one_line_exit_2(result: object, mention: str) -> None:
    status, stderr = result.returncode, result.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in stderr, stderr
    assert status == 2, f"exit {status}, stderr: {stderr!r}"
    errors = [line for line in stderr.splitlines() if line.startswith("postern: error:")]
    assert len(errors) == 1, f"expected one error line, got {stderr!r}"
    assert mention in errors[0], errors


@pytest.mark.parametrize("which", ["smtp", "http"])
def test_port_in_use_exits_2(tmp_path: Path, which: str) -> None:
    smtp_port, http_port = free_port(), free_port()
    path = workers_config(tmp_path, smtp_port, http_port)
    port = smtp_port if which == "smtp" else http_port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen(1)
        result = run_cli("serve", "--config", str(path), timeout=STOP_BOUND)
    check_one_line_exit_2(result, f"127.0.0.1:{port}")
    assert len(result.stderr.splitlines()) == 1, result.stderr  # as with one process


def test_port_held_by_another_reuseport_listener_exits_2(tmp_path: Path) -> None:
    """SO_REUSEPORT would let a second listener of this user share the port silently: the
    supervisor's first bind, without it, refuses as one process does."""
    smtp_port, http_port = free_port(), free_port()
    path = workers_config(tmp_path, smtp_port, http_port)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", smtp_port))
        taken.listen(1)
        result = run_cli("serve", "--config", str(path), timeout=STOP_BOUND)
    check_one_line_exit_2(result, f"127.0.0.1:{smtp_port}")


def test_a_worker_failing_at_start_exits_2(tmp_path: Path) -> None:
    """What only a worker finds (here: a database file that is not one) ends `serve` with
    the worker's line, once, and status 2; no worker is left running."""
    smtp_port, http_port = free_port(), free_port()
    path = workers_config(tmp_path, smtp_port, http_port)
    data_dir = tmp_path / "var"
    data_dir.mkdir(mode=0o700)
    (data_dir / "postern.db").write_bytes(b"this is not a database" * 100)
    result = run_cli("serve", "--config", str(path), timeout=60)
    check_one_line_exit_2(result, "database")
    assert not running_with(path), "a worker outlived the failed start"


def running_with(config: Path) -> list[int]:
    """Processes still running `serve` on this config file (the supervisor has exited)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(config).encode() in argv:
                found.append(int(entry.name))
    return found


def test_sighup_reloads_every_worker(sink: Sink, postern_process: MakePostern) -> None:
    """SIGHUP is passed to each worker; both apply a pool the file added, and the two
    writing it at once store it once (no UNIQUE error in either)."""
    postern = two_workers(postern_process, sink.port)
    text = postern.config.read_text()
    postern.config.write_text(
        text + '\n[[pools]]\nname = "added"\nhost = "127.0.0.1"\n'
        f'port = {sink.port}\nencryption = "none"\n'
    )
    assert postern.proc is not None
    postern.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: postern.stderr().count("SIGHUP: reloaded 2 pool(s)") == 2, 20.0), (
        postern.stderr()
    )
    assert "pools not reloaded" not in postern.stderr()
    send_over(postern, "hup", sessions=4, per_session=2)
    got = all_delivered(sink, "hup", 8)
    assert sorted(got) == expected("hup", 8), postern.stderr()
    status, _ = postern.stop(signal.SIGTERM, timeout=STOP_BOUND)
    assert status == 0, postern.stderr()
