"""Crash loop: a real `postern serve`, SIGKILLed at random moments while mail streams in.

The driver behind `tests/e2e/test_crash_loop.py` (a short run in CI) and `bench/soak.py`
(long runs). One run:

1. Create a data_dir, an API key with scope `send` (`postern keys create --json`), and a
   config pointing at a fault-injecting `tests.support.sink.Sink` on loopback.
2. For each round: give the sink a few random temporary faults (4xx at some stage, a
   dropped connection, a short hang, or the whole upstream down), start `postern serve`
   on the same data_dir, stream messages at it over SMTP and over `POST /v1/send`, each
   with a unique marker in its Subject, and SIGKILL it at a random moment (now and then
   while it is still starting up, before it answers /healthz).
3. Last: heal the sink, start postern once more, wait (bounded) until the queue is empty
   and every acknowledged message reached the sink, then stop it with SIGTERM.

Every message gets one verdict from the client's point of view:

- `acked`: SMTP 250 after the final dot, HTTP 200 or 202. It must reach the sink.
- `refused`: an explicit negative answer (SMTP 4xx/5xx, HTTP 4xx/5xx), or the transport
  failed before the content was handed over (connect refused, a drop at MAIL/RCPT/DATA).
  It must never reach the sink.
- `indoubt`: the transport failed after the content was handed over but before the answer
  (the kill came between the final dot and the reply). Either outcome is correct.

A copy of a message beyond the first is a duplicate. At-least-once delivery allows one when
the process died after the upstream took a message but before the result was stored; the
report counts them, and separately those whose copies arrived within one life of the
process (not caused by a kill: a fault such as a hang ending just as the timeout fired).

Nothing here blocks forever: every wait has a bound, and `run()` stops what it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import IO

import httpx

from gateway.process.supervisor import named_metrics_folder
from tests.support.processes import (
    child_cwd,
    child_env,
    free_port,
    postern_argv,
    spawn_serve,
    writer_process_of,
)
from tests.support.sink import Sink

SENDER = "crash@example.com"
START_TIMEOUT = 30.0  # seconds for `postern serve` to answer /healthz
EXIT_TIMEOUT = 20.0  # seconds for a signalled process to be reaped
CLIENT_TIMEOUT = 10.0  # socket timeout of the SMTP and HTTP clients
SENDER_JOIN = CLIENT_TIMEOUT + 5.0  # a sender thread exits within this after a stop

SMTP_4XX = (
    "421 4.3.2 service shutting down",
    "450 4.2.0 mailbox busy",
    "451 4.3.0 local error, try later",
    "452 4.3.1 insufficient system storage",
    "454 4.7.0 temporary authentication failure",
)
STAGES = ("connect", "ehlo", "mail", "rcpt", "data", "eom")
# Now and then a sender sends something Postern must refuse (a bare LF in SMTP DATA, a CR/LF
# in an HTTP subject), so that "refused" also covers refusals after the whole content arrived.
MALFORMED_CHANCE = 0.03


# --- settings and results ---------------------------------------------------------------


@dataclass
class Settings:
    rounds: int = 20
    seconds: float = 600.0  # stop starting new rounds after this (the drain is extra)
    seed: int | None = None
    smtp_senders: int = 1
    http_senders: int = 1
    min_up: float = 0.2  # a round's process lives this long after /healthz ...
    max_up: float = 1.5  # ... up to this (uniform)
    startup_kill_chance: float = 0.1  # kill while still starting (before /healthz)
    fault_chance: float = 0.8  # a round gets upstream faults
    down_chance: float = 0.1  # ... or the whole upstream is down for the round
    pace: float = 0.01  # seconds between two messages of one sender
    drain_timeout: float = 60.0  # after the last restart
    settle: float = 1.5  # watch for late duplicates once drained (> retry interval)
    workers: int = 1  # [server] workers: >1 kills a supervisor, whose workers die with it
    # With workers > 1 on SQLite: SIGKILL the node's writer process first, mid-stream; the
    # supervisor starts it again, and the workers that lost it (a crash, on purpose); the
    # round goes on a while before the supervisor's own SIGKILL.
    kill_writer: bool = False
    verbose: bool = False


@dataclass
class Report:
    seed: int
    rounds: int = 0
    startup_kills: int = 0
    writer_kills: int = 0
    sent: int = 0
    acked: int = 0
    refused: int = 0
    indoubt: int = 0
    delivered: int = 0  # acked messages found at the sink
    lost: list[str] = field(default_factory=list)  # acked, never at the sink
    lost_explained: list[str] = field(default_factory=list)  # channel, round, database rows
    refused_delivered: list[str] = field(default_factory=list)  # refused, yet at the sink
    indoubt_delivered: int = 0
    duplicated: int = 0  # copies beyond the first, all messages
    duplicated_messages: int = 0  # messages with more than one copy
    duplicated_same_life: int = 0  # duplicate copies that arrived within one process life
    duplicated_per_kill_max: int = 0  # most messages duplicated by any one kill
    drained: bool = False
    queue_left: dict[str, int] = field(default_factory=dict)  # active messages by status
    final_exit: int | None = None  # status of the final SIGTERM stop
    tracebacks: int = 0  # "Traceback" in postern's logs
    metrics_seen: int = 0  # the supervisors' metrics folders (one a life, with workers)
    metrics_left: int = 0  # of those, still there at the end
    by_channel: dict[str, Counter[str]] = field(default_factory=dict)
    reasons: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0
    log_dir: str = ""

    @property
    def ok(self) -> bool:
        return not self.lost and not self.refused_delivered

    def lines(self) -> list[str]:
        channels = ", ".join(
            f"{name}: " + " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
            for name, counts in sorted(self.by_channel.items())
        )
        return [
            f"seed={self.seed} rounds={self.rounds} (killed during start-up: "
            f"{self.startup_kills}) elapsed={self.elapsed:.1f}s",
            f"sent={self.sent} acknowledged={self.acked} refused={self.refused} "
            f"in-doubt={self.indoubt} ({channels})",
            f"delivered={self.delivered} lost={len(self.lost)} "
            f"refused_but_delivered={len(self.refused_delivered)} "
            f"in-doubt_delivered={self.indoubt_delivered}",
            f"duplicated={self.duplicated} (messages={self.duplicated_messages}, "
            f"within one process life={self.duplicated_same_life}, "
            f"at most {self.duplicated_per_kill_max} by one kill)",
            f"drained={self.drained} queue_left={self.queue_left} "
            f"final_sigterm_exit={self.final_exit} tracebacks_in_logs={self.tracebacks} "
            f"metrics_folders_left={self.metrics_left}",
            f"logs: {self.log_dir}",
            *(f"  {n} x {reason}" for reason, n in self.reasons.most_common(12)),
            *(f"LOST {line}" for line in self.lost_explained),
            *(f"REFUSED BUT DELIVERED {marker}" for marker in self.refused_delivered[:10]),
        ]


# --- the ledger: what each client was told ------------------------------------------------


class Ledger:
    """marker -> (channel, verdict, round); thread-safe."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._lock = threading.Lock()
        self._next = 0
        self.entries: dict[str, tuple[str, str, int]] = {}
        self.reasons: Counter[str] = Counter()  # why messages were refused or in doubt

    def new_marker(self, channel: str) -> str:
        with self._lock:
            self._next += 1
            return f"crash-{self.run_id}-{channel}-{self._next}"

    def note(
        self, marker: str, channel: str, verdict: str, round_no: int, reason: str = ""
    ) -> None:
        with self._lock:
            self.entries[marker] = (channel, verdict, round_no)
            if verdict != "acked" or reason:
                self.reasons[f"{channel} {verdict}: {reason}"] += 1

    def with_verdict(self, verdict: str) -> set[str]:
        with self._lock:
            return {m for m, (_, v, _) in self.entries.items() if v == verdict}


