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


def setup(level: str) -> None:
    """Log to stderr through a background thread; flushed at exit."""
    output = logging.StreamHandler(sys.stderr)
    output.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, output)
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(records)]
    root.setLevel(getattr(logging, level.upper()))
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command chatter
    listener.start()
    atexit.register(listener.stop)
