"""The SMTP door: aiosmtpd protocol plus the checks aiosmtpd leaves to its users.

Protocol only: every decision about the message is Intake's. Every reply sent is a constant
of gateway.smtpd.replies, and an error intake raises is answered through its table; the
detail of an internal error goes to the log, never to the client.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import time
from typing import Any, Protocol

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, syntax

from gateway import maillog, metrics
from gateway.addresses import envelope_problem, has_control
from gateway.config import is_loopback
from gateway.errors import PosternError, StorageFull, StorageUnavailable
from gateway.headers import MAX_HOPS, Cleaned, clean_header, header_size
from gateway.intake.fields import control_problems, sandbox_flag
from gateway.intake.pipeline import Intake
from gateway.intake.request_digest import smtp_digest
from gateway.message import Submission
from gateway.queue.ids import new_id_for
from gateway.security.ratelimit import RateLimiter
from gateway.smtpd import replies
from gateway.smtpd.auth import ApiKeyAuth, AuthThrottle, key_refusal, sender_of
from gateway.smtpd.commands import BETWEEN_COMMANDS, CommandLoop
from gateway.smtpd.data import DataBudget, Transfer, TransferRefusal
from gateway.smtpd.hook_names import HookNamesDir
from gateway.smtpd.limits import ListenerLimits
from storage.auth_failures import AuthFailures
from storage.keys import KeyStore
from storage.writer import Writer

log = logging.getLogger("postern.smtp")

_PLAIN_PATH = re.compile(
    r"<([A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]+@[A-Za-z0-9.\-]+)>[ \t]*(.*)\Z", re.DOTALL
)
_HELO_NAME = re.compile(r"[A-Za-z0-9.\-_]{1,253}|\[[0-9A-Fa-f.:IPv]{1,60}\]")
NULL_SENDER = "<>"  # how aiosmtpd hands over `MAIL FROM:<>` (bounces)
_INLINE_DIGEST = 64 * 1024  # bytes: a larger message's idempotency digest runs in a thread


class SessionHandler(Protocol):
    """What PosternSMTP needs of its handler besides aiosmtpd's hooks: the main door's
    PosternHandler, or the bounce listener's (gateway.smtpd.bounce_listener)."""

    sessions: set[PosternSMTP]
    data_budget: DataBudget
    keys: KeyStore | None
    login_throttle: AuthThrottle


# aiosmtpd's replies that echo what the client sent: a line that is no command may be a
# credential pipelined after a refused AUTH, so the log gets a fixed text instead.
_UNRECOGNISED = re.compile(r'500 5\.5\.2 Error: command "(.*)" not recognized\Z', re.DOTALL)
_ECHOING = (
    (_UNRECOGNISED, "500 5.5.2 Error: command not recognized"),
    (re.compile(r"421 4\.7\.0 .* sent too many times\Z", re.DOTALL), "421 4.7.0 Too many commands"),
    (re.compile(r"502 5\.5\.1 Could not VRFY .*\Z", re.DOTALL), "502 5.5.1 Could not VRFY"),
)
_SHOWN_VERB = 4  # SMTP verbs are four letters; more of an unknown line may be a secret


def shown_verb(command: str) -> str:
    """At most the first few letters of an unknown command, for the log."""
    head = command[:_SHOWN_VERB]
    if len(command) > 12 or not head.isascii() or not head.isalpha():
        return "?"  # no verb is that long: a base64 line, say
    return head + ("…" if len(command) > _SHOWN_VERB else "")


def _hide_echo(record: logging.LogRecord) -> bool:
    """aiosmtpd's own warnings name an unknown command, whole: only its first letters."""
    if (
        record.msg in ("%r unrecognised: %s", "%r over limit for %s")
        and len(record.args or ()) == 2
    ):
        peer, command = record.args  # type: ignore[misc]
        record.args = (peer, shown_verb(str(command)))
    return True


logging.getLogger("mail.log").addFilter(_hide_echo)