SUBJECT = re.compile(rb"^subject:\s*(crash-[A-Za-z0-9-]+)", re.IGNORECASE | re.MULTILINE)


def marker_of(data: bytes) -> str | None:
    head = data.split(b"\r\n\r\n", 1)[0]
    found = SUBJECT.search(head)
    return found.group(1).decode() if found else None


# --- the process --------------------------------------------------------------------------


class Process:
    """`postern serve` on one config; each start logs to its own file."""

    def __init__(self, config: Path, http_port: int, log_dir: Path) -> None:
        self.config = config
        self.http_port = http_port
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def spawn(self) -> None:
        assert not self.running
        self.starts += 1
        self.proc = spawn_serve(self.config, self.log_dir / f"postern-{self.starts:04d}.log")

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Spawn and wait until /healthz answers 200."""
        self.spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"postern exited with {self.proc.returncode} at start-up; see {self.log()}"
                )
            if self.healthy():
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"postern not healthy within {timeout}s; see {self.log()}")

    def healthy(self) -> bool:
        try:
            response = httpx.get(f"http://127.0.0.1:{self.http_port}/healthz", timeout=1.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> Path:
        return self.log_dir / f"postern-{self.starts:04d}.log"

    def kill(self) -> None:
        """SIGKILL and reap; a no-op when not running."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=EXIT_TIMEOUT)

    def terminate(self, timeout: float = EXIT_TIMEOUT) -> int | None:
        """SIGTERM; the exit status, or None when it had to be killed after `timeout`."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None


def kill_writer_of(supervisor: int) -> int:
    """SIGKILL the supervisor's writer process: 1, or 0 when there is none (it is being
    started again)."""
    pid = writer_process_of(supervisor)
    if pid is None:
        return 0
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return 1


def metrics_folder(data_dir: Path) -> set[str]:
    """The metrics folder the running supervisor named in data_dir (none with one process)."""
    named = named_metrics_folder(data_dir)
    return {named} if named else set()


def run_cli(*args: str, timeout: float = 60.0) -> str:
    result = subprocess.run(
        [*postern_argv(), *args],
        cwd=child_cwd(),
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"postern {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def config_text(
    data_dir: Path, smtp_port: int, http_port: int, sink_port: int, workers: int = 1
) -> str:
    return f"""\
