"""Crash safety (issue 7): SIGKILL at random moments while mail streams in and the upstream
fails at random; after the last restart every acknowledged message reached the upstream and
no refused one did. SPEC "Delivery semantics": accepted means durable, delivery is
at-least-once.

`POSTERN_CRASH_ROUNDS` (default 20) and `POSTERN_CRASH_SEED` (default random; the seed is
printed) tune the run; `bench/soak.py` runs the same loop for hundreds of rounds.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.support.crashloop import Report, Settings, run

ROUNDS = int(os.environ.get("POSTERN_CRASH_ROUNDS", "20"))
SEED = os.environ.get("POSTERN_CRASH_SEED")


def check_loop(report: Report, rounds: int) -> None:
    """What every crash loop must show: each round ran, something was acknowledged, and all
    of it was delivered, nothing refused was, the queue drained, the last stop was clean
    and left no metrics folder."""
    assert report.rounds == rounds, f"only {report.rounds} rounds ran within the time cap"
    assert report.acked > 0, "no message was acknowledged: the loop tested nothing"
    assert not report.lost, f"acknowledged but never delivered: {report.lost_explained}"
    assert not report.refused_delivered, f"refused yet delivered: {report.refused_delivered}"
    assert report.drained, f"queue not drained after the last restart: {report.queue_left}"
    assert report.final_exit == 0, f"SIGTERM after the drain exited {report.final_exit}"
    # (each killed supervisor left its metrics folder; the next start removed it)
    assert report.metrics_left == 0, f"{report.metrics_left} metrics folders left behind"


@pytest.mark.timeout(max(300, ROUNDS * 14))
def test_sigkill_loop_loses_no_acknowledged_message(tmp_path: Path) -> None:
    settings = Settings(
        rounds=ROUNDS,
        seconds=ROUNDS * 10.0,  # a round takes about 2 s; the cap only stops a runaway
        seed=int(SEED) if SEED else None,
        drain_timeout=60.0,
    )
    report = run(settings, tmp_path / "crashloop")
    print("\n[crash loop] " + "\n[crash loop] ".join(report.lines()))

    check_loop(report, ROUNDS)


WORKER_ROUNDS = int(os.environ.get("POSTERN_CRASH_WORKER_ROUNDS", "8"))


@pytest.mark.timeout(max(300, WORKER_ROUNDS * 20))
def test_sigkill_loop_with_two_workers(tmp_path: Path) -> None:
    """The same loop with `workers = 2`: the SIGKILL hits the supervisor, and its workers die
    with it (PR_SET_PDEATHSIG) wherever they were; the next start finds their ports free
    and their claims (one node id per worker) to release."""
    settings = Settings(
        rounds=WORKER_ROUNDS,
        seconds=WORKER_ROUNDS * 15.0,
        seed=int(SEED) if SEED else None,
        drain_timeout=60.0,
        smtp_senders=2,
        workers=2,
    )
    report = run(settings, tmp_path / "crashloop-workers")
    print("\n[crash loop, 2 workers] " + "\n[crash loop, 2 workers] ".join(report.lines()))

    check_loop(report, WORKER_ROUNDS)
    assert report.metrics_seen > 1, "no supervisor's metrics folder was seen: none was checked"


@pytest.mark.timeout(max(300, WORKER_ROUNDS * 25))
def test_sigkill_of_the_writer_process_loses_no_acknowledged_message(tmp_path: Path) -> None:
    """Two workers on SQLite, whose writes go through the node's writer process: it is
    killed mid-stream each round. The workers that had writes in it unanswered end as a
    crash would (their outcome is unknown: never answered 451, never retried), the
    supervisor starts it and them again, and the round goes on before the supervisor's
    own SIGKILL. Every acknowledged message is delivered; none refused is."""
    settings = Settings(
        rounds=WORKER_ROUNDS,
        seconds=WORKER_ROUNDS * 20.0,
        seed=int(SEED) if SEED else None,
        drain_timeout=60.0,
        smtp_senders=2,
        workers=2,
        kill_writer=True,
        min_up=0.5,
    )
    report = run(settings, tmp_path / "crashloop-writer")
    print("\n[crash loop, writer] " + "\n[crash loop, writer] ".join(report.lines()))

    check_loop(report, WORKER_ROUNDS)
    assert report.writer_kills > 0, "the writer process was never killed: nothing was tested"
    logs = "".join(
        p.read_text(errors="replace") for p in (tmp_path / "crashloop-writer").glob("*.log")
    )
    assert re.search(r"the writer process \(pid \d+\) was killed by SIGKILL", logs), logs[-3000:]
