"""Logging set-up: records are formatted and written by a thread, not the event loop.

Every delivery attempt writes a mail-log line; a write to stderr (a pipe to journald, or a
file) on the event loop costs more than the rest of the record, so the loop only hands the
record to a queue.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys
import time

from gateway.addresses import escape_for_log

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_listener: logging.handlers.QueueListener | None = None


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


def setup(level: str) -> None:
    """Log to stderr through a background thread; flushed at exit."""
    output = logging.StreamHandler(sys.stderr)
    output.setFormatter(ZonedFormatter(FORMAT))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, output)
    handoff = logging.handlers.QueueHandler(records)
    # The handoff renders message and traceback (QueueHandler.prepare): escaped there.
    handoff.setFormatter(EscapingFormatter("%(message)s"))
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
