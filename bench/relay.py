#!/usr/bin/env python3
"""End-to-end relay benchmark for Postern (never collected by pytest).

    python bench/relay.py --messages 5000 --clients 10 --size 1024
    python bench/relay.py --direct            # clients straight at the sink: harness ceiling
    python bench/relay.py --matrix [--json]   # C in (1, 10, 50) x size in (1024, 10240)

Three processes besides Postern: this coordinator, an upstream sink (raw asyncio.Protocol
SMTP server that records arrival time and X-Bench-Seq of every message) and a load
generator (C raw SMTP client connections). All timestamps are time.time() so they can be
compared across processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from email.utils import formatdate
from multiprocessing.connection import Connection
from pathlib import Path
from typing import cast

from webhook_sink import WebhookSink, subscribe  # bench/ is on sys.path when run as a script

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent
MP = mp.get_context("spawn")
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
MATRIX_CLIENTS = (1, 10, 50)
MATRIX_SIZES = (1024, 10240)
CLK_TCK = os.sysconf("SC_CLK_TCK")

Arrival = tuple[float, int]  # (time.time() at final dot, X-Bench-Seq or -1)
Sent = tuple[int, float, float, int]  # (seq, send start, reply time, reply code; 0 = I/O error)


class BenchError(Exception):
    """A run that could not complete; the message is printed as one line."""


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


# --- upstream sink ----------------------------------------------------------------------

SINK_NAME = b"sink.bench.test"
SEQ_RE = re.compile(rb"^X-Bench-Seq:[ \t]*(\d+)", re.IGNORECASE | re.MULTILINE)
EHLO_REPLY = b"250-%s\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 104857600\r\n" % SINK_NAME
REPLIES = {
    b"EHLO": EHLO_REPLY,
    b"HELO": b"250 %s\r\n" % SINK_NAME,
    b"MAIL": b"250 2.1.0 Ok\r\n",
    b"RCPT": b"250 2.1.5 Ok\r\n",
    b"RSET": b"250 2.0.0 Ok\r\n",
    b"NOOP": b"250 2.0.0 Ok\r\n",
    b"VRFY": b"252 2.5.2 Cannot VRFY\r\n",
    b"DATA": b"354 End data with <CR><LF>.<CR><LF>\r\n",
    b"QUIT": b"221 2.0.0 Bye\r\n",
}
UNKNOWN_REPLY = b"500 5.5.2 Unknown command\r\n"
QUEUED_REPLY = b"250 2.0.0 Ok: queued\r\n"


class SinkProtocol(asyncio.Protocol):
    """Minimal pipelining SMTP server: every command succeeds, every message is recorded."""

    def __init__(self, records: list[Arrival]) -> None:
        self.records = records
        self.buf = bytearray()
        self.in_data = False
        self.scan = 0  # where to resume looking for the end-of-data marker
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.transport.write(b"220 %s ESMTP bench sink\r\n" % SINK_NAME)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out: list[bytes] = []
        closing = False
        while not closing:
            reply = self._take_message() if self.in_data else self._take_command()
            if reply is None:
                break
            out.append(reply)
            closing = reply.startswith(b"221")
        assert self.transport is not None
        if out:
            self.transport.write(b"".join(out))
        if closing:
            self.transport.close()

    def _take_command(self) -> bytes | None:
        end = self.buf.find(b"\n")
        if end < 0:
            return None
        verb = bytes(self.buf[: min(4, end)]).upper()
        del self.buf[: end + 1]
        if verb == b"DATA":
            self.in_data, self.scan = True, 0
        return REPLIES.get(verb, UNKNOWN_REPLY)

    def _take_message(self) -> bytes | None:
        buf = self.buf
        if buf.startswith(b".\r\n"):  # empty body
            end, consumed = 0, 3
        else:
            found = buf.find(b"\r\n.\r\n", self.scan)
            if found < 0:
                self.scan = max(len(buf) - 4, 0)
                return None
            end, consumed = found + 2, found + 5
        self._record(end)
        del buf[:consumed]
        self.in_data, self.scan = False, 0
        return QUEUED_REPLY

    def _record(self, end: int) -> None:
        arrived = time.time()
        header_end = self.buf.find(b"\r\n\r\n", 0, end)
        match = SEQ_RE.search(self.buf, 0, end if header_end < 0 else header_end)
        self.records.append((arrived, int(match.group(1)) if match else -1))


def _sink_command(conn: Connection, records: list[Arrival], stop: asyncio.Future[None]) -> None:
    # uvloop's add_reader made the pipe non-blocking: a reply larger than its buffer (the
    # records of a few thousand messages) failed with EAGAIN and the coordinator waited on.
    os.set_blocking(conn.fileno(), True)
    while not stop.done() and conn.poll():
        try:
            command = conn.recv()
        except EOFError:
            command = "stop"
        if command == "count":
            conn.send(len(records))
        elif command == "records":
            conn.send(records)
        elif command == "stop":
            stop.set_result(None)


def sink_main(conn: Connection, protocol: type[SinkProtocol] = SinkProtocol) -> None:
    """Sink process: send the port, then serve until told "stop" (or the parent is gone)."""
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    records: list[Arrival] = []
    server = loop.run_until_complete(
        loop.create_server(lambda: protocol(records), HOST, 0, backlog=1024)
    )
    conn.send(server.sockets[0].getsockname()[1])
    stop: asyncio.Future[None] = loop.create_future()
    loop.add_reader(conn.fileno(), _sink_command, conn, records, stop)
    loop.run_until_complete(stop)
    loop.remove_reader(conn.fileno())
    server.close()
    loop.close()


class Sink:
    """Handle on the sink process, used by the coordinator."""

    def __init__(self, protocol: type[SinkProtocol] = SinkProtocol) -> None:
        """`protocol`: a SinkProtocol subclass that records something else per message (it
        must be importable by the spawned process: defined at a module's top level)."""
        self.conn, child = MP.Pipe()
        self.proc = MP.Process(
            target=sink_main, args=(child, protocol), name="bench-sink", daemon=True
        )
        self.proc.start()
        child.close()
        if not self.conn.poll(READY_TIMEOUT):
            raise BenchError("sink did not start")
        self.port: int = self.conn.recv()

    def ask(self, command: str) -> object:
        self.conn.send(command)
        return self.conn.recv()

    def wait_for(self, target: int, deadline: float) -> list[Arrival]:
        """All records once `target` messages have arrived; BenchError at the deadline."""
        while True:
            count = self.ask("count")
            assert isinstance(count, int)
            if count >= target:
                records = self.ask("records")
                assert isinstance(records, list)
                return records
            if time.monotonic() >= deadline:
                raise BenchError(f"timeout: the sink got {count}/{target} accepted messages")
            time.sleep(0.01)

    def close(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.conn.send("stop")
        self.proc.join(STOP_TIMEOUT)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


# --- load generator ---------------------------------------------------------------------

MAIL_FROM = b"MAIL FROM:<bench@client.bench.test>\r\n"
RCPT_TO = b"RCPT TO:<rcpt@sink.bench.test>\r\n"
FILL_LINE = (b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" * 2)[:76] + b"\r\n"


def filler(length: int) -> bytes:
    """`length` bytes of 76-char CRLF lines (the last line may be shorter, or 77 chars)."""
    full, rest = divmod(max(length, 0), len(FILL_LINE))
    if rest == 0:
        return FILL_LINE * full
    if rest >= 2:
        return FILL_LINE * full + FILL_LINE[: rest - 2] + b"\r\n"
    if full == 0:
        return b""
    return FILL_LINE * (full - 1) + FILL_LINE[:76] + b"x\r\n"


def build_message(seq: int, size: int, run_id: str, date: str) -> bytes:
    """A message of `size` bytes (unless the headers alone are longer), without the dot."""
    head = (
        "From: Bench <bench@client.bench.test>\r\n"
        "To: Sink <rcpt@sink.bench.test>\r\n"
        f"Subject: postern relay bench {seq}\r\n"
        f"Message-ID: <{seq}.{run_id}@client.bench.test>\r\n"
        f"Date: {date}\r\n"
        f"X-Bench-Seq: {seq}\r\n"
        "\r\n"
    ).encode()
    return head + filler(size - len(head))


class SmtpClient:
    """One raw SMTP client connection; pipelines MAIL/RCPT/DATA when the server allows it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.pipelining = False

    @classmethod
    async def connect(cls, port: int) -> SmtpClient:
        reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
        client = cls(reader, writer)
        await client.expect(220)
        writer.write(b"EHLO client.bench.test\r\n")
        code, lines = await client.reply()
        if code != 250:
            raise ConnectionError(f"EHLO refused: {code}")
        client.pipelining = any(line[4:].upper().startswith(b"PIPELINING") for line in lines)
        return client

    async def reply(self) -> tuple[int, list[bytes]]:
        lines: list[bytes] = []
        while True:
            line = await self.reader.readline()
            if not line.endswith(b"\n"):
                raise ConnectionError("connection closed by server")
            lines.append(line.rstrip())
            if line[3:4] != b"-":
                return int(line[:3]), lines

    async def code(self) -> int:
        return (await self.reply())[0]

    async def expect(self, wanted: int) -> None:
        got = await self.code()
        if got != wanted:
            raise ConnectionError(f"expected {wanted}, got {got}")

    async def envelope(self) -> list[int]:
        if self.pipelining:
            self.writer.write(MAIL_FROM + RCPT_TO + b"DATA\r\n")
            return [await self.code() for _ in range(3)]
        codes: list[int] = []
        for command in (MAIL_FROM, RCPT_TO, b"DATA\r\n"):
            self.writer.write(command)
            codes.append(await self.code())
            if codes[-1] >= 400:
                break
        return codes

    async def send(self, message: bytes) -> int:
        """Send one message; the reply code to the final dot, or the first failing code."""
        codes = await self.envelope()
        if codes[-1] != 354:
            await self.rset()
            return next(code for code in codes if code >= 400)
        if codes[0] != 250 or codes[1] not in (250, 251):
            self.writer.write(b".\r\n")  # server said 354 anyway: close the empty message
            await self.code()
            await self.rset()
            return codes[0] if codes[0] != 250 else codes[1]
        self.writer.write(message + b".\r\n")
        await self.writer.drain()
        code = await self.code()
        if code != 250:
            await self.rset()
        return code

    async def rset(self) -> None:
        self.writer.write(b"RSET\r\n")
        await self.code()

    async def close(self, polite: bool) -> None:
        with contextlib.suppress(OSError, ConnectionError, asyncio.IncompleteReadError):
            if polite:
                self.writer.write(b"QUIT\r\n")
                await self.code()
        self.writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self.writer.wait_closed()


async def connect_retrying(port: int, attempts: int = 50) -> SmtpClient:
    for attempt in range(attempts):
        try:
            return await SmtpClient.connect(port)
        except (OSError, ConnectionError, ValueError):
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.1)
    raise AssertionError("unreachable")


async def client_session(port: int, seqs: Iterator[int], size: int, out: list[Sent]) -> None:
    """One connection sending messages until the shared `seqs` runs out; reconnects on error."""
    run_id, date = f"{os.getpid()}.{time.time_ns()}", formatdate(usegmt=True)
    client = await connect_retrying(port)
    for seq in seqs:
        message = build_message(seq, size, run_id, date)
        start = time.time()
        try:
            code = await client.send(message)
        except (OSError, ConnectionError, ValueError):
            code = 0
        out.append((seq, start, time.time(), code))
        if code in (0, 421):
            await client.close(polite=False)
            client = await connect_retrying(port)
    await client.close(polite=True)


async def run_load(port: int, messages: int, clients: int, size: int) -> list[Sent]:
    out: list[Sent] = []
    seqs = iter(range(messages))
    sessions = (client_session(port, seqs, size, out) for _ in range(clients))
    await asyncio.gather(*sessions)
    return out


def load_main(conn: Connection, port: int, messages: int, clients: int, size: int) -> None:
    """Load process: run the clients, send back the per-message records (or an error)."""
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        conn.send(loop.run_until_complete(run_load(port, messages, clients, size)))
    except Exception as error:
        conn.send(f"{type(error).__name__}: {error}")
    finally:
        loop.close()


def drive(port: int, case: Case, deadline: float) -> list[Sent]:
    """Run the load process to completion (bounded by `deadline`)."""
    conn, child = MP.Pipe(duplex=False)
    args = (child, port, case.messages, case.clients, case.size)
    proc = MP.Process(target=load_main, args=args, name="bench-load", daemon=True)
    proc.start()
    child.close()
    try:
        if not conn.poll(max(deadline - time.monotonic(), 0)):
            raise BenchError(f"timeout: the clients did not finish within {case.timeout:g}s")
        result = conn.recv()
    finally:
        proc.join(1.0)
        if proc.is_alive():
            proc.kill()
            proc.join()
        conn.close()
    if isinstance(result, str):
        raise BenchError(f"load generator failed: {result}")
    return result


# --- Postern process --------------------------------------------------------------------

SERVE = (sys.executable, "-m", "gateway.process.cli", "serve")  # this checkout's (repo root)


def add_postern_cmd(parser: argparse.ArgumentParser) -> None:
    """`--postern-cmd`: the command that runs Postern's `serve`, as a tuple (default SERVE)."""
    parser.add_argument(
        "--postern-cmd",
        type=lambda text: tuple(shlex.split(text)),
        default=SERVE,
        help="command that runs Postern's `serve` (from the repo root)",
    )


CONFIG_TEMPLATE = """\
[server]
hostname = "bench.postern.test"
data_dir = {data_dir}

[smtp]
listen = ["{host}:{smtp_port}"]

[http]
listen = "{host}:{http_port}"

[policy]
sender = "any"

[[pools]]
name = "sink"
host = "{host}"
port = {sink_port}
encryption = "none"
ip_pool = "transactional"
is_default = true
max_connections = {upstream_connections}
"""


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def proc_tree(root: int) -> list[int]:
    """`root` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int(stat_fields(int(entry.name))[1])
                children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat from field 3 (state) on: index 1 = ppid, 11..14 = u/s/cu/cs time."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def tree_cpu_seconds(root: int) -> float:
    """utime+stime of the tree, plus cutime+cstime (children already reaped)."""
    ticks = 0
    for pid in proc_tree(root):
        with contextlib.suppress(OSError):
            ticks += sum(int(value) for value in stat_fields(pid)[11:15])
    return ticks / CLK_TCK


def tree_peak_rss_mb(root: int) -> float:
    total_kb = 0
    for pid in proc_tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total_kb += int(line.split()[1])
    return total_kb / 1024


def _cpus_in(cpu_list: str) -> int:
    """How many CPUs a taskset list names ("0", "0,2", "0-3")."""
    count = 0
    for part in cpu_list.split(","):
        low, _, high = part.partition("-")
        count += int(high) - int(low) + 1 if high else 1
    return count


class Postern:
    """A Postern subprocess with its own config and data dir under `tmp`."""

    def __init__(
        self,
        command: Sequence[str],
        tmp: Path,
        sink_port: int,
        upstreams: int,
        dkim: str | None = None,
        workers: str | int = 1,
        pin: str | None = None,
        smtp_extra: str = "",
        hostname: str | None = None,
        env_extra: dict[str, str] | None = None,
        storage_url: str = "",
        prefix: Sequence[str] = (),
    ) -> None:
        """`workers`: `[server] workers` (a count or "auto"); `pin`: a CPU list for
        `taskset -c` (its workers inherit it: "auto" then counts those CPUs); `hostname`:
        `[server] hostname`; `storage_url`: `[storage] url` ("" = SQLite in the data dir);
        `prefix`: put before the command (bench/cpu_quota.py's, to start it in a cgroup)."""
        self.smtp_port, self.http_port = free_ports(2)
        # "auto" counts the CPUs the process may use: pinned to one, it is one process,
        # which never says "workers running" (the pinned run waited for it in vain).
        self.workers = _cpus_in(pin) if pin and workers == "auto" else workers
        config = tmp / "postern.toml"
        config.write_text(
            CONFIG_TEMPLATE.format(
                host=HOST,
                data_dir=json.dumps(str(tmp / "var")),
                smtp_port=self.smtp_port,
                http_port=self.http_port,
                sink_port=sink_port,
                upstream_connections=upstreams,
            )
        )
        if hostname:
            text = config.read_text().replace(
                'hostname = "bench.postern.test"', f"hostname = {json.dumps(hostname)}", 1
            )
            config.write_text(text)
        if smtp_extra:  # more `[smtp]` keys, one per line
            text = config.read_text().replace("[smtp]\n", f"[smtp]\n{smtp_extra}\n", 1)
            config.write_text(text)
        if storage_url:
            table = f"\n[storage]\nurl = {json.dumps(storage_url)}\n"
            config.write_text(config.read_text() + table)
        # Always written: the default is "auto" now, so leaving it out for 1 ran N workers.
        value = json.dumps(workers) if isinstance(workers, str) else str(workers)
        text = config.read_text().replace("[server]\n", f"[server]\nworkers = {value}\n", 1)
        config.write_text(text)
        if dkim:  # sign every message: a key for the From domain of the bench's mail
            subprocess.run(
                [*command[:-1], "dkim", "generate", "--config", str(config),
                 "--domain", "client.bench.test", "--algorithm", dkim],
                check=True, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
            )  # fmt: skip
        self.log_path = tmp / "postern.log"
        with self.log_path.open("wb") as log:
            pinned = ["taskset", "-c", pin] if pin else []
            self.proc = subprocess.Popen(
                [*prefix, *pinned, *command, "--config", str(config)],
                env={**os.environ, **(env_extra or {})},  # several nodes share one secret key
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, deadline: float) -> None:
        limit = min(deadline, time.monotonic() + READY_TIMEOUT)
        while not (self._healthy() and self._smtp_open() and self._all_workers()):
            if self.proc.poll() is not None:
                raise BenchError(f"postern exited with {self.proc.returncode}{self.log_tail()}")
            if time.monotonic() >= limit:
                raise BenchError(f"postern not ready after {READY_TIMEOUT:g}s{self.log_tail()}")
            time.sleep(0.1)

    def _all_workers(self) -> bool:
        """With workers, every one has started (worker 0 answers /healthz before the others
        start: their start-up CPU must not count towards the measurement)."""
        if self.workers == 1:
            return True
        return "workers running" in self.log_path.read_text(errors="replace")

    def _healthy(self) -> bool:
        url = f"http://{HOST}:{self.http_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def _smtp_open(self) -> bool:
        try:
            with socket.create_connection((HOST, self.smtp_port), timeout=1.0) as sock:
                banner = sock.recv(512)
                sock.sendall(b"QUIT\r\n")
                return banner.startswith(b"220")
        except OSError:
            return False

    def log_tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "".join(f"\n  | {line}" for line in text)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"postern ignored SIGTERM for {STOP_TIMEOUT:g}s: killed", file=sys.stderr)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# --- one run ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    messages: int
    clients: int
    size: int
    direct: bool
    postern_cmd: tuple[str, ...]
    upstream_connections: int
    timeout: float
    keep: bool
    dkim: str | None = None
    webhook: bool = False  # every event also POSTed to a webhook receiver on loopback


@dataclass
class Result:
    mode: str
    messages: int
    clients: int
    size: int
    accepted_per_s: float
    delivered_per_s: float
    e2e_p50_ms: float
    e2e_p99_ms: float
    e2e_max_ms: float
    submit_p50_ms: float
    submit_p99_ms: float
    rss_mb: float | None
    cpu_ms_per_msg: float | None
    refused: int


@dataclass
class Measured:
    sent: list[Sent]
    arrivals: list[Arrival]
    rss_mb: float | None = None
    cpu_seconds: float | None = None


def run_case(case: Case) -> Result:
    deadline = time.monotonic() + case.timeout
    tmp = Path(tempfile.mkdtemp(prefix="postern-bench-"))
    try:
        with contextlib.ExitStack() as stack:
            sink = Sink()
            stack.callback(sink.close)
            if case.direct:
                measured = measure(case, sink, sink.port, None, deadline)
            else:
                postern = Postern(
                    case.postern_cmd, tmp, sink.port, case.upstream_connections, case.dkim
                )
                stack.callback(postern.stop)
                postern.wait_ready(deadline)
                hooks = None
                if case.webhook:
                    hooks = WebhookSink()
                    stack.callback(hooks.close)
                    cli = [*case.postern_cmd[:-1]]  # drop "serve"
                    subscribe(cli, tmp / "postern.toml", postern.http_port, hooks.url)
                measured = measure(case, sink, postern.smtp_port, postern.proc.pid, deadline)
                if hooks is not None:
                    # queued + delivered for each message: wait until the receiver has them
                    wanted = 2 * sum(1 for item in measured.sent if item[3] == 250)
                    started = time.monotonic()
                    got = hooks.wait_for(wanted, deadline)
                    print(
                        f"webhook events received={got} of {wanted}, the last"
                        f" {time.monotonic() - started:.1f}s after the last delivery",
                        file=sys.stderr,
                    )
    finally:
        if case.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return summarize(case, measured)


def measure(case: Case, sink: Sink, port: int, pid: int | None, deadline: float) -> Measured:
    """Drive the load and wait for delivery; Postern's RSS/CPU are read before it stops."""
    cpu_before = tree_cpu_seconds(pid) if pid else 0.0
    sent = drive(port, case, deadline)
    accepted = sum(1 for item in sent if item[3] == 250)
    measured = Measured(sent, sink.wait_for(accepted, deadline))
    if pid:
        measured.rss_mb = tree_peak_rss_mb(pid)
        measured.cpu_seconds = tree_cpu_seconds(pid) - cpu_before
    return measured


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted `values` (0.0 when empty)."""
    if not values:
        return 0.0
    return values[min(len(values) - 1, max(0, round(fraction * len(values)) - 1))]


def summarize(case: Case, measured: Measured) -> Result:
    ok = [item for item in measured.sent if item[3] == 250]
    first_start = min((item[1] for item in measured.sent), default=0.0)
    last_reply = max((item[2] for item in ok), default=first_start)
    arrived: dict[int, float] = {}
    for when, seq in sorted(measured.arrivals):
        arrived.setdefault(seq, when)
    delivered_at = sorted(when for when, _ in measured.arrivals)[len(ok) - 1] if ok else 0.0
    e2e = sorted(arrived[seq] - start for seq, start, _, _ in ok if seq in arrived)
    submit = sorted(end - start for _, start, end, _ in ok)
    cpu = measured.cpu_seconds
    return Result(
        mode="direct" if case.direct else "relay",
        messages=case.messages,
        clients=case.clients,
        size=case.size,
        accepted_per_s=rate(len(ok), last_reply - first_start),
        delivered_per_s=rate(len(ok), delivered_at - first_start),
        e2e_p50_ms=percentile(e2e, 0.50) * 1000,
        e2e_p99_ms=percentile(e2e, 0.99) * 1000,
        e2e_max_ms=(e2e[-1] if e2e else 0.0) * 1000,
        submit_p50_ms=percentile(submit, 0.50) * 1000,
        submit_p99_ms=percentile(submit, 0.99) * 1000,
        rss_mb=measured.rss_mb,
        cpu_ms_per_msg=None if cpu is None else cpu * 1000 / max(case.messages, 1),
        refused=len(measured.sent) - len(ok),
    )


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


# --- output -----------------------------------------------------------------------------


def ms(value: float) -> str:
    return f"{value:.1f}ms" if value < 100 else f"{value:.0f}ms"


def line(result: Result) -> str:
    rss = "-" if result.rss_mb is None else f"{result.rss_mb:.0f}MB"
    cpu = "-" if result.cpu_ms_per_msg is None else f"{result.cpu_ms_per_msg:.2f}ms/msg"
    return (
        f"{result.mode}  N={result.messages} C={result.clients} size={result.size}"
        f"  accepted/s={result.accepted_per_s:.0f}  delivered/s={result.delivered_per_s:.0f}"
        f"  e2e p50={ms(result.e2e_p50_ms)} p99={ms(result.e2e_p99_ms)}"
        f" max={ms(result.e2e_max_ms)}"
        f"  submit p50={ms(result.submit_p50_ms)} p99={ms(result.submit_p99_ms)}"
        f"  rss={rss}  cpu={cpu}  refused={result.refused}"
    )


CELL = 7
TABLE_COLUMNS = (
    ("C", "clients", "{}"),
    ("size", "size", "{}"),
    ("acc/s", "accepted_per_s", "{:.0f}"),
    ("dlv/s", "delivered_per_s", "{:.0f}"),
    ("e2e50", "e2e_p50_ms", "{:.1f}"),
    ("e2e99", "e2e_p99_ms", "{:.1f}"),
    ("e2emax", "e2e_max_ms", "{:.0f}"),
    ("sub50", "submit_p50_ms", "{:.1f}"),
    ("sub99", "submit_p99_ms", "{:.1f}"),
    ("rssMB", "rss_mb", "{:.0f}"),
    ("cpu/msg", "cpu_ms_per_msg", "{:.2f}"),
    ("refused", "refused", "{}"),
)


def cell(row: Result, key: str, fmt: str) -> str:
    value = getattr(row, key)
    return "-" if value is None else fmt.format(value)


def table(rows: Sequence[Result | str]) -> str:
    """Matrix table (latencies in ms); a failed case is a row holding its error."""
    out = ["  ".join(title.rjust(CELL) for title, _, _ in TABLE_COLUMNS)]
    for row in rows:
        if isinstance(row, str):
            out.append(f"FAILED: {row}")
            continue
        out.append("  ".join(cell(row, key, fmt).rjust(CELL) for _, key, fmt in TABLE_COLUMNS))
    return "\n".join(out)


# --- command line -----------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Postern end-to-end relay benchmark")
    parser.add_argument("--messages", "-n", type=int, default=5000)
    parser.add_argument("--clients", "-c", type=int, default=10)
    parser.add_argument("--size", type=int, default=1024, help="message size in bytes")
    add_postern_cmd(parser)
    parser.add_argument("--upstream-connections", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (config, log)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--matrix", action="store_true", help="C in (1,10,50) x size in (1K,10K)")
    parser.add_argument("--direct", action="store_true", help="clients straight at the sink")
    parser.add_argument(
        "--dkim", choices=["rsa", "ed25519"], help="DKIM-sign every message with such a key"
    )
    parser.add_argument(
        "--webhook", action="store_true", help="POST every event to a receiver on loopback"
    )
    args = parser.parse_args(argv)
    if min(args.messages, args.clients, args.size, args.upstream_connections) < 1:
        parser.error("--messages, --clients, --size and --upstream-connections must be >= 1")
    return args


def cases(args: argparse.Namespace) -> list[Case]:
    base = Case(
        messages=args.messages,
        clients=args.clients,
        size=args.size,
        direct=args.direct,
        postern_cmd=args.postern_cmd,
        upstream_connections=args.upstream_connections,
        timeout=args.timeout,
        keep=args.keep,
        dkim=args.dkim,
        webhook=args.webhook,
    )
    if not args.matrix:
        return [base]
    return [
        Case(**{**asdict(base), "clients": clients, "size": size})
        for clients in MATRIX_CLIENTS
        for size in MATRIX_SIZES
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rows: list[Result | str] = []
    for case in cases(args):
        try:
            result: Result | str = run_case(case)
        except BenchError as error:
            result = f"C={case.clients} size={case.size}: {error}"
            print(result, file=sys.stderr)
        rows.append(result)
        if args.matrix and isinstance(result, Result):
            print(line(result), file=sys.stderr)
    emit(args, rows)
    return 0 if all(isinstance(row, Result) for row in rows) else 1


def as_json(result: Result) -> dict[str, object]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(result).items()}


def emit(args: argparse.Namespace, rows: Sequence[Result | str]) -> None:
    results = [as_json(row) if isinstance(row, Result) else {"error": row} for row in rows]
    if args.json:
        print(json.dumps(results if args.matrix else results[0]))
    elif args.matrix:
        first = next((row for row in rows if isinstance(row, Result)), None)
        mode = first.mode if first else ("direct" if args.direct else "relay")
        print(f"{mode}  N={args.messages}  (latencies in ms)")
        print(table(rows))
    elif isinstance(rows[0], Result):
        print(line(rows[0]))


if __name__ == "__main__":
    sys.exit(main())
