"""Proof that a connected account's credentials work, before anything is stored: a real IMAP
login and a real SMTP AUTH, each bounded in time, each connecting through the SSRF guard
(gateway.security.hostguard: the name resolved once, every address checked, the socket
connected to a checked address, never to the name again).

    IMAP: connect -> TLS (implicit, or STARTTLS) -> greeting -> LOGIN  (then LOGOUT)
    SMTP: gateway.delivery.probe, the pools' connection test: connect -> greeting -> EHLO
          -> TLS -> AUTH

Security per side: `ssl` (implicit TLS: 993, 465), `starttls` (143, 587 and any other port),
or `none`, which only a loopback host may use (a password in clear never leaves the machine).
A failure is a VerifyFailed naming the side (`imap` | `smtp`) and the stage (`connect`,
`tls`, `greeting`, `login` | `auth`); the server's words are kept only as sanitised printable
text with the password masked. aioimaplib has no STARTTLS of its own: the command is sent
through its protocol and the transport upgraded with asyncio's `loop.start_tls`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aioimaplib import aioimaplib

from gateway.config import is_loopback
from gateway.delivery.probe import ProbeResult, ProbeTarget, mask, printable, probe
from gateway.errors import Refused
from gateway.security.hostguard import HostGuard, HostUnresolved

# aioimaplib logs every line sent and received at DEBUG; its password scrub misses a password
# it had to quote. Nothing of a dialogue with a user's mailbox belongs in Postern's log.
logging.getLogger("aioimaplib").setLevel(logging.WARNING)

IMAP, SMTP = "imap", "smtp"
SSL, STARTTLS, NONE = "ssl", "starttls", "none"
SECURITIES = (SSL, STARTTLS, NONE)
_IMPLICIT = {IMAP: 993, SMTP: 465}
_ENCRYPTION = {SSL: "ssl", STARTTLS: "tls", NONE: "none"}  # probe's words
MAX_TEXT = 200


def default_security(side: str, port: int) -> str:
    """Implicit TLS on the side's TLS port (993, 465), STARTTLS on any other."""
    return SSL if port == _IMPLICIT[side] else STARTTLS


@dataclass(frozen=True)
class Endpoint:
    """One side of an account: where to log in and how."""

    host: str
    port: int
    security: str  # ssl | starttls | none
    username: str
    password: str = field(default="", repr=False)
    tls_verify: bool = True


class VerifyFailed(Refused):
    """The credentials could not be proved: `side` and `stage` say where."""

    def __init__(self, side: str, stage: str, detail: str) -> None:
        self.side, self.stage, self.detail = side, stage, detail
        word = "login" if stage in ("login", "auth") else stage
        super().__init__(f"{side.upper()} {word} failed: {detail}")

    @property
    def code(self) -> str:
        return f"{self.side}_{self.stage}_failed"


class _Stage:
    """The stage a dialogue is at, so a timeout can name it."""

    def __init__(self, side: str) -> None:
        self.side, self.name = side, "connect"

    def failed(self, detail: str) -> VerifyFailed:
        return VerifyFailed(self.side, self.name, detail)


