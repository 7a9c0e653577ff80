"""A real IMAP server for tests: Debian's dovecot (`dovecot-imapd`), started by the test with
a config file of its own, its own users (a passwd-file) and maildirs, on loopback only::

    with Dovecot(tmp_path, {"alice@example.test": "secret"}) as imap:
        imap.port    # plain IMAP, STARTTLS offered (a self-signed certificate made here)
        imap.tls_port  # implicit TLS (imaps)
        imap.append("alice@example.test", b"Subject: hi\\r\\n\\r\\nbody\\r\\n")

The server runs in the foreground (`dovecot -F`) as a child of the test and is stopped at
exit. Everything it writes (base_dir, state, log, mail) is under the test's directory, except
when the tests run as root: dovecot's login processes then run as the package's `dovenull`
and mail is accessed as `nobody` (dovecot refuses uid 0 for both), from a folder of its own
under the system's temporary directory, removed at stop. The packaged daemon is never used.
Free of pytest (like sink).
"""

from __future__ import annotations

import contextlib
import grp
import imaplib
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.processes import LOOPBACK, free_port
from tests.support.sink import write_self_signed_cert

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"


REQUIRED = bool(os.environ.get("POSTERN_TEST_IMAP"))  # .ci/run sets it: missing is a failure


def available() -> bool:
    """Whether dovecot is here; with POSTERN_TEST_IMAP set its absence fails the tests that
    need it (at collection) rather than skipping them."""
    if not os.path.exists(DOVECOT) and REQUIRED:
        raise RuntimeError(f"POSTERN_TEST_IMAP is set but {DOVECOT} is missing")
    return os.path.exists(DOVECOT)


class Dovecot:
    def __init__(self, directory: Path, users: dict[str, str]) -> None:
        self.dir = directory
        self.users = dict(users)
        self.host = LOOPBACK
        self.port = free_port()
        self.tls_port = free_port()
        self.config = directory / "dovecot.conf"
        self.log = directory / "dovecot.log"
        self._mail_dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> Dovecot:
        for sub in ("run", "state"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.cert, self.key = write_self_signed_cert(self.dir)
        self._write_passwd()
        self.config.write_text(self._config_text())
        self._process = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            self._wait_listening()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)
        if self._mail_dir is not None:
            shutil.rmtree(self._mail_dir, ignore_errors=True)
            self._mail_dir = None

    def __enter__(self) -> Dovecot:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"dovecot exited at start: {self.log_text()[-2000:]}")
            if all(_answers(self.host, port) for port in (self.port, self.tls_port)):
                return
            time.sleep(0.05)
        raise RuntimeError(f"dovecot did not listen within {START_TIMEOUT}s: {self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    # --- configuration -----------------------------------------------------------------

    def _accounts(self) -> tuple[str, str, str, str, Path]:
        """(login user, internal user, mail user, mail group, mail folder)."""
        me = pwd.getpwuid(os.getuid()).pw_name
        if os.getuid() != 0:
            return me, me, me, grp.getgrgid(os.getgid()).gr_name, self.dir / "mail"
        mail = Path(tempfile.mkdtemp(prefix="postern-imap-"))
        nobody = pwd.getpwnam("nobody")
        os.chown(mail, nobody.pw_uid, nobody.pw_gid)
        self._mail_dir = mail
        return "dovenull", "dovecot", "nobody", grp.getgrgid(nobody.pw_gid).gr_name, mail

    def _write_passwd(self) -> None:
        lines = []
        for user, password in self.users.items():
            if any(c in user + password for c in ":\r\n"):
                raise ValueError("a test user or password may not hold ':' or a line break")
            lines.append(f"{user}:{{PLAIN}}{password}::::::\n")
        (self.dir / "passwd").write_text("".join(lines))

    def _config_text(self) -> str:
        login, internal, mail_user, mail_group, mail = self._accounts()
        mail.mkdir(parents=True, exist_ok=True)
        d = self.dir
        return f"""\
base_dir = {d}/run
state_dir = {d}/state
log_path = {self.log}
instance_name = postern-test-{self.port}
protocols = imap
listen = {self.host}
ssl = yes
ssl_cert = <{self.cert}
ssl_key = <{self.key}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
default_internal_user = {internal}
default_login_user = {login}
mail_location = maildir:{mail}/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {d}/passwd
  default_fields = uid={mail_user} gid={mail_group} home={mail}/%u
}}
service auth {{
  user = {"root" if os.getuid() == 0 else internal}
}}
service imap-login {{
  inet_listener imap {{
    address = {self.host}
    port = {self.port}
  }}
  inet_listener imaps {{
    address = {self.host}
    port = {self.tls_port}
    ssl = yes
  }}
}}
"""

    def set_password(self, user: str, password: str) -> None:
        """Change a user's password, and wait until dovecot takes it (it reads the
        passwd-file again when it sees it changed, not at once)."""
        self.users[user] = password
        self._write_passwd()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with self.client(user):
                    return
            except imaplib.IMAP4.error:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    # --- the tests' own client ---------------------------------------------------------

    def append(self, user: str, message: bytes, mailbox: str = "INBOX") -> None:
        """Put a message in the user's mailbox (IMAP APPEND over implicit TLS)."""
        with self.client(user) as client:
            client.append(mailbox, "", imaplib.Time2Internaldate(time.time()), message)

    @contextlib.contextmanager
    def client(self, user: str) -> Iterator[imaplib.IMAP4_SSL]:
        context = ssl.create_default_context()
        context.load_verify_locations(self.cert)
        client = imaplib.IMAP4_SSL(self.host, self.tls_port, ssl_context=context, timeout=10)
        try:
            client.login(user, self.users[user])
            yield client
        finally:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                client.logout()


def _answers(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0
