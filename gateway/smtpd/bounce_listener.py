"""The inbound bounce listener (`[bounces] listen`): where the VERP return path's MX points.

It takes mail for the bounce domain's VERP addresses only (`bounces+TOKEN@domain`), as
Postal's does: any other recipient (the bare `bounces@domain` too) is `550 5.7.1 relaying
denied` at RCPT, so it is never a relay, and nothing it takes is queued for delivery. The
token's signature is checked at RCPT (gateway.bounces.returnpath.ReturnPath.message_of): a
token Postern did not sign (forged, of another installation, mangled) is `550 5.1.1`, so
that nobody can fill the report table through it. The message the token names need not
still be stored (retention may have deleted it): such a report is kept as unmatched.

Each message is handed to the report processing (gateway.reports.Ingest) once per
recipient, with that recipient as the envelope recipient (each is its own report: the dedupe
is per recipient), and `250` is answered only once every hand-over committed; a storage
failure is a `451 4.3.0`, which the sending MTA
retries (the processing's dedupe makes a retry after a partial commit harmless).

The SMTP dialogue is the main door's own protocol (gateway.smtpd.server.PosternSMTP): the
same line and size limits, bare CR/LF and NUL refused, control characters refused in
addresses and EHLO, a connection cap, idle and session timeouts, internal errors a 451. No
AUTH is offered (nothing here is sent on anyone's behalf).
"""

from __future__ import annotations

import logging

from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway import maillog
from gateway.addresses import envelope_problem, has_control
from gateway.bounces.returnpath import ReturnPath
from gateway.bounces.verp import token
from gateway.errors import PosternError, StorageUnavailable
from gateway.reports import LISTENER, Ingest, Source, hand_over
from gateway.smtpd import replies
from gateway.smtpd.auth import AuthThrottle
from gateway.smtpd.data import DataBudget
from gateway.smtpd.hook_names import HookNamesDir
from gateway.smtpd.limits import ListenerLimits
from gateway.smtpd.replies import Reply
from gateway.smtpd.server import NULL_SENDER, PosternSMTP
from storage.keys import KeyStore

log = logging.getLogger("postern.bounces")
RELAY_DENIED = Reply(550, "5.7.1", "relaying denied")
UNKNOWN_TOKEN = Reply(550, "5.1.1", "no such bounce address")
TAKEN = Reply(250, "2.0.0", "OK report received")


def peer(session: Session) -> str:
    return maillog.client(session.peer)


class BounceHandler(HookNamesDir):
    """aiosmtpd handler hooks of the bounce listener."""

    def __init__(self, ingest: Ingest, return_path: ReturnPath, limits: ListenerLimits) -> None:
        self._ingest = ingest
        self._return_path = return_path  # its domain is the one taken, its key checks tokens
        self._verp = return_path.verp
        self._limits = limits
        self.keys: KeyStore | None = None  # nobody logs in here
        self.login_throttle = AuthThrottle(None)  # AUTH is not offered here
        self.sessions: set[PosternSMTP] = set()
        self.data_budget = DataBudget(limits.max_data_in_flight)
        self.submitting = 0  # hand-overs under way (the stop waits for them)

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
        offered = [line for line in responses[:-1] if not line[4:].upper().startswith("AUTH")]
        return [*offered, "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

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
        if address != NULL_SENDER:  # a DSN comes from <>; others (complaints) may not
            problem = envelope_problem(address)
            if problem:
                return replies.BAD_ADDRESS.format(problem=problem)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return replies.OK_SENDER

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        problem = envelope_problem(address)
        if problem:
            return replies.BAD_ADDRESS.format(problem=problem)
        found = token(address, self._verp)
        if found is None:
            return RELAY_DENIED
        if self._return_path.message_of(found) is None:
            log.info("refused a bounce address with a bad token from %s", peer(session))
            return UNKNOWN_TOKEN
        if len(envelope.rcpt_tos) >= self._limits.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        if address not in envelope.rcpt_tos:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(options)
        return replies.OK_RECIPIENT

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""  # canonical, size and lines checked
        self.submitting += 1
        try:
            shared = len(envelope.rcpt_tos) > 1
            for recipient in envelope.rcpt_tos:
                source = Source(kind=LISTENER, envelope_recipient=recipient, shared=shared)
                result = await hand_over(self._ingest, raw, source)
                log.info(
                    "report for <%s> from %s: %s", recipient, peer(session),
                    result.outcome,
                )  # fmt: skip
        except StorageUnavailable as error:
            log.error("could not store a report: %s", error)
            return replies.TEMPORARY
        except PosternError as error:  # the processing refused it: the sender keeps it
            log.error("report refused by the processing: %s", error)
            return replies.TEMPORARY
        finally:
            self.submitting -= 1
        return TAKEN

    async def handle_exception(self, error: Exception) -> str:
        log.error("bounce listener session error: %r", error, exc_info=error)
        return replies.TEMPORARY
