"""A real SMTP server used by the test suite as Postern's "upstream".

`Sink` runs an aiosmtpd server on its own thread and event loop, records what
it receives, and can be told to misbehave at a given stage of the session::

    with Sink() as sink:
        sink.fail("rcpt", "550 5.1.1 no such user", match="bob@example.com")
        sink.drop("eom", times=1)          # read the message, then hang up
        sink.hang("data", seconds=5)       # go silent after DATA
        ...
        assert sink.wait_for(1)
        assert sink.messages[0].rcpt_tos == ["alice@example.com"]

Stages, in session order: "connect" (the greeting), "ehlo" (EHLO or HELO),
"mail", "rcpt", "data" (the reply to the DATA command itself) and "eom" (the
reply after the final dot).  Rejected or dropped messages never appear in
`messages`; a message that was read in full but never acknowledged (dropped or
hung at "eom") is recorded in `dropped_after_data` instead, because a client may
legitimately resend it.  A 421 reply at any stage closes the connection
afterwards, as a real server would.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import ipaddress
import shutil
import ssl
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast, get_args

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

Stage = Literal["connect", "ehlo", "mail", "rcpt", "data", "eom"]
Action = Literal["reply", "drop", "hang"]
TlsMode = Literal["starttls", "implicit"]

STAGES: tuple[str, ...] = get_args(Stage)
SINK_HOSTNAME = "sink.test"
STOP_TIMEOUT = 5.0


@dataclass
class Received:
    """One message the sink accepted (or read in full before dropping)."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes  # exactly as received after dot-unstuffing, CRLF line ends
    peer: Any  # (host, port) of the client
    connection_id: int
    mail_options: list[str] = field(default_factory=list)
    tls: bool = False  # STARTTLS or implicit TLS was in effect
    login: str | None = None  # AUTH user, if the client authenticated
    at: float = field(default_factory=time.time)  # when the final dot was read (wall clock)


@dataclass
class Fault:
    """One entry of the fault table: what to do at `stage`, and how often."""

    stage: str
    action: Action
    reply: str = ""
    seconds: float = 0.0
    times: int | None = None  # None = forever
    match: str | None = None  # address the fault is restricted to

    def applies_to(self, subjects: Iterable[str]) -> bool:
        if self.match is None:
            return True
        wanted = self.match.lower()
        return any(s.lower() == wanted for s in subjects)


