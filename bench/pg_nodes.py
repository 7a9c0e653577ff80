#!/usr/bin/env python3
"""Scale-out on PostgreSQL: K Postern nodes on one database against one node, same load.

    python bench/pg_nodes.py                              # N=5000 C=20 1 KB, K=2 nodes x W=2
    python bench/pg_nodes.py -n 3000 -c 20 --runs 1       # a short run
    python bench/pg_nodes.py --nodes 3 --workers 1 --json

Each measurement gets a database of its own on the PostgreSQL server (created here, dropped
at the end), a fresh upstream sink (bench/relay.py's, recording each message's Message-ID
and the EHLO name of the node that delivered it) and fresh nodes (bench/relay.py's `Postern`:
each its own data_dir, so its own node id, its own ports and `[server] hostname`, the same
`[storage] url`). The load is Postfix's smtp-source as bench/compare_postfix.py runs it
(-d, -s, -m, -l), one per node, the messages and sessions split evenly across the nodes.

Case "one": one node with `[server] workers = W`; case "nodes": K such nodes. The ratio
nodes/one is printed for accepted/s and delivered/s, with the CPU each part used. Every
message must reach the sink exactly once: duplicates (a Message-ID seen twice) or missing
messages make the exit status 1.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare_postfix
import cpu_quota
import relay
from relay import CLK_TCK, BenchError, stat_fields, tree_cpu_seconds

# Seconds waited after the last message, for a late duplicate and for the statistics:
# PostgreSQL 15 reports a backend's counters at most once a second while it works, and an
# idle backend's last ones after 10 s (PGSTAT_IDLE_INTERVAL).
SETTLE = 11.0
DB_COUNTERS = (
    "xact_commit",
    "xact_rollback",
    "tup_returned",
    "tup_fetched",
    "tup_inserted",
    "tup_updated",
    "tup_deleted",
)
PSQL_TIMEOUT = 60.0
DROP_TIMEOUT = 300.0  # a DROP DATABASE waits for a checkpoint of the whole server
MSGID_RE = re.compile(rb"^Message-Id:[ \t]*(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE)
ACCEPTED_BY_RE = re.compile(rb"\sby (\S+) \(Postern\)")  # in the Received field Postern adds

# (sink arrival time.time(), Message-ID or b"", EHLO name of the delivering connection,
#  the node that accepted it, from its Received field)
Record = tuple[float, bytes, bytes, bytes]


class IdSinkProtocol(relay.SinkProtocol):
    """relay.py's sink, recording the Message-ID (smtp-source writes a unique one per
    message: pid.fd.count), the EHLO name the delivering node gave and the node that
    accepted the message (its Received field)."""

    helo = b"?"

    def _take_command(self) -> bytes | None:
        end = self.buf.find(b"\n")
        if end > 5 and bytes(self.buf[:5]).upper() in (b"EHLO ", b"HELO "):
            self.helo = bytes(self.buf[5:end]).strip()
        return super()._take_command()

    def _record(self, end: int) -> None:
        arrived = time.time()
        header_end = self.buf.find(b"\r\n\r\n", 0, end)
        head_end = end if header_end < 0 else header_end
        match = MSGID_RE.search(self.buf, 0, head_end)
        by = ACCEPTED_BY_RE.search(self.buf, 0, head_end)
        record = (arrived, match.group(1) if match else b"", self.helo, by.group(1) if by else b"")
        self.records.append(record)  # type: ignore[arg-type]


# --- PostgreSQL --------------------------------------------------------------------------


@dataclass(frozen=True)
class Pg:
    host: str
    port: int
    user: str

    def psql(self, sql: str, database: str = "postgres", timeout: float = PSQL_TIMEOUT) -> str:
        command = [
            "psql",
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-U",
            self.user,
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-XAtc",
            sql,
        ]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise BenchError(f"psql did not answer within {timeout:g}s") from None
        if result.returncode != 0:
            raise BenchError(f"psql: {result.stderr.strip() or result.returncode}")
        return result.stdout.strip()

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://{self.user}@{self.host}:{self.port}/{database}"

    def version(self) -> str:
        return self.psql("SHOW server_version")

    def backends(self, database: str) -> list[int]:
        """Server processes serving `database` (this psql's own excepted)."""
        out = self.psql(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()",
            database,
        )
        return [int(pid) for pid in out.split()]

    def activity(self, database: str) -> dict[str, int]:
        """The database's counters in pg_stat_database (transactions, rows read and
        written), as the server has them (see SETTLE)."""
        out = self.psql(
            f"SELECT {', '.join(DB_COUNTERS)} FROM pg_stat_database"
            " WHERE datname = current_database()",
            database,
        )
        values = out.split("|")
        if len(values) != len(DB_COUNTERS) or not all(v.isdigit() for v in values):
            raise BenchError(f"pg_stat_database: unexpected answer {out[:200]!r}")
        return dict(zip(DB_COUNTERS, map(int, values), strict=True))


class Databases:
    """The bench's databases: one new and empty per measurement, all dropped at the end.

    Not dropped between measurements: DROP DATABASE waits for a checkpoint of the whole
    server, which on a busy machine takes a minute and would run into the next measurement.
    """

    def __init__(self, pg: Pg) -> None:
        self.pg = pg
        self.names: list[str] = []

    def new(self, name: str) -> str:
        self.names.append(name)
        self.pg.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.pg.psql(f'CREATE DATABASE "{name}"')
        return name

    def drop_all(self) -> None:
        for name in self.names:
            try:
                self.pg.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', timeout=DROP_TIMEOUT)
            except BenchError as error:
                print(f"could not drop database {name}: {error}", file=sys.stderr)


def postmaster_pid(backends: Sequence[int]) -> int | None:
    """The PostgreSQL server's root process: every backend's parent."""
    for pid in backends:
        with contextlib.suppress(OSError, IndexError, ValueError):
            return int(stat_fields(pid)[1])
    return None


def pids_ticks(pids: Sequence[int]) -> dict[int, int]:
    ticks: dict[int, int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            ticks[pid] = sum(int(value) for value in stat_fields(pid)[11:13])
    return ticks


def machine_busy_ticks() -> int:
    """Every CPU's non-idle time (/proc/stat: user nice system irq softirq steal)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return user + nice + system + irq + softirq + steal


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- one measurement ---------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    messages: int
    clients: int
    size: int
    nodes: int
    workers: int
    runs: int
    upstream_connections: int
    timeout: float
    postern_cmd: tuple[str, ...]
    warmup: int  # messages sent and delivered before the measured load, per measurement
    pin: str | None
    cpu_quota: float | None  # each node's CPU budget, in CPUs (a cgroup of its own)
    keep: bool
    pg: Pg


@dataclass
class Measure:
    nodes: int
    accepted_per_s: float
    delivered_per_s: float
    duplicates: int
    missing: int
    delivered_by: dict[str, int]
    crossed: int  # delivered by another node than the one that accepted it
    node_accepted_per_s: list[float]  # each node's share / its smtp-source's time
    cpu_s: dict[str, float]  # seconds of CPU in the window, per part
    wall_s: float
    throttled_s: list[float]  # with --cpu-quota: each node's wait for its budget, window
    db_per_message: dict[str, float]  # pg_stat_database's counters, per message sent


@dataclass
class Cpu:
    """CPU readings at the start of the load window."""

    postern: list[float]
    pg_backends: dict[int, int]
    pg_all: float
    children: float
    machine: int
    sink: float


def split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class Loads:
    """One smtp-source per node, all at once, `total` messages split between them; their
    output goes to files named after `name` (never a full pipe)."""

    def __init__(self, settings: Settings, tmp: Path, total: int, name: str) -> None:
        self.settings, self.tmp, self.total, self.name = settings, tmp, total, name
        self.procs: list[subprocess.Popen[bytes]] = []
        self.outputs: list[Path] = []
        self.ends: list[float | None] = []
        self.messages: list[int] = []

    def start(self, ports: Sequence[int]) -> None:
        self.messages = split(self.total, len(ports))
        clients = split(self.settings.clients, len(ports))
        for index, port in enumerate(ports):
            case = compare_postfix.Case(
                size=self.settings.size, clients=clients[index], messages=self.messages[index]
            )
            out = self.tmp / f"smtp-source-{self.name}-{index}.out"
            with out.open("wb") as stdout, out.with_suffix(".err").open("wb") as stderr:
                command = compare_postfix.source_command(port, case, reuse=True)
                self.procs.append(
                    subprocess.Popen(
                        command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr
                    )
                )
            self.outputs.append(out)
            self.ends.append(None)

    def wait(self, deadline: float) -> float:
        """time.time() when the last one exited; BenchError on a failure or at the deadline."""
        while None in self.ends:
            for index, proc in enumerate(self.procs):
                if self.ends[index] is None and proc.poll() is not None:
                    self.ends[index] = time.time()
                    if proc.returncode != 0:
                        raise BenchError(f"smtp-source {index} failed: {self._said(index)}")
            if time.monotonic() >= deadline:
                raise BenchError(f"timeout: smtp-source did not finish ({self._counts()})")
            time.sleep(0.002)
        return max(end for end in self.ends if end is not None)

    def _said(self, index: int) -> str:
        err = self.outputs[index].with_suffix(".err").read_text(errors="replace").strip()
        return f"after {self._count(index)}/{self.messages[index]}: {err[-300:] or '?'}"

    def _count(self, index: int) -> int:
        return compare_postfix._last_counter(self.outputs[index].read_bytes())

    def _counts(self) -> str:
        return ", ".join(f"{self._count(i)}/{n}" for i, n in enumerate(self.messages))

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def wait_delivered(sink: relay.Sink, wanted: int, deadline: float) -> tuple[list[Record], float]:
    """Records once `wanted` distinct Message-IDs arrived, and when the last of them did."""
    seen = 0
    while True:
        count = sink.ask("count")
        assert isinstance(count, int)
        if count != seen and count >= wanted:
            seen = count
            records: list[Record] = sink.ask("records")  # type: ignore[assignment]
            first: dict[bytes, float] = {}
            for when, key, _helo, _by in records:
                first[key] = min(when, first.get(key, when))
            if len(first) >= wanted:
                return records, max(first.values())
        if time.monotonic() >= deadline:
            raise BenchError(f"timeout: the sink got {count} messages for {wanted} sent")
        time.sleep(0.005)


def start_nodes(
    settings: Settings,
    count: int,
    tmp: Path,
    sink_port: int,
    url: str,
    stack: contextlib.ExitStack,
    deadline: float,
) -> tuple[list[relay.Postern], list[cpu_quota.CpuQuota]]:
    """The first node alone (it creates the schema), then the others; with a CPU quota,
    each in a cgroup of its own (removed after the node stops)."""
    nodes: list[relay.Postern] = []
    quotas: list[cpu_quota.CpuQuota] = []
    # One secret key for every node, as README's "Scaling out" asks.
    key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    for index in range(count):
        home = tmp / f"node{index + 1}"
        home.mkdir()
        prefix: list[str] = []
        if settings.cpu_quota:
            name = f"postern-pgnodes-{os.getpid()}-{tmp.name}-{index + 1}"
            try:
                quota = cpu_quota.CpuQuota(name, settings.cpu_quota)
            except cpu_quota.QuotaError as error:
                raise BenchError(str(error)) from None
            stack.callback(quota.remove)  # (after node.stop: callbacks run last first)
            quotas.append(quota)
            prefix = quota.prefix()
        node = relay.Postern(
            settings.postern_cmd,
            home,
            sink_port,
            settings.upstream_connections,
            workers=settings.workers,
            pin=settings.pin,
            hostname=f"node{index + 1}.bench.postern.test",
            storage_url=url,
            env_extra={"POSTERN_SECRET_KEY": key},
            prefix=prefix,
        )
        stack.callback(node.stop)
        nodes.append(node)
        if index == 0:
            node.wait_ready(deadline)
    for node in nodes[1:]:
        node.wait_ready(deadline)
    return nodes, quotas


def read_cpu(
    nodes: Sequence[relay.Postern], backends: Sequence[int], sink: relay.Sink, pg_root: int | None
) -> Cpu:
    return Cpu(
        postern=[tree_cpu_seconds(node.proc.pid) for node in nodes],
        pg_backends=pids_ticks(backends),
        pg_all=tree_cpu_seconds(pg_root) if pg_root else 0.0,
        children=children_cpu(),
        machine=machine_busy_ticks(),
        sink=tree_cpu_seconds(sink.proc.pid) if sink.proc.pid else 0.0,
    )


def cpu_spent(before: Cpu, after: Cpu, loader_s: float) -> dict[str, float]:
    backends = sum(t - before.pg_backends.get(pid, 0) for pid, t in after.pg_backends.items())
    return {
        "postern": sum(after.postern) - sum(before.postern),
        "postgres_db": backends / CLK_TCK,
        "postgres_all": after.pg_all - before.pg_all,
        "smtp_source": loader_s,
        "sink": after.sink - before.sink,
        "machine": (after.machine - before.machine) / CLK_TCK,
    }


def warm_up(
    settings: Settings,
    database: str,
    tmp: Path,
    ports: Sequence[int],
    sink: relay.Sink,
    stack: contextlib.ExitStack,
    deadline: float,
) -> set[bytes]:
    """`settings.warmup` messages sent and delivered, not measured (connections opened,
    statements prepared and compiled); their Message-IDs. Their delivery records' commits
    and their statements' statistics are in before it returns, and the planner's: an
    ANALYZE of the warmed tables, as autovacuum's would be on any database in service
    for a minute (without one, the new tables look empty to the planner, and the claim
    poller and the event roll-up read them from end to end: 30 and 15 rows a message;
    an ANALYZE of empty tables changes nothing, so `--warmup 0` measures that case)."""
    if not settings.warmup:
        return set()
    warmup = Loads(settings, tmp, settings.warmup, "warmup")
    stack.callback(warmup.kill)
    warmup.start(ports)
    warmup.wait(deadline)
    early, _ = wait_delivered(sink, settings.warmup, deadline)
    settings.pg.psql("ANALYZE", database)
    time.sleep(SETTLE)
    return {record[1] for record in early}


def measure(settings: Settings, count: int, database: str, tmp: Path) -> Measure:
    """`count` nodes on a fresh database, one smtp-source each, until the sink holds all."""
    deadline = time.monotonic() + settings.timeout
    pg = settings.pg
    with contextlib.ExitStack() as stack:
        sink = relay.Sink(IdSinkProtocol)
        stack.callback(sink.close)
        nodes, quotas = start_nodes(
            settings, count, tmp, sink.port, pg.url(database), stack, deadline
        )
        ports = [node.smtp_port for node in nodes]
        warmed = warm_up(settings, database, tmp, ports, sink, stack, deadline)
        backends = pg.backends(database)
        pg_root = postmaster_pid(backends)
        before = read_cpu(nodes, backends, sink, pg_root)
        throttled_before = [quota.throttled() for quota in quotas]
        activity_before = pg.activity(database)
        start = time.time()
        loads = Loads(settings, tmp, settings.messages, "load")
        stack.callback(loads.kill)
        loads.start(ports)
        accepted_at = loads.wait(deadline)
        loader_s = children_cpu() - before.children
        total = settings.warmup + settings.messages  # every Message-ID must arrive once
        records, delivered_at = wait_delivered(sink, total, deadline)
        # The backends again: pools may have opened more during the load.
        after = read_cpu(nodes, pg.backends(database), sink, pg_root)
        throttled = [q.throttled() - t for q, t in zip(quotas, throttled_before, strict=True)]
        time.sleep(SETTLE)
        records = sink.ask("records")  # type: ignore[assignment]
        activity_after = pg.activity(database)
    # Duplicates and missing over every message, the warm-up's too; the rest the load's.
    keys = Counter(record[1] for record in records)
    if b"" in keys:
        raise BenchError(f"{keys[b'']} messages at the sink without a Message-ID")
    measured = [record for record in records if record[1] not in warmed]
    n = settings.messages
    return Measure(
        nodes=count,
        accepted_per_s=n / max(accepted_at - start, 1e-9),
        delivered_per_s=n / max(delivered_at - start, 1e-9),
        duplicates=sum(times - 1 for times in keys.values()),
        missing=total - len(keys),
        node_accepted_per_s=[
            sent / max((end or start) - start, 1e-9)
            for sent, end in zip(loads.messages, loads.ends, strict=True)
        ],
        delivered_by=dict(Counter(r[2].decode(errors="replace") for r in measured)),
        crossed=sum(1 for _w, _k, helo, by in measured if helo != by),
        cpu_s=cpu_spent(before, after, loader_s),
        wall_s=delivered_at - start,
        throttled_s=throttled,
        db_per_message={
            name: (activity_after[name] - activity_before[name]) / n for name in DB_COUNTERS
        },
    )


# --- runs and output ---------------------------------------------------------------------


@dataclass
class Case:
    name: str
    nodes: int
    samples: list[Measure] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def median(self, key: str) -> float | None:
        values = [getattr(m, key) for m in self.samples]
        return statistics.median(values) if values else None

    def cpu_median(self, part: str) -> float | None:
        values = [m.cpu_s[part] for m in self.samples]
        return statistics.median(values) if values else None


def run_all(settings: Settings, databases: Databases) -> list[Case]:
    cases = [Case("one", 1), Case("nodes", settings.nodes)]
    for run in range(settings.runs):
        # Alternate which case goes first, so that neither always meets a warmer machine.
        for case in cases if run % 2 == 0 else list(reversed(cases)):
            label = f"run {run + 1}/{settings.runs} {case.nodes} node(s) x {settings.workers}"
            tmp = Path(tempfile.mkdtemp(prefix="postern-pgnodes-"))
            database = f"postern_pgnodes_{os.getpid()}_{run}_{case.name}"
            try:
                result = measure(settings, case.nodes, databases.new(database), tmp)
            except BenchError as error:
                case.errors.append(f"{label}: {error}")
                print(f"{label}: FAILED: {error}", file=sys.stderr, flush=True)
                continue
            finally:
                if settings.keep:
                    print(f"kept {tmp}", file=sys.stderr)
                else:
                    shutil.rmtree(tmp, ignore_errors=True)
            case.samples.append(result)
            print(f"{label}: {sample_line(result)}", file=sys.stderr, flush=True)
    return cases


def sample_line(m: Measure) -> str:
    cpu = "  ".join(f"{part}={seconds:.1f}s" for part, seconds in m.cpu_s.items())
    by = " ".join(f"{name}={count}" for name, count in sorted(m.delivered_by.items()))
    waited = "/".join(f"{seconds:.1f}" for seconds in m.throttled_s)
    db = " ".join(f"{name}={value:.2f}" for name, value in m.db_per_message.items())
    return (
        f"accepted/s={m.accepted_per_s:.0f} delivered/s={m.delivered_per_s:.0f}"
        f" duplicates={m.duplicates} missing={m.missing} crossed={m.crossed}"
        f" wall={m.wall_s:.1f}s"
        f"  per node acc/s={'/'.join(f'{r:.0f}' for r in m.node_accepted_per_s)}"
        f"  cpu: {cpu}  delivered by: {by}  loadavg={os.getloadavg()[0]:.1f}"
        f"  database per message: {db}"
        + (f"  waited for the quota s={waited}" if m.throttled_s else "")
    )


def ratio(cases: Sequence[Case], key: str) -> float | None:
    one, many = cases[0].median(key), cases[1].median(key)
    return many / one if one and many is not None else None


def fmt(value: float | None, spec: str = "{:.0f}") -> str:
    return "-" if value is None else spec.format(value)


CPU_PARTS = ("postern", "postgres_db", "postgres_all", "smtp_source", "sink", "machine")


def table(cases: Sequence[Case], settings: Settings) -> str:
    how = "median of" if settings.runs > 1 else "runs:"
    out = [
        f"pg_nodes  N={settings.messages} (after {settings.warmup} not measured"
        f"{', and an ANALYZE' if settings.warmup else ': no statistics'})"
        f" C={settings.clients} size={settings.size}"
        f"  workers={settings.workers} per node  upstream connections="
        f"{settings.upstream_connections}  {how} {settings.runs}"
        f"{f'  Postern pinned to CPU {settings.pin}' if settings.pin else ''}"
        f"{_quota_note(settings)}",
        "",
        "| case | acc/s | dlv/s | duplicates | missing | crossed | CPU s: "
        + " | ".join(CPU_PARTS)
        + " | wall s |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * (len(CPU_PARTS) + 1),
    ]
    for case in cases:
        cpu = " | ".join(fmt(case.cpu_median(part), "{:.1f}") for part in CPU_PARTS)
        out.append(
            f"| {case.nodes} node{'s' if case.nodes > 1 else ''} x {settings.workers}"
            f" | {fmt(case.median('accepted_per_s'))} | {fmt(case.median('delivered_per_s'))}"
            f" | {sum(m.duplicates for m in case.samples)}"
            f" | {sum(m.missing for m in case.samples)}"
            f" | {sum(m.crossed for m in case.samples)}"
            f" | {cpu} | {fmt(case.median('wall_s'), '{:.1f}')} |"
        )
    out += [
        "",
        f"ratio {settings.nodes} nodes / 1 node:"
        f"  accepted {fmt(ratio(cases, 'accepted_per_s'), '{:.2f}')}"
        f"  delivered {fmt(ratio(cases, 'delivered_per_s'), '{:.2f}')}",
    ]
    errors = [error for case in cases for error in case.errors]
    if errors:
        out += ["", "failed:"] + [f"  {error}" for error in errors]
    return "\n".join(out)


def _quota_note(settings: Settings) -> str:
    if not settings.cpu_quota:
        return ""
    return f"  each node limited to {settings.cpu_quota:g} CPUs (a cgroup of its own)"


def as_json(cases: Sequence[Case], settings: Settings, machine: str, pg: str) -> str:
    return json.dumps(
        {
            "machine": machine,
            "postgres": pg,
            "settings": {k: v for k, v in asdict(settings).items() if k not in ("pg",)},
            "cases": {
                case.name: {
                    "nodes": case.nodes,
                    "accepted_per_s": case.median("accepted_per_s"),
                    "delivered_per_s": case.median("delivered_per_s"),
                    "duplicates": sum(m.duplicates for m in case.samples),
                    "missing": sum(m.missing for m in case.samples),
                    "cpu_s": {part: case.cpu_median(part) for part in CPU_PARTS},
                    "samples": [asdict(m) for m in case.samples],
                    "errors": case.errors,
                }
                for case in cases
            },
            "ratio_accepted": ratio(cases, "accepted_per_s"),
            "ratio_delivered": ratio(cases, "delivered_per_s"),
        }
    )


# --- command line ------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Postern nodes on one PostgreSQL: scale-out")
    parser.add_argument("--messages", "-n", type=int, default=5000, help="per case (5000)")
    parser.add_argument("--clients", "-c", type=int, default=20, help="smtp-source sessions")
    parser.add_argument("--size", type=int, default=1024, help="smtp-source -l, bytes (1024)")
    parser.add_argument("--nodes", "-k", type=int, default=2, help="nodes of the second case")
    parser.add_argument("--workers", "-w", type=int, default=2, help="[server] workers per node")
    parser.add_argument("--runs", type=int, default=3, help="runs per case; medians reported")
    parser.add_argument(
        "--warmup",
        type=int,
        default=1000,
        help="messages sent and delivered first, not measured (1000)",
    )
    parser.add_argument("--upstream-connections", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per measurement")
    relay.add_postern_cmd(parser)
    parser.add_argument("--pin", metavar="CPUS", help="run the nodes under `taskset -c CPUS`")
    parser.add_argument(
        "--cpu-quota",
        type=float,
        metavar="CPUS",
        help="each node's CPU budget (e.g. 0.4), a cgroup of its own: nodes as if on"
        " machines of their own (root)",
    )
    parser.add_argument("--pg-host", default="127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=5432)
    parser.add_argument("--pg-user", default="postgres")
    parser.add_argument("--keep", action="store_true", help="keep temp dirs (configs, logs)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if min(args.messages, args.clients, args.size, args.nodes, args.workers, args.runs) < 1:
        parser.error("--messages, --clients, --size, --nodes, --workers, --runs must be >= 1")
    if args.warmup < 0 or 0 < args.warmup < args.nodes:
        parser.error("--warmup: 0, or at least one message per node")
    if args.nodes < 2:
        parser.error("--nodes: at least 2 (the first case is one node)")
    if args.clients < args.nodes or args.messages < args.nodes:
        parser.error("--clients and --messages: at least one per node")
    if args.pin and not shutil.which("taskset"):
        parser.error("--pin needs taskset (util-linux)")
    if args.cpu_quota is not None:
        cpus = os.cpu_count() or 1
        if not 0 < args.cpu_quota <= cpus:
            parser.error(f"--cpu-quota: above 0 and at most {cpus} CPUs")
        problem = cpu_quota.check(args.cpu_quota)
        if problem:
            parser.error(f"--cpu-quota: {problem}")
    for name in ("psql", "smtp-source"):
        if not shutil.which(name, path=compare_postfix.TOOL_PATH):
            parser.error(f"{name} not found (postgresql-client, postfix)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings(
        messages=args.messages,
        clients=args.clients,
        size=args.size,
        nodes=args.nodes,
        workers=args.workers,
        runs=args.runs,
        upstream_connections=args.upstream_connections,
        timeout=args.timeout,
        postern_cmd=args.postern_cmd,
        warmup=args.warmup,
        pin=args.pin,
        cpu_quota=args.cpu_quota,
        keep=args.keep,
        pg=Pg(args.pg_host, args.pg_port, args.pg_user),
    )
    try:
        pg_version = settings.pg.version()
    except BenchError as error:
        print(f"pg_nodes: PostgreSQL at {args.pg_host}:{args.pg_port}: {error}", file=sys.stderr)
        return 2
    machine = compare_postfix.machine()
    print(f"{machine}, PostgreSQL {pg_version}", file=sys.stderr)
    load_before = os.getloadavg()[0]
    databases = Databases(settings.pg)
    try:
        cases = run_all(settings, databases)
    finally:
        databases.drop_all()
    if args.json:
        print(as_json(cases, settings, machine, pg_version))
    else:
        print(f"{machine}, PostgreSQL {pg_version}")
        print(
            f"load average (1 min) {load_before:.1f} at the start,"
            f" {os.getloadavg()[0]:.1f} at the end"
        )
        print(table(cases, settings))
    failed = any(case.errors or not case.samples for case in cases)
    duplicated = any(m.duplicates or m.missing for case in cases for m in case.samples)
    return 1 if failed or duplicated else 0


if __name__ == "__main__":
    sys.exit(main())
