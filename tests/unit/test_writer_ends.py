"""How the supervisor names the writer process's end in its log line: a hang (its watch's
exit status, or the backstop's SIGALRM) is said as one, other ends as they came."""

from __future__ import annotations

import asyncio
import sys

import pytest

from gateway.config import Config
from gateway.process.supervisor import Supervisor
from storage.writer_process import HUNG


@pytest.mark.parametrize(
    ("ending", "said"),
    [
        (f"import os; os._exit({HUNG})", "hung (a commit past 25s; its threads' tracebacks above)"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGALRM)", "hung (a commit past 25s"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "was killed by SIGKILL"),
        ("import sys; sys.exit(3)", "exited with status 3"),
    ],
)
async def test_the_writer_process_end_is_named(
    ending: str, said: str, caplog: pytest.LogCaptureFixture
) -> None:
    supervisor = Supervisor(Config(), None, "info")
    supervisor._writer.proc = await asyncio.create_subprocess_exec(sys.executable, "-c", ending)
    pid = supervisor._writer.proc.pid
    with caplog.at_level("ERROR", logger="postern.supervisor"):
        assert await supervisor._writer_died() is True  # started again: a first death
    assert f"the writer process (pid {pid}) {said}" in caplog.text
