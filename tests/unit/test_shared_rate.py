"""The per-key rate table the workers of one node share (gateway.security.shared_rate):
real processes, each given the table's descriptor as the supervisor gives it, take from one
bucket; together they get its capacity, not one capacity each."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.security import shared_rate
from gateway.security.shared_rate import (
    HEADER,
    MAX_NAMES,
    SharedRateLimiter,
    SharedTableError,
    create_table,
)

ROOT = Path(__file__).resolve().parents[2]
CAPACITY = 10

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def table() -> Iterator[int]:
    fd = create_table()
    try:
        yield fd
    finally:
        os.close(fd)


def _worker(fd: int, script: str) -> subprocess.Popen[str]:
    """A process with the table's descriptor, as the supervisor starts a worker."""
    code = "from gateway.security.shared_rate import SharedRateLimiter\n" + textwrap.dedent(script)
    return subprocess.Popen(
        [sys.executable, "-c", code, str(fd)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        pass_fds=[fd],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


TAKER = f"""
    import sys
    limiter = SharedRateLimiter("{CAPACITY}/h", int(sys.argv[1]))
    print("ready", flush=True)
    sys.stdin.readline()  # both start together
    print(sum(limiter.take("key_1") == 0.0 for _ in range(3 * {CAPACITY})), flush=True)
"""


def test_two_processes_draw_on_one_bucket(table: int) -> None:
    workers = [_worker(table, TAKER) for _ in range(2)]
    for worker in workers:
        assert worker.stdout is not None and worker.stdout.readline() == "ready\n"
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    granted = [int(worker.communicate(timeout=30)[0]) for worker in workers]
    assert sum(granted) == CAPACITY, granted  # one bucket: not CAPACITY each
    # This process shares it too (the supervisor's table outlives any worker).
    assert SharedRateLimiter(f"{CAPACITY}/h", table).take("key_1") > 0
    assert SharedRateLimiter(f"{CAPACITY}/h", table).take("key_2") == 0.0


def test_a_worker_killed_holding_the_lock_releases_it(table: int) -> None:
    holder = _worker(
        table,
        """
        import sys, time
        limiter = SharedRateLimiter("1/s", int(sys.argv[1]))
        limiter._table.lock()
        print("locked", flush=True)
        time.sleep(60)
        """,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    with pytest.raises(OSError):  # held by the other process
        fcntl.lockf(table, fcntl.LOCK_EX | fcntl.LOCK_NB)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    assert SharedRateLimiter("1/s", table).take("key_1") == 0.0  # not stuck


def test_take_and_give_back_as_in_memory(table: int) -> None:
    limiter = SharedRateLimiter("2/h", table)
    assert [limiter.take("k") for _ in range(2)] == [0.0, 0.0]
    wait = limiter.take("k")
    assert 1790 < wait <= 1800  # one token in half an hour
    limiter.give_back("k")
    assert limiter.take("k") == 0.0
    assert limiter.take("k") > 0
    limiter.give_back("never_taken")  # a full bucket stays none
    assert limiter._table.used() == 1


def test_a_spray_of_names_does_not_reset_a_busy_bucket(table: int) -> None:
    limiter = SharedRateLimiter("3/h", table)
    for _ in range(3):
        assert limiter.take("busy") == 0.0
    for n in range(MAX_NAMES + 100):  # each left one token short of full: none drops
        assert limiter.take(f"once_{n}") == 0.0
    assert limiter._table.used() <= MAX_NAMES
    assert limiter.take("busy") > 0  # kept: the emptiest


def test_full_buckets_are_forgotten_first(table: int) -> None:
    limiter = SharedRateLimiter("1000000/s", table)  # a bucket is full again at once
    limiter.take("busy")
    for n in range(MAX_NAMES + 10):
        limiter.take(f"once_{n}")
    assert limiter._table.used() < 100  # the rebuild kept only the few not yet full


def test_a_damaged_table_is_reset_not_fatal(table: int) -> None:
    os.pwrite(table, HEADER.pack(b"garbage!", 7, 1 << 40), 0)
    limiter = SharedRateLimiter("1/h", table)
    assert limiter.take("k") == 0.0
    assert limiter.take("k") > 0
    # Damaged buckets read as full ones, never as a key stopped for ever.
    offset, found, _, _ = limiter._table.find(shared_rate.digest("k"))
    assert found
    limiter._table.write(offset, shared_rate.digest("k"), float("nan"), -1e300, False)
    assert limiter.take("k") == 0.0


def test_a_table_of_the_wrong_size_is_refused() -> None:
    fd = os.memfd_create("not-a-table")
    try:
        os.ftruncate(fd, 100)
        with pytest.raises(SharedTableError):
            SharedRateLimiter("1/s", fd)
    finally:
        os.close(fd)


def test_its_size_is_sealed(table: int) -> None:
    """No process can shrink the table under another's mapping (a SIGBUS)."""
    with pytest.raises(PermissionError):
        os.ftruncate(table, 10)
