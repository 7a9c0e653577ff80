"""UpstreamPool: pooled, reused aiosmtplib sessions to one upstream relay.

A pool keeps up to `max_connections` sessions open and reuses each for many messages, one
transaction after another (RSET after a transaction that did not complete), closing a
session after `idle_timeout` without use or after `max_messages_per_connection` messages.
Every aiosmtplib error is translated here, at one boundary, into either a per-recipient
`DeliveryResult` or `PoolUnavailable` (connect, TLS, AUTH, greeting or whole-transaction
4xx failures: the caller fails over to the next pool of the group and later defers).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from dataclasses import dataclass, field, replace

import aiosmtplib
from aiosmtplib import SMTPConnectError, SMTPException, SMTPHeloError, SMTPResponseException

from gateway import metrics
from gateway.delivery import slowdown
from gateway.delivery.backoff import Backoff, Slots
from gateway.delivery.pipelining import (
    PipelinedSession,
    ProtocolViolation,
    SessionClosed,
    SessionTimeout,
    TransactionReplies,
)
from gateway.errors import DeliveryError
from gateway.message import DeliveryResult, Hop, Outcome, QueuedMessage
from gateway.security.hostguard import HostGuard, HostRefused, HostUnresolved

log = logging.getLogger("postern.upstream")


@dataclass(frozen=True)
class PoolSettings:
    id: str
    name: str
    host: str
    port: int
    username: str = ""
    password: str = field(default="", repr=False)  # no log or traceback prints it
    # tls (STARTTLS) | ssl (implicit TLS) | none | opportunistic (STARTTLS when offered,
    # certificate unchecked: what MX hosts get, as RFC 3207 deployments expect)
    encryption: str = "tls"
    ip_pool: str = "transactional"
    priority: int = 100
    max_connections: int = 10
    is_default: bool = False
    is_active: bool = True
    tls_verify: bool = True
    rate: str = ""  # "100/min": sends per rolling window across nodes (gateway.delivery.throttle)
    daily_limit: int = 0  # sends per UTC day across nodes; 0 = none
    # "pool" (an SMTP pool), or "account": a connected account's own SMTP server, which
    # routing pins mail to and never lists among the pools (gateway.routing)
    source: str = "pool"


@dataclass(frozen=True)
class SessionSettings:
    """What every pool shares: our EHLO name, the delivery timeouts, the SSRF guard."""

    local_hostname: str
    connect_timeout: float = 30.0
    command_timeout: float = 300.0
    idle_timeout: float = 60.0
    max_messages_per_connection: int = 1000
    # COOLDOWN and BACKOFF (gateway.delivery.slowdown): the first pause of a failing pool
    # (doubling, at most 5 minutes); how long a throttling reply (421, 4.7.x) halves
    # concurrency.
    cooldown: float = 10.0
    backoff: float = 60.0
    # Where a connection may go: resolved once, checked, connected to the checked address.
    guard: HostGuard = field(default_factory=HostGuard)


@dataclass(frozen=True)
class PoolHealth:
    """What a pool remembers of its failures, for an operator to read (the dashboard)."""

    failures: int  # in a row, since the last success
    cooling_until: float | None  # wall clock; None when not cooling down
    last_error: str  # the last failure of the pool itself ("" when none since it loaded)
    failed_at: float | None  # wall clock of that failure


class _StaleSession(DeliveryError):
    """A reused session turned out to be closed before anything was sent on it."""


class PoolUnavailable(DeliveryError):
    """This pool cannot take the message now; try the next pool, else defer."""

    def __init__(self, result: DeliveryResult) -> None:
        super().__init__(result.describe())
        self.result = result


def classify(code: int | None, message: str) -> DeliveryResult:
    """One SMTP reply -> outcome. Anything not clearly permanent is deferred."""
    message = readable(message)
    enhanced, _, text = message.partition(" ")
    if not _is_enhanced(enhanced):
        enhanced, text = "", message
    if code is not None and 200 <= code < 300:
        return DeliveryResult(Outcome.DELIVERED, code, enhanced or None, text)
    if code is not None and 500 <= code < 600:
        return DeliveryResult(Outcome.BOUNCED, code, enhanced or None, text)
    return DeliveryResult(Outcome.DEFERRED, code, enhanced or None, text)


def _is_enhanced(token: str) -> bool:
    parts = token.split(".")
    return (
        len(parts) == 3
        and parts[0] in ("2", "4", "5")
        and all(p.isdigit() and 1 <= len(p) <= 3 for p in parts[1:])
    )


def readable(text: str) -> str:
    """A peer's text as storable UTF-8: aiosmtplib decodes a reply's bytes with
    surrogateescape, and a lone surrogate cannot be stored (the driver refuses it: the
    attempt's record would fail at every retry). Its bytes decoded, U+FFFD for what is not
    UTF-8."""
    if text.isascii():
        return text
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate not of surrogateescape's range
        raw = text.encode("utf-8", "replace")
    return raw.decode("utf-8", "replace")


def deferred(text: str, enhanced: str = "4.4.1") -> DeliveryResult:
    return DeliveryResult(Outcome.DEFERRED, None, enhanced, text)


@dataclass(eq=False)  # by identity: kept in a set while busy
class _Session:
    pipe: PipelinedSession
    extensions: frozenset[str]  # EHLO keywords, lower-case
    last_used: float
    relay: str = ""  # host[address]:port, for the mail log
    messages: int = 0
    dirty: bool = False  # a transaction was left half-done: RSET before reuse

    @property
    def usable(self) -> bool:
        return not self.pipe.closed


class UpstreamPool:
    def __init__(self, settings: PoolSettings, session: SessionSettings) -> None:
        self.settings = settings
        self._session = session
        self._slots = Slots(settings.max_connections)
        self.backoff = Backoff(self._slots, settings.max_connections, session.backoff)
        self._idle: list[_Session] = []
        self._busy = 0
        self._in_use: set[_Session] = set()  # busy sessions: what a shutdown cuts off
        self._cut_off = False  # shutting down: no session opened or used any more
        self._shown = (0, 0)  # what the gauges hold for this pool
        self._closers: set[asyncio.Task[None]] = set()
        self._closed = False
        self.failures = 0
        self.unhealthy_until = 0.0
        self.failed_at = 0.0  # the last failure (wall clock)
        self.last_error = ""  # what it was: kept after a success, for the dashboard
        labels = {"pool": settings.name}
        self._connect_seconds = metrics.UPSTREAM_CONNECT_SECONDS.labels(**labels)
        self._send_seconds = metrics.UPSTREAM_SEND_SECONDS.labels(**labels)
        self._idle_gauge = metrics.UPSTREAM_CONNECTIONS.labels(pool=settings.name, state="idle")
        self._busy_gauge = metrics.UPSTREAM_CONNECTIONS.labels(pool=settings.name, state="busy")

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def unused(self) -> bool:
        """No session open and nothing to remember (no failures cooling down)."""
        return not self._idle and not self._busy and self.failures == 0

    def healthy(self, now: float) -> bool:
        return now >= self.unhealthy_until

    def health(self, now: float) -> PoolHealth:
        """A read-only copy of the pool's health, as of `now` (wall clock)."""
        cooling = None if self.healthy(now) else self.unhealthy_until
        failed_at = self.failed_at or None
        return PoolHealth(self.failures, cooling, self.last_error, failed_at)

    def forgive(self, asked_at: float) -> None:
        """An operator's retry asked at `asked_at`: forget the failures (and end the
        cool-down) seen before it. A failure since then stands, so the messages of one bulk
        retry cannot each start the count again and hammer an upstream still down."""
        if self.failures and self.failed_at <= asked_at:
            if not self.healthy(time.time()):
                log.info("pool %s: cool-down ended by an operator's retry", self.name)
            self._mark(healthy=True)

    @property
    def concurrency(self) -> int:
        """The connection cap in force: max_connections, or less while backing off."""
        return self._slots.size

    async def send(self, message: QueuedMessage) -> dict[str, DeliveryResult]:
        """Deliver to every pending recipient; raise PoolUnavailable to fail over.

        Each result carries the session's relay and how long connecting and sending took."""
        slots = self._slots
        if not slots.take_now():  # (most sends find a slot free: no coroutine for it)
            await slots.take()
        try:
            started = time.perf_counter()
            session = self._pooled() or await self._opened()
            held: _Session | None = session
            try:
                connected = time.perf_counter()
                try:
                    results = await self._send_on(session, message)
                except _StaleSession:
                    # A reused session the upstream had closed meanwhile: one fresh try.
                    self._forget(session)
                    held = None
                    held = session = await self._opened()
                    connected = time.perf_counter()
                    results = await self._send_on(session, message)
            except asyncio.CancelledError:
                if held is not None:  # replies may still be owed: never to be reused
                    held.pipe.abort("cancelled")
                raise
            finally:
                if held is not None:
                    self._release(held)
        finally:
            slots.give_back()
        self._mark(healthy=True)
        hop = Hop(session.relay, connected - started, time.perf_counter() - connected)
        return _with_hop(results, hop)

    def _forget(self, session: _Session) -> None:
        session.pipe.close()
        self._busy -= 1
        self._in_use.discard(session)
        self._update_gauges()

    def cut_off(self) -> None:
        """Shutdown's deadline: end every transaction in flight now (the sessions are
        aborted, so each ends as a dropped connection would: a message whose final dot went
        out is a possible duplicate) and open or reuse no session any more."""
        self._cut_off = True
        for session in list(self._in_use):
            session.pipe.abort("cut off at shutdown")

    async def _send_on(
        self, session: _Session, message: QueuedMessage
    ) -> dict[str, DeliveryResult]:
        started = time.perf_counter()
        try:
            results = await self._transaction(session, message)
        except SessionClosed as closed:
            session.pipe.close()
            if isinstance(closed, ProtocolViolation):
                settings = self.settings
                log.warning(
                    "pool %s (%s:%d): %s; connection dropped, attempt deferred",
                    self.name, settings.host, settings.port, closed,
                )  # fmt: skip
            if closed.body_sent:
                # The final dot reached the upstream, which may have taken the message: retry
                # on schedule (a possible duplicate, counted), never at once on another pool.
                metrics.POSSIBLE_DUPLICATES.labels(pool=self.name).inc()
                text = f"{self.name}: {closed} after the end of data"
                reply = replace(deferred(text), possible_duplicate=True)
                return dict.fromkeys(message.recipients, reply)
            raise PoolUnavailable(deferred(f"{self.name}: {closed}")) from None
        self._send_seconds.observe(time.perf_counter() - started)
        session.messages += 1
        session.last_used = time.monotonic()
        return results

    async def _transaction(
        self, session: _Session, message: QueuedMessage
    ) -> dict[str, DeliveryResult]:
        """The message's transaction on `session`, less what needs SMTPUTF8 where the
        upstream lacks it: those recipients (all of them, for such a sender) are refused."""
        options = self._mail_options(session.extensions, message)
        if "SMTPUTF8" in options:
            return await self._mail_rcpt_data(session, message, options, "utf-8")
        if not message.mail_from.isascii():
            return dict.fromkeys(message.recipients, _NEEDS_SMTPUTF8)
        unsendable = {r: _NEEDS_SMTPUTF8 for r in message.recipients if not r.isascii()}
        if not unsendable:
            return await self._mail_rcpt_data(session, message, options, "ascii")
        sendable = [r for r in message.recipients if r.isascii()]
        if not sendable:
            return unsendable
        message = replace(message, recipients=sendable)
        return {**unsendable, **await self._transaction(session, message)}

    async def _mail_rcpt_data(
        self, session: _Session, message: QueuedMessage, options: list[str], encoding: str
    ) -> dict[str, DeliveryResult]:
        """MAIL, RCPT and DATA (after an RSET when the last transaction did not end well) and
        what the replies mean; _StaleSession when a reused session was closed before any
        of it."""
        try:
            if session.dirty:
                await session.pipe.command(b"RSET")
            session.dirty = True
            replies = await session.pipe.transact(
                message.mail_from, message.recipients, message.content, options, encoding
            )
        except SessionClosed as closed:
            # A reused session the upstream had closed meanwhile, and nothing of the message
            # went out: safe to try once more on a fresh session straight away (not after a
            # timeout or a broken reply: that upstream is slow or hostile, not stale).
            broken = isinstance(closed, SessionTimeout | ProtocolViolation)
            stale = not closed.body_sent and not broken
            if session.messages and stale:
                raise _StaleSession from None
            raise
        session.dirty = replies.final is None or not replies.final.positive
        return self._interpret(message, replies)

    def _interpret(
        self, message: QueuedMessage, replies: TransactionReplies
    ) -> dict[str, DeliveryResult]:
        """The replies of one transaction -> a result per recipient (or PoolUnavailable)."""
        mail = classify(replies.mail.code, replies.mail.text)
        if mail.outcome is not Outcome.DELIVERED and _our_fault(mail):
            # The upstream refuses us, not the message (AUTH needed, bad credentials,
            # throttling): never bounce mail for it; fail over and let the pool cool down.
            self._mark(healthy=False, reason=mail.describe())
            raise PoolUnavailable(
                DeliveryResult(Outcome.DEFERRED, mail.code, mail.enhanced, mail.text)
            )
        if mail.outcome is Outcome.BOUNCED:
            return dict.fromkeys(message.recipients, mail)
        if mail.outcome is Outcome.DEFERRED:
            self._mark(healthy=False, reason=mail.describe())
            raise PoolUnavailable(mail)
        results = {r: classify(reply.code, reply.text) for r, reply in replies.rcpts.items()}
        accepted = [r for r, result in results.items() if result.outcome is Outcome.DELIVERED]
        if not accepted:
            return results
        ending = replies.final or replies.data
        if ending is None:  # cannot happen: DATA is always sent when someone was accepted
            return {**results, **dict.fromkeys(accepted, deferred("no reply to DATA"))}
        outcome = classify(ending.code, ending.text)
        if outcome.outcome is Outcome.DEFERRED and len(accepted) == len(results):
            raise PoolUnavailable(outcome)  # the whole transaction failed: try another pool
        return {**results, **dict.fromkeys(accepted, outcome)}

    @staticmethod
    def _mail_options(extensions: frozenset[str], message: QueuedMessage) -> list[str]:
        options = []
        if "size" in extensions:
            options.append(f"SIZE={len(message.content)}")
        if "8bitmime" in extensions and not message.content.isascii():
            options.append("BODY=8BITMIME")
        addresses = [message.mail_from, *message.recipients]
        if "smtputf8" in extensions and not all(a.isascii() for a in addresses):
            options.append("SMTPUTF8")
        return options

    # --- sessions ---------------------------------------------------------------------

    def _pooled(self) -> _Session | None:
        """An idle session still fit for use, taken; None when there is none."""
        if self._cut_off:
            raise PoolUnavailable(deferred(f"{self.name}: shutting down"))
        now = time.monotonic()
        while self._idle:
            session = self._idle.pop()
            if self._fresh(session, now):
                return self._take(session)
            self._closing(session)
        return None

    async def _opened(self) -> _Session:
        """A new session, taken."""
        if self._cut_off:
            raise PoolUnavailable(deferred(f"{self.name}: shutting down"))
        session = await self._connect()
        if self._cut_off:  # connected just as the shutdown cut off: nothing sent yet
            self._closing(session)
            raise PoolUnavailable(deferred(f"{self.name}: shutting down"))
        return self._take(session)

    def _take(self, session: _Session) -> _Session:
        self._busy += 1
        self._in_use.add(session)
        self._update_gauges()
        return session

    def _release(self, session: _Session) -> None:
        self._busy -= 1
        self._in_use.discard(session)
        reusable = (
            session.usable
            and not self._closed
            and session.messages < self._session.max_messages_per_connection
        )
        if reusable:
            self._idle.append(session)
        else:
            self._closing(session)
        self._update_gauges()

    def _closing(self, session: _Session) -> None:
        """Close in the background (QUIT is polite but must not hold up a worker)."""
        task = asyncio.get_running_loop().create_task(self._close(session))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def _connect(self) -> _Session:
        settings = self.settings
        started = time.perf_counter()
        try:
            client = await self._open(_START_TLS.get(settings.encryption, False))
        except _CONNECT_ERRORS as error:
            if settings.encryption != "opportunistic" or not _tls_failure(error):
                raise self._unavailable(error) from None
            # STARTTLS refused or its handshake failed: an MX host still gets the mail in
            # plain text, as Postfix's "may" level does (RFC 3207 §4.1 leaves it to us).
            try:
                client = await self._open(False)
            except _CONNECT_ERRORS as plain_error:
                raise self._unavailable(plain_error) from None
        try:
            pipe = PipelinedSession.take_over(client, self._session.command_timeout)
        except SessionClosed as closed:
            self._mark(healthy=False, reason=str(closed))
            raise PoolUnavailable(deferred(f"{self.name}: {closed}")) from None
        self._connect_seconds.observe(time.perf_counter() - started)
        now = time.monotonic()
        extensions = frozenset(client.esmtp_extensions)
        return _Session(pipe, extensions, last_used=now, relay=self._relay(client))

    def _relay(self, client: aiosmtplib.SMTP) -> str:
        """`host[address]:port` of the session (the address asyncio noted at connect)."""
        transport = client.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        if not peer:
            return f"{self.settings.host}:{self.settings.port}"
        return f"{self.settings.host}[{peer[0]}]:{peer[1]}"

    async def _open(self, start_tls: bool | None) -> aiosmtplib.SMTP:
        """A connected, greeted (and per settings: TLS, AUTH) aiosmtplib session, on a socket
        the guard connected to an address it checked (TLS verifies the host name)."""
        settings = self.settings
        sock = await self._session.guard.connect(
            settings.host, settings.port, self._session.connect_timeout
        )
        try:
            client = self._client(sock, start_tls)
        except BaseException:
            sock.close()
            raise
        try:
            await client.connect(timeout=self._session.connect_timeout)
            if client.is_ehlo_or_helo_needed:  # connect() greets only for STARTTLS/AUTH
                await self._greet(client)
        except BaseException:
            client.close()  # the transport owns the socket from connect() on
            raise
        return client

    def _client(self, sock: socket.socket, start_tls: bool | None) -> aiosmtplib.SMTP:
        settings = self.settings
        return aiosmtplib.SMTP(
            hostname=settings.host.strip("[]"),  # TLS: SNI and the certificate's name
            sock=sock,
            local_hostname=self._session.local_hostname,
            timeout=self._session.command_timeout,
            use_tls=settings.encryption == "ssl",
            start_tls=start_tls,
            validate_certs=settings.tls_verify and settings.encryption != "opportunistic",
            username=settings.username or None,
            password=(settings.password or None) if settings.username else None,
        )

    def _unavailable(self, error: BaseException) -> PoolUnavailable:
        """A failed connect: counted against the pool, and the deferral to fail over with."""
        refusal = self._refusal(error)
        self._mark(healthy=False, reason=refusal.describe())
        return PoolUnavailable(refusal)

    def _refusal(self, error: BaseException) -> DeliveryResult:
        """A failed connect as a deferral, keeping a 4xx reply's code and enhanced status
        (a 421 greeting is a throttling signal: gateway.delivery.backoff)."""
        if isinstance(error, HostRefused):  # the SSRF guard: worth an operator's look
            log.warning("pool %s: not connecting: %s", self.name, error)
        if isinstance(error, SMTPResponseException) and 400 <= error.code < 500:
            reply = classify(error.code, error.message.replace("\r", " ").replace("\n", " "))
            text = f"{self.name}: {reply.text}"[:300]
            return DeliveryResult(Outcome.DEFERRED, error.code, reply.enhanced or "4.4.1", text)
        return deferred(f"{self.name}: {_describe(error)}")

    @staticmethod
    async def _greet(client: aiosmtplib.SMTP) -> None:
        try:
            await client.ehlo()
        except SMTPHeloError:
            await client.helo()  # an old server without ESMTP: no pipelining, no SIZE

    async def _close(self, session: _Session) -> None:
        await session.pipe.quit()

    async def reap_idle(self) -> None:
        """Close sessions idle for longer than idle_timeout."""
        now = time.monotonic()
        # Decide and detach without awaiting: workers take and return sessions meanwhile.
        expired = [s for s in self._idle if not self._fresh(s, now)]
        self._idle = [s for s in self._idle if self._fresh(s, now)]
        self._update_gauges()
        await asyncio.gather(*(self._close(s) for s in expired))

    def _fresh(self, session: _Session, now: float) -> bool:
        return session.usable and now - session.last_used < self._session.idle_timeout

    async def close(self) -> None:
        self._closed = True
        self.backoff.restore()  # no timer left behind
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._close(s) for s in idle), return_exceptions=True)
        self._update_gauges()

    # --- health -----------------------------------------------------------------------

    def _mark(self, healthy: bool, reason: str = "") -> None:
        """Count a success (the pool is healthy again) or a failure of the pool itself: after
        a few in a row it cools down, set aside for a while (COOLDOWN of
        gateway.delivery.slowdown; a throttling reply narrows it instead: BACKOFF)."""
        if healthy:
            self.failures = 0
            self.unhealthy_until = 0.0
            return
        self.failures += 1
        self.failed_at = time.time()
        self.last_error = reason[:300]
        cooldown = slowdown.cooldown(self.failures, self._session.cooldown)
        if cooldown is not None:
            self.unhealthy_until = self.failed_at + cooldown
            log.warning(
                "pool %s unhealthy after %d failures; cool-down %.0fs",
                self.name,
                self.failures,
                cooldown,
            )

    def _update_gauges(self) -> None:
        # By difference, not by value: several pools may share a label (direct MX hosts,
        # a pool being replaced by a reload), and each adds only its own sessions.
        idle, busy = len(self._idle), self._busy
        self._idle_gauge.inc(idle - self._shown[0])
        self._busy_gauge.inc(busy - self._shown[1])
        self._shown = (idle, busy)