class PosternSMTP(HookNamesDir, ApiKeyAuth, CommandLoop):
    """aiosmtpd's SMTP with a 998-byte line limit, a connection cap and enhanced codes;
    every 4xx/5xx it sends is one mail-log line (gateway.maillog)."""

    line_length_limit = 1000  # 998 bytes + CRLF (RFC 5321 §4.5.3.1.6)

    def __init__(self, handler: SessionHandler, limits: ListenerLimits) -> None:
        super().__init__(
            handler,
            hostname=limits.hostname,
            ident="Postern ESMTP",
            data_size_limit=limits.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=limits.idle_timeout,
            tls_context=limits.tls_context,
            require_starttls=False,
            auth_required=limits.require_auth,
            auth_require_tls=True,  # relaxed for loopback peers in connection_made
        )
        self._limits = limits
        self._refused = False
        self._handler = handler
        self._session_ends: float | None = None
        self._idle_ends = 0.0  # the loop's time the session times out at, idle
        self._armed_until = 0.0  # when the timer set for it fires (0: none set)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None  # called again with the TLS transport after STARTTLS
        sessions = self._handler.sessions
        if first and len(sessions) >= self._limits.max_connections:
            self._refused = True
            metrics.CONNECTIONS_REFUSED.labels(door="smtp").inc()
            peer = maillog.client(transport.get_extra_info("peername"))
            maillog.reject("CONNECT", peer, replies.TOO_MANY_CONNECTIONS, "")
            transport.write(replies.TOO_MANY_CONNECTIONS.line)  # type: ignore[attr-defined]
            transport.close()
            return
        if first:
            sessions.add(self)
            metrics.SMTP_SESSIONS.set(len(sessions))
        super().connection_made(transport)
        # AUTH only over TLS, or from loopback (aiosmtpd knows only "TLS always").
        name = self.session.peer if self.session else None
        host = name[0] if isinstance(name, tuple) and name else str(name or "")
        self._auth_require_tls = not is_loopback(host, mapped=True)  # the peer's address

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        self._handler.sessions.discard(self)
        metrics.SMTP_SESSIONS.set(len(self._handler.sessions))
        super().connection_lost(error)

    def _reset_timeout(self, duration: float | None = None) -> None:
        # aiosmtpd restarts its timer at each valid command only (a command trickled a
        # byte at a time times out); the session deadline bounds a client that keeps
        # sending NOOPs, so that nobody holds a connection slot forever.
        # One timer, re-armed only for a deadline earlier than the one it is set for: the
        # timer, when it fires, sets itself again for what is left (a call_later and a
        # cancel for each command were 1.4 % of the event loop's time at C=1).
        now = self.loop.time()
        if self._session_ends is None:
            self._session_ends = now + self._limits.session_timeout
        wait = max(0.001, min(duration or self._timeout_duration, self._session_ends - now))
        self._idle_ends = ends = now + wait
        if self._armed_until and self._armed_until <= ends:
            return  # the timer fires first, and looks at _idle_ends then
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
        self._timeout_handle = self.loop.call_later(wait, self._timer_fired)
        self._armed_until = ends

    def _timer_fired(self) -> None:
        self._armed_until = 0.0
        left = self._idle_ends - self.loop.time()
        if left > 0.0:  # a command came since it was set: wait for what is left
            self._timeout_handle = self.loop.call_later(left, self._timer_fired)
            self._armed_until = self._idle_ends
            return
        self._timeout_cb()

    def _timeout_cb(self) -> None:
        ends = self._session_ends
        if self.transport is not None:  # (a handler awaited I/O) what it answered first
            self._write_held()
        if ends is not None and self.loop.time() >= ends - 0.01 and self.transport is not None:
            self.log_refusal(replies.SESSION_TOO_LONG)
            self.transport.write(replies.SESSION_TOO_LONG.line)  # type: ignore[attr-defined]
        super()._timeout_cb()

    def abort(self) -> None:
        """Drop the client at shutdown (it keeps any message it has not got a 250 for)."""
        if self.transport is not None:
            self.transport.close()

    # aiosmtpd's address parser drops a CR, tab or comment inside <...> before the handler
    # sees the address: look at the raw argument first, so nothing is silently rewritten.
    async def smtp_MAIL(self, arg: str) -> None:
        if arg and has_control(arg):
            await self.push(replies.CONTROL_IN_COMMAND)
            return
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str) -> None:
        if arg and has_control(arg):
            await self.push(replies.CONTROL_IN_COMMAND)
            return
        await super().smtp_RCPT(arg)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # Fast path for the plain `<local@domain>` nearly every client sends: aiosmtpd's
        # RFC 5322 parser costs more than the rest of MAIL/RCPT. Anything else (quotes,
        # comments, `<>`) still goes through it; envelope_problem() checks the result.
        match = _PLAIN_PATH.match(arg)
        if match:
            return match.group(1), match.group(2)
        return super()._getaddr(arg)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, read into one buffer (gateway.smtpd.data) within the budget."""
        if not await self._may_send_data(arg):
            return
        await self.push(replies.START_DATA)
        transfer = Transfer(self._reader, self._limits.max_message_size, self._handler.data_budget)
        status: str
        try:
            if not await transfer.receive():
                return  # the connection is gone
            status = await self._reply_to(transfer)
        except asyncio.CancelledError:  # the connection was lost (as aiosmtpd does)
            self._writer.close()
            raise
        finally:
            transfer.release()
            # Also when the handler raised: aiosmtpd answers 451 then, and the next MAIL
            # on this connection must start a new transaction, not get "503 nested MAIL".
            self._set_post_data_state()
        await self.push(replies.OK if status is MISSING else status)

    async def _may_send_data(self, arg: str) -> bool:
        """Whether the client may send the content now; when not, it has been told why."""
        if not self._greeted_and_authenticated() and (
            await self.check_helo_needed() or await self.check_auth_needed("DATA")
        ):
            return False
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push(replies.NEED_RECIPIENT)
            return False
        if arg:
            await self.push(replies.DATA_SYNTAX)
            return False
        if self._handler.data_budget.full:  # before the 354: no body is sent for nothing
            metrics.MESSAGES_REFUSED.labels(reason="data_budget").inc()
            await self.push(replies.NO_ROOM)
            return False
        return True

    def _greeted_and_authenticated(self) -> bool:
        """Whether aiosmtpd's check_helo_needed and check_auth_needed would both pass: then
        they are not awaited (two coroutines a command)."""
        session = self.session
        assert session is not None
        return bool(session.host_name and (not self._auth_required or session.authenticated))

    async def _reply_to(self, transfer: Transfer) -> Any:
        """The reply to content received whole: its refusal, or the handler's answer."""
        assert self.envelope is not None
        if transfer.refusal is not None:
            status, reason = _REFUSED[transfer.refusal]
            metrics.MESSAGES_REFUSED.labels(reason=reason).inc()
            return status
        if transfer.problem is not None:  # bare CR or LF, NUL: what relaying would alter
            metrics.MESSAGES_REFUSED.labels(reason="bad_content").inc()
            return replies.BAD_CONTENT.format(problem=transfer.problem)
        self.envelope.content = self.envelope.original_content = transfer.content
        return await self._call_handler_hook("DATA")

    async def push(self, status: Any) -> None:
        hold = False
        if isinstance(status, str):
            if type(status) is not replies.Reply:  # ours have their enhanced code
                status = replies.with_enhanced_code(status)
            code = status[:3]
            if code[:1] in ("4", "5") and code != "535":  # failed AUTH: logged where checked
                self._log_refusal_of(status)
            elif code == "354":
                self._command = ("END-OF-DATA", *self._command[1:])
            hold = self._may_hold(status)
        # aiosmtpd's push, but one coroutine for both
        if self._write_reply(status, hold) and self._must_drain():
            await self._writer.drain()

    def _may_hold(self, reply: str) -> bool:
        """Whether `reply` may wait to go out with the next (RFC 2920 §3.2, as Postfix
        does): a line of a multi-line reply (EHLO's), whose last line follows at once, or
        MAIL's or RCPT's 250 while the client's next command is here already (the client
        waits for no reply before it, and the loop answers it at once). Anything else is
        written at once, with what was held before it: 354 before the content is read,
        a refusal, 221 or 421 before the connection closes, the final dot's 250."""
        if reply[3:4] == "-":
            return True
        return (
            reply[:4] == "250 "
            and self._command[0] in ("MAIL", "RCPT")
            and self._next_command_here()
        )

    def _must_drain(self) -> bool:
        """Whether StreamWriter.drain has anything to do: wait for the client to read (we
        are paused), or raise that it is gone. Otherwise it returns at once, and awaiting
        it costs two coroutines a reply (asyncio 3.11's drain and _drain_helper, whose
        source tests/unit/test_smtp_commands.py pins)."""
        transport = self.transport
        return (
            self._paused  # type: ignore[attr-defined]  # asyncio's FlowControlMixin
            or self._connection_lost  # type: ignore[attr-defined]
            or transport is None
            or transport.is_closing()
            or self._reader.exception() is not None
        )

    def _log_refusal_of(self, reply: str) -> None:
        """Log a reply sent, without the client's words where aiosmtpd echoes them."""
        unknown = _UNRECOGNISED.match(reply)
        if unknown:
            self._command = BETWEEN_COMMANDS
            details = f"command={shown_verb(unknown.group(1))}"
            self.log_refusal(_ECHOING[0][1], details)
            return
        for echoing, fixed in _ECHOING[1:]:
            if echoing.match(reply):
                reply = fixed
        self.log_refusal(reply)

    def log_refusal(self, reply: str, details: str = "") -> None:
        """Log a refusal as Postfix's `NOQUEUE: reject` line, with what the client had said
        at that stage: the address it offered at MAIL or RCPT, the envelope after them."""
        stage, arg, envelope = self._command
        envelope = envelope or self.envelope
        sender = envelope.mail_from if envelope is not None else None
        recipients = envelope.rcpt_tos if envelope is not None else []
        if stage == "MAIL":
            sender = _address_in(arg)
        elif stage == "RCPT":
            recipients = [_address_in(arg)]
        session = self.session
        fields = [maillog.envelope("" if sender == NULL_SENDER else sender, recipients), details]
        if session is not None:
            fields.append("proto=ESMTP" if session.extended_smtp else "proto=SMTP")
            if session.host_name:
                fields.append(f"helo=<{session.host_name}>")
            auth = sender_of(session)
            if auth is not None:
                fields.append(f"key={auth.api_key_id}")
        peer = maillog.client(session.peer if session is not None else None)
        maillog.reject(stage, peer, reply, " ".join(field for field in fields if field))


