"""A CPU budget for a process tree: a cgroup of its own with a CFS quota (bench only).

On a 2-core machine, "a node on a machine of its own" can be stood in for by giving each
node the same CPU budget, `cores` CPUs' worth, in a cgroup of its own: one node then has
`cores`, two nodes twice that, and what is left of the machine runs PostgreSQL, the load
and the sink. A command is started inside the cgroup through `prefix()` (a shell that
moves itself in, then execs the command), so that every process it starts is in it too.

cgroup v2 (`cpu.max`) where the unified hierarchy has the cpu controller, else v1's cpu
controller (`cpu.cfs_quota_us`); needs root. The period is short (10 ms), so that a tree
past its budget waits milliseconds, not the 100 ms of the default period.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

PERIOD_US = 10_000
V2_ROOT = Path("/sys/fs/cgroup")
V1_ROOT = Path("/sys/fs/cgroup/cpu")
REMOVE_WAIT = 5.0  # seconds for the tree's last processes to leave before rmdir


class QuotaError(Exception):
    """No cgroup could be made (not root, no cpu controller)."""


def _v2_has_cpu() -> bool:
    controllers = V2_ROOT / "cgroup.subtree_control"
    with contextlib.suppress(OSError):
        return "cpu" in controllers.read_text().split()
    return False


class CpuQuota:
    """A cgroup named `name` limited to `cores` CPUs' worth of time."""

    def __init__(self, name: str, cores: float) -> None:
        if cores <= 0:
            raise QuotaError("the quota must be above 0 CPUs")
        quota = max(1000, round(cores * PERIOD_US))
        self.v2 = _v2_has_cpu()
        if not self.v2 and not (V1_ROOT / "cpu.cfs_quota_us").exists():
            raise QuotaError(
                "no cgroup cpu controller: neither cgroup v2 with cpu in"
                f" {V2_ROOT}/cgroup.subtree_control nor cgroup v1's {V1_ROOT}"
            )
        self.path = (V2_ROOT if self.v2 else V1_ROOT) / name
        try:
            self.path.mkdir()
            if self.v2:
                (self.path / "cpu.max").write_text(f"{quota} {PERIOD_US}")
            else:
                (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (self.path / "cpu.cfs_quota_us").write_text(str(quota))
        except OSError as error:
            with contextlib.suppress(OSError):
                self.path.rmdir()
            raise QuotaError(f"cannot make the cgroup {self.path}: {error}") from None

    def prefix(self) -> list[str]:
        """What to put before a command so that it, and all it starts, runs in the cgroup."""
        procs = self.path / "cgroup.procs"
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(procs)]

    def throttled(self) -> float:
        """Seconds the tree waited for its budget, summed over its threads and CPUs."""
        stat: dict[str, int] = {}
        with contextlib.suppress(OSError):
            for line in (self.path / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if value.strip().isdigit():
                    stat[key] = int(value)
        if self.v2:
            return stat.get("throttled_usec", 0) / 1e6
        return stat.get("throttled_time", 0) / 1e9

    def remove(self) -> None:
        """Remove the cgroup once its processes are gone: waited for a little, then the
        ones still in it killed (the node's stop has given up on them by then)."""
        if self._removed(time.monotonic() + REMOVE_WAIT):
            return
        left = self._pids()
        print(f"cpu_quota: processes {left} still in {self.path}: killed", file=sys.stderr)
        try:  # cgroup v2 (Linux 5.14+) kills the whole tree, with no pid read and reused
            (self.path / "cgroup.kill").write_text("1")
        except OSError:
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        if not self._removed(time.monotonic() + REMOVE_WAIT):
            print(f"cpu_quota: {self.path} kept: {self._pids()} in it", file=sys.stderr)

    def _removed(self, deadline: float) -> bool:
        while True:
            try:
                self.path.rmdir()
                return True
            except FileNotFoundError:
                return True
            except OSError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)

    def _pids(self) -> Sequence[int]:
        with contextlib.suppress(OSError):
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        return []


def check(cores: float) -> str | None:
    """Why a quota cannot be had here, or None when it can (a cgroup made and removed)."""
    try:
        CpuQuota(f"postern-bench-check-{os.getpid()}", cores).remove()
    except QuotaError as error:
        return str(error)
    return None
