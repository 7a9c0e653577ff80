"""gateway.process.acceptor: a burst of connections is accepted in one turn of a busy loop
(uvloop's create_server takes one a turn), close() stops accepting, and running out of
descriptors pauses accepting instead of spinning."""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import pytest
import uvloop

from gateway.process import acceptor
from gateway.process.acceptor import Acceptor

BURST = 20


def listening(kind: type[socket.socket] = socket.socket) -> socket.socket:
    sock = kind(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    return sock


def under_uvloop(test: Callable[[], Awaitable[None]]) -> None:
    """Run `test` on uvloop, as `postern serve` runs."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(test(), 20))


class Counted(asyncio.Protocol):
    made: list[int]  # the loop turn each connection was made at
    turn = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made.append(Counted.turn)
        transport.write(b"220 hi\r\n")  # type: ignore[attr-defined]


def test_a_burst_is_accepted_in_one_turn_of_a_busy_loop() -> None:
    async def test() -> None:
        loop = asyncio.get_running_loop()
        Counted.made, Counted.turn = [], 0
        sock = listening()
        port = sock.getsockname()[1]
        served = Acceptor(sock, Counted)
        busy = True

        def turn() -> None:  # every turn of the loop takes 5 ms, as under load
            Counted.turn += 1
            time.sleep(0.005)
            if busy:
                loop.call_soon(turn)

        loop.call_soon(turn)
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(BURST)]
        try:
            while len(Counted.made) < BURST:
                await asyncio.sleep(0.01)
            assert max(Counted.made) - min(Counted.made) <= 2  # not one turn each
            for client in clients:
                assert client.recv(16).startswith(b"220")
        finally:
            busy = False
            served.close()
            for client in clients:
                client.close()

    under_uvloop(test)


def test_close_stops_accepting_and_closes_the_socket() -> None:
    async def test() -> None:
        Counted.made = []
        sock = listening()
        port = sock.getsockname()[1]
        served = Acceptor(sock, Counted)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await reader.readline()).startswith(b"220")
        writer.close()
        served.close()
        served.close()  # twice: nothing more
        assert sock.fileno() == -1
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)

    under_uvloop(test)


class Exhausted(socket.socket):
    """A listening socket whose first accept finds the process out of descriptors."""

    failures = 1
    calls: ClassVar[list[float]] = []  # when accept was called

    def accept(self) -> tuple[socket.socket, Any]:
        Exhausted.calls.append(time.monotonic())
        if Exhausted.failures:
            Exhausted.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


def test_a_connection_accepted_as_the_doors_close_is_closed_not_served() -> None:
    """close() in the same turn as a burst's accepts: the hand-overs are cancelled and
    every client sees its connection closed, none greeted after the sessions were ended."""

    async def test() -> None:
        Counted.made = []
        sock = listening()
        port = sock.getsockname()[1]
        served = Acceptor(sock, Counted)
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(BURST)]
        loop = asyncio.get_running_loop()
        loop.remove_reader(sock.fileno())  # accept the burst by hand, then close at once
        served._accept()
        served.close()
        await asyncio.sleep(0.2)
        try:
            assert Counted.made == []
            for client in clients:
                assert client.recv(16) == b""  # closed, never greeted
        finally:
            for client in clients:
                client.close()

    under_uvloop(test)


def test_out_of_descriptors_pauses_accepting_then_resumes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(acceptor, "RETRY_AFTER", 0.2)

    async def test() -> None:
        Counted.made, Exhausted.failures, Exhausted.calls = [], 1, []
        sock = listening(Exhausted)
        port = sock.getsockname()[1]
        served = Acceptor(sock, Counted)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            greeting = await asyncio.wait_for(reader.readline(), 5)
            writer.close()
            assert greeting.startswith(b"220")  # served once accepting resumed
            # no accept between the failure and the resume (libuv's clock: to 10 ms)
            assert Exhausted.calls[1] - Exhausted.calls[0] >= 0.19
        finally:
            served.close()

    under_uvloop(test)
