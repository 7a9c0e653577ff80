"""The `postern` program leaves without the interpreter's teardown (cli.console_main): its
output is still all written, its status is the command's, exit handlers still run, and a
command that left a thread running still waits for it, as an ordinary exit does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import REPO, child_cwd, child_env, postern_argv

pytestmark = pytest.mark.timeout(60)

# console_main in this interpreter, with an exit handler and (when asked) a thread still
# running when the command ends.
_PROBE = """
import atexit, sys, threading, time
from gateway.process import cli
atexit.register(lambda: print("exit handler ran"))
if sys.argv[1] == "thread":
    threading.Thread(target=lambda: (time.sleep(0.3), print("thread done"))).start()
sys.argv = ["postern", *sys.argv[2:]]
cli.console_main()
"""


def _postern(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*postern_argv(), *args],
        cwd=child_cwd(), env=child_env(), capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def _probe(mode: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _PROBE, mode, *args],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_output_through_a_pipe_is_whole_and_the_status_is_the_commands(tmp_path: Path) -> None:
    config = tmp_path / "postern.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "var"}"\n')
    helped = _postern("--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage: postern")
    assert helped.stdout.endswith("name the config, data_dir and database on stderr\n")
    checked = _postern("--config", str(config), "check-config")
    assert (checked.returncode, checked.stdout) == (0, "configuration OK\n")
    wrong = _postern("no-such-command")
    assert wrong.returncode == 2 and "invalid choice" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    missing = _postern("--config", str(tmp_path / "absent.toml"), "check-config")
    assert missing.returncode == 2 and missing.stderr.startswith("postern: error:")


def test_exit_handlers_run() -> None:
    done = _probe("plain", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: postern")
    assert done.stdout.endswith("exit handler ran\n")


def test_a_thread_left_running_is_waited_for() -> None:
    done = _probe("thread", "--help")
    assert done.returncode == 0, done.stderr
    assert "thread done\n" in done.stdout and done.stdout.endswith("exit handler ran\n")