class PosternHandler(HookNamesDir):
    """aiosmtpd handler hooks: envelope checks at each command, intake at end of data."""

    def __init__(
        self,
        intake: Intake,
        limits: ListenerLimits,
        keys: KeyStore | None = None,
        storage: Writer | None = None,
        limiter: RateLimiter | None = None,
        auth_failures: AuthFailures | None = None,
    ) -> None:
        self._intake = intake
        self._limits = limits
        self.keys = keys  # AUTH passwords are API keys; None: nobody can log in
        self._storage = storage  # a disk known to be full refuses at MAIL, not after DATA
        self._limiter = limiter  # per API key, shared with the HTTP API
        # Not `auth_*`: aiosmtpd offers every handler attribute of that name as a mechanism.
        # The failure budgets live in storage (every worker and node counts in them).
        self.login_throttle = AuthThrottle(
            auth_failures, limits.auth_failures_per_address, limits.auth_failures_per_minute
        )
        self.sessions: set[PosternSMTP] = set()
        self.submitting = 0  # end-of-data commits under way
        self.data_budget = DataBudget(limits.max_data_in_flight)
        self._date = (0, "")  # (second, its RFC 5322 date): made once a second, not per message

    def protocol(self) -> PosternSMTP:
        """A protocol factory for loop.create_server."""
        return PosternSMTP(self, self._limits)

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        if has_control(hostname):
            return [replies.BAD_HELO]
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        if has_control(hostname):
            return replies.BAD_HELO
        session.host_name = hostname
        return f"250 {self._limits.hostname}"

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if session.auth_data is not None:
            refusal = await key_refusal(session, self.keys, self._limiter)
            if refusal:  # the key was revoked since AUTH, or is over its rate
                return refusal
        if address != NULL_SENDER:
            problem = envelope_problem(address)
            if problem:
                return replies.BAD_ADDRESS.format(problem=problem)
            refusal = await self._intake.envelope_problem(address, sender_of(session))
            if refusal:  # the sender policy, before the client sends a body for nothing
                return replies.NOT_PERMITTED.format(reason=refusal)
        if self._storage is not None and self._storage.known_full():
            return replies.STORAGE_FULL  # before the client sends the content in vain
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return replies.OK_SENDER

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        problem = envelope_problem(address)
        if problem:
            return replies.BAD_ADDRESS.format(problem=problem)
        if len(envelope.rcpt_tos) >= self._limits.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        if self._intake.suppressed([address]):
            metrics.MESSAGES_SUPPRESSED.inc()
            return replies.SUPPRESSED
        if address not in envelope.rcpt_tos:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(options)
        return replies.OK_RECIPIENT

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""  # canonical, lines checked: smtp_data
        checked = self._checked_header(raw)
        if isinstance(checked, str):
            return checked
        key = checked.controls.get("idempotency-key") or None
        request_hash = None
        if key is not None:
            request_hash = await _digest(
                _mail_from(envelope), envelope.rcpt_tos, checked.controls, checked.content
            )
        return await self._submit(self._submission(session, envelope, checked, request_hash))

    def _checked_header(self, raw: bytes) -> Cleaned | str:
        """The message with our X-Postern-* control fields taken out of its header, or the
        reply refusing it: a header too big, a mail loop, a bad control field value."""
        if header_size(raw) > self._limits.max_header_size:
            metrics.MESSAGES_REFUSED.labels(reason="header_too_big").inc()
            return replies.HEADER_TOO_BIG.format(limit=self._limits.max_header_size)
        cleaned = clean_header(raw)
        if cleaned.hops >= MAX_HOPS:
            metrics.MESSAGES_REFUSED.labels(reason="loop").inc()
            return replies.TOO_MANY_HOPS
        problem = _control_problem(cleaned.controls) if cleaned.controls else None
        if problem:
            return replies.BAD_CONTENT.format(problem=problem)
        return cleaned

    def _submission(
        self, session: Session, envelope: Envelope, cleaned: Cleaned, request_hash: str | None
    ) -> Submission:
        """What intake is given: the envelope, the content behind our Received field (and a
        Date and Message-ID when it had none), and what the control fields asked for."""
        controls = cleaned.controls
        mail_from = _mail_from(envelope)
        sandbox = sandbox_flag(_values(controls, "sandbox")) if controls else False
        message_id = new_id_for(sandbox)
        return Submission(
            mail_from=mail_from,
            recipients=tuple(envelope.rcpt_tos),
            content=self._added(session, envelope, message_id, cleaned) + cleaned.content,
            source="smtp",
            alias_id=controls.get("alias-id") or None,
            idempotency_key=controls.get("idempotency-key") or None,
            request_hash=request_hash,
            sandbox=sandbox,
            tags=_tags(controls) if controls else (),
            sender=sender_of(session),
            message_id=message_id,
            client=maillog.client(session.peer),
            client_address=maillog.client_address(session.peer),
        )

    async def _submit(self, submission: Submission) -> str:
        """Intake's answer to the message, as an SMTP reply."""
        self.submitting += 1
        try:
            accepted = await self._intake.submit(submission)
        except PosternError as error:
            reply = replies.for_error(error)
            if reply is None:
                raise  # a bug: handle_exception answers
            if isinstance(error, StorageFull):
                log.error("could not store a message, no space left: %s", error)
            elif isinstance(error, StorageUnavailable):
                log.error("could not store a message: %s", error)
            return reply
        finally:
            self.submitting -= 1
        # A message split by its recipients' routes is queued as several: all are named.
        return replies.QUEUED.format(message_id=" ".join(accepted.message_ids))

    async def handle_exception(self, error: Exception) -> str:
        log.error("SMTP session error: %r", error, exc_info=error)
        return replies.TEMPORARY

    def _added(
        self, session: Session, envelope: Envelope, message_id: str, cleaned: Cleaned
    ) -> bytes:
        """Our Received field, then the Date and Message-ID the client left out (as Postfix's
        cleanup adds them), ahead of the message: intake signs them with it."""
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        # The EHLO name is the client's word: only a plausible host name or address literal
        # goes into our header, so the line stays short and ASCII whatever it sent.
        name = session.host_name or ""
        helo = name if _HELO_NAME.fullmatch(name) else "invalid-helo"
        hostname = self._limits.hostname
        # Only a sole recipient is named: the others must not learn who else got the mail.
        rcpts = envelope.rcpt_tos
        to = f"\r\n\tfor <{rcpts[0]}>" if len(rcpts) == 1 else ""
        date = self._now()
        fields = (
            f"Received: from {helo} ([{peer}])\r\n\tby {hostname} (Postern)"
            f" with ESMTP id {message_id}{to}; {date}\r\n"
        )
        if not cleaned.has_date:
            fields += f"Date: {date}\r\n"
        if not cleaned.has_message_id:
            fields += f"Message-ID: <{message_id}@{hostname}>\r\n"
        return fields.encode("utf-8", "surrogateescape")

    def _now(self) -> str:
        second = int(time.time())
        if second != self._date[0]:  # UTC; formatdate's "-0000" would mean "zone unknown"
            self._date = (second, email.utils.formatdate(second)[:-5] + "+0000")
        return self._date[1]


