"""Pipelined SMTP transactions (RFC 2920) on a session that aiosmtplib opened.

aiosmtplib sends one command per round trip and cannot pipeline (it drops replies that
arrive before it asks for them). Opening a session (greeting, EHLO, STARTTLS, AUTH) is
where its security fixes live, so it keeps that job; afterwards the transport is handed to
this protocol, which sends MAIL, every RCPT and DATA in one write and the message with its
final dot in a second: two round trips and two writes per message, whatever the number of
recipients. Replies are paired with commands strictly in order; a reply nobody asked for
breaks the session rather than being paired with the next command.

A reply is bounded in lines and in bytes: an upstream (or any MX host: whoever owns a
recipient domain) that keeps sending `250-` continuation lines, or one endless line, gets its
connection dropped (`ProtocolViolation`), and the attempt is deferred like any broken session.
aiosmtplib bounds the replies it reads while opening the session (32 KiB, 8 KiB a line).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import aiosmtplib

from gateway.addresses import breaks_a_command
from gateway.errors import DeliveryError

MAX_REPLY_LINES = 100  # lines of one reply (an EHLO has a dozen; RFC 5321 sets no limit)
MAX_REPLY_BYTES = 32 * 1024  # one reply, all its lines (aiosmtplib's bound too)
_SLICE = 1 << 20  # bytes of a message dot-stuffed at a time


@dataclass(frozen=True)
class UpstreamReply:
    code: int
    text: str

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400


@dataclass(frozen=True)
class TransactionReplies:
    mail: UpstreamReply
    rcpts: dict[str, UpstreamReply]
    data: UpstreamReply | None = None  # the reply to DATA (354), when it was reached
    final: UpstreamReply | None = None  # the reply after the final dot
    body_sent: bool = False  # the final dot went out: a lost reply may mean delivered


class SessionClosed(DeliveryError):
    """The upstream closed the connection, or the session broke; it cannot be reused."""

    def __init__(self, message: str, body_sent: bool = False) -> None:
        super().__init__(message)
        self.body_sent = body_sent


class SessionTimeout(SessionClosed):
    """No reply within the command timeout; the session was closed."""


class ProtocolViolation(SessionClosed):
    """The upstream broke SMTP (a reply too long, malformed or unsolicited); dropped."""


BAD_ADDRESS = UpstreamReply(501, "5.1.3 address contains control characters (not sent)")


def dot_stuff(content: bytes) -> bytes:
    """The DATA payload: CRLF-terminated, leading dots doubled, ending with the final dot."""
    if not content.endswith(b"\r\n"):
        content += b"\r\n"
    return _stuffed(content) + b".\r\n"


def stuffed_slices(content: bytes) -> Iterator[bytes]:
    """dot_stuff(content) in slices of about _SLICE bytes, each cut after a line end."""
    at = 0
    while len(content) - at > _SLICE:
        end = content.rfind(b"\r\n", at, at + _SLICE)
        if end < 0:  # no line end in a megabyte (never in mail we accept): the rest at once
            break
        yield _stuffed(content[at : end + 2])
        at = end + 2
    yield dot_stuff(content[at:])


def _stuffed(lines: bytes) -> bytes:
    """`lines`, from the start of one, with every leading dot doubled (RFC 5321 §4.5.2)."""
    stuffed = lines.replace(b"\r\n.", b"\r\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


def _text(line: bytes) -> str:
    """A reply line's text: after the code and its separator, without the line end."""
    return line[4:].strip(b" \t\r\n").decode("utf-8", "replace")


def _expire(future: asyncio.Future[UpstreamReply]) -> None:
    """A reply not in within the command timeout: its waiter gets TimeoutError. (One
    timer per awaited reply, none for a reply already in: asyncio.wait_for cost a future,
    a callback, a timer and a turn of the loop for each, 4 % of the loop's time at C=10.)"""
    if not future.done():
        future.set_exception(TimeoutError())