class _SinkSMTP(SMTP):
    """aiosmtpd's SMTP protocol, plus connection accounting and the faults that
    the handler hooks cannot express ("connect", "data", dropping, 421)."""

    def __init__(self, sink: Sink, handler: _SinkHandler, **kwargs: Any) -> None:
        with warnings.catch_warnings():
            # "Requiring AUTH while not requiring TLS" - deliberate for a sink.
            warnings.simplefilter("ignore", UserWarning)
            super().__init__(handler, **kwargs)
        self.sink = sink
        self.connection_id = 0
        self.raw_transport: asyncio.Transport | None = None
        # Record every dispatched command verb for assertions.
        self._smtp_methods = {
            verb: self._recorded(verb, method) for verb, method in self._smtp_methods.items()
        }

    def _recorded(self, verb: str, method: Any) -> Any:
        async def run(arg: str | None) -> None:
            self.sink._record_command(self.connection_id, verb)
            await method(arg)

        return run

    # -- connection lifecycle ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called a second time after STARTTLS with the TLS transport.
        if self.raw_transport is None:
            self.raw_transport = cast(asyncio.Transport, transport)
            self.connection_id = self.sink._connection_opened(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.sink._connection_closed(self)
        super().connection_lost(error)

    def abort(self) -> None:
        if self.raw_transport is not None:
            self.raw_transport.abort()

    async def _handle_client(self) -> None:
        reply = await self.inject("connect", [])
        if reply is not None:
            await self.push(reply)
            assert self.transport is not None
            self.transport.close()
            return
        await super()._handle_client()

    async def push(self, status: Any) -> None:
        await super().push(status)
        text = status.decode() if isinstance(status, bytes) else status
        if text.startswith("421") and self.transport is not None:
            self.transport.close()

    async def smtp_DATA(self, arg: str) -> None:
        envelope = self.envelope
        session = self.session
        if envelope and envelope.rcpt_tos and session and session.host_name and not arg:
            subjects = [envelope.mail_from or "", *envelope.rcpt_tos]
            reply = await self.inject("data", subjects)
            if reply is not None:
                await self.push(reply)
                return
        await super().smtp_DATA(arg)

    # -- fault execution ------------------------------------------------------

    async def inject(self, stage: str, subjects: list[str]) -> str | None:
        """Apply the active fault for `stage`, if any.

        Returns the reply to send instead of the normal one, or None to carry on
        normally (no fault, or a hang that ran its course).  A drop never
        returns: the connection is aborted and this task gets cancelled.
        """
        fault = self.sink._take_fault(stage, subjects)
        if fault is None:
            return None
        if fault.action == "hang":
            self.sink._record_hang(stage)
            await asyncio.sleep(fault.seconds)
            return None
        if fault.action == "drop":
            self.abort()
            await self.loop.create_future()  # connection_lost() cancels us
        return fault.reply

    @property
    def uses_tls(self) -> bool:
        return self.sink.tls == "implicit" or self._tls_protocol is not None


class _SinkHandler:
    """aiosmtpd handler hooks: faults for ehlo/mail/rcpt/eom and recording."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_EHLO(
        self,
        server: _SinkSMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        reply = await server.inject("ehlo", [])
        if reply is not None:
            return [reply]
        session.host_name = hostname  # a 5-argument hook must set this itself
        return responses

    async def handle_HELO(
        self, server: _SinkSMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        reply = await server.inject("ehlo", [])
        if reply is not None:
            return reply
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_MAIL(
        self,
        server: _SinkSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        reply = await server.inject("mail", [address])
        if reply is not None:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: _SinkSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = await server.inject("rcpt", [address])
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: _SinkSMTP, session: Session, envelope: Envelope) -> str:
        received = Received(
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            data=envelope.original_content or b"",
            peer=session.peer,
            connection_id=server.connection_id,
            mail_options=list(envelope.mail_options),
            tls=server.uses_tls,
            login=self.sink._login_of(session),
        )
        try:
            reply = await server.inject("eom", [received.mail_from, *received.rcpt_tos])
        except asyncio.CancelledError:
            # Dropped, or hung until the client gave up: the message was read in
            # full but never acknowledged, so the client may send it again.
            self.sink._record(self.sink.dropped_after_data, received)
            raise
        if reply is not None:
            return reply
        self.sink._record(self.sink.messages, received)
        return "250 2.0.0 OK queued"


class Sink:
    """An aiosmtpd server on 127.0.0.1 in a background thread with its own loop."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        auth: tuple[str, str] | None = None,
        tls: TlsMode | None = None,
    ) -> None:
        if tls not in (None, "starttls", "implicit"):
            raise ValueError(f"tls must be None, 'starttls' or 'implicit', not {tls!r}")
        self.host = host
        self.port = port
        self.auth = auth
        self.tls = tls
        self.cert_path: str | None = None
        self.key_path: str | None = None
        if tls is not None:
            certdir = tempfile.mkdtemp(prefix="postern-sink-")
            weakref.finalize(self, shutil.rmtree, certdir, ignore_errors=True)
            self.cert_path, self.key_path = write_self_signed_cert(Path(certdir))

        self.messages: list[Received] = []
        self.dropped_after_data: list[Received] = []
        self.commands: list[tuple[int, str]] = []
        self.hung: list[str] = []  # the stage of every hang begun, in order
        self.auth_logins: list[str] = []
        self.auth_attempts: list[tuple[str, str]] = []  # every (login, password) offered
        self.connections_total = 0
        self.connections_open = 0
        self.max_connections_open = 0

        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._protocols: set[_SinkSMTP] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> Sink:
        """Start serving.  After a stop(), serves again on the same port."""
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="postern-sink", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            future = asyncio.run_coroutine_threadsafe(self._serve(), loop)
            future.result(timeout=STOP_TIMEOUT)
        except BaseException:
            self._stop_loop()
            raise
        return self

    def stop(self) -> None:
        """Stop serving and abort every open client connection.  Idempotent."""
        if self._loop is None:
            return
        try:
            future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
            future.result(timeout=STOP_TIMEOUT)
        finally:
            self._stop_loop()

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        handler = _SinkHandler(self)
        starttls_context = self._server_tls_context() if self.tls == "starttls" else None
        smtp_kwargs: dict[str, Any] = {
            "hostname": SINK_HOSTNAME,  # avoids a socket.getfqdn() per connection
            "enable_SMTPUTF8": True,
            "tls_context": starttls_context,
            "loop": loop,
        }
        if self.auth is not None:
            smtp_kwargs.update(
                auth_required=True,
                auth_require_tls=False,
                authenticator=self._authenticate,
            )
        self._server = await loop.create_server(
            lambda: _SinkSMTP(self, handler, **smtp_kwargs),
            host=self.host,
            port=self.port,
            reuse_address=True,
            ssl=self._server_tls_context() if self.tls == "implicit" else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for protocol in list(self._protocols):
            protocol.abort()
        # connection_lost() callbacks run on the next iterations; bound the wait.
        deadline = time.monotonic() + 1.0
        while self._protocols and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        current = asyncio.current_task()
        leftovers = [t for t in asyncio.all_tasks() if t is not current]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=STOP_TIMEOUT)
        if not thread.is_alive():
            loop.close()
        with self._lock:
            self._protocols.clear()
            self.connections_open = 0

    # -- fault injection ----------------------------------------------------

    def fail(
        self,
        stage: Stage,
        reply: str = "451 4.3.0 try later",
        times: int | None = None,
        match: str | None = None,
    ) -> None:
        """Answer `reply` at `stage` (at "connect": as the greeting, then close).

        `times`: how many times before the fault clears (None = forever).
        `match`: only for this sender (mail), recipient (rcpt), or a message with
        this sender or recipient (data, eom)."""
        if not (len(reply) >= 3 and reply[:3].isdigit() and reply[0] in "2345"):
            raise ValueError(f"reply must start with an SMTP code: {reply!r}")
        self._add_fault(Fault(stage, "reply", reply=reply, times=times, match=match))

    def drop(self, stage: Stage, times: int | None = None, match: str | None = None) -> None:
        """Close the connection abruptly at `stage`, without replying."""
        self._add_fault(Fault(stage, "drop", times=times, match=match))

    def hang(
        self,
        stage: Stage,
        seconds: float = 3600,
        times: int | None = None,
        match: str | None = None,
    ) -> None:
        """Say nothing for `seconds` at `stage`, then carry on normally."""
        self._add_fault(Fault(stage, "hang", seconds=seconds, times=times, match=match))

    def clear(self) -> None:
        """Remove all faults."""
        with self._lock:
            self._faults.clear()

    def _add_fault(self, fault: Fault) -> None:
        if fault.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, not {fault.stage!r}")
        if fault.times is not None and fault.times < 1:
            raise ValueError("times must be None or >= 1")
        if fault.match is not None and fault.stage in ("connect", "ehlo"):
            raise ValueError(f"match makes no sense at stage {fault.stage!r}")
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, stage: str, subjects: list[str]) -> Fault | None:
        """The newest matching fault for `stage`, counting one use of it."""
        with self._lock:
            for fault in reversed(self._faults):
                if fault.stage == stage and fault.applies_to(subjects):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times == 0:
                            self._faults.remove(fault)
                    return fault
        return None

    # -- records --------------------------------------------------------------

    def recipients(self) -> list[str]:
        """All recipients of all accepted messages, in order."""
        with self._lock:
            return [rcpt for message in self.messages for rcpt in message.rcpt_tos]

    def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        """Block until at least `count` messages arrived; False on timeout.

        Do not call this from a coroutine that shares a loop with the client:
        use `await sink.wait_for_async(...)` there."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    async def wait_for_async(self, count: int, timeout: float = 10.0) -> bool:
        """Like wait_for(), without blocking the caller's event loop."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def _record(self, records: list[Received], received: Received) -> None:
        with self._lock:
            records.append(received)

    def _record_hang(self, stage: str) -> None:
        with self._lock:
            self.hung.append(stage)

    def _record_command(self, connection_id: int, verb: str) -> None:
        with self._lock:
            self.commands.append((connection_id, verb))

    def _connection_opened(self, protocol: _SinkSMTP) -> int:
        with self._lock:
            self._protocols.add(protocol)
            self.connections_total += 1
            self.connections_open += 1
            self.max_connections_open = max(self.max_connections_open, self.connections_open)
            return self.connections_total

    def _connection_closed(self, protocol: _SinkSMTP) -> None:
        with self._lock:
            if protocol in self._protocols:
                self._protocols.remove(protocol)
                self.connections_open -= 1

    # -- AUTH and TLS -------------------------------------------------------

    def _authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        assert self.auth is not None
        if isinstance(auth_data, LoginPassword):
            login = auth_data.login.decode("utf-8", "replace")
            password = auth_data.password.decode("utf-8", "replace")
            with self._lock:
                self.auth_attempts.append((login, password))
            if (login, password) == self.auth:
                with self._lock:
                    self.auth_logins.append(login)
                return AuthResult(success=True, auth_data=login)
        # handled=False without a message makes aiosmtpd answer
        # "535 5.7.8 Authentication credentials invalid".
        return AuthResult(success=False, handled=False)

    @staticmethod
    def _login_of(session: Session) -> str | None:
        return session.auth_data if isinstance(session.auth_data, str) else None

    def _server_tls_context(self) -> ssl.SSLContext:
        assert self.cert_path is not None and self.key_path is not None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context


@functools.lru_cache(maxsize=1)
def _self_signed_pem() -> tuple[bytes, bytes]:
    """A self-signed certificate for localhost/127.0.0.1, made once per process."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.DNSName(SINK_HOSTNAME),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


def write_self_signed_cert(directory: Path) -> tuple[str, str]:
    cert_pem, key_pem = _self_signed_pem()
    cert_path, key_path = directory / "sink-cert.pem", directory / "sink-key.pem"
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(key_pem)
    return str(cert_path), str(key_path)
