"""SMTP clients for tests: the stdlib client for a whole transaction (`smtp_send`), a raw
client that sends exactly the bytes it is given (`RawClient`), a line-by-line dialogue for
AUTH (`Dialogue`), and the message most relay tests send with the id its 250 names."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import smtplib
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from gateway.smtpd import replies
from tests.support.processes import LOOPBACK
from tests.support.sink import Sink

CLIENT_HELO = "client.test"
READ_TIMEOUT = 5.0
GOOD = b"From: a@x.test\r\nTo: b@y.test\r\nSubject: marker\r\n\r\nthe one intended message\r\n"
SENDER = "app@sender.test"
QUEUED = re.compile(r"^2\.0\.0 .*queued as (msg_[0-9a-f]+)\s*$")


async def smtp_send(
    port: int,
    sender: str,
    recipients: Sequence[str],
    data: bytes,
    *,
    mail_options: Sequence[str] = (),
    timeout: float = 10.0,
    source: str | None = None,
) -> tuple[int, str]:
    """One SMTP transaction with the stdlib client, run in a thread (never on the loop).

    Returns the reply that ended it: DATA's final reply, or the first refusal of MAIL, or
    of RCPT when every recipient was refused. `source`: the loopback address to send from
    (another 127.x address stands for another client).
    """
    bound = (source, 0) if source else None

    def run() -> tuple[int, str]:
        with smtplib.SMTP(
            LOOPBACK, port, local_hostname=CLIENT_HELO, timeout=timeout, source_address=bound
        ) as client:
            client.ehlo()
            code, text = client.mail(sender, list(mail_options))
            if code != 250:
                return code, text.decode()
            refused: tuple[int, bytes] | None = None
            accepted = 0
            for rcpt in recipients:
                code, text = client.rcpt(rcpt)
                if code in (250, 251):
                    accepted += 1
                else:
                    refused = refused or (code, text)
            if not accepted:
                assert refused is not None
                return refused[0], refused[1].decode()
            code, text = client.data(data)
            return code, text.decode()

    return await asyncio.wait_for(asyncio.to_thread(run), timeout=timeout + 5)


# --- the relay tests' message ------------------------------------------------------------


def message(subject: str = "hello", body: bytes = b"Hi there.\r\n") -> bytes:
    return (
        b"From: App <app@sender.test>\r\n"
        b"To: Someone <rcpt@example.test>\r\n"
        b"Subject: " + subject.encode() + b"\r\n"
        b"Message-ID: <" + subject.encode() + b"@sender.test>\r\n"
        b"\r\n" + body
    )


def queued_id(reply: tuple[int, str]) -> str:
    code, text = reply
    assert code == 250, reply
    match = QUEUED.match(text)
    assert match, f"250 reply does not name the message id: {text!r}"
    return match.group(1)


# --- a client that sends exactly the bytes it is given -------------------------------------


@dataclass
class Reply:
    code: int
    lines: list[str]  # text after "NNN-" / "NNN "

    @property
    def text(self) -> str:
        return " ".join(self.lines)

    @property
    def enhanced(self) -> str:
        """The enhanced status code (RFC 3463) of the last line, or ''."""
        token = self.lines[-1].split(" ", 1)[0] if self.lines else ""
        parts = token.split(".")
        ok = len(parts) == 3 and all(part.isdigit() for part in parts)
        return token if ok else ""

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class RawClient:
    """An SMTP client that sends exactly the bytes it is given."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.greeting: Reply | None = None

    @classmethod
    async def connect(cls, port: int, greet: bool = True) -> RawClient:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(LOOPBACK, port), READ_TIMEOUT
        )
        client = cls(reader, writer)
        if greet:
            client.greeting = await client.reply()
        return client

    async def reply(self) -> Reply:
        code, lines = 0, list[str]()
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), READ_TIMEOUT)
            if not raw:
                raise ConnectionError(f"connection closed; reply so far: {code} {lines}")
            assert raw.endswith(b"\r\n"), f"reply line without CRLF: {raw!r}"
            line = raw[:-2].decode("utf-8", "replace")
            code = int(line[:3])
            lines.append(line[4:])
            if line[3:4] != "-":
                return Reply(code, lines)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def command(self, line: bytes | str) -> Reply:
        if isinstance(line, str):
            line = line.encode()
        await self.send(line + b"\r\n")
        return await self.reply()

    async def ehlo(self, name: str = "client.test") -> Reply:
        reply = await self.command(f"EHLO {name}")
        assert reply.code == 250, reply
        return reply

    async def data(self, content: bytes) -> Reply:
        """DATA, then `content` exactly as given, then the final dot (no stuffing)."""
        start = await self.command("DATA")
        assert start.code == 354, start
        await self.send(content + b".\r\n")
        return await self.reply()

    async def transaction(
        self, content: bytes, sender: str = "a@x.test", rcpts: tuple[str, ...] = ("b@y.test",)
    ) -> Reply:
        reply = await self.command(f"MAIL FROM:<{sender}>")
        assert reply.code == 250, reply
        for rcpt in rcpts:
            reply = await self.command(f"RCPT TO:<{rcpt}>")
            assert reply.code == 250, reply
        return await self.data(content)

    async def at_eof(self) -> bool:
        """True once the server has closed the connection."""
        try:
            rest = await asyncio.wait_for(self.reader.read(), READ_TIMEOUT)
        except (TimeoutError, ConnectionError):
            return False
        return rest == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


