"""RSA private-key operations in a child process, so that DKIM signing leaves the event loop.

The RSA-2048 operation is the largest single cost of a signed message (0.2-0.5 ms). On the
event loop it holds up every session. A thread does not help: handing each operation to a
thread and back costs the loop more than the operation (GIL hand-offs and wake-ups,
measured with a no-op operation: +0.3 ms of CPU per message). A child process shares no GIL:
the loop writes requests into a pipe, all those of one loop iteration in one write, and
reads the signatures back in batches, so a message costs it a few microseconds.

The child runs at SCHED_IDLE priority: it takes only CPU nothing else wants, so it never
delays the event loop or the database writer (on 2 cores at normal priority it did: the
loop waited for a core 18 % of the time instead of 3 %). In exchange it may lag when the
machine is busy: a request not answered within LAG seconds fails with SigningUnavailable
and its caller signs in-process, as do new requests while the child is behind, so a
message never waits long for a signature; late answers are dropped.

The child, gateway.dkim.signing_child, is sent the keys over the pipe: never on its command line
or in its environment, which keeps only what Python needs to start (not POSTERN_SECRET_KEY,
nor pool passwords). If it dies, or answers nothing for ANSWER_TIMEOUT seconds while owing
answers, or sends a malformed answer, it is replaced: what it owed is signed in-process,
and a new child is started on a later request, at most once every RESTART_AFTER seconds.
When the parent dies the child reads end-of-file and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import subprocess
import sys
import time
from typing import cast

from gateway.dkim.signing_child import ANSWER, KEY_NUMBER, REQUEST, SIGNATURE_MAX
from gateway.errors import PosternError

log = logging.getLogger("postern.dkim")

RESTART_AFTER = 10.0  # seconds between attempts to start a child after one failed
ANSWER_TIMEOUT = 5.0  # a child that answers nothing this long while owing answers is replaced
LAG = 0.1  # seconds a message waits for the child before it is signed in-process

#: What the child's environment keeps of ours (no secrets: they may be in the environment).
_CHILD_ENVIRONMENT = (
    "PATH", "PYTHONHOME", "LD_LIBRARY_PATH", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR",
)  # fmt: skip


class SigningUnavailable(PosternError):
    """No child process could sign: sign in-process instead."""


class SigningProcess:
    """The parent's side: one child process, started on first use."""

    def __init__(self, lag: float | None = None) -> None:
        self._lag = LAG if lag is None else lag
        self._child: _Child | None = None
        # Request id -> (answer, time sent), oldest first: what the child owes. An answer the
        # caller stopped waiting for (LAG) stays until the child answers or is replaced.
        self._pending: dict[int, tuple[asyncio.Future[bytes], float]] = {}
        self._key_numbers: dict[bytes, int] = {}
        self._ids = itertools.count()
        self._out = bytearray()
        self._start_lock = asyncio.Lock()
        self._failed_at = float("-inf")
        self._answered_at = 0.0  # when the child last answered anything
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        # A seccomp filter without sched_setscheduler (a systemd unit from before the child
        # existed) kills the child with SIGSYS: later children skip the call.
        self._idle_refused = False
        self._ending: set[_Child] = set()  # replaced, not yet reaped: close() waits for them

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    async def start(self) -> None:
        """Start the child now, if none runs (a failure is logged; `sign` falls back)."""
        if self._child is None:
            with contextlib.suppress(SigningUnavailable):
                await self._start()

    async def sign(self, private_pem: bytes, digest: bytes) -> bytes:
        """The RSA PKCS#1 v1.5 signature of a SHA-256 `digest` with the key in `private_pem`."""
        if self._child is None:
            await self._start()
        now = time.monotonic()
        if self._pending and now - next(iter(self._pending.values()))[1] > self._lag:
            raise SigningUnavailable("the signing process is behind")
        key_number = self._key_numbers.get(private_pem)
        if key_number is None:
            key_number = self._key_numbers[private_pem] = len(self._key_numbers)
            self._send(b"K", key_number, private_pem)
        request = next(self._ids) & 0xFFFFFFFF
        answer = asyncio.get_running_loop().create_future()
        if not self._pending:
            self._answered_at = now  # the child is owed nothing older: count from here
        self._pending[request] = (answer, now)
        if self._timer is None:
            self._arm()
        self._send(b"S", request, KEY_NUMBER.pack(key_number) + digest)
        return await answer

    async def close(self) -> None:
        """Stop the child (end of its input) and fail what it has not answered."""
        self._closed = True
        async with self._start_lock:  # a child being started is put among the ending
            pass
        child = self._child
        self._forget(SigningUnavailable("the signing process is stopping"))
        children = [*self._ending, *([child] if child is not None else [])]
        await asyncio.gather(*(each.stop() for each in children))

    async def _start(self) -> _Child:
        async with self._start_lock:
            if self._child is not None:
                return self._child
            if self._closed or time.monotonic() - self._failed_at < RESTART_AFTER:
                raise SigningUnavailable("no signing process")
            loop = asyncio.get_running_loop()
            try:
                transport, child = await loop.subprocess_exec(
                    lambda: _Child(self), sys.executable, "-P", "-m", "gateway.dkim.signing_child",
                    *(["--normal-priority"] if self._idle_refused else []),
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
                    env=_child_environment(),
                )  # fmt: skip
            except Exception as error:  # OSError, or e.g. no thread left for a child watcher
                self._failed_at = time.monotonic()
                log.error("cannot start the DKIM signing process, signing in-process: %s", error)
                raise SigningUnavailable(str(error)) from None
            if child.dead:  # it died at once (a bad interpreter, an import error...)
                self._failed_at = time.monotonic()
                log.error(
                    "the DKIM signing process exited at start (status %s), signing in-process",
                    transport.get_returncode(),
                )
                raise SigningUnavailable("the signing process exited at start")
            if self._closed:  # close() ran while it started: it stops it with the others
                self._ending.add(child)
                transport.get_pipe_transport(0).close()  # end of input: it exits
                raise SigningUnavailable("the signing process is stopping")
            self._child, self._key_numbers = child, {}
            log.info("DKIM signing process %d started", child.pid)
            return child

    def _send(self, kind: bytes, number: int, payload: bytes) -> None:
        if not self._out:  # the first frame of this loop iteration: flush after it
            asyncio.get_running_loop().call_soon(self._flush)
        self._out += REQUEST.pack(kind, number, len(payload))
        self._out += payload

    def _flush(self) -> None:
        data, self._out = bytes(self._out), bytearray()
        if self._child is not None and data:
            self._child.write(data)

    def _answer(self, child: _Child, buffer: bytearray) -> None:
        """Resolve every whole answer in `buffer` and remove it; a malformed one ends `child`
        (its output is out of step: nothing after it can be trusted)."""
        if child is not self._child:  # replaced: what it still says is not awaited
            buffer.clear()
            return
        at = 0
        while len(buffer) - at >= ANSWER.size:
            request, length = ANSWER.unpack_from(buffer, at)
            if length > SIGNATURE_MAX:
                self._ended(child, "sent a malformed answer", kill=True)
                return
            end = at + ANSWER.size + length
            if end > len(buffer):
                break
            answer, _ = self._pending.pop(request, (None, 0.0))
            if answer is not None and not answer.done():
                if length:
                    answer.set_result(bytes(buffer[at + ANSWER.size : end]))
                else:
                    answer.set_exception(SigningUnavailable("the signing process failed"))
            at = end
        if at:
            del buffer[:at]
            self._answered_at = time.monotonic()

    def _ended(self, child: _Child, why: str = "ended", kill: bool = False) -> None:
        """`child` exited or closed its output (or, with `kill`, is to be stopped): fail what
        it owed; a later request starts another."""
        if self._child is not child:
            return
        if not self._closed:
            status = child.transport.get_returncode()
            if status is not None:
                why += f" (status {status})"
            log.error("the DKIM signing process %d %s; signing in-process", child.pid, why)
        self._failed_at = time.monotonic()
        self._forget(SigningUnavailable("the signing process ended"))
        if not child.exited:
            self._ending.add(child)
        if kill:  # not otherwise: a signal to a child that is exiting races its reaping
            child.kill()  # its transport is closed once its exit status is in

    def _check(self) -> None:
        """Every `lag` while answers are owed: give up on late ones (their callers sign
        in-process) and replace a child that has answered nothing for ANSWER_TIMEOUT."""
        self._timer = None
        child = self._child
        if not self._pending or child is None:
            return
        now = time.monotonic()
        for answer, sent in self._pending.values():
            if now - sent < self._lag:
                break
            if not answer.done():
                answer.set_exception(SigningUnavailable("the signing process is late"))
        if now - self._answered_at > ANSWER_TIMEOUT:
            why = f"answered nothing for {ANSWER_TIMEOUT:.0f} s (no idle CPU, or it hangs)"
            self._ended(child, why, kill=True)
            return
        self._arm()

    def _arm(self) -> None:
        interval = min(self._lag, ANSWER_TIMEOUT)
        self._timer = asyncio.get_running_loop().call_later(interval, self._check)

    def _forget(self, error: Exception) -> None:
        self._child, self._out = None, bytearray()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, {}
        for answer, _ in pending.values():
            if not answer.done():
                answer.set_exception(error)


