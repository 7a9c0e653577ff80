"""Logging set-up: records are formatted and written by a thread, not the event loop.

Every delivery attempt writes a mail-log line; a write to stderr (a pipe to journald, or a
file) on the event loop costs more than the rest of the record, so the loop only hands the
record to a queue. A record whose arguments are plain values (every mail-log line's are) is
also rendered and escaped by the thread, not the loop; the fields that no line shows (the
caller's file and line, process and thread names) are not collected.
"""

from __future__ import annotations

import atexit
import copy
import logging
import logging.handlers
import queue
import sys
import threading
import time
from typing import TextIO

from gateway.addresses import escape_for_log

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_listener: Listener | None = None


class ZonedFormatter(logging.Formatter):
    """Times in ISO 8601 with the UTC offset (2026-12-06T08:48:54.551+00:00): a line read
    in another zone, or across a daylight-saving change, still says when it happened."""

    _second: tuple[int, str, str] = (-1, "", "")  # the last second formatted, its zone

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second, stamp, zone = self._second
        if int(record.created) != second:  # most records share their second with the last
            second = int(record.created)
            local = time.localtime(second)
            hours, minutes = divmod(abs(local.tm_gmtoff) // 60, 60)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", local)
            zone = f"{'-' if local.tm_gmtoff < 0 else '+'}{hours:02d}:{minutes:02d}"
            self._second = (second, stamp, zone)
        return f"{stamp}.{int(record.msecs):03d}{zone}"


class EscapingFormatter(ZonedFormatter):
    """One record, one line: the message (where user input ends up: addresses, EHLO names,
    commands, URL paths, reasons) is escaped, whoever logged it (aiosmtpd included); the
    lines of a traceback are indented, so no line of one can pass for a record of its own."""

    def format(self, record: logging.LogRecord) -> str:
        saved, record.exc_text = record.exc_text, None  # another handler's cache: unescaped
        try:
            return super().format(record)
        finally:
            record.exc_text = saved

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_for_log(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: object) -> str:
        return _indented(super().formatException(ei))  # type: ignore[arg-type]

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    lines = text.splitlines() or [""]
    return "\n".join("  | " + escape_for_log(line) for line in lines)


RENDERED = "_postern_rendered"  # the handoff's mark on a record it rendered and escaped

# Argument types whose text cannot change once the logging call returns.
_PLAIN = frozenset((str, int, float, bool, type(None)))


class Handoff(logging.handlers.QueueHandler):
    """Hands records to the log thread. A record of a str message with plain arguments
    (str, numbers, None) and no traceback goes as it is, rendered later by the thread (one
    `msg % args` and one escape off the event loop, and no copy of the record); any other is
    rendered here, as QueueHandler does (an argument object may change once the call
    returns; a traceback holds frames), and marked RENDERED (a name no `extra=` of ours
    uses: a record marked so is not escaped again)."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        args = record.args
        if (
            type(record.msg) is str
            and record.exc_info is None
            and record.stack_info is None
            and type(args) is tuple
            and all(type(arg) in _PLAIN for arg in args)
        ):
            return record
        prepared = super().prepare(record)
        setattr(prepared, RENDERED, True)
        return prepared


class LineFormatter(ZonedFormatter):
    """The log thread's formatter: a record the handoff rendered is only put in the line
    (its message escaped once already); any other is escaped here, as the handoff would,
    on a copy: the caller's own record, which another handler (a test's capture) may be
    formatting on the loop at the same moment, is never changed."""

    def __init__(self) -> None:
        super().__init__(FORMAT)
        self._escaping = EscapingFormatter(FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, RENDERED, False):
            return super().format(record)
        return self._escaping.format(copy.copy(record))


class Listener:
    """The log thread: it waits for a record, lets others gather for LINGER, takes every
    one waiting (up to BATCH) and writes their lines with one write and one flush. With
    records waiting already it does not wait: a backlog is written as fast as it formats.
    (QueueListener wrote and flushed each record: a write system call per mail-log line,
    and under `[server] workers` one wake-up, read and write of the supervisor's per line
    as well.)"""

    BATCH = 512
    # After a record wakes it, how long the thread lets others gather before it writes:
    # a record put while the thread sleeps wakes nobody. Waking it for each record cost the
    # event loop 6 % of its time at C=1 (one futex wake-up and a thread switch each); a
    # line is written at most this much later.
    LINGER = 0.01

    def __init__(self, records: queue.SimpleQueue[logging.LogRecord | None], stream: TextIO):
        self._records = records
        self.output = logging.StreamHandler(stream)
        self.output.setFormatter(LineFormatter())
        self.handlers = (self.output,)  # as QueueListener's, for flush()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Write every record handed over so far, then end the thread."""
        if self._thread is not None:
            self._records.put(None)
            self._thread.join()
            self._thread = None

    def _first(
        self, records: queue.SimpleQueue[logging.LogRecord | None]
    ) -> logging.LogRecord | None:
        """The next record: at once when one waits; else, once one wakes the thread, after
        LINGER (a sleep only when the thread had to wait, so it never caps the rate)."""
        try:
            return records.get_nowait()
        except queue.Empty:
            pass
        first = records.get()
        if first is not None:
            time.sleep(self.LINGER)
        return first

    def _run(self) -> None:
        records, output = self._records, self.output
        stopping = False
        while not stopping:
            batch = [self._first(records)]
            while len(batch) < self.BATCH:
                try:
                    batch.append(records.get_nowait())
                except queue.Empty:
                    break
            lines = []
            for record in batch:
                if record is None:
                    stopping = True  # what came after it in the batch is written too
                    continue
                try:
                    lines.append(output.format(record) + output.terminator)
                except Exception:
                    output.handleError(record)  # as StreamHandler.emit: on stderr, once
            if lines:
                try:
                    output.stream.write("".join(lines))
                    output.flush()
                except Exception:
                    output.handleError(next(r for r in batch if r is not None))


def threaded(stream: TextIO) -> tuple[Handoff, Listener]:
    """A handler for the loop's side and the listener (not started) that writes its
    records to `stream` from a thread of its own."""
    records: queue.SimpleQueue[logging.LogRecord | None] = queue.SimpleQueue()
    listener = Listener(records, stream)
    handoff = Handoff(records)
    # A record the handoff renders (message and traceback, QueueHandler.prepare) is escaped
    # there; the others by the thread's LineFormatter.
    handoff.setFormatter(EscapingFormatter("%(message)s"))
    return handoff, listener


def setup(level: str) -> None:
    """Log to stderr through a background thread; flushed at exit."""
    # No line shows where a record was made or by which process or thread: not collected
    # (findCaller walks the stack for every record; logging's documented switch).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handoff, listener = threaded(sys.stderr)
    root = logging.getLogger()
    root.handlers[:] = [handoff]
    root.setLevel(getattr(logging, level.upper()))
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command chatter
    listener.start()
    atexit.register(flush)
    global _listener
    _listener = listener


def flush() -> None:
    """Write out every record handed over so far (before an exit that skips atexit)."""
    global _listener
    listener, _listener = _listener, None
    if listener is not None:
        listener.stop()  # drains the queue, then ends the thread
        for handler in listener.handlers:
            handler.flush()
