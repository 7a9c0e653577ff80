"""A real `postern serve` subprocess: its config, a `Postern` handle to start, signal and
feed it, and a `Launcher` that starts each one in a folder of its own and kills them all at
the end, whatever the test did. Every wait here is bounded.

The `postern_process` fixture (the end-to-end tests) and the `serve` fixture (the attack
reproductions) both start their processes through a Launcher.
"""

from __future__ import annotations

import json
import signal
import smtplib
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

from gateway.process.supervisor import named_metrics_folder, remove_metrics_folder
from tests.support.processes import child_cwd, child_env, free_port, postern_argv, spawn_serve
from tests.support.sink import Sink

START_TIMEOUT = 20.0  # seconds for `postern serve` to answer /healthz with 200
EXIT_TIMEOUT = 20.0  # seconds for a signalled process to exit
SENDER = "e2e@example.com"


def run_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """`python -m gateway.process.cli ARGS`, to completion (bounded)."""
    return subprocess.run(
        [*postern_argv(), *args],
        cwd=child_cwd(),
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def with_workers(text: str, count: int) -> str:
    """`config_text`'s config with `[server] workers = count` instead of its one process."""
    return text.replace("workers = 1\n", f"workers = {count}\n", 1)


def config_text(
    *,
    data_dir: Path,
    smtp_port: int,
    http_port: int,
    sink_port: int | None,
    extra: str = "",
) -> str:
    """The end-to-end config: loopback ports, a retry every second, any sender, the sink as
    the default pool (when there is one), then `extra` appended as it is.

    One process (`workers = 1`, not the default's one per CPU): hundreds of servers start
    and stop in the suite. The default's supervisor and workers are run by
    tests/e2e/test_workers.py, the crash loop, and .ci/install_check.py (the README's
    commands on the wheel, with no config at all)."""
    text = f"""\
[server]
hostname = "postern.e2e.test"
data_dir = "{data_dir}"
workers = 1

[smtp]
listen = ["127.0.0.1:{smtp_port}"]

[http]
listen = "127.0.0.1:{http_port}"

[delivery]
retry_schedule = ["1s"]
connect_timeout = "2s"
command_timeout = "3s"
handoff_timeout = "2s"
idle_timeout = "2s"

[policy]
sender = "any"

[blocklists]
enabled = false  # no DNSBL queries to the real lists from a test
"""
    if sink_port is not None:
        text += f"""
[[pools]]
name = "sink"
host = "127.0.0.1"
port = {sink_port}
encryption = "none"
is_default = true
"""
    return text + extra


Tables = dict[str, dict[str, Any]]


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value)  # strings and lists of strings: valid TOML too


def tables_text(tables: Tables, pools: list[dict[str, Any]]) -> str:
    """A config file from plain dicts: one `[table]` each, then one `[[pools]]` each."""
    lines: list[str] = []
    for table, keys in tables.items():
        lines.append(f"[{table}]")
        lines.extend(f"{key} = {_toml(value)}" for key, value in keys.items())
        lines.append("")
    for pool in pools:
        lines.append("[[pools]]")
        lines.extend(f"{key} = {_toml(value)}" for key, value in pool.items())
        lines.append("")
    return "\n".join(lines)


