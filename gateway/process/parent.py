"""What a process the supervisor starts does first (a worker, the node's writer process):
die with the supervisor. Light on purpose: the writer process imports only this of the
supervisor's side, so that it starts again quickly while requests queue for it."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal


def become_worker(parent: int) -> None:
    """First thing: die with the supervisor (the kernel sends SIGKILL when it goes, however
    it goes), and go now if it is already gone."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)
