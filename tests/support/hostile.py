"""A hostile SMTP server on loopback: it answers one stage with `250-` lines that never end.

    with HostileSmtp("mail") as hostile:       # or "greeting", "ehlo", "data"
        ... point a pool (or an MX record) at 127.0.0.1:hostile.port ...
        assert hostile.dropped >= 1             # the client hung up on the flood

Until the flooded stage it behaves like a small ESMTP server with PIPELINING: "greeting"
floods instead of the 220, "ehlo" instead of the EHLO reply, "mail" instead of the reply to
MAIL (RCPT and DATA, pipelined behind it, are never answered), "data" after the final dot of
the message. A flood writes continuation lines, paced at `rate` bytes a second, until the
client closes the connection (counted in `dropped`), `limit` bytes went out on it, or the
server stops. With `lines=N` the reply at that stage is long but finite instead (N
continuation lines, then a final one). Raw asyncio streams on a thread of their own; used
by tests/security and by bench/attacks.py (free of pytest).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any, Literal

Stage = Literal["greeting", "ehlo", "mail", "data"]
LINE = b"250-" + b"x" * 60 + b"\r\n"
CHUNK = LINE * 64  # 4 KB a write: under any read buffer, so only a line count stops it
STOP_TIMEOUT = 5.0


class HostileSmtp:
    def __init__(
        self,
        stage: Stage,
        host: str = "127.0.0.1",
        port: int = 0,
        rate: float = 2e6,
        limit: int = 1 << 40,
        lines: int | None = None,
    ) -> None:
        self.stage = stage
        self.host = host
        self.port = port
        # Bytes a second: paced, so that the client keeps up and reads a few KB at a time
        # (a burst larger than its read buffer would trip a byte limit, not a line limit).
        self.rate = rate
        self.limit = limit  # bytes one flood sends at most
        # Set: a long but finite reply instead, `lines` continuation lines and a final one,
        # and the session goes on.
        self.lines = lines
        self.connections = 0
        self.floods = 0  # connections that reached the flooded stage
        self.dropped = 0  # floods the client ended by closing the connection
        self.flood_bytes = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._stopping = False

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> HostileSmtp:
        ready = threading.Event()

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            self._server = loop.run_until_complete(
                asyncio.start_server(self._session, self.host, self.port)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="hostile-smtp", daemon=True)
        self._thread.start()
        if not ready.wait(STOP_TIMEOUT):
            raise RuntimeError("the hostile server did not start")
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shut() -> None:
            assert self._server is not None
            self._stopping = True
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shut(), loop).result(STOP_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(STOP_TIMEOUT)
        self._loop = self._thread = None

    def __enter__(self) -> HostileSmtp:
        return self.start()

    def __exit__(self, *_exc: Any) -> None:
        self.stop()

    # --- one session ------------------------------------------------------------------

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            await self._converse(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.stage == "greeting":
            return await self._flood(reader, writer)
        writer.write(b"220 hostile.test ESMTP\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                if self.stage == "ehlo" and self.lines is None:
                    return await self._flood(reader, writer)
                writer.write(self._long("ehlo"))
                writer.write(b"250-hostile.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            elif verb == b"MAIL":
                if self.stage == "mail" and self.lines is None:
                    return await self._flood(reader, writer)
                writer.write(self._long("mail") + b"250 2.1.0 ok\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                while (body := await reader.readline()) and body != b".\r\n":
                    pass
                if self.stage == "data" and self.lines is None:
                    return await self._flood(reader, writer)
                writer.write(self._long("data") + b"250 2.0.0 queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                return None
            else:  # RCPT, RSET, NOOP
                writer.write(b"250 2.0.0 ok\r\n")
            await writer.drain()
        return None

    def _long(self, stage: Stage) -> bytes:
        """The continuation lines of a long finite reply at `stage` (else nothing)."""
        return LINE * self.lines if self.stage == stage and self.lines is not None else b""

    async def _flood(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.floods += 1
        sent = 0
        closed = asyncio.ensure_future(_closed(reader))
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            while sent < self.limit and not closed.done():
                writer.write(CHUNK)
                sent += len(CHUNK)
                self.flood_bytes += len(CHUNK)
                await writer.drain()
                await asyncio.sleep(max(0.0, started + sent / self.rate - loop.time()))
        except ConnectionError:
            pass
        finally:
            if not closed.done():
                await asyncio.sleep(0.05)  # a close on the way is still the client's
            if not self._stopping and (closed.done() or writer.transport.is_closing()):
                self.dropped += 1
            closed.cancel()


async def _closed(reader: asyncio.StreamReader) -> None:
    """Returns when the client closed its side (what it still sends is ignored)."""
    while await reader.read(65536):
        pass
