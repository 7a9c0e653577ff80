#!/usr/bin/env python3
"""Hostile-upstream attack bench: a real `postern serve` relaying to a server whose reply
never ends (`250-` continuation lines, as fast as Postern reads them).

    python3 bench/attacks.py                      # hostile MX, flood after MAIL, 20 s
    python3 bench/attacks.py --stage data --seconds 30
    python3 bench/attacks.py --via pool           # the same server as an upstream pool

With `--via mx` (the default) Postern has no pool, so mail goes direct to the recipient
domain's MX, which a loopback DNS server points at the hostile server (anyone who owns a
recipient domain can be that server). One message is sent; Postern retries it every second
for `--seconds`, while this script samples Postern's RSS every 100 ms and asks /healthz
every 50 ms (how long the answers take is the event loop's lag). Prints the RSS at start,
peak and end, the /healthz latencies (p50, p99, max; a probe that got no answer within 2 s
counts as a failure), and what the hostile server saw: connections, floods, floods Postern
cut short by closing the connection, MB it sent. Loopback only; nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.dnsserver import DnsServer
from tests.support.hostile import HostileSmtp
from tests.support.processes import free_port, spawn_serve

DOMAIN = "hostile.test"
PROBE_EVERY = 0.05
PROBE_TIMEOUT = 2.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def config(workdir: Path, smtp: int, http: int, hostile: HostileSmtp, dns: DnsServer, via: str,
           command_timeout: str) -> str:  # fmt: skip
    text = f"""\
[server]
hostname = "postern.bench.test"
data_dir = "{workdir / "var"}"

[smtp]
listen = ["127.0.0.1:{smtp}"]

[http]
listen = "127.0.0.1:{http}"

[delivery]
retry_schedule = ["1s"]
command_timeout = "{command_timeout}"
mx_port = {hostile.port}
mx_allow_private = true

[dns]
nameservers = ["{dns.nameserver}"]

[policy]
sender = "any"
"""
    if via == "pool":
        text += f"""
[[pools]]
name = "hostile"
host = "127.0.0.1"
port = {hostile.port}
encryption = "none"
is_default = true
"""
    return text


class Prober(threading.Thread):
    """GET /healthz every PROBE_EVERY seconds; records each answer's latency."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/healthz"
        self.latencies: list[float] = []
        self.failures = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=PROBE_TIMEOUT) as response:
                    ok = response.status == 200
            except (urllib.error.URLError, OSError):
                ok = False
            took = time.monotonic() - started
            if ok:
                self.latencies.append(took)
            else:
                self.failures += 1
            self.done.wait(max(0.0, PROBE_EVERY - took))


def wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"postern exited with {proc.returncode} at start-up")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise SystemExit("postern not healthy within 20 s")


def send(port: int) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("bench.test")
        message = b"From: app@example.com\r\nTo: x@hostile.test\r\nSubject: hi\r\n\r\nhi\r\n"
        client.mail("app@example.com")
        client.rcpt(f"victim@{DOMAIN}")
        code, reply = client.data(message)
        return f"{code} {reply.decode(errors='replace')}"


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def run(args: argparse.Namespace, workdir: Path) -> None:
    with DnsServer() as dns, HostileSmtp(args.stage, rate=args.rate) as hostile:
        dns.add(DOMAIN, "MX", f"10 mx.{DOMAIN}.").add(f"mx.{DOMAIN}", "A", "127.0.0.1")
        smtp, http = free_port(), free_port()
        path = workdir / "postern.toml"
        path.write_text(config(workdir, smtp, http, hostile, dns, args.via, args.command_timeout))
        proc = spawn_serve(path, workdir / "postern.log")
        try:
            wait_healthy(http, proc)
            time.sleep(1.0)  # let start-up settle before the baseline
            start_rss = peak = rss_mb(proc.pid)
            prober = Prober(http)
            prober.start()
            reply = send(smtp)
            deadline = time.monotonic() + args.seconds
            while time.monotonic() < deadline and proc.poll() is None:
                peak = max(peak, rss_mb(proc.pid))
                time.sleep(0.1)
            prober.done.set()
            prober.join(PROBE_TIMEOUT + 1)
            end_rss = rss_mb(proc.pid) if proc.poll() is None else float("nan")
            seen = (hostile.connections, hostile.floods, hostile.dropped, hostile.flood_bytes)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        lat = [x * 1000 for x in prober.latencies]
        log = (workdir / "postern.log").read_text(errors="replace").splitlines()
        results = [line for line in log if "result=" in line]
        print(f"attack  via={args.via} stage={args.stage} seconds={args.seconds:g}")
        print(f"  submit: {reply.strip()}")
        print(f"  rss MB: start={start_rss:.0f} peak={peak:.0f} end={end_rss:.0f}")
        print(
            f"  /healthz every {PROBE_EVERY * 1000:.0f} ms: answered={len(lat)} "
            f"failed={prober.failures} p50={statistics.median(lat) if lat else float('nan'):.1f}ms "
            f"p99={percentile(lat, 0.99):.1f}ms max={max(lat, default=float('nan')):.1f}ms"
        )
        connections, floods, dropped, flood_bytes = seen
        print(
            f"  hostile server: connections={connections} floods={floods} "
            f"dropped_by_postern={dropped} sent={flood_bytes / 1e6:.0f}MB"
        )
        print(f"  attempts logged: {len(results)}; last: {results[-1][-160:] if results else '-'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--via", choices=("mx", "pool"), default="mx")
    parser.add_argument("--stage", choices=("greeting", "ehlo", "mail", "data"), default="mail")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the attack runs")
    parser.add_argument(
        "--rate", type=float, default=2e6, help="bytes/s the hostile server sends (paced)"
    )
    parser.add_argument(
        "--command-timeout", default="5m", help="[delivery] command_timeout (default: 5m)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (config, log)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="postern-attack-"))
    try:
        run(args, workdir)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
