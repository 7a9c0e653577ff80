#!/usr/bin/env python3
"""Postern against Postfix as a smarthost relay, side by side, same load, same sink.

    python bench/compare_postfix.py                  # full matrix, one run per case
    python bench/compare_postfix.py --runs 3         # medians of 3 runs per case
    python bench/compare_postfix.py --quick          # smoke run: small N, two cases
    python bench/compare_postfix.py --workers auto   # Postern with [server] workers = "auto"
    python bench/compare_postfix.py --workers 1 --pin-postern 0   # Postern on one core

Per case (size x concurrency) and per run, each system gets a fresh upstream sink
(`smtp-sink`, counting with `-c`), a fresh instance with an empty queue, and the same
`smtp-source` command; the script records the time until smtp-source has had every 250
(accepted/s) and until the sink holds every message (delivered/s), and the CPU time the
system's processes used. Postfix is a PRIVATE instance (its own config, queue and data
directories under a temp dir, loopback only); the system's own Postfix is never touched.
Postern is started by bench/relay.py's `Postern` helper (pool "sink" -> the same sink,
`[policy] sender = "any"`).

Needs root (Postfix's master runs as root; smtp-sink drops to `nobody`) and Debian's
postfix package, which this script installs with apt-get when it is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import relay
from relay import HOST, BenchError, free_ports, tree_cpu_seconds, tree_peak_rss_mb

TOOL_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/lib/postfix/sbin"])
MAIL_FROM = "bench@client.bench.test"
RCPT_TO = "rcpt@sink.bench.test"
HELO_NAME = "client.bench.test"
STOP_TIMEOUT = 20.0
READY_TIMEOUT = 30.0


def tool(name: str) -> str:
    found = shutil.which(name, path=TOOL_PATH)
    if found is None:
        raise BenchError(f"{name} not found (is Debian's postfix package installed?)")
    return found


def ensure_postfix() -> None:
    """Install Debian's postfix (for postfix, smtp-source, smtp-sink) when it is missing.

    Preseeded as "No configuration" so that the package neither writes a system main.cf
    nor starts the system's own Postfix.
    """
    if all(shutil.which(name, path=TOOL_PATH) for name in ("postfix", "smtp-source", "smtp-sink")):
        return
    if os.geteuid() != 0:
        raise BenchError("postfix is not installed and this is not root: apt-get install postfix")
    print("installing Debian's postfix package (apt-get)...", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(
        ["debconf-set-selections"],
        input=b"postfix postfix/main_mailer_type select No configuration\n",
        env=env,
        check=False,
        timeout=60,
    )
    subprocess.run(["apt-get", "update"], env=env, check=False, timeout=600)
    result = subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "postfix"],
        env=env,
        check=False,
        timeout=900,
    )
    if result.returncode != 0:
        raise BenchError(f"apt-get install postfix failed with status {result.returncode}")


# --- the upstream: smtp-sink, counting ---------------------------------------------------

MESG_RE = re.compile(rb"mesg=(\d+)")


class SmtpSink:
    """`smtp-sink -c` on loopback; a thread follows its counter (one `\\r`-ended line per
    session end, QUIT and final dot) and notes when the message count reaches a target."""

    def __init__(self) -> None:
        (self.port,) = free_ports(1)
        command = [tool("smtp-sink"), "-c", "-h", "sink.bench.test", "-m", "1024"]
        if os.geteuid() == 0:
            command += ["-u", "nobody"]  # smtp-sink refuses to run as root without it
        command += [f"{HOST}:{self.port}", "1024"]
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._lock = threading.Lock()
        self._count = 0
        self._target: int | None = None
        self._reached_at: float | None = None
        self._reached = threading.Event()
        self._reader = threading.Thread(target=self._follow, name="smtp-sink-counter", daemon=True)
        self._reader.start()
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise BenchError(f"smtp-sink exited: {err.strip()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((HOST, self.port), timeout=1.0) as sock,
            ):
                sock.sendall(b"QUIT\r\n")
                return
            time.sleep(0.05)
        raise BenchError("smtp-sink did not start listening")

    def _follow(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        pending = b""
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return
            now = time.monotonic()
            pending += chunk
            *lines, pending = pending.split(b"\r")
            for line in reversed(lines):
                match = MESG_RE.search(line)
                if match:
                    self._update(int(match.group(1)), now)
                    break

    def _update(self, count: int, now: float) -> None:
        with self._lock:
            self._count = max(self._count, count)
            target = self._target
            if target is not None and self._count >= target and self._reached_at is None:
                self._reached_at = now
                self._reached.set()

    def count(self) -> int:
        with self._lock:
            return self._count

    def wait_for(self, target: int, deadline: float) -> float:
        """The monotonic time the sink's count reached `target`; BenchError at the deadline."""
        with self._lock:
            self._target, self._reached_at = target, None
            self._reached.clear()
            if self._count >= target:
                self._reached_at = time.monotonic()
                self._reached.set()
        if not self._reached.wait(max(deadline - time.monotonic(), 0)):
            raise BenchError(f"timeout: the sink got {self.count()}/{target} messages")
        assert self._reached_at is not None
        return self._reached_at

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5.0)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


