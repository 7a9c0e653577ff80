"""A worker's line to its node's writer process (storage.writer_process).

The writer (storage.writer) sends through it each small batch it can (statements and data
alone: `request` compiles them, or says it cannot) and writes the rest itself, under the
same write lock. A request's answer comes once the commit that holds it is on disk.

Losing the process with requests unanswered leaves their outcome unknown: committed, or
not. Failing them would have their callers answer 451 and retry what may already be
stored (a message accepted twice), and retrying them here might write them twice. The
worker is told instead (`on_lost`: serve's worker ends as if it had crashed): what it had
not acknowledged, the client sends again; what it was delivering, a new worker releases
and delivers (as after `kill -9`, which the design is built for). Lost with nothing
unanswered, the worker writes on its own until the line is made again. A request
unanswered for 30-60 s (ANSWER_TIMEOUT: a process hung) counts as the line lost. A request
never sent (still waiting for its loop turn's write when the line broke) committed
nothing: it fails with NotSent, and the writer commits it itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, cast

from sqlalchemy.engine import Dialect
from sqlalchemy.sql import Executable

from storage import dml
from storage.errors import StorageUnavailable
from storage.writer_process import HEADER, MAX_FRAME, Outcome, Report, frame, unframe

log = logging.getLogger("postern.storage.writer")

Row = dict[str, Any]
Request = tuple[bool, Any, list[tuple[str, list[tuple[Any, ...]]]]]  # a request, less its id
RECONNECT_EVERY = 1.0  # seconds between tries to make a lost line again


class NotSent(StorageUnavailable):
    """The line broke before the request was written: nothing of it was committed."""


# Beyond the write lock's wait and SQLite's busy timeout (10 s each) and a slow fsync: the
# process is hung. Checked every ANSWER_TIMEOUT / 2 (an answer 30-60 s late counts).
ANSWER_TIMEOUT = 60.0


class WriterLink:
    def __init__(self, path: str, dialect: Dialect, on_lost: Callable[[int], None]) -> None:
        """`on_lost(unanswered)`: the line was lost with that many requests sent and
        unanswered (in a worker it must not return: their callers would hear
        ConnectionError). `on_report`, when set: each commit's figures this worker tells
        (storage.writer_process's Report)."""
        self._path = path
        self._dialect = dialect
        self._on_lost = on_lost
        self.on_report: Callable[[Report], None] | None = None
        self._protocol: _Line | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self.sent = 0  # requests sent

    @property
    def connected(self) -> bool:
        return self._protocol is not None and not self._protocol.lost

    async def connect(self) -> bool:
        """Make the line; False (logged) when the process cannot be reached."""
        try:
            self._protocol = await self._line()
        except OSError as error:
            log.warning("no line to the writer process (%s): writing here", error)
            return False
        return True

    async def _line(self) -> _Line:
        _, protocol = await asyncio.get_running_loop().create_unix_connection(
            lambda: _Line(self._lost, self._report), self._path
        )
        return protocol

    def request(
        self,
        patient: bool,
        check: tuple[Executable, Row] | None,
        steps: Sequence[tuple[Executable, Row | list[Row]]],
    ) -> Request | None:
        """A batch as the process takes it (SQL text, parameter tuples), or None: write it
        here (a statement storage.dml cannot compile to data)."""
        sent_check = None
        if check is not None:
            found = dml.compiled(self._dialect, check[0], check[1])
            if found is None:
                return None
            sent_check = (found[0], found[1][0])
        sent_steps = []
        for statement, rows in steps:
            found = dml.compiled(self._dialect, statement, rows)
            if found is None:
                return None
            sent_steps.append(found)
        return patient, sent_check, sent_steps

    def call(self, request: Request) -> asyncio.Future[Outcome]:
        """Send `request` (ValueError, nothing sent: not data marshal takes, or a frame
        over MAX_FRAME); the future of its outcome once committed or failed."""
        protocol = self._protocol
        assert protocol is not None and not protocol.lost
        answer = protocol.send(request)
        self.sent += 1
        return answer

    async def close(self) -> None:
        """Once every request sent is answered."""
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        protocol = self._protocol
        if protocol is not None:
            await protocol.drain()
            self._protocol = None
            protocol.close()

    def _report(self, report: Report) -> None:
        if self.on_report is not None:
            self.on_report(report)

    def _lost(self, unanswered: int) -> None:
        if self._protocol is None:  # closed on purpose
            return
        if unanswered:
            self._on_lost(unanswered)
            return
        log.warning("the line to the writer process was lost; writing here until it is back")
        self._protocol = None
        self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        while self._protocol is None:
            await asyncio.sleep(RECONNECT_EVERY)
            try:
                self._protocol = await self._line()
            except OSError:
                continue
            log.info("the line to the writer process is back")


class _Line(asyncio.Protocol):
    """Requests out (those of one turn of the loop in one write), answers in."""

    def __init__(self, on_lost: Callable[[int], None], on_report: Callable[[Report], None]):
        self._on_lost = on_lost
        self._on_report = on_report
        self._transport: asyncio.Transport | None = None
        self._waiting: dict[int, asyncio.Future[Outcome]] = {}  # in the order sent
        self._next = 0
        self._written = 0  # the last id written to the socket
        self._out: list[bytes] = []
        self._inbox = bytearray()
        self._idle: asyncio.Event | None = None
        self._watch: asyncio.TimerHandle | None = None
        self._oldest_seen: int | None = None  # the oldest waiting at the watch's last look
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # (uvloop's: not a subclass)

    def send(self, request: Request) -> asyncio.Future[Outcome]:
        framed = frame((self._next + 1, *request))  # ValueError: not plain data
        if len(framed) - HEADER.size > MAX_FRAME:
            raise ValueError(f"a request of {len(framed)} bytes")
        self._next += 1
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Outcome] = loop.create_future()
        self._waiting[self._next] = answer
        self._out.append(framed)
        if len(self._out) == 1:
            loop.call_soon(self._flush)
        if self._watch is None:
            self._watch = loop.call_later(ANSWER_TIMEOUT / 2, self._look)
        return answer

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self._transport is not None and not self.lost:
            self._transport.write(b"".join(out))
            self._written = self._next

    def _look(self) -> None:
        """The oldest request still unanswered since the last look: the process hangs."""
        self._watch = None
        oldest = next(iter(self._waiting), None)
        if oldest is not None and oldest == self._oldest_seen and self._transport is not None:
            log.error("the writer process has not answered for %gs", ANSWER_TIMEOUT / 2)
            self._transport.abort()  # connection_lost: told as lost
            return
        self._oldest_seen = oldest
        if oldest is not None:
            self._watch = asyncio.get_running_loop().call_later(ANSWER_TIMEOUT / 2, self._look)

    def data_received(self, data: bytes) -> None:
        self._inbox += data
        for outcomes, report in unframe(self._inbox):
            if report is not None:
                self._on_report(report)
            for outcome in outcomes:
                answer = self._waiting.pop(outcome[0], None)
                if answer is not None and not answer.done():
                    answer.set_result(outcome)
        if not self._waiting and self._idle is not None:
            self._idle.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._watch is not None:
            self._watch.cancel()
        written = {i: a for i, a in self._waiting.items() if i <= self._written}
        self._on_lost(sum(not answer.cancelled() for answer in written.values()))
        for ident, answer in self._waiting.items():
            if answer.done():
                continue
            if ident in written:  # (reached when on_lost returns: tests)
                answer.set_exception(ConnectionError("the writer process is gone"))
            else:  # never sent: nothing of it was committed
                answer.set_exception(NotSent("the writer process is gone"))
        self._waiting.clear()
        if self._idle is not None:
            self._idle.set()

    async def drain(self) -> None:
        if self._waiting and not self.lost:
            self._idle = asyncio.Event()
            await self._idle.wait()

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self._transport is not None:
            self._transport.close()