def _mail_from(envelope: Envelope) -> str:
    """The envelope sender as intake takes it ("" for the null sender)."""
    return "" if envelope.mail_from == NULL_SENDER else envelope.mail_from or ""


def _address_in(arg: str | None) -> str:
    """The address of a `FROM:<…>` or `TO:<…>` argument, as the client wrote it."""
    path = (arg or "").partition(":")[2].strip()
    if path.startswith("<"):
        return path[1:].partition(">")[0]
    return path.partition(" ")[0]


_CONTROL_HEADERS = {
    "alias_id": "X-Postern-Alias-Id",
    "idempotency_key": "X-Postern-Idempotency-Key",
    "tags": "X-Postern-Tags",
}


async def _digest(
    mail_from: str, recipients: list[str], controls: dict[str, str], content: bytes
) -> str:
    """The idempotency digest; a large message is parsed off the event loop."""
    if len(content) <= _INLINE_DIGEST:
        return smtp_digest(mail_from, recipients, controls, content)
    return await asyncio.to_thread(smtp_digest, mail_from, recipients, controls, content)


def _tags(controls: dict[str, str]) -> tuple[str, ...]:
    """ "a, b" -> ("a", "b"): blanks around each dropped, but not other characters that
    str.strip() would take (U+0085, U+2028: refused, as over HTTP)."""
    tags = (tag.strip(" \t") for tag in controls.get("tags", "").split(","))
    return tuple(tag for tag in tags if tag)


def _values(controls: dict[str, str], name: str) -> list[str]:
    return [controls[name]] if name in controls else []


def _control_problem(controls: dict[str, str]) -> str | None:
    """The X-Postern-* values, checked as the HTTP API checks its fields (gateway.intake.fields)."""
    found = control_problems(
        controls.get("alias-id") or None, controls.get("idempotency-key") or None, _tags(controls)
    )
    if found:
        first = found[0]
        header = _CONTROL_HEADERS[first.field.partition("[")[0]]
        return f"bad {header} ({first.field}: {first.message})"
    try:
        sandbox_flag(_values(controls, "sandbox"))
    except ValueError as error:
        return f"bad X-Postern-Sandbox ({error})"
    return None


# A transfer's refusal -> its reply, and its reason in postern_messages_refused_total
_REFUSED = {
    TransferRefusal.TOO_BIG: (replies.TOO_BIG, "too_big"),
    TransferRefusal.LINE_TOO_LONG: (replies.LINE_TOO_LONG, "line_too_long"),
    TransferRefusal.NO_ROOM: (replies.NO_ROOM, "data_budget"),
}