class PipelinedSession(asyncio.Protocol):
    def __init__(self, transport: asyncio.Transport, pipelining: bool, timeout: float) -> None:
        self._transport = transport
        self.pipelining = pipelining
        self._timeout = timeout
        self._buffer = bytearray()
        self._lines: list[bytes] = []  # of the reply being read
        self._size = 0  # bytes in _lines
        self._waiters: list[asyncio.Future[UpstreamReply]] = []
        self.closed = False

    @classmethod
    def take_over(cls, client: aiosmtplib.SMTP, timeout: float) -> PipelinedSession:
        """Move an open aiosmtplib session's transport to a pipelining protocol."""
        transport = client.transport
        if transport is None or transport.is_closing():
            raise SessionClosed("the session closed while it was being opened")
        session = cls(
            transport,  # type: ignore[arg-type]
            pipelining=client.supports_extension("pipelining"),
            timeout=timeout,
        )
        transport.set_protocol(session)
        return session

    # --- asyncio.Protocol -------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        buffer = self._buffer
        buffer.extend(data)
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            line = bytes(buffer[start : end + 1])
            start = end + 1
            self._lines.append(line)
            self._size += len(line)
            if line[3:4] != b"-":
                lines, self._lines, self._size = self._lines, [], 0
                self._complete(lines)
                if self.closed:
                    return
            elif len(self._lines) >= MAX_REPLY_LINES:
                break
        del buffer[:start]
        if len(self._lines) >= MAX_REPLY_LINES or self._size + len(buffer) > MAX_REPLY_BYTES:
            self._break(f"reply too long (over {MAX_REPLY_LINES} lines or {MAX_REPLY_BYTES} bytes)")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail_waiters(SessionClosed("the upstream closed the connection"))

    def eof_received(self) -> bool:
        return False  # close our side too

    def _complete(self, lines: list[bytes]) -> None:
        head = lines[0][:3]
        if not (head.isdigit() and head[:1] in b"2345"):  # int() would take "+25" or "2_5"
            self._break("malformed reply")
            return
        code = int(head)
        # Most replies are one line: no generator and join for them.
        text = _text(lines[0]) if len(lines) == 1 else "\n".join(_text(line) for line in lines)
        if not self._waiters:
            self._break(f"unsolicited reply {code}")
            return
        waiter = self._waiters.pop(0)
        if not waiter.done():
            waiter.set_result(UpstreamReply(code, text))

    def _break(self, reason: str) -> None:
        self.close()
        self._fail_waiters(ProtocolViolation(reason))

    def _fail_waiters(self, error: SessionClosed) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)
                waiter.exception()  # retrieved: nobody may await a later one

    # --- commands ---------------------------------------------------------------------

    def _send(self, data: bytes, replies: int) -> list[asyncio.Future[UpstreamReply]]:
        if self.closed or self._transport.is_closing():
            raise SessionClosed("the session is closed")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(replies)]
        self._waiters.extend(futures)
        self._transport.write(data)
        return futures

    async def _reply(
        self, future: asyncio.Future[UpstreamReply], body_sent: bool = False
    ) -> UpstreamReply:
        try:
            if not future.done():  # in a pipelined group, most replies are in already
                expiry = asyncio.get_running_loop().call_later(self._timeout, _expire, future)
                try:
                    # As wait_for did: a cancelled caller cancels the reply's future (its
                    # reply, when it comes, is passed over in order) and a timeout fails it.
                    await future
                finally:
                    expiry.cancel()
            return future.result()
        except TimeoutError:
            self.close()
            raise SessionTimeout("no reply within the command timeout", body_sent) from None
        except SessionClosed as closed:
            raise type(closed)(str(closed), body_sent) from None

    async def command(self, line: bytes) -> UpstreamReply:
        (future,) = self._send(line + b"\r\n", 1)
        return await self._reply(future)

    async def transact(
        self, mail_from: str, rcpts: list[str], content: bytes, options: list[str], encoding: str
    ) -> TransactionReplies:
        """One whole transaction; the caller decides what the replies mean."""
        if breaks_a_command(mail_from):
            return TransactionReplies(BAD_ADDRESS, {})
        sendable = [r for r in rcpts if not breaks_a_command(r)]
        rcpt_replies = {r: BAD_ADDRESS for r in rcpts if r not in sendable}
        params = "".join(" " + option for option in options)
        mail = f"MAIL FROM:<{mail_from}>{params}\r\n".encode(encoding)
        rcpt_lines = [f"RCPT TO:<{r}>\r\n".encode(encoding) for r in sendable]
        if self.pipelining and sendable:
            futures = self._send(mail + b"".join(rcpt_lines) + b"DATA\r\n", len(rcpt_lines) + 2)
            mail_reply = await self._reply(futures[0])
            for rcpt, future in zip(sendable, futures[1:-1], strict=True):
                rcpt_replies[rcpt] = await self._reply(future)
            data_reply = await self._reply(futures[-1])
        else:
            mail_reply = await self.command(mail[:-2])
            if not mail_reply.positive:
                return TransactionReplies(mail_reply, rcpt_replies)
            for rcpt, line in zip(sendable, rcpt_lines, strict=True):
                rcpt_replies[rcpt] = await self.command(line[:-2])
            if not any(reply.positive for reply in rcpt_replies.values()):
                return TransactionReplies(mail_reply, rcpt_replies)
            data_reply = await self.command(b"DATA")
        if data_reply.code != 354:
            return TransactionReplies(mail_reply, rcpt_replies, data_reply)
        accepted = mail_reply.positive and any(r.positive for r in rcpt_replies.values())
        # A server that said 354 with nobody to deliver to gets an empty message, never ours.
        if not accepted:
            (future,) = self._send(b".\r\n", 1)
        elif len(content) <= _SLICE:
            (future,) = self._send(dot_stuff(content), 1)
        else:
            future = await self._send_large(content)
        final = await self._reply(future, body_sent=accepted)
        return TransactionReplies(mail_reply, rcpt_replies, data_reply, final, body_sent=accepted)

    async def _send_large(self, content: bytes) -> asyncio.Future[UpstreamReply]:
        """A large message written a slice at a time, with the event loop free in between:
        stuffing and copying 25 MB at once held it for a third of a second."""
        (future,) = self._send(b"", 1)
        for piece in stuffed_slices(content):
            if self.closed or self._transport.is_closing():
                break  # the reply's future fails with the session
            self._transport.write(piece)
            await asyncio.sleep(0)
        return future

    async def quit(self) -> None:
        """Say goodbye politely (bounded), then close."""
        try:
            if not self.closed:
                (future,) = self._send(b"QUIT\r\n", 1)
                await asyncio.wait_for(future, 5.0)
        except (SessionClosed, TimeoutError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        self.closed = True
        self._transport.close()

    def abort(self, reason: str) -> None:
        """End the session at once, unsent data dropped: whoever waits for a reply gets
        SessionClosed(reason), as if the upstream had hung up."""
        self.closed = True
        self._transport.abort()
        self._fail_waiters(SessionClosed(reason))