def message(seq: int, tag: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = f"rcpt{seq}@example.org"
    msg["Subject"] = f"{tag} {seq}"
    msg["X-E2E-Seq"] = f"{tag}-{seq}"
    msg.set_content(f"message {seq} of test {tag}\n")
    return msg


def seqs_received(sink: Sink, tag: str) -> list[str]:
    """X-E2E-Seq of every message the sink accepted with this tag, in arrival order."""
    found = []
    for received in list(sink.messages):
        for line in received.data.split(b"\r\n"):
            if not line:
                break  # end of headers
            if line.lower().startswith(b"x-e2e-seq:"):
                value = line.split(b":", 1)[1].strip().decode()
                if value.startswith(f"{tag}-"):
                    found.append(value)
    return found


@dataclass
class Postern:
    """One `postern serve` process and its config; stderr goes to a file for diagnosis."""

    config: Path
    smtp_port: int
    http_port: int
    log_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    client: smtplib.SMTP | None = None  # the SMTP session send() left open
    starts: int = 0
    stderr_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.stderr_path = self.log_dir / "postern-0.stderr"

    def start(self, timeout: float = START_TIMEOUT) -> float:
        """Start the process and wait until /healthz is 200; returns the seconds it took."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        self.stderr_path = self.log_dir / f"postern-{self.starts}.stderr"
        started = time.monotonic()
        self.proc = spawn_serve(self.config, self.stderr_path)
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"postern exited with {self.proc.returncode} at start-up:\n{self.stderr()}"
                )
            if self.healthy():
                return time.monotonic() - started
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"postern not healthy within {timeout}s:\n{self.stderr()}")

    def healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.http_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL, and reap it. Safe to call when it is not running."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=EXIT_TIMEOUT)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = EXIT_TIMEOUT) -> tuple[int, float]:
        """Send `sig`; wait (bounded) for the exit. Returns (exit status, seconds taken)."""
        assert self.proc is not None and self.proc.poll() is None, "not running"
        started = time.monotonic()
        self.proc.send_signal(sig)
        try:
            status = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"postern did not exit within {timeout}s of signal {sig}:\n{self.stderr()}"
            ) from None
        return status, time.monotonic() - started

    def send(self, count: int, tag: str) -> None:
        """Send `count` messages over one SMTP session; each must get its 250 after DATA.

        Returns right after the last 250, leaving the session open: the caller may kill
        the process at once (the session is abandoned, never QUIT)."""
        client = smtplib.SMTP("127.0.0.1", self.smtp_port, local_hostname="client.test", timeout=10)
        client.ehlo()
        for seq in range(count):
            msg = message(seq, tag)
            code, reply = client.mail(SENDER)
            assert code == 250, (code, reply)
            code, reply = client.rcpt(str(msg["To"]))
            assert code == 250, (code, reply)
            code, reply = client.data(msg.as_bytes(policy=SMTP))  # CRLF line ends
            assert code == 250, (seq, code, reply)
        self.client = client

    def close_client(self) -> None:
        """Drop the session send() left open (no QUIT: the server may be gone)."""
        if self.client is not None:
            self.client.close()
            self.client = None


MakePostern = Callable[..., Postern]


def start_workers(postern: Postern, count: int, section: str, line: str) -> Postern:
    """Start `postern` (made with start=False) as `count` workers, `line` added to its
    `[section]`, once the supervisor says every worker runs."""
    text = with_workers(postern.config.read_text(), count)
    postern.config.write_text(text.replace(f"[{section}]\n", f"[{section}]\n{line}\n", 1))
    postern.start(timeout=60.0)
    running = f"supervisor: {count} workers running"
    assert wait_until(lambda: running in postern.stderr(), 60.0), postern.stderr()
    return postern


Serve = Callable[..., Postern]
# (folder of the process, its SMTP port, its HTTP port) -> the text of its config file
ConfigWriter = Callable[[Path, int, int], str]


class Launcher:
    """Makes `Postern`s under `root` (one folder each, fresh ports); close() kills them all."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: list[Postern] = []

    def launch(self, write_config: ConfigWriter, start: bool = True) -> Postern:
        log_dir = self.root / f"postern{len(self.made)}"
        log_dir.mkdir()
        smtp_port, http_port = free_port(), free_port()
        config = log_dir / "postern.toml"
        config.write_text(write_config(log_dir, smtp_port, http_port))
        postern = Postern(config, smtp_port, http_port, log_dir)
        self.made.append(postern)
        if start:
            postern.start()
        return postern

    def close(self) -> None:
        for postern in self.made:
            postern.close_client()
            postern.kill()
            # A supervisor killed leaves its metrics folder: the next start would remove
            # it, and there is none here. (Launched configs keep data_dir in log_dir/var.)
            data_dir = postern.log_dir / "var"
            named = named_metrics_folder(data_dir)
            if named is not None:
                remove_metrics_folder(data_dir, named)


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `condition` until it holds or `timeout` seconds pass; its final value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()