class _Child(asyncio.SubprocessProtocol):
    """The pipes of one child: answers are parsed as they arrive, no task in between."""

    def __init__(self, owner: SigningProcess) -> None:
        self._owner = owner
        self._buffer = bytearray()
        self._exited = asyncio.get_running_loop().create_future()
        self._answers_closed = False
        self.transport: asyncio.SubprocessTransport

    @property
    def pid(self) -> int:
        return self.transport.get_pid()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.SubprocessTransport, transport)  # uvloop's is no subclass

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self._buffer += data
        self._owner._answer(self, self._buffer)

    @property
    def dead(self) -> bool:
        """It exited or closed its answers (possibly before its start was awaited)."""
        return self._exited.done() or self._answers_closed

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:
            self._answers_closed = True
            self._owner._ended(self)

    @property
    def exited(self) -> bool:
        return self._exited.done()

    def process_exited(self) -> None:
        if self.transport.get_returncode() == -signal.SIGSYS:
            self._owner._idle_refused = True
        if not self._exited.done():
            self._exited.set_result(None)
        self._owner._ended(self)
        self._owner._ending.discard(self)
        self.transport.close()

    def write(self, data: bytes) -> None:
        pipe = self.transport.get_pipe_transport(0)
        if pipe is not None and not pipe.is_closing():
            cast(asyncio.WriteTransport, pipe).write(data)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.transport.kill()

    async def stop(self) -> None:
        """End of input; the child exits. Killed if it has not within 2 s."""
        pipe = self.transport.get_pipe_transport(0)
        if pipe is not None:
            pipe.close()
        try:
            await asyncio.wait_for(asyncio.shield(self._exited), 2.0)
        except TimeoutError:
            self.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._exited), 2.0)
        self.transport.close()


def _child_environment() -> dict[str, str]:
    """The child's environment: enough to start Python and import this package, no more."""
    env = {name: os.environ[name] for name in _CHILD_ENVIRONMENT if name in os.environ}
    # Our own import path, in our order (standard library before site-packages, so nothing
    # shadows it): the child imports what we imported, however we were installed or run.
    # -P keeps the child's working directory off it.
    env["PYTHONPATH"] = os.pathsep.join(entry for entry in sys.path if entry)
    return env