OpenClient = Callable[..., Awaitable[RawClient]]


async def only_the_marker_arrives(client: RawClient, sink: Sink) -> None:
    """Send a correct message on the same session; it must be accepted and be the only
    message the upstream ever receives."""
    reply = await client.transaction(GOOD)
    assert reply.code == 250, reply
    assert await sink.wait_for_async(1, timeout=5)
    await asyncio.sleep(0.3)  # anything smuggled alongside would be here by now
    assert len(sink.messages) == 1, [m.data for m in sink.messages]
    assert sink.messages[0].data.endswith(GOOD)
    assert sink.dropped_after_data == []


def assert_refused(reply: Reply, expected: replies.Reply) -> None:
    """`reply` has the code and enhanced status of `expected`, one the server sends."""
    assert reply.code == expected.code, str(reply)
    assert reply.enhanced == expected.enhanced, str(reply)


# --- AUTH dialogues --------------------------------------------------------------------------


class Dialogue:
    """An SMTP session driven line by line: say() sends one and returns the (code, text) reply."""

    # what send_message sends after DATA (the final dot included)
    MESSAGE = b"From: app@sender.test\r\nTo: rcpt@example.test\r\nSubject: s\r\n\r\nbody\r\n.\r\n"

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Dialogue:
        reader, writer = await asyncio.open_connection(host, port)
        dialogue = cls(reader, writer)
        assert (await dialogue.reply())[0] == 220
        return dialogue

    async def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = (await asyncio.wait_for(self.reader.readline(), 15)).decode().rstrip()
            lines.append(line[4:])
            if line[3:4] != "-":
                return int(line[:3]), "\n".join(lines)

    async def say(self, line: str | bytes) -> tuple[int, str]:
        data = line if isinstance(line, bytes) else line.encode() + b"\r\n"
        self.writer.write(data)
        await self.writer.drain()
        return await self.reply()

    async def starttls(self) -> None:
        assert (await self.say("STARTTLS"))[0] == 220
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        await self.writer.start_tls(context)

    async def send_message(self, extra_headers: bytes = b"") -> tuple[int, str]:
        for line in ("MAIL FROM:<app@sender.test>", "RCPT TO:<rcpt@example.test>"):
            code, text = await self.say(line)
            if code != 250:
                return code, text
        assert (await self.say("DATA"))[0] == 354
        return await self.say(extra_headers + self.MESSAGE)

    def close(self) -> None:
        self.writer.close()


def plain(secret: str, user: str = "apikey") -> str:
    return "AUTH PLAIN " + base64.b64encode(f"\0{user}\0{secret}".encode()).decode()
