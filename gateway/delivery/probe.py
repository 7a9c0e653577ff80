"""The SMTP connection test of a pool (`POST /api/v1/smtp-pools/{id}/test`).

    connect (to an address HostGuard checked) -> greeting -> EHLO -> STARTTLS or implicit
    TLS, per `encryption` -> AUTH (when a username is set) -> QUIT

One outcome, never an exception: success, or what failed as a `reason`
(connect_failed, not_smtp, rejected, tls_failed, auth_failed, timeout) and the code the
API answers for it (SEED 003): `smtp_connection_error` (the first three),
`smtp_tls_error`, `smtp_auth_error` or `timeout`.

Whoever may edit a pool chooses the host, so what comes back is the peer's word only as a
sanitised SMTP reply (a 2xx-5xx code and printable ASCII, truncated): a service that does
not speak SMTP (an SSH banner, an HTTP page) is `not_smtp` and none of its bytes are
repeated. The password never appears in what is returned, even when a server echoes it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiosmtplib
from aiosmtplib import (
    SMTPException,
    SMTPHeloError,
    SMTPResponseException,
    SMTPServerDisconnected,
)

from gateway.security.hostguard import connect_first

CONNECTION = "smtp_connection_error"
AUTH = "smtp_auth_error"
TLS = "smtp_tls_error"
TIMEOUT = "timeout"

# reason -> the API's code, and the summary it answers
_REASONS = {
    "connect_failed": (CONNECTION, "SMTP connection failed"),
    "not_smtp": (CONNECTION, "SMTP connection failed"),
    "rejected": (CONNECTION, "SMTP connection failed"),
    "tls_failed": (TLS, "SMTP TLS negotiation failed"),
    "auth_failed": (AUTH, "SMTP authentication failed"),
    "timeout": (TIMEOUT, "SMTP server timed out"),
}
MAX_REPLY = 200  # characters of an SMTP reply repeated back


@dataclass(frozen=True)
class ProbeTarget:
    host: str
    port: int
    encryption: str  # tls | ssl | none
    username: str = ""
    password: str = field(default="", repr=False)
    tls_verify: bool = True

    def __repr__(self) -> str:  # never print the password by accident
        return f"ProbeTarget({self.host!r}, {self.port}, {self.encryption!r}, {self.username!r})"


@dataclass(frozen=True)
class ProbeResult:
    success: bool
    message: str
    latency_ms: int
    error: str | None = None  # what failed, in Postern's words, then the sanitised reply
    code: str | None = None  # the API's code (smtp_connection_error, ...)
    reason: str | None = None  # connect_failed | not_smtp | rejected | tls_failed | ...
    reply: str | None = None  # the server's SMTP reply that made it fail, sanitised


class _Failed(Exception):
    def __init__(self, reason: str, detail: str, reply: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.reply = reply


async def probe(
    target: ProbeTarget,
    addresses: Sequence[str],
    *,
    local_hostname: str,
    timeout: float,
) -> ProbeResult:
    """Run the dialogue against the first of `addresses` that accepts a connection."""
    started = time.perf_counter()
    try:
        await asyncio.wait_for(_dialogue(target, addresses, local_hostname, timeout), timeout * 4)
    except _Failed as failure:
        return failed(failure.reason, failure.detail, failure.reply, started)
    except TimeoutError:
        return failed("timeout", "the test took too long", None, started)
    return ProbeResult(True, "SMTP connection successful", _elapsed(started))


def _elapsed(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)


def failed(
    reason: str, detail: str, reply: str | None, started: float | None = None
) -> ProbeResult:
    """The outcome of a failed test; `detail` is Postern's own text, `reply` what
    smtp_reply() made of the server's (password masked, sanitised)."""
    if reply:
        reply = reply[:MAX_REPLY].rstrip()
    text = f"{detail}: {reply}" if reply else detail
    code, summary = _REASONS[reason]
    latency = _elapsed(started) if started is not None else 0
    return ProbeResult(False, summary, latency, printable(text, 500), code, reason, reply)


def printable(text: str, limit: int) -> str:
    """One line of printable ASCII, at most `limit` characters."""
    return "".join(c if " " <= c <= "~" else " " for c in " ".join(text.split()))[:limit]


