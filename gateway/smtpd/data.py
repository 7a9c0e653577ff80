"""DATA read into one buffer, with the checks aiosmtpd makes, and memory bounded.

aiosmtpd 1.4.6 reads DATA a line at a time and keeps every line as an object of its own:
24 MiB of empty lines cost ~900 MB and ~14 s of the event loop, per connection. Here the
transfer is read in chunks, each run of whole lines kept as one piece and the pieces joined
once at the end; the final dot is found with `find`, the dot-stuffing undone with one
`replace` per run, and the lines measured without splitting them. The bytes all sessions
hold at once are bounded by a `DataBudget`.

The client is answered as aiosmtpd answers: a message over the size limit or with a line
over 998 bytes is read to its final dot and only then refused (RFC 5321 §4.2.5), and DATA
ends at CRLF.CRLF only (a bare LF before or after the dot is content, refused later).
"""

from __future__ import annotations

import asyncio
import enum

from gateway.headers import MAX_LINE, canonical_problem, has_long_line

END = b"\r\n.\r\n"  # the final dot, with the line end before it
CHUNK = 1 << 18  # bytes taken from the stream at a time (a socket read is at most 256 KiB)


class DataBudget:
    """The bytes of DATA that all sessions hold in memory, bounded: past the bound a transfer
    is refused with a 4xx that the client retries, rather than the process growing until the
    kernel kills it with every message in it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    @property
    def full(self) -> bool:
        return self.used >= self.limit

    def take(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        self.used -= size


class TransferRefusal(enum.Enum):
    TOO_BIG = enum.auto()  # over max_message_size
    LINE_TOO_LONG = enum.auto()  # a line over 998 bytes
    NO_ROOM = enum.auto()  # the DataBudget is spent


class Transfer:
    """One DATA transfer. `receive` reads it up to the final dot, checking and unstuffing
    each run of whole lines as it arrives (so no step costs more than a chunk); then
    `content` is the message, or `refusal` or `problem` (not canonical content: bare CR or
    LF, NUL) says why not. `release` gives its bytes back to the budget."""

    def __init__(self, reader: asyncio.StreamReader, max_size: int, budget: DataBudget) -> None:
        self._reader = reader
        self._max_size = max_size
        self._budget = budget
        self._held = 0  # bytes taken from the budget: those of `_pieces`
        self._size = 0  # bytes of whole lines read, as sent (stuffed)
        # Those lines, unstuffed, a run at a time, joined once at the end: appending to one
        # bytearray re-allocates (and copies) it as it grows (py-spy put a quarter of the
        # loop's samples there with ten 20 MB messages at once; alone, about the same CPU).
        self._pieces: list[bytes] = []
        self.content = b""
        self.refusal: TransferRefusal | None = None
        self.problem: str | None = None

    async def receive(self) -> bool:
        """Read up to the final dot; False if the connection ended before it."""
        # What is not yet taken, after the line end before it: a first line of a lone dot
        # ends DATA as any other does, and a leading dot is always after a CRLF.
        raw = bytearray(b"\r\n")
        scan = 0  # where the final dot may start in `raw`
        while True:
            chunk = await self._reader.read(CHUNK)
            if not chunk:
                return False
            raw += chunk
            end = raw.find(END, scan)
            if end >= 0:
                self._take(raw, end + 2)
                self._give_back(raw, end + len(END))
                break
            if self.refusal is None:
                lines = raw.rfind(b"\r\n", 2) + 2  # past the last whole line, or 1
                if lines > 2:
                    self._take(raw, lines)
                    del raw[: lines - 2]
                pending = len(raw) - 2 - raw.endswith(b"\r") - (raw[2:3] == b".")
                if pending > MAX_LINE:  # a line not ended in time
                    self._refuse(TransferRefusal.LINE_TOO_LONG)
            scan = max(0, len(raw) - len(END) + 1)
            if self.refusal is not None:  # keep only where the final dot may start
                del raw[:scan]
                scan = 0
        if self.refusal is None and self.problem is None:
            self.content = b"".join(self._pieces)
        self._pieces = []
        return True

    def release(self) -> None:
        self._budget.give(self._held)
        self._held = 0

    def _take(self, raw: bytearray, stop: int) -> None:
        """Check and keep the whole lines `raw[2:stop]` (`raw[:2]` is a CRLF)."""
        if self.refusal is not None:
            return
        self._size += stop - 2
        if self._size > self._max_size:
            self._refuse(TransferRefusal.TOO_BIG)
            return
        if raw.find(b"\r\n.", 0, stop) >= 0:  # RFC 5321 §4.5.2: a line's leading dot doubled
            raw = raw[:stop].replace(b"\r\n.", b"\r\n")
            stop = len(raw)
        if has_long_line(raw, 2, stop):  # the doubled dot not counted (RFC 5321 §4.5.3.1.6)
            self._refuse(TransferRefusal.LINE_TOO_LONG)
            return
        if self.problem is not None:
            return
        self.problem = canonical_problem(raw, 2, stop)
        if self.problem is not None:  # refused after the final dot: keep nothing
            self._pieces = []
            self.release()
            return
        if not self._budget.take(stop - 2):
            self._refuse(TransferRefusal.NO_ROOM)
            return
        self._held += stop - 2
        self._pieces.append(bytes(memoryview(raw)[2:stop]))  # `raw` changes: a copy

    def _refuse(self, refusal: TransferRefusal) -> None:
        self.refusal = refusal
        self._pieces = []
        self.release()

    def _give_back(self, raw: bytearray, stop: int) -> None:
        """What the client sent after the final dot (pipelined commands, RFC 2920) goes back
        in front of the stream's buffer, for aiosmtpd's command loop. StreamReader has no
        public way to do that; aiosmtpd itself uses `_buffer`."""
        if stop < len(raw):
            self._reader._buffer[:0] = raw[stop:]  # type: ignore[attr-defined]