class PySink:
    """bench/relay.py's asyncio sink behind the same interface (`--sink python`)."""

    def __init__(self) -> None:
        self._sink = relay.Sink()
        self.port = self._sink.port

    def count(self) -> int:
        count = self._sink.ask("count")
        assert isinstance(count, int)
        return count

    def wait_for(self, target: int, deadline: float) -> float:
        while True:
            if self.count() >= target:
                return time.monotonic()
            if time.monotonic() >= deadline:
                raise BenchError(f"timeout: the sink got {self.count()}/{target} messages")
            time.sleep(0.002)

    def close(self) -> None:
        self._sink.close()


Sink = SmtpSink | PySink


# --- a private Postfix instance ----------------------------------------------------------

MAIN_CF = """\
# Private benchmark instance: nothing here touches /etc/postfix or /var/spool/postfix.
compatibility_level = 3.6
config_directory = {conf}
queue_directory = {queue}
data_directory = {data}
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = $myhostname
inet_interfaces = loopback-only
inet_protocols = ipv4
mydestination =
local_recipient_maps =
local_transport = error:local delivery is disabled
alias_maps =
alias_database =
relayhost = [{host}]:{sink_port}
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_client_connection_count_limit = 0
default_destination_concurrency_limit = {concurrency}
smtp_tls_security_level = none
smtpd_tls_security_level = none
biff = no
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
"""