def smtp_reply(error: BaseException, username: str = "", password: str = "") -> str | None:
    """The server's reply behind `error` when it is a well-formed SMTP reply (2xx-5xx), with
    the password masked in the raw text first: once sanitised (whitespace collapsed,
    non-ASCII blanked) an echo of it would no longer match."""
    if not isinstance(error, SMTPResponseException) or not 200 <= error.code <= 599:
        return None
    text = mask(f"{error.code} {error.message}", username, password)
    return printable(text, 4 * MAX_REPLY).rstrip()


def mask(text: str, username: str, password: str) -> str:
    """`text` with the password, and the base64 forms AUTH LOGIN and AUTH PLAIN send it
    in, replaced by ***."""
    if not password:
        return text
    login = base64.b64encode(password.encode()).decode()
    plain = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
    for secret in sorted({password, login, plain}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


async def _connect(target: ProbeTarget, addresses: Sequence[str], timeout: float) -> socket.socket:
    try:
        return await connect_first(addresses, target.port, timeout)
    except TimeoutError as error:
        raise _Failed("timeout", str(error)) from None
    except OSError as error:
        raise _Failed("connect_failed", str(error)) from None


async def _dialogue(
    target: ProbeTarget, addresses: Sequence[str], local_hostname: str, timeout: float
) -> None:
    sock = await _connect(target, addresses, timeout)
    client = aiosmtplib.SMTP(
        hostname=target.host.strip("[]"),  # for TLS: SNI and the certificate's name
        sock=sock,
        local_hostname=local_hostname,
        timeout=timeout,
        use_tls=target.encryption == "ssl",
        start_tls=False,
        validate_certs=target.tls_verify,
    )
    stage = "connect"
    try:
        await client.connect()
        stage = "ehlo"
        try:
            await client.ehlo()
        except SMTPHeloError:
            await client.helo()
        if target.encryption == "tls":
            stage = "tls"
            if not client.supports_extension("starttls"):
                raise _Failed("tls_failed", "tls: the server does not offer STARTTLS")
            await client.starttls(server_hostname=target.host.strip("[]"))
        if target.username:
            stage = "auth"
            await client.ehlo()
            if not client.supports_extension("auth"):
                raise _Failed("auth_failed", "auth: the server does not offer AUTH")
            await client.login(target.username, target.password)
        stage = "quit"
        with contextlib.suppress(SMTPException, OSError):
            await client.quit()
    except _Failed:
        raise
    except (SMTPException, OSError) as error:
        if stage == "quit":
            return
        raise _classify(error, stage, target) from None
    finally:
        # The transport owns the socket from connect() on (a TLS one may still be saying
        # goodbye): closing the socket here would free its number while still registered.
        client.close()


def _classify(error: BaseException, stage: str, target: ProbeTarget) -> _Failed:
    """What went wrong at `stage`, in Postern's words: nothing the peer sent is kept but a
    well-formed SMTP reply."""
    if isinstance(error, TimeoutError):
        return _Failed("timeout", f"{stage}: no answer in time")
    tls = _tls_error(error)
    if tls is not None:
        return _Failed("tls_failed", f"{stage}: {_tls_text(tls)}")
    reply = smtp_reply(error, target.username, target.password)
    if isinstance(error, SMTPResponseException) and reply is None:
        return _Failed("not_smtp", f"{stage}: the server did not answer in SMTP")
    if stage == "tls":
        return _Failed(
            "tls_failed", "tls: STARTTLS failed" if reply else f"tls: {_local(error)}", reply
        )
    if stage == "auth":
        detail = "the server refused the credentials" if reply else _local(error)
        return _Failed("auth_failed", f"auth: {detail}", reply)
    if reply is not None:
        return _Failed("rejected", f"{stage}: the server refused", reply)
    return _Failed("connect_failed", f"{stage}: {_local(error)}")


def _tls_error(error: BaseException | None) -> ssl.SSLError | ssl.CertificateError | None:
    seen = 0
    while error is not None and seen < 5:
        if isinstance(error, ssl.SSLError | ssl.CertificateError):
            return error
        error = error.__cause__ or error.__context__
        seen += 1
    return None


def _tls_text(error: ssl.SSLError | ssl.CertificateError) -> str:
    """OpenSSL's own words (a reason code, the certificate check's verdict)."""
    verdict = getattr(error, "verify_message", None)
    if verdict:
        return f"certificate verify failed: {verdict}"
    return str(getattr(error, "reason", None) or error.__class__.__name__)


def _local(error: BaseException) -> str:
    """A failure that carries no reply: how the connection ended, in the OS's words."""
    if isinstance(error, SMTPServerDisconnected):
        return "the server closed the connection"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return error.__class__.__name__