[server]
hostname = "postern.crash.test"
data_dir = "{data_dir}"
workers = {workers}

[smtp]
listen = ["127.0.0.1:{smtp_port}"]

[http]
listen = "127.0.0.1:{http_port}"
rate_limit = "10000/s"

[delivery]
retry_schedule = ["1s"]
connect_timeout = "2s"
command_timeout = "3s"
handoff_timeout = "2s"
idle_timeout = "2s"

[policy]
sender = "any"

[[pools]]
name = "sink"
host = "127.0.0.1"
port = {sink_port}
encryption = "none"
is_default = true
max_connections = 4
"""


def active_messages(db_path: Path) -> dict[str, int]:
    """Messages with work left (due_at set), by status, read straight from SQLite."""
    with contextlib.closing(sqlite3.connect(db_path, timeout=10.0)) as conn:
        rows = conn.execute(
            "SELECT status, count(*) FROM message WHERE due_at IS NOT NULL GROUP BY status"
        ).fetchall()
    return {status: count for status, count in rows}


# --- clients ------------------------------------------------------------------------------


class Stop(Exception):
    pass


class SmtpSender(threading.Thread):
    """Sends over raw SMTP so that every failure can be placed before or after the dot."""

    def __init__(
        self,
        ledger: Ledger,
        port: int,
        round_no: int,
        stop: threading.Event,
        rng: random.Random,
        pace: float,
    ) -> None:
        super().__init__(name=f"smtp-sender-{round_no}", daemon=True)
        self.ledger, self.port, self.round_no = ledger, port, round_no
        self.stop, self.rng, self.pace = stop, rng, pace

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.session()
            except Stop:
                return
            except OSError:
                pass  # connect or greeting failed: no message was in flight
            self.stop.wait(0.05)

    def session(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=CLIENT_TIMEOUT) as sock:
            reader = sock.makefile("rb")
            if not reply(reader).startswith(b"220"):
                return
            sock.sendall(b"EHLO client.crash.test\r\n")
            if not reply(reader).startswith(b"250"):
                return
            per_session = self.rng.choice((1, 5, 50))
            for _ in range(per_session):
                if self.stop.is_set():
                    with contextlib.suppress(OSError):
                        sock.sendall(b"QUIT\r\n")
                    raise Stop
                if not self.one(sock, reader):
                    return
                if self.pace:
                    self.stop.wait(self.rng.uniform(0, 2 * self.pace))
            with contextlib.suppress(OSError):
                sock.sendall(b"QUIT\r\n")
                reply(reader)

    def one(self, sock: socket.socket, reader: IO[bytes]) -> bool:
        """One message; False when the session is unusable afterwards."""
        marker = self.ledger.new_marker("smtp")

        def note(verdict: str, reason: str) -> None:
            self.ledger.note(marker, "smtp", verdict, self.round_no, reason)

        rcpt = f"{marker}@example.org"
        malformed = self.rng.random() < MALFORMED_CHANCE
        content = smtp_content(marker, rcpt)
        if malformed:
            content = content.replace(b"crash loop message", b"crash loop\nmessage")  # bare LF
        try:
            for command, ok in (
                (f"MAIL FROM:<{SENDER}>", b"250"),
                (f"RCPT TO:<{rcpt}>", b"250"),
                ("DATA", b"354"),
            ):
                sock.sendall(command.encode() + b"\r\n")
                answer = reply(reader)
                if not answer.startswith(ok):
                    note("refused", f"{command.split(':')[0]} {answer[:3].decode()}")
                    sock.sendall(b"RSET\r\n")
                    return reply(reader).startswith(b"250")
        except OSError as error:
            note("refused", f"before content, {type(error).__name__}")  # never handed over
            return False
        try:
            sock.sendall(content + b".\r\n")
            answer = reply(reader)
        except OSError as error:
            note("indoubt", f"after content, {type(error).__name__}")
            return False
        code = answer[:3].decode(errors="replace")
        if answer.startswith(b"250"):
            note("acked", "malformed (bare LF) ACCEPTED" if malformed else "")
        else:
            note("refused", f"end of data {code}" + (" (malformed: bare LF)" if malformed else ""))
        return True


def reply(reader: IO[bytes]) -> bytes:
    """Read one (possibly multi-line) SMTP reply; the last line. OSError on EOF."""
    while True:
        line = reader.readline(4096)
        if not line:
            raise ConnectionResetError("connection closed")
        if len(line) < 4 or line[3:4] != b"-":
            return bytes(line)


def smtp_content(marker: str, rcpt: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = rcpt
    msg["Subject"] = marker
    msg["Message-ID"] = f"<{marker}@client.crash.test>"
    msg.set_content(f"crash loop message {marker}\n")
    data = msg.as_bytes(policy=SMTP_POLICY)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


class HttpSender(threading.Thread):
    def __init__(
        self,
        ledger: Ledger,
        port: int,
        key: str,
        round_no: int,
        stop: threading.Event,
        rng: random.Random,
        pace: float,
    ) -> None:
        super().__init__(name=f"http-sender-{round_no}", daemon=True)
        self.ledger, self.port, self.key, self.round_no = ledger, port, key, round_no
        self.stop, self.rng, self.pace = stop, rng, pace

    def run(self) -> None:
        url = f"http://127.0.0.1:{self.port}/v1/send"
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(timeout=CLIENT_TIMEOUT, headers=headers) as client:
            while not self.stop.is_set():
                marker = self.ledger.new_marker("http")
                body = {
                    "from": {"email": SENDER, "name": "Crash Loop"},
                    "to": [{"email": f"{marker}@example.org"}],
                    "subject": marker,
                    "text": f"crash loop message {marker}\n",
                }
                malformed = self.rng.random() < MALFORMED_CHANCE
                if malformed:
                    body["subject"] = f"{marker}\r\nX-Injected: yes"
                try:
                    response = client.post(url, json=body)
                except (httpx.ConnectError, httpx.ConnectTimeout) as error:
                    verdict, reason = "refused", type(error).__name__  # nothing was sent
                    self.stop.wait(0.05)
                except httpx.HTTPError as error:
                    verdict, reason = "indoubt", type(error).__name__  # the answer never came
                else:
                    code = response.status_code
                    if code in (200, 202):
                        verdict, reason = "acked", "malformed (CR/LF) ACCEPTED" if malformed else ""
                    else:
                        verdict, reason = "refused", str(code)
                        reason += " (malformed: CR/LF in subject)" if malformed else ""
                self.ledger.note(marker, "http", verdict, self.round_no, reason)
                if self.pace:
                    self.stop.wait(self.rng.uniform(0, 2 * self.pace))


# --- upstream faults ----------------------------------------------------------------------


def random_faults(sink: Sink, rng: random.Random) -> list[str]:
    """Give the sink 1-3 temporary faults; a description of each."""
    done = []
    for _ in range(rng.randint(1, 3)):
        stage = rng.choice(STAGES)
        times = rng.randint(1, 4)
        kind = rng.choice(("reply", "reply", "drop", "hang"))
        if kind == "reply":
            code = rng.choice(SMTP_4XX)
            sink.fail(stage, code, times=times)  # type: ignore[arg-type]
            done.append(f"{stage}:{code[:3]}x{times}")
        elif kind == "drop":
            sink.drop(stage, times=times)  # type: ignore[arg-type]
            done.append(f"{stage}:dropx{times}")
        else:
            seconds = rng.choice((0.2, 0.5, 1.0, 2.0, 4.0))  # 4 s > command_timeout
            sink.hang(stage, seconds=seconds, times=times)  # type: ignore[arg-type]
            done.append(f"{stage}:hang{seconds}x{times}")
    return done


# --- the run ------------------------------------------------------------------------------


def run(settings: Settings, workdir: Path, echo: Callable[[str], None] = print) -> Report:
    seed = settings.seed if settings.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    report = Report(seed=seed, log_dir=str(workdir))
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir / "var"
    ledger = Ledger(f"{seed:x}")
    started = time.monotonic()
    sink = Sink().start()
    epochs: list[int] = []  # len(sink.messages) at each kill: where each life's mail ends
    process: Process | None = None
    stop = threading.Event()  # tells the current round's senders to finish
    senders: list[threading.Thread] = []
    folders: set[str] = set()  # each supervisor's metrics folder
    try:
        smtp_port, http_port = free_port(), free_port()
        config = workdir / "postern.toml"
        config.write_text(config_text(data_dir, smtp_port, http_port, sink.port, settings.workers))
        created = run_cli(
            "keys", "create", "--name=crash", "--scope=send", f"--config={config}", "--json"
        )
        key = json.loads(created)["key"]
        process = Process(config, http_port, workdir)

        for round_no in range(1, settings.rounds + 1):
            if time.monotonic() - started > settings.seconds:
                break
            report.rounds = round_no
            sink.clear()
            if not sink.running:
                sink.start()
            faults: list[str] = []
            if rng.random() < settings.down_chance:
                sink.stop()
                faults = ["upstream down"]
            elif rng.random() < settings.fault_chance:
                faults = random_faults(sink, rng)

            if round_no > 1 and rng.random() < settings.startup_kill_chance:
                process.spawn()
                time.sleep(rng.uniform(0.0, 1.0))
                process.kill()
                epochs.append(len(sink.messages))
                report.startup_kills += 1
                if settings.verbose:
                    echo(f"round {round_no}: killed during start-up")
                continue

            process.start()
            folders.update(metrics_folder(data_dir))
            stop = threading.Event()
            senders = [
                SmtpSender(
                    ledger, smtp_port, round_no, stop, random.Random(rng.random()), settings.pace
                )
                for _ in range(settings.smtp_senders)
            ] + [
                HttpSender(
                    ledger,
                    http_port,
                    key,
                    round_no,
                    stop,
                    random.Random(rng.random()),
                    settings.pace,
                )
                for _ in range(settings.http_senders)
            ]
            for sender in senders:
                sender.start()
            up = rng.uniform(settings.min_up, settings.max_up)
            time.sleep(up)
            if settings.kill_writer:
                assert process.proc is not None
                report.writer_kills += kill_writer_of(process.proc.pid)
                time.sleep(rng.uniform(settings.min_up, settings.max_up))
            process.kill()
            stop.set()
            time.sleep(0.2)  # let the sink finish what reached it before the kill
            epochs.append(len(sink.messages))
            for sender in senders:
                sender.join(SENDER_JOIN)
                if sender.is_alive():
                    raise RuntimeError(f"{sender.name} did not stop within {SENDER_JOIN}s")
            if settings.verbose:
                echo(
                    f"round {round_no}: up {up:.2f}s, faults {faults or 'none'}, "
                    f"messages so far {len(ledger.entries)}, at the sink {len(sink.messages)}"
                )

        # Heal the upstream and let the last life drain the queue.
        sink.clear()
        if not sink.running:
            sink.start()
        process.start()
        acked = ledger.with_verdict("acked")
        arrivals = Arrivals(sink)
        deadline = time.monotonic() + settings.drain_timeout
        db_path = data_dir / "postern.db"
        while time.monotonic() < deadline:
            left = active_messages(db_path)
            report.queue_left = left
            if not left and acked <= arrivals.update():
                report.drained = True
                break
            time.sleep(0.25)
        time.sleep(settings.settle)
        report.queue_left = active_messages(db_path)
        folders.update(metrics_folder(data_dir))
        report.final_exit = process.terminate()
        report.metrics_seen = len(folders)
        report.metrics_left = sum(Path(folder).exists() for folder in folders)
    finally:
        stop.set()
        if process is not None:
            process.kill()
        for sender in senders:
            sender.join(SENDER_JOIN)
        sink.stop()

    tally(report, ledger, sink, epochs)
    if report.lost and (data_dir / "postern.db").exists():
        report.lost_explained = [
            f"{line} sent in round {ledger.entries[line.split(':')[0]][2]}"
            for line in explain(data_dir / "postern.db", report.lost)
        ]
    report.tracebacks = sum(
        path.read_text(errors="replace").count("Traceback") for path in workdir.glob("*.log")
    )
    report.elapsed = time.monotonic() - started
    return report


class Arrivals:
    """The markers the sink received so far, parsed incrementally."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.seen = 0
        self.markers: set[str] = set()

    def update(self) -> set[str]:
        fresh = self.sink.messages[self.seen :]
        self.seen += len(fresh)
        self.markers.update(m for m in (marker_of(r.data) for r in fresh) if m is not None)
        return self.markers


