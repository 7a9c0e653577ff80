"""aiosmtpd's command loop, without the per-line cost of logging that is off.

aiosmtpd 1.4.6's `SMTP._handle_client` logs every command line twice (`sanitized_log` at
DEBUG and INFO: a list, a regex match for an AUTH secret and two logger calls per line)
on its `mail.log` logger, which gateway.process.logs keeps at WARNING: about 40 Python
calls a message for nothing, on the event loop. `CommandLoop._handle_client` is its loop
line for line, with those calls made only when the level is on (still sanitized), and each
command noted as it starts (`_command`: what a refusal is logged with) without a wrapper
coroutine per command.

It follows the configuration PosternSMTP gives aiosmtpd: no PROXY protocol, no per-command
call limit, SMTPUTF8 on (aiosmtpd's branches for the others are left out; a test checks
that configuration). tests/unit/test_smtp_commands.py pins the upstream source it follows:
an aiosmtpd upgrade that changes it fails there, to be read and carried over.
"""

from __future__ import annotations

import asyncio
import logging

from aiosmtpd.smtp import (
    ALLOWED_BEFORE_STARTTLS,
    BOGUS_LIMIT,
    SMTP,
    Envelope,
    TLSSetupException,
    sanitized_log,
)

# aiosmtpd's logger (its module's `log`): its warnings go through the same filters.
_LOG = logging.getLogger("mail.log")
BETWEEN_COMMANDS = ("UNKNOWN", None, None)  # aiosmtpd answers a line that is no command
# Replies held back go out once they pass this (as Postfix's 4 KiB stream buffer): a
# client pipelining thousands of commands answered 250 (a recipient named again) would
# otherwise have them gathered by copying an ever longer buffer, on the event loop.
HELD_LIMIT = 4096


class CommandLoop(SMTP):
    """aiosmtpd's SMTP with its command loop as described above."""

    # The command under way, its argument and the envelope as it started (aiosmtpd renews
    # the envelope before its reply to the final dot): a refusal is logged with them.
    _command: tuple[str, str | None, Envelope | None] = ("CONNECT", None, None)
    _held = b""  # replies held back (_write_reply)

    async def _handle_client(self) -> None:
        assert self.session is not None
        _LOG.info("%r handling connection", self.session.peer)
        await self.push(f"220 {self.hostname} {self.__ident__}")
        bogus_budget = BOGUS_LIMIT
        while self.transport is not None:
            try:
                try:
                    line = await self._reader.readuntil()
                except asyncio.LimitOverrunError as error:
                    await self._skip_long_line(error.consumed)
                    await self.push("500 Command line too long")
                    continue
                chatty = _LOG.isEnabledFor(logging.INFO)  # DEBUG is off when INFO is
                if chatty:
                    sanitized_log(_LOG.debug, "_handle_client readline: %r", line)
                line = line.rstrip(b"\r\n")
                if chatty:
                    sanitized_log(_LOG.info, "%r >> %r", self.session.peer, line)
                if not line:
                    await self.push("500 Error: bad syntax")
                    continue
                command_bytes, _, arg_bytes = line.partition(b" ")
                try:
                    command = command_bytes.upper().decode(encoding="ascii")
                except UnicodeDecodeError:
                    await self.push("500 Error: bad syntax")
                    continue
                arg: str | None = None
                if arg_bytes:  # surrogateescape: the original bytes can be had back
                    arg = str(arg_bytes.strip(), encoding="utf-8", errors="surrogateescape")
                refusal = self._refusal_of(command, line)
                if refusal is not None:
                    await self.push(refusal)
                    continue
                method = self._smtp_methods.get(command)
                if method is None:
                    _LOG.warning("%r unrecognised: %s", self.session.peer, command)
                    bogus_budget -= 1
                    if bogus_budget < 1:
                        _LOG.warning("%r too many bogus commands", self.session.peer)
                        await self.push("502 5.5.1 Too many unrecognized commands, goodbye.")
                        self.transport.close()
                        continue
                    await self.push(f'500 Error: command "{command}" not recognized')
                    continue
                self._reset_timeout()  # a valid command
                self._command = (command, arg, self.envelope)
                await method(arg)
                self._command = BETWEEN_COMMANDS  # not after an error: the 451 is logged with it
            except (asyncio.CancelledError, ConnectionResetError):
                # The connection was lost (during DATA, say).
                _LOG.info("%r Connection lost during _handle_client()", self.session.peer)
                self._writer.close()
                raise
            except Exception as error:
                await self._answer_error(error)

    def _write_reply(self, status: str | bytes, hold: bool = False) -> bool:
        """aiosmtpd's push up to its drain (PosternSMTP.push awaits that): the reply
        written, and logged if DEBUG is on. With `hold`, kept to go out with the next reply
        written (RFC 2920 §3.2: one write, not one per reply of a pipelined group); returns
        whether it was written."""
        response = status.encode() if isinstance(status, str) else status  # SMTPUTF8 is on
        if _LOG.isEnabledFor(logging.DEBUG):
            assert self.session is not None
            _LOG.debug("%r << %r", self.session.peer, response)
        if hold and len(self._held) < HELD_LIMIT:
            self._held += response + b"\r\n"
            return False
        self._writer.write(self._held + response + b"\r\n" if self._held else response + b"\r\n")
        self._held = b""
        return True

    def _write_held(self) -> None:
        """Write the replies held back, before anything is written past push."""
        if self._held:
            self._writer.write(self._held)
            self._held = b""

    def _next_command_here(self) -> bool:
        """Whether a whole command line of the client's is read already: the loop answers it
        at once, without waiting for the client (which waits for no reply before it)."""
        return b"\n" in self._reader._buffer  # type: ignore[attr-defined]

    async def _skip_long_line(self, consumed: int) -> None:
        """Read the rest of a line over the stream's limit, up to its end."""
        await self._reader.read(consumed)
        while True:
            try:
                await self._reader.readuntil()
                return
            except asyncio.LimitOverrunError as error:  # longer still
                await self._reader.read(error.consumed)

    def _refusal_of(self, command: str, line: bytes) -> str | None:
        """aiosmtpd's reply refusing a command before its method runs, or None."""
        assert self.session is not None
        if self.session.extended_smtp:
            most = self.command_size_limits[command]
        else:
            most = self.command_size_limit
        if len(line) > most:
            return "500 Command line too long"
        if not self._tls_handshake_okay and command != "QUIT":
            return "554 Command refused due to lack of security"
        if (
            self.require_starttls
            and not self._tls_protocol
            and command not in ALLOWED_BEFORE_STARTTLS
        ):
            return "530 Must issue a STARTTLS command first"  # RFC 3207 §4
        return None

    async def _answer_error(self, error: Exception) -> None:
        """A command raised: the handler's answer (handle_exception), as aiosmtpd gives it."""
        status = "500 Error: Cannot describe error"
        try:
            status = await self.handle_exception(error)
        except Exception as inner_error:
            peer = self.session.peer if self.session is not None else None
            try:
                _LOG.exception("%r Exception in handle_exception()", peer)
                status = f"500 Error: ({inner_error.__class__.__name__}) {inner_error}"
            except Exception:
                pass  # "Cannot describe error"
        finally:
            if isinstance(error, TLSSetupException):
                assert self.transport is not None
                self.transport.close()
                self.connection_lost(error)
            else:
                await self.push(status)
