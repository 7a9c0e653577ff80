"""A listening socket served by accepting every connection waiting, at each turn of the loop.

uvloop's `create_server` (libuv underneath) accepts one connection per turn of the event
loop: with the loop busy, a burst of clients waits one turn each for its accept, so the
last of 50 new SMTP clients beside ten 20 MB uploads got its greeting after 217-265 ms
while one alone got it in 0.3 ms (bench/loop_lag.py --workers 1; a trace of the accepts
showed one per turn of 6-25 ms). asyncio's own loop accepts many at once, as this does: up
to ACCEPT_BURST connections the kernel has completed are accepted at each readiness, each
handed to `loop.connect_accepted_socket` (the same transport as create_server's), so a
burst's sessions start together, a turn or two later.

The burst is bounded, and so are the connections accepted but not yet sessions: a flood
while SMTP is at its cap (each refused with a 421 a few turns after its accept) holds at
most a few ACCEPT_BURSTs of descriptors, far under gateway.process.descriptors' reserve.
A failure to accept for want of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) is
logged and accepting pauses for a second, as asyncio does (the connections wait in the
backlog), instead of spinning on a socket that stays readable. `close()` cancels the
hand-overs still under way: a connection accepted as the doors close is closed, never
served after the sessions were ended.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable

log = logging.getLogger("postern.listener")

ACCEPT_BURST = 64  # connections accepted per turn, and being handed over, at most
RETRY_AFTER = 1.0  # seconds accepting pauses when the process is out of descriptors
_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Acceptor:
    """Serves `sock` (listening) with a protocol from `protocol_factory` for each connection
    until `close()`, which stops accepting and closes the socket (sessions go on)."""

    def __init__(
        self, sock: socket.socket, protocol_factory: Callable[[], asyncio.BaseProtocol]
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._protocol_factory = protocol_factory
        # Accepted, not yet a session: its hand-over task and its socket.
        self._handing: dict[asyncio.Task[None], socket.socket] = {}
        self._closed = False
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._accept)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        for task in self._handing:
            task.cancel()

    def _accept(self) -> None:
        for _ in range(ACCEPT_BURST - len(self._handing)):
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
            self._handing[task] = conn
            task.add_done_callback(self._handed)

    def _handed(self, task: asyncio.Task[None]) -> None:
        conn = self._handing.pop(task)
        if task.cancelled():  # closed before its transport took it (after: a no-op)
            conn.close()

    def _resume(self) -> None:
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    async def _hand_over(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._protocol_factory, conn)
        except OSError as error:  # the peer went away before its transport was made
            log.info("a connection closed as it was accepted: %s", error)
            conn.close()
        except Exception:  # the protocol factory failed: that connection alone
            log.exception("a connection could not be served")
            conn.close()