def tls_context(verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not verify:  # the account's owner chose it (a server with a self-signed certificate)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def clear_text_problem(endpoint: Endpoint) -> str | None:
    """Why this endpoint may not be used as asked (None: it may)."""
    if endpoint.security == NONE and not is_loopback(endpoint.host):
        return "a connection without TLS would send the password in clear: only to loopback"
    return None


def server_text(text: str | bytes, endpoint: Endpoint) -> str:
    """The server's words, fit to show: password masked, printable, short."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return printable(mask(text, endpoint.username, endpoint.password), MAX_TEXT)


# --- IMAP ---------------------------------------------------------------------------------------


class _Protocol(aioimaplib.IMAP4ClientProtocol):
    """aioimaplib's protocol, telling a greeting that is not IMAP's (or a connection closed
    before one) at once: its own would fail in a task nobody awaits, log the peer's words,
    and leave the caller waiting out its timeout."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.ended: asyncio.Future[str] = loop.create_future()

    async def welcome(self, command: bytes) -> None:
        try:
            await super().welcome(command)
        except Exception:  # not an IMAP greeting, or its CAPABILITY failed
            self._end("the server did not greet in IMAP")

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._end("the server closed the connection")

    def _end(self, why: str) -> None:
        if not self.ended.done():
            self.ended.set_result(why)


class _GuardedIMAP(aioimaplib.IMAP4):
    """aioimaplib's client on a socket HostGuard connected (it would connect by name)."""

    def __init__(
        self, sock: socket.socket, host: str, context: ssl.SSLContext | None, timeout: float
    ) -> None:
        self._sock = sock
        super().__init__(host=host, port=0, timeout=timeout, ssl_context=context)

    def create_client(  # type: ignore[no-untyped-def]
        self, host: str, port: int, loop, conn_lost_cb=None, ssl_context=None
    ) -> None:
        running = loop if loop is not None else asyncio.get_running_loop()
        self.protocol = _Protocol(running)
        self._client_task = running.create_task(
            running.create_connection(
                lambda: self.protocol,
                sock=self._sock,
                ssl=ssl_context,
                server_hostname=host if ssl_context is not None else None,
            )
        )

    def close_transport(self) -> None:
        transport = self.protocol.transport
        if transport is not None:
            transport.close()
        else:  # never connected: the socket is still ours
            self._sock.close()


async def _connect(
    guard: HostGuard, endpoint: Endpoint, stage: _Stage, timeout: float
) -> socket.socket:
    try:
        return await guard.connect(endpoint.host, endpoint.port, timeout)
    except HostUnresolved as error:
        raise stage.failed(str(error)) from None
    except TimeoutError:
        raise stage.failed(f"no answer from {endpoint.host}:{endpoint.port} in time") from None
    except OSError as error:
        raise stage.failed(str(error)) from None


async def _hello(client: _GuardedIMAP, endpoint: Endpoint, stage: _Stage) -> None:
    stage.name = "tls" if endpoint.security == SSL else "greeting"
    try:
        await client._client_task  # the TCP socket is connected; implicit TLS shakes hands here
    except (ssl.SSLError, ssl.CertificateError) as error:
        raise stage.failed(_tls_text(error)) from None
    except OSError as error:
        raise stage.failed(error.strerror or str(error)) from None
    stage.name = "greeting"
    protocol = client.protocol
    greeted = asyncio.ensure_future(protocol.wait("AUTH|NONAUTH"))
    try:
        await asyncio.wait({greeted, protocol.ended}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        greeted.cancel()
    if protocol.state not in (aioimaplib.AUTH, aioimaplib.NONAUTH):
        raise stage.failed(protocol.ended.result())


async def _starttls(client: _GuardedIMAP, endpoint: Endpoint, stage: _Stage) -> None:
    stage.name = "tls"
    protocol = client.protocol
    if "STARTTLS" not in protocol.capabilities:
        raise stage.failed("the server does not offer STARTTLS")
    command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
    response = await protocol.execute(command)
    if response.result != "OK":
        raise stage.failed(f"STARTTLS refused: {_last_line(response, endpoint)}")
    loop = asyncio.get_running_loop()
    try:
        protocol.transport = await loop.start_tls(
            protocol.transport, protocol, tls_context(endpoint.tls_verify),
            server_hostname=endpoint.host,
        )  # fmt: skip
    except (ssl.SSLError, ssl.CertificateError) as error:
        raise stage.failed(_tls_text(error)) from None
    await protocol.capability()  # what it offers may change once encrypted (RFC 3501 6.2.1)


async def _login(client: _GuardedIMAP, endpoint: Endpoint, stage: _Stage) -> None:
    stage.name = "login"
    if "LOGINDISABLED" in client.protocol.capabilities:
        raise stage.failed("the server does not allow LOGIN on this connection")
    response = await client.login(aioimaplib.quoted(endpoint.username), endpoint.password)
    if response.result != "OK":
        raise stage.failed(f"the server refused the credentials: {_last_line(response, endpoint)}")


@contextlib.asynccontextmanager
async def imap_session(
    endpoint: Endpoint, guard: HostGuard, timeout: float
) -> AsyncIterator[aioimaplib.IMAP4]:
    """A logged-in IMAP client (VerifyFailed otherwise); logged out and closed at exit.
    Every step is bounded by `timeout`; the whole of the login by `timeout` too."""
    stage = _Stage(IMAP)
    problem = clear_text_problem(endpoint)
    if problem:
        raise VerifyFailed(IMAP, "tls", problem)
    client: _GuardedIMAP | None = None
    try:
        async with asyncio.timeout(timeout):
            sock = await _connect(guard, endpoint, stage, timeout)
            context = tls_context(endpoint.tls_verify) if endpoint.security == SSL else None
            client = _GuardedIMAP(sock, endpoint.host, context, timeout)
            await _hello(client, endpoint, stage)
            if endpoint.security == STARTTLS:
                await _starttls(client, endpoint, stage)
            await _login(client, endpoint, stage)
    except TimeoutError:
        _close(client)
        raise stage.failed("no answer in time") from None
    except aioimaplib.AioImapException as error:
        _close(client)
        raise stage.failed(error.__class__.__name__) from None
    except (OSError, EOFError) as error:
        _close(client)
        raise stage.failed(str(error) or error.__class__.__name__) from None
    except BaseException:
        _close(client)
        raise
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.logout(), min(timeout, 5.0))
        _close(client)


def _close(client: _GuardedIMAP | None) -> None:
    if client is not None:
        client.close_transport()


def _last_line(response: aioimaplib.Response, endpoint: Endpoint) -> str:
    lines = [line for line in response.lines if isinstance(line, bytes | bytearray)]
    return server_text(bytes(lines[-1]) if lines else b"", endpoint) or "no reason given"


def _tls_text(error: BaseException) -> str:
    verdict = getattr(error, "verify_message", None)
    if verdict:
        return f"certificate verify failed: {verdict}"
    return str(getattr(error, "reason", None) or error.__class__.__name__)


async def check_imap(endpoint: Endpoint, guard: HostGuard, timeout: float) -> None:
    async with imap_session(endpoint, guard, timeout):
        pass


_NUMBER = {name: re.compile(rf"\[{name} (\d+)\]".encode()) for name in ("UIDVALIDITY", "UIDNEXT")}


async def inbox_state(client: aioimaplib.IMAP4) -> tuple[int | None, int | None]:
    """SELECT INBOX: its (UIDVALIDITY, UIDNEXT), None for what the server did not say."""
    response = await client.select("INBOX")
    if response.result != "OK":
        raise aioimaplib.Error("SELECT INBOX refused")
    found: dict[str, int | None] = {"UIDVALIDITY": None, "UIDNEXT": None}
    for line in response.lines:
        for name, pattern in _NUMBER.items():
            match = pattern.search(bytes(line))
            if match:
                found[name] = int(match.group(1))
    return found["UIDVALIDITY"], found["UIDNEXT"]


# --- SMTP ---------------------------------------------------------------------------------------

_PROBE_STAGES = {"connect": "connect", "ehlo": "greeting", "tls": "tls", "auth": "auth"}


async def check_smtp(endpoint: Endpoint, guard: HostGuard, hostname: str, timeout: float) -> None:
    """A real SMTP AUTH through the pools' connection test (VerifyFailed otherwise)."""
    problem = clear_text_problem(endpoint)
    if problem:
        raise VerifyFailed(SMTP, "tls", problem)
    try:
        addresses = await guard.resolve(endpoint.host, endpoint.port)
    except HostUnresolved as error:
        raise VerifyFailed(SMTP, "connect", str(error)) from None
    target = ProbeTarget(
        host=endpoint.host, port=endpoint.port, encryption=_ENCRYPTION[endpoint.security],
        username=endpoint.username, password=endpoint.password, tls_verify=endpoint.tls_verify,
    )  # fmt: skip
    # Each step within half the bound, so that a server silent at one step is named by it.
    try:
        result = await asyncio.wait_for(
            probe(target, addresses, local_hostname=hostname, timeout=timeout / 2), timeout
        )
    except TimeoutError:
        raise VerifyFailed(SMTP, "connect", "no answer in time") from None
    if not result.success:
        raise VerifyFailed(SMTP, _smtp_stage(result), _smtp_detail(result))


def _smtp_stage(result: ProbeResult) -> str:
    if result.reason in ("tls_failed", "auth_failed"):
        return "tls" if result.reason == "tls_failed" else "auth"
    said = (result.error or "").split(":", 1)[0].split(" ", 1)[0]
    stage = _PROBE_STAGES.get(said, "connect")
    if result.reason in ("not_smtp", "rejected") and stage == "connect":
        return "greeting"  # something answered, but not an SMTP server that takes us
    return stage


def _smtp_detail(result: ProbeResult) -> str:
    """probe's own text after the stage it names (already sanitised, password masked)."""
    text = result.error or result.message
    said, colon, rest = text.partition(": ")
    return rest if colon and said in _PROBE_STAGES else text