def tally(report: Report, ledger: Ledger, sink: Sink, epochs: list[int]) -> None:
    copies: Counter[str] = Counter()
    lives: dict[str, list[int]] = {}
    for index, received in enumerate(list(sink.messages)):
        marker = marker_of(received.data)
        if marker is None:
            continue
        copies[marker] += 1
        life = sum(1 for end in epochs if index >= end)
        lives.setdefault(marker, []).append(life)

    acked = ledger.with_verdict("acked")
    refused = ledger.with_verdict("refused")
    indoubt = ledger.with_verdict("indoubt")
    report.sent = len(ledger.entries)
    report.acked, report.refused, report.indoubt = len(acked), len(refused), len(indoubt)
    report.delivered = len(acked & copies.keys())
    report.lost = sorted(acked - copies.keys())
    report.refused_delivered = sorted(refused & copies.keys())
    report.indoubt_delivered = len(indoubt & copies.keys())
    report.duplicated = sum(n - 1 for n in copies.values() if n > 1)
    report.duplicated_messages = sum(1 for n in copies.values() if n > 1)
    report.duplicated_same_life = sum(
        len(found) - len(set(found)) for found in lives.values() if len(found) > 1
    )
    per_kill = Counter(found[0] for found in lives.values() if len(found) > 1)
    report.duplicated_per_kill_max = max(per_kill.values(), default=0)
    by_channel: dict[str, Counter[str]] = {}
    for channel, verdict, _ in ledger.entries.values():
        by_channel.setdefault(channel, Counter())[verdict] += 1
    report.by_channel = by_channel
    report.reasons = Counter(ledger.reasons)


def explain(db_path: Path, markers: list[str], limit: int = 10) -> list[str]:
    """What the database says about some messages (by their unique recipient)."""
    lines = []
    with contextlib.closing(sqlite3.connect(db_path, timeout=10.0)) as conn:
        for marker in markers[:limit]:
            rows = conn.execute(
                "SELECT m.id, m.status, m.attempts, m.due_at, m.claimed_by, r.status, r.response"
                " FROM recipient r JOIN message m ON m.id = r.message_id WHERE r.email = ?",
                (f"{marker}@example.org",),
            ).fetchall()
            lines.append(f"{marker}: {rows or 'not in the database'}")
    return lines
