"""The SMTP connection test of a pool (`POST /api/v1/smtp-pools/{id}/test`).

    connect (to an address HostGuard checked) -> greeting -> EHLO -> STARTTLS or implicit
    TLS, per `encryption` -> AUTH (when a username is set) -> QUIT

One outcome, never an exception: success, or the stage that failed as a code the API
answers (SEED 003): `smtp_connection_error` (refused, unreachable, dropped, bad greeting),
`smtp_tls_error` (no STARTTLS offered, handshake or certificate failure),
`smtp_auth_error` (no AUTH offered, credentials refused) or `timeout`. The password never
appears in what is returned, even when a server echoes it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiosmtplib
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPException,
    SMTPHeloError,
    SMTPResponseException,
)

from gateway.hostguard import connect_first

CONNECTION = "smtp_connection_error"
AUTH = "smtp_auth_error"
TLS = "smtp_tls_error"
TIMEOUT = "timeout"

_MESSAGES = {
    CONNECTION: "SMTP connection failed",
    AUTH: "SMTP authentication failed",
    TLS: "SMTP TLS negotiation failed",
    TIMEOUT: "SMTP server timed out",
}


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    encryption: str  # tls | ssl | none
    username: str = ""
    password: str = ""
    tls_verify: bool = True

    def __repr__(self) -> str:  # never print the password by accident
        return f"Target({self.host!r}, {self.port}, {self.encryption!r}, {self.username!r})"


@dataclass(frozen=True)
class ProbeResult:
    success: bool
    message: str
    latency_ms: int
    error: str | None = None
    code: str | None = None


class _Failed(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


async def probe(
    target: Target,
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
        return _result(started, target, failure.code, failure.detail)
    except TimeoutError:
        return _result(started, target, TIMEOUT, "the test took too long")
    return ProbeResult(True, "SMTP connection successful", _elapsed(started))


def _elapsed(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)


def _result(started: float, target: Target, code: str, detail: str) -> ProbeResult:
    text = " ".join(detail.split())[:500]
    if target.password:
        text = text.replace(target.password, "***")
    return ProbeResult(False, _MESSAGES[code], _elapsed(started), text, code)


async def _connect(target: Target, addresses: Sequence[str], timeout: float) -> socket.socket:
    try:
        return await connect_first(addresses, target.port, timeout)
    except TimeoutError as error:
        raise _Failed(TIMEOUT, str(error)) from None
    except OSError as error:
        raise _Failed(CONNECTION, str(error)) from None


async def _dialogue(
    target: Target, addresses: Sequence[str], local_hostname: str, timeout: float
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
                raise _Failed(TLS, "the server does not offer STARTTLS")
            await client.starttls(server_hostname=target.host.strip("[]"))
        if target.username:
            stage = "auth"
            await client.ehlo()
            if not client.supports_extension("auth"):
                raise _Failed(AUTH, "the server does not offer AUTH")
            await client.login(target.username, target.password)
        stage = "quit"
        with contextlib.suppress(SMTPException, OSError):
            await client.quit()
    except _Failed:
        raise
    except (SMTPException, OSError) as error:
        if stage == "quit":
            return
        raise _classify(error, stage) from None
    finally:
        # The transport owns the socket from connect() on (a TLS one may still be saying
        # goodbye): closing the socket here would free its number while still registered.
        client.close()


def _classify(error: BaseException, stage: str) -> _Failed:
    detail = _describe(error)
    if isinstance(error, TimeoutError):
        return _Failed(TIMEOUT, f"{stage}: {detail}")
    if _caused_by_tls(error) or stage == "tls":
        return _Failed(TLS, f"{stage}: {detail}")
    if stage == "auth" or isinstance(error, SMTPAuthenticationError):
        return _Failed(AUTH, detail)
    return _Failed(CONNECTION, f"{stage}: {detail}")


def _caused_by_tls(error: BaseException | None) -> bool:
    seen = 0
    while error is not None and seen < 5:
        if isinstance(error, ssl.SSLError | ssl.CertificateError):
            return True
        error = error.__cause__ or error.__context__
        seen += 1
    return False


def _describe(error: BaseException) -> str:
    if isinstance(error, SMTPResponseException):
        return f"{error.code} {error.message}"
    cause = error.__cause__
    text = str(error) or error.__class__.__name__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text} ({cause})"
    return text