# chroot "n" everywhere: the instance lives in a temp dir, not in a prepared jail.
MASTER_CF = """\
{host}:{smtp_port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixInstance:
    """`postfix -c <tmp>/conf start|stop` with main.cf/master.cf written here."""

    def __init__(self, tmp: Path, sink_port: int, concurrency: int) -> None:
        if os.geteuid() != 0:
            raise BenchError("a Postfix instance needs root (its master process runs as root)")
        self.root = tmp / "postfix"
        self.conf, self.queue, self.data = (self.root / n for n in ("conf", "queue", "data"))
        for path in (self.conf, self.queue, self.data):
            path.mkdir(parents=True)
        # The postfix user must be able to reach its queue: open up the path to it.
        for path in (tmp, self.root):
            path.chmod(0o755)
        owner = pwd.getpwnam("postfix")
        os.chown(self.data, owner.pw_uid, owner.pw_gid)
        (self.smtp_port,) = free_ports(1)
        values = {
            "conf": self.conf,
            "queue": self.queue,
            "data": self.data,
            "root": self.root,
            "host": HOST,
            "sink_port": sink_port,
            "smtp_port": self.smtp_port,
            "concurrency": concurrency,
        }
        (self.conf / "main.cf").write_text(MAIN_CF.format(**values))
        (self.conf / "master.cf").write_text(MASTER_CF.format(**values))
        self.started = False

    def _postfix(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        # `postfix` logs to syslog (absent here) unless stderr is a tty; its own log lines
        # end up in maillog via postlogd once the master runs.
        return subprocess.run(
            [tool("postfix"), "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self, deadline: float) -> None:
        result = self._postfix("start")
        self.started = True
        if result.returncode != 0:
            raise BenchError(f"postfix start failed ({result.returncode}){self.log_tail()}")
        limit = min(deadline, time.monotonic() + READY_TIMEOUT)
        while not _banner(self.smtp_port):
            if time.monotonic() >= limit:
                raise BenchError(f"postfix not listening after {READY_TIMEOUT:g}s{self.log_tail()}")
            time.sleep(0.1)

    def master_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.queue / "pid" / "master.pid").read_text().split()[0])
            os.kill(pid, 0)
            return pid
        return None

    def queue_files(self) -> int:
        """Messages still in the incoming/active/deferred queues."""
        count = 0
        for name in ("incoming", "active", "deferred", "hold", "maildrop"):
            for _dirpath, _dirs, files in os.walk(self.queue / name):
                count += len(files)
        return count

    def log_tail(self, lines: int = 10) -> str:
        with contextlib.suppress(OSError):
            text = (self.root / "maillog").read_text(errors="replace").splitlines()[-lines:]
            return "".join(f"\n  | {line}" for line in text)
        return ""

    def stop(self) -> None:
        if not self.started:
            return
        pid = self.master_pid()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._postfix("stop", timeout=STOP_TIMEOUT)
        if pid is None:
            return
        deadline = time.monotonic() + STOP_TIMEOUT
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            print("postfix ignored stop: abort, then SIGKILL", file=sys.stderr)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._postfix("abort", timeout=STOP_TIMEOUT)
            time.sleep(1.0)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has stopped all the same.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


def _banner(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as sock:
            banner = sock.recv(512)
            sock.sendall(b"QUIT\r\n")
            return banner.startswith(b"220")
    except OSError:
        return False


# --- one measurement ---------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    size: int
    clients: int
    messages: int


@dataclass
class Measure:
    accepted_per_s: float
    delivered_per_s: float
    cpu_ms_per_msg: float | None
    rss_mb: float | None


@dataclass
class Settings:
    runs: int
    timeout: float
    upstream_connections: int
    reuse: bool
    sink: str
    postern_cmd: tuple[str, ...]
    keep: bool
    systems: tuple[str, ...]
    dkim: str | None = None  # Postern signs every message with such a key
    workers: str | int = 1  # Postern's [server] workers
    pin: str | None = None  # CPUs Postern may use (taskset -c); None: all


def source_command(port: int, case: Case, reuse: bool) -> list[str]:
    command = [tool("smtp-source"), "-c"]
    if reuse:
        command.append("-d")  # many messages per connection, as a relaying app does
    command += [
        "-s", str(case.clients),
        "-m", str(case.messages),
        "-l", str(case.size),
        "-M", HELO_NAME,
        "-f", MAIL_FROM,
        "-t", RCPT_TO,
        f"{HOST}:{port}",
    ]  # fmt: skip
    return command


def drive(port: int, case: Case, settings: Settings, deadline: float) -> tuple[float, float]:
    """Run smtp-source to completion; (start, end) in monotonic time."""
    command = source_command(port, case, settings.reuse)
    start = time.monotonic()
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            timeout=max(deadline - start, 1.0),
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        done = _last_counter(expired.stdout or b"")
        raise BenchError(
            f"timeout: smtp-source had {done}/{case.messages} after {settings.timeout:g}s"
        ) from None
    end = time.monotonic()
    if result.returncode != 0:
        done = _last_counter(result.stdout)
        error = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
        raise BenchError(f"smtp-source failed after {done}/{case.messages}: {error[0]}")
    return start, end


def _last_counter(output: bytes) -> int:
    numbers = re.findall(rb"(\d+)\r", output)
    return int(numbers[-1]) if numbers else 0


def measure(system: str, case: Case, settings: Settings, tmp: Path, deadline: float) -> Measure:
    """One system, one case, one run: fresh sink, fresh instance, same smtp-source load."""
    with contextlib.ExitStack() as stack:
        sink: Sink = SmtpSink() if settings.sink == "smtp-sink" else PySink()
        stack.callback(sink.close)
        if system == "postfix":
            postfix = PostfixInstance(tmp, sink.port, settings.upstream_connections)
            stack.callback(postfix.stop)
            postfix.start(deadline)
            pid, port = postfix.master_pid(), postfix.smtp_port
            if pid is None:
                raise BenchError(f"postfix master is not running{postfix.log_tail()}")
        else:
            postern = relay.Postern(
                settings.postern_cmd, tmp, sink.port, settings.upstream_connections,
                settings.dkim, workers=settings.workers, pin=settings.pin,
            )  # fmt: skip
            stack.callback(postern.stop)
            postern.wait_ready(deadline)
            pid, port = postern.proc.pid, postern.smtp_port
        base = sink.count()  # readiness probes are sessions, not messages; stay exact anyway
        cpu_before = tree_cpu_seconds(pid)
        start, accepted_at = drive(port, case, settings, deadline)
        delivered_at = sink.wait_for(base + case.messages, deadline)
        cpu = tree_cpu_seconds(pid) - cpu_before
        rss = tree_peak_rss_mb(pid) if system == "postern" else None
        if system == "postfix":
            left = postfix.queue_files()
            if left:
                print(f"note: postfix still holds {left} queue files", file=sys.stderr)
    n = case.messages
    return Measure(
        accepted_per_s=n / max(accepted_at - start, 1e-9),
        delivered_per_s=n / max(delivered_at - start, 1e-9),
        cpu_ms_per_msg=cpu * 1000 / n,
        rss_mb=rss,
    )


# --- the matrix --------------------------------------------------------------------------


@dataclass
class Row:
    case: Case
    samples: dict[str, list[Measure]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def median(self, system: str, key: str) -> float | None:
        values = [getattr(m, key) for m in self.samples.get(system, [])]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    def ratio(self, key: str) -> float | None:
        ours, theirs = self.median("postern", key), self.median("postfix", key)
        return ours / theirs if ours is not None and theirs else None


def run_matrix(cases: Sequence[Case], settings: Settings) -> list[Row]:
    rows = [Row(case) for case in cases]
    for run in range(settings.runs):
        for row in rows:
            # Alternate who goes first, so that neither always meets a warmer machine.
            order = settings.systems if run % 2 == 0 else tuple(reversed(settings.systems))
            for system in order:
                label = (
                    f"run {run + 1}/{settings.runs} {system:7}"
                    f" size={row.case.size} C={row.case.clients}"
                )
                tmp = Path(tempfile.mkdtemp(prefix=f"postern-cmp-{system}-"))
                try:
                    result = measure(
                        system, row.case, settings, tmp, time.monotonic() + settings.timeout
                    )
                except BenchError as error:
                    row.errors.append(f"{label}: {error}")
                    print(f"{label}: FAILED: {error}", file=sys.stderr)
                    continue
                finally:
                    if settings.keep:
                        print(f"kept {tmp}", file=sys.stderr)
                    else:
                        shutil.rmtree(tmp, ignore_errors=True)
                row.samples.setdefault(system, []).append(result)
                cpu = "-" if result.cpu_ms_per_msg is None else f"{result.cpu_ms_per_msg:.2f}"
                print(
                    f"{label}: accepted/s={result.accepted_per_s:.0f}"
                    f" delivered/s={result.delivered_per_s:.0f} cpu={cpu}ms/msg"
                    f" loadavg={os.getloadavg()[0]:.1f}",
                    file=sys.stderr,
                    flush=True,
                )
    return rows


def fmt(value: float | None, spec: str = "{:.0f}") -> str:
    return "-" if value is None else spec.format(value)


def table(rows: Sequence[Row], settings: Settings, messages: int) -> str:
    how = "median of" if settings.runs > 1 else "runs:"
    out = [
        f"compare_postfix  N={messages}  {how} {settings.runs}  sink={settings.sink}"
        f"  upstream connections={settings.upstream_connections}"
        f"  smtp-source {'-d (connections reused)' if settings.reuse else '(a connection each)'}"
        f"  Postern workers={settings.workers}"
        f"{f' pinned to CPU {settings.pin}' if settings.pin else ''}"
        f"{f'  DKIM {settings.dkim}' if settings.dkim else ''}",
        "",
        "| size | C | Postfix acc/s | Postfix dlv/s | Postern acc/s | Postern dlv/s"
        " | ratio acc | ratio dlv | Postfix cpu ms/msg | Postern cpu ms/msg | Postern RSS MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        out.append(
            f"| {row.case.size} | {row.case.clients}"
            f" | {fmt(row.median('postfix', 'accepted_per_s'))}"
            f" | {fmt(row.median('postfix', 'delivered_per_s'))}"
            f" | {fmt(row.median('postern', 'accepted_per_s'))}"
            f" | {fmt(row.median('postern', 'delivered_per_s'))}"
            f" | {fmt(row.ratio('accepted_per_s'), '{:.2f}')}"
            f" | {fmt(row.ratio('delivered_per_s'), '{:.2f}')}"
            f" | {fmt(row.median('postfix', 'cpu_ms_per_msg'), '{:.2f}')}"
            f" | {fmt(row.median('postern', 'cpu_ms_per_msg'), '{:.2f}')}"
            f" | {fmt(row.median('postern', 'rss_mb'))} |"
        )
    errors = [error for row in rows for error in row.errors]
    if errors:
        out += ["", "failed:"] + [f"  {error}" for error in errors]
    return "\n".join(out)


def machine() -> str:
    cpu, clock = "?", ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "?":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("cpu MHz") and not clock:
                clock = f" at {float(line.split(':', 1)[1]):.0f} MHz"
    cpu += clock
    version = subprocess.run(
        [tool("postconf"), "-d", "mail_version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return (
        f"machine: {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()},"
        f" Postfix {version.split('=')[-1].strip() or '?'}"
    )


# --- command line ------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Postern vs Postfix relay benchmark")
    parser.add_argument("--messages", "-n", type=int, help="messages per case (5000)")
    parser.add_argument("--runs", type=int, default=1, help="runs per case; medians reported")
    parser.add_argument("--clients", help="smtp-source -s values (1,10,50)")
    parser.add_argument("--sizes", help="smtp-source -l values in bytes (1024,10240)")
    parser.add_argument("--quick", action="store_true", help="smoke run: N=300, C 1,10, 1 KB")
    parser.add_argument(
        "--upstream-connections",
        type=int,
        default=20,
        help="Postern pool max_connections and Postfix default_destination_concurrency_limit",
    )
    parser.add_argument(
        "--no-reuse",
        action="store_true",
        help="one connection per message (smtp-source without -d)",
    )
    parser.add_argument("--sink", choices=("smtp-sink", "python"), default="smtp-sink")
    parser.add_argument("--only", choices=("postfix", "postern"), help="measure one system")
    relay.add_postern_cmd(parser)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per measurement")
    parser.add_argument("--keep", action="store_true", help="keep temp dirs (configs, logs)")
    parser.add_argument(
        "--dkim",
        choices=("rsa", "ed25519"),
        help="Postern DKIM-signs every message with such a key (Postfix signs nothing)",
    )
    parser.add_argument(
        "--workers",
        default="1",
        help='Postern\'s [server] workers: a count or "auto" (one per CPU it may use)',
    )
    parser.add_argument(
        "--pin-postern",
        metavar="CPUS",
        help="run Postern under `taskset -c CPUS` (e.g. 0: one core; Postfix is not pinned)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.workers != "auto":
        if not args.workers.isdigit() or int(args.workers) < 1:
            parser.error('--workers: a count >= 1 or "auto"')
        args.workers = int(args.workers)
    if args.pin_postern and not shutil.which("taskset"):
        parser.error("--pin-postern needs taskset (util-linux)")
    quick = args.quick
    args.messages = args.messages or (300 if quick else 5000)
    args.clients = args.clients or ("1,10" if quick else "1,10,50")
    args.sizes = args.sizes or ("1024" if quick else "1024,10240")
    if min(args.messages, args.runs, args.upstream_connections) < 1:
        parser.error("--messages, --runs and --upstream-connections must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        ensure_postfix()
    except BenchError as error:
        print(f"compare_postfix: {error}", file=sys.stderr)
        return 2
    settings = Settings(
        runs=args.runs,
        timeout=args.timeout,
        upstream_connections=args.upstream_connections,
        reuse=not args.no_reuse,
        sink=args.sink,
        postern_cmd=args.postern_cmd,
        keep=args.keep,
        systems=(args.only,) if args.only else ("postfix", "postern"),
        dkim=args.dkim,
        workers=args.workers,
        pin=args.pin_postern,
    )
    cases = [
        Case(size=int(size), clients=int(clients), messages=args.messages)
        for size in args.sizes.split(",")
        for clients in args.clients.split(",")
    ]
    print(machine(), file=sys.stderr)
    load_before = os.getloadavg()[0]
    rows = run_matrix(cases, settings)
    loads = (
        f"load average (1 min) {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    )
    if args.json:
        print(
            json.dumps(
                [
                    {
                        **asdict(row.case),
                        **{
                            f"{system}_{key}": row.median(system, key)
                            for system in ("postfix", "postern")
                            for key in ("accepted_per_s", "delivered_per_s", "cpu_ms_per_msg")
                        },
                        "ratio_accepted": row.ratio("accepted_per_s"),
                        "ratio_delivered": row.ratio("delivered_per_s"),
                        "samples": {k: [asdict(m) for m in v] for k, v in row.samples.items()},
                        "errors": row.errors,
                    }
                    for row in rows
                ]
            )
        )
    else:
        print(machine())
        print(loads)
        print(table(rows, settings, args.messages))
    return 0 if not any(row.errors for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
