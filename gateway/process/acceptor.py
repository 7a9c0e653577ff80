"""A listening socket served by accepting every connection waiting, at each turn of the loop.

uvloop's `create_server` (libuv underneath) accepts one connection per turn of the event
loop: with the loop busy, a burst of clients waits one turn each for its accept, so the
last of 50 new SMTP clients beside ten 20 MB uploads got its greeting after 230-280 ms
while one alone got it in 0.3 ms (bench/loop_lag.py --workers 1; a trace of the accepts
showed one per turn of 6-25 ms). asyncio's own loop accepts up to its backlog at once, as
this does: every connection the kernel has completed is accepted here, each handed to
`loop.connect_accepted_socket` (the same transport as create_server's), so a burst's set-ups
all run in the next turn.

A failure to accept for want of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) is
logged and accepting pauses for a second, as asyncio does, instead of spinning on a socket
that stays readable.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable

log = logging.getLogger("postern.listener")

RETRY_AFTER = 1.0  # seconds accepting pauses when the process is out of descriptors
_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Acceptor:
    """Serves `sock` (listening, non-blocking) with `protocol` for each connection until
    `close()`, which stops accepting and closes the socket (sessions already open go on)."""

    def __init__(
        self, sock: socket.socket, protocol: Callable[[], asyncio.Protocol], burst: int
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._protocol = protocol
        self._burst = burst  # connections accepted at most per turn (the listen backlog)
        self._handing: set[asyncio.Task[None]] = set()  # connections being handed over
        self._closed = False
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._accept)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()

    def _accept(self) -> None:
        for _ in range(self._burst):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return  # none waiting
            except OSError as error:
                if error.errno not in _EXHAUSTED:
                    log.warning("accepting a connection failed: %s", error)
                    return
                log.error("accepting paused for %gs: %s", RETRY_AFTER, error)
                self._loop.remove_reader(self._sock.fileno())
                self._loop.call_later(RETRY_AFTER, self._resume)
                return
            conn.setblocking(False)
            task = self._loop.create_task(self._hand_over(conn))
            self._handing.add(task)
            task.add_done_callback(self._handing.discard)

    def _resume(self) -> None:
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    async def _hand_over(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._protocol, conn)
        except OSError as error:  # the peer went away before its transport was made
            log.info("a connection closed as it was accepted: %s", error)
            conn.close()
        except Exception:  # a session that failed to start: that connection alone
            log.exception("a connection could not be served")
            conn.close()