_START_TLS: dict[str, bool | None] = {"tls": True, "opportunistic": None}
# What opening a session can fail with: the guard's refusal, the network, the server.
_CONNECT_ERRORS = (HostRefused, HostUnresolved, SMTPException, OSError)
_NEEDS_SMTPUTF8 = DeliveryResult(
    Outcome.BOUNCED, 553, "5.6.7", "non-ASCII address and the upstream lacks SMTPUTF8"
)


def _with_hop(results: dict[str, DeliveryResult], hop: Hop) -> dict[str, DeliveryResult]:
    """Each result with `hop` (recipients sharing a result share its copy)."""
    copies: dict[int, DeliveryResult] = {}
    stamped = {}
    for rcpt, result in results.items():
        copy = copies.get(id(result))
        if copy is None:
            copy = copies[id(result)] = _hopped(result, hop)
        stamped[rcpt] = copy
    return stamped


def _hopped(result: DeliveryResult, hop: Hop) -> DeliveryResult:
    """`replace(result, hop=hop)` for a fifth of its cost (it walks the fields, then
    __init__ sets each through object.__setattr__): a copy of the instance's dict, as
    DeliveryResult has no __post_init__ to run. Every attempt's results go through here."""
    copy = object.__new__(type(result))
    vars(copy).update(vars(result), hop=hop)
    return copy


def _our_fault(result: DeliveryResult) -> bool:
    """A refusal of our session rather than of the message (RFC 4954, RFC 3463 X.7.0/X.7.8)."""
    return result.code in (421, 450, 454, 530, 535) or result.enhanced in ("5.7.0", "5.7.8")


def _tls_failure(error: BaseException) -> bool:
    """STARTTLS refused (454) or its handshake failed; not a host that cannot be reached,
    nor one whose replies are garbage (too long, malformed: code -1)."""
    if isinstance(error, ssl.SSLError):
        return True
    return (
        isinstance(error, SMTPResponseException)
        and not isinstance(error, SMTPConnectError)
        and error.code >= 0
    )


def _describe(error: BaseException) -> str:
    if isinstance(error, SMTPResponseException):
        code = f"{error.code} " if error.code >= 0 else ""  # -1: aiosmtplib's own complaint
        return readable(f"{code}{error.message}")
    text = readable(str(error) or error.__class__.__name__)
    return text.replace("\r", " ").replace("\n", " ")[:300]
