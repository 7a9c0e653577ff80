"""The README's first command, proved on the installed wheel: run with the Python of a venv
that holds a non-editable install of Postern (and nothing from the checkout on its path).

From an empty folder it starts `postern serve` with no config at all (the Quick start) and
checks /healthz, then follows "A first send": a config with a pool at a local aiosmtpd sink,
`postern domains add example.com --verified`, one message over SMTP to the sink, and the
dashboard's sign-in page with the htmx it loads (templates and static files are package
data: a wheel without them serves no page); each serve is stopped with SIGTERM, which must
exit 0. A module missing from the wheel makes
`postern` die at start and this script fail. Every wait is bounded.

    python .ci/install_check.py /path/to/venv/bin/postern
"""

from __future__ import annotations

import re
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from email.message import EmailMessage
from pathlib import Path

from aiosmtpd.controller import Controller

START_TIMEOUT = 30.0
RELAY_TIMEOUT = 30.0
EXIT_TIMEOUT = 30.0


class Collect:
    """An aiosmtpd handler that keeps what it is given."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.arrived = threading.Event()

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.received.append(envelope.content)  # type: ignore[attr-defined]
        self.arrived.set()
        return "250 2.0.0 kept"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def healthy(http_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=1) as got:
            return bool(got.status == 200)
    except OSError:
        return False


def start(argv: list[str], cwd: Path, http_port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=None, stderr=None)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"install check: {argv} exited with {proc.returncode} at start-up")
        if healthy(http_port):
            return proc
        time.sleep(0.1)
    proc.kill()
    sys.exit(f"install check: {argv} not healthy within {START_TIMEOUT:.0f}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        status = proc.wait(timeout=EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        sys.exit("install check: postern did not exit within 30s of SIGTERM")
    if status != 0:
        sys.exit(f"install check: postern exited {status} on SIGTERM")


def fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(url, timeout=10) as got:
        return got.status, {k.lower(): v for k, v in got.headers.items()}, got.read()


def dashboard(http_port: int) -> None:
    """The installed package serves the sign-in page, and the htmx it names."""
    base = f"http://127.0.0.1:{http_port}"
    status, headers, body = fetch(f"{base}/login")
    page = body.decode()
    if status != 200 or "<h1>Sign in</h1>" not in page:
        sys.exit(f"install check: /login answered {status} without the sign-in form")
    if "script-src 'self'" not in headers.get("content-security-policy", ""):
        sys.exit("install check: /login has no Content-Security-Policy")
    found = re.search(r'src="(/static/[0-9a-f]+/htmx\.min\.js)"', page)
    if found is None:
        sys.exit("install check: the sign-in page loads no htmx.min.js")
    status, headers, body = fetch(base + found.group(1))
    if status != 200 or b"htmx" not in body[:200] or "immutable" not in headers["cache-control"]:
        sys.exit(f"install check: {found.group(1)} answered {status} without htmx")
    print("install check: the dashboard's sign-in page and htmx.min.js are served")


def quick_start(postern: str, folder: Path) -> None:
    """`postern serve` exactly as the README's Quick start runs it: no config, defaults."""
    if not (port_free(2525) and port_free(8080)):
        sys.exit("install check: 2525 or 8080 is taken, so the Quick start cannot be proved")
    stop(start([postern, "serve"], folder, 8080))
    if not (folder / "var").is_dir():
        sys.exit("install check: the default data_dir ./var was not created")
    print("install check: `postern serve` with the defaults: healthy, SIGTERM exit 0")


def relay_one(postern: str, folder: Path) -> None:
    handler = Collect()
    sink = Controller(handler, hostname="127.0.0.1", port=free_port())
    sink.start()
    try:
        smtp_port, http_port = free_port(), free_port()
        config = folder / "postern.toml"
        config.write_text(
            f'[smtp]\nlisten = ["127.0.0.1:{smtp_port}"]\n'
            f'[http]\nlisten = "127.0.0.1:{http_port}"\n'
            f'[[pools]]\nname = "sink"\nhost = "127.0.0.1"\nport = {sink.port}\n'
            'encryption = "none"\nis_default = true\n'
        )
        # The README's first send: the From domain added as verified (the default policy).
        subprocess.run(
            [postern, "--config", str(config), "domains", "add", "example.com", "--verified"],
            cwd=folder, check=True, stdout=subprocess.DEVNULL, timeout=60,
        )  # fmt: skip
        proc = start([postern, "serve", "--config", str(config)], folder, http_port)
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "app@example.com", "ann@example.org", "hi"
        msg.set_content("installed and relaying\n")
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
            client.send_message(msg)
        if not handler.arrived.wait(RELAY_TIMEOUT):
            proc.kill()
            sys.exit("install check: the message did not reach the sink")
        try:
            dashboard(http_port)
        except BaseException:
            proc.kill()
            raise
        stop(proc)
    finally:
        sink.stop()
    if b"installed and relaying" not in handler.received[0]:
        sys.exit("install check: the sink got something else")
    print("install check: one message relayed through a local sink, SIGTERM exit 0")


def bounce_rules() -> None:
    """Package data ships in the wheel: the bounce rules load from the installed package."""
    from gateway.bounces.rules import shipped  # the installed one: this runs with -P

    print(f"install check: {len(shipped().rules)} bounce rules load from the installed package")


def main() -> None:
    postern = sys.argv[1]
    version = subprocess.run([postern, "--version"], capture_output=True, text=True, check=True)
    print(f"install check: {version.stdout.strip()}")
    bounce_rules()
    with tempfile.TemporaryDirectory(prefix="postern-install-") as empty:
        quick_start(postern, Path(empty))
    with tempfile.TemporaryDirectory(prefix="postern-install-") as empty:
        relay_one(postern, Path(empty))


if __name__ == "__main__":
    main()
