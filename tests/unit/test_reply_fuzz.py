"""The upstream reply parser (gateway/delivery/pipelining.py) against what a hostile or broken
server may send: any bytes in any chunks never raise, never hold more than the reply bounds, and
never yield a reply code outside 2xx-5xx; well-formed replies parse the same however the
bytes are split. Bounded: a few hundred examples each."""

from __future__ import annotations

import asyncio
import contextlib

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.delivery.pipelining import (
    MAX_REPLY_BYTES,
    MAX_REPLY_LINES,
    PipelinedSession,
    SessionTimeout,
    UpstreamReply,
)


class _Transport(asyncio.Transport):
    """Where the session writes its commands: nowhere; it only records a close."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing


def _feed(
    chunks: list[bytes], expected: int
) -> tuple[PipelinedSession, list[UpstreamReply | None]]:
    async def run() -> tuple[PipelinedSession, list[UpstreamReply | None]]:
        session = PipelinedSession(_Transport(), pipelining=True, timeout=1.0)
        futures = session._send(b"NOOP\r\n", expected)
        for chunk in chunks:
            session.data_received(chunk)
            held = sum(len(line) for line in session._lines) + len(session._buffer)
            assert session.closed or (
                len(session._lines) < MAX_REPLY_LINES and held <= MAX_REPLY_BYTES
            )
        return session, [f.result() if f.done() and not f.exception() else None for f in futures]

    return asyncio.run(run())


# Bytes that look like replies: heads from digits and what int() also takes ("+25", "2_5").
_near_reply = st.builds(
    lambda head, rest: head.encode() + rest + b"\r\n",
    st.text(alphabet="0123456789+_ -", min_size=3, max_size=4),
    st.binary(max_size=20),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=400), _near_reply), max_size=30), st.integers(1, 4))
@example([b"+25 ok\r\n"], 1)
@example([b"2_5 ok\r\n"], 1)
@example([b"099 ok\r\n"], 1)
def test_any_bytes_never_raise_and_stay_bounded(chunks: list[bytes], expected: int) -> None:
    _, replies = _feed(chunks, expected)
    for reply in replies:
        assert reply is None or 200 <= reply.code <= 599


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=2000).map(lambda b: b"250-" + b), min_size=1, max_size=300))
def test_endless_continuations_are_cut(lines: list[bytes]) -> None:
    flood = b"".join(line.replace(b"\n", b" ") + b"\r\n" for line in lines)
    session, replies = _feed([flood[i : i + 512] for i in range(0, len(flood), 512)], 1)
    assert replies == [None]  # never a reply out of a flood with no final line
    assert session.closed or (len(lines) < MAX_REPLY_LINES and len(flood) <= MAX_REPLY_BYTES)


_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
_reply = st.tuples(st.sampled_from([221, 250, 251, 354, 421, 451, 452, 550, 554]),
                   st.lists(_text, min_size=1, max_size=5))  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(_reply, min_size=1, max_size=4), st.data())
def test_well_formed_replies_parse_alike_in_any_chunks(
    replies: list[tuple[int, list[str]]], data: st.DataObject
) -> None:
    wire = b"".join(
        b"".join(
            f"{code}{'-' if i < len(texts) - 1 else ' '}{text}\r\n".encode()
            for i, text in enumerate(texts)
        )
        for code, texts in replies
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    chunks = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    _, parsed = _feed(chunks, len(replies))
    assert [(r.code, r.text.split("\n")) for r in parsed if r is not None] == [
        (code, [t.strip(" \t") for t in texts]) for code, texts in replies
    ]


def test_a_reply_not_in_within_the_timeout_closes_the_session() -> None:
    async def run() -> None:
        session = PipelinedSession(_Transport(), pipelining=True, timeout=0.05)
        try:
            await session.command(b"NOOP")
        except SessionTimeout as timeout:
            assert not timeout.body_sent
        else:
            raise AssertionError("no SessionTimeout")
        assert session.closed

    asyncio.run(run())


def test_replies_already_in_and_a_cancelled_wait_keep_the_order() -> None:
    """A pipelined group's replies read when they are in already; a caller cancelled while it
    waits leaves its reply to be passed over, and the next command gets its own."""

    async def run() -> None:
        session = PipelinedSession(_Transport(), pipelining=True, timeout=5.0)
        futures = session._send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n", 2)
        session.data_received(b"250 sender ok\r\n250 rcpt ok\r\n")
        assert (await session._reply(futures[0])).text == "sender ok"
        assert (await session._reply(futures[1])).text == "rcpt ok"
        waiting = asyncio.ensure_future(session.command(b"NOOP"))
        await asyncio.sleep(0)
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        later = asyncio.ensure_future(session.command(b"NOOP"))
        await asyncio.sleep(0)
        session.data_received(b"250 first\r\n250 second\r\n")
        assert (await later).text == "second"
        assert not session.closed

    asyncio.run(run())
