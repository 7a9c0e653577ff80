"""The per-API-key rate limit (`[http] rate_limit`) of a node's workers, one bucket per key
for them all: `postern serve` with `[server] workers` > 1 has every worker take SMTP and
worker 0 take HTTP, and a key's requests and messages must draw on one bucket, as in one
process (issue 22), not one per worker.

The buckets live in a small table of fixed slots in shared memory: an anonymous memfd the
supervisor makes before it starts any worker and hands each worker as an inherited
descriptor (beside its sockets; `WorkerRole.rates`). No file name: nothing to follow a
symlink to, to leave behind, or for another user to open. Its size is sealed, so no process
can shrink it under another's mapping (which would be a SIGBUS, not an error). A worker
started again finds the buckets as they were: a crash does not reset a key's rate.

A take or give_back holds a POSIX record lock (fcntl) on the table for a few microseconds:
that lock belongs to a process, so workers sharing one inherited descriptor exclude each
other (flock would not: its lock belongs to the open file they share); the kernel releases
it when its holder dies, however it dies. Times are `time.monotonic()`, read under the lock:
CLOCK_MONOTONIC is one clock for the whole system, so the buckets' times only go forward.

A slot is (64-bit digest of the key's name, tokens, time); linear probing. A full bucket is
the same as none, so when the table holds MAX_NAMES it is rebuilt as RateLimiter._shrink
does: full buckets dropped, then, if still too many, the emptiest half kept (a spray of
one-off names must not reset the bucket of a busy key).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import logging
import mmap
import os
import struct
import threading
import time
from collections.abc import Iterator

from gateway.errors import PosternError
from gateway.security.ratelimit import RateLimiter, worth_keeping

log = logging.getLogger("postern.ratelimit")

MAGIC = b"PSTRATE1"
HEADER = struct.Struct("<8sQQ")  # magic, slots, names in use
SLOT = struct.Struct("<Qdd")  # name's digest (0: empty), tokens, at (time.monotonic)
KEY = struct.Struct("<Q")
SLOTS = 32_768  # a power of two; 768 KiB
MAX_NAMES = SLOTS // 2  # keys sending at once, per node; probing stays short at half full
SIZE = HEADER.size + SLOTS * SLOT.size
_FIRST, _SLOT_SIZE, _MASK = HEADER.size, SLOT.size, SLOTS - 1
_unpack_slot, _pack_slot = SLOT.unpack_from, SLOT.pack_into  # (a take is a few of these)
_lockf, _EXCLUSIVE, _UNLOCK = fcntl.lockf, fcntl.LOCK_EX, fcntl.LOCK_UN


class SharedTableError(PosternError):
    """The descriptor is not a rate table this code can use (wrong size or not mappable)."""


def create_table() -> int:
    """A new, empty table: its descriptor (close-on-exec; pass it to the workers). OSError
    where memfd or its seals are not available (Linux only)."""
    if not hasattr(os, "memfd_create") or not hasattr(fcntl, "F_ADD_SEALS"):
        raise OSError(errno.ENOSYS, "memfd with seals is Linux-only")
    fd = os.memfd_create("postern-rates", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, SIZE)  # zeros: every slot empty
        os.pwrite(fd, HEADER.pack(MAGIC, SLOTS, 0), 0)
        seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    except BaseException:
        os.close(fd)
        raise
    return fd


@functools.lru_cache(maxsize=4096)
def digest(name: str) -> int:
    """The same in every process (hash() is not), never 0 (an empty slot)."""
    value = KEY.unpack(hashlib.blake2b(name.encode(), digest_size=8).digest())[0]
    return value or 1


class SharedBuckets:
    """The table, mapped: the buckets' arithmetic is the caller's (SharedRateLimiter).
    One per process: closing any descriptor of the table (a second instance's mapping
    being collected) would release every POSIX lock this process holds on it."""

    def __init__(self, fd: int) -> None:
        try:
            size = os.fstat(fd).st_size
            if size != SIZE:
                raise SharedTableError(f"a rate table of {size} bytes, not {SIZE}")
            self._map = mmap.mmap(fd, SIZE)
        except OSError as error:
            raise SharedTableError(f"cannot map the rate table: {error.strerror}") from None
        self._fd = fd
        self._thread_lock = threading.Lock()  # fcntl's lock does not exclude our own threads
        magic, slots, used = HEADER.unpack_from(self._map, 0)
        if magic != MAGIC or slots != SLOTS or used > MAX_NAMES:
            try:
                with self.locked():
                    log.warning("the shared rate table was not valid; its buckets are reset")
                    self.clear()
            except OSError as error:
                raise SharedTableError(f"cannot lock the rate table: {error.strerror}") from None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.lock()
        try:
            yield
        finally:
            self.unlock()

    def lock(self) -> None:
        """The table to this thread alone: a lock() is always followed by an unlock()."""
        self._thread_lock.acquire()
        try:
            _lockf(self._fd, _EXCLUSIVE)
        except BaseException:
            self._thread_lock.release()
            raise

    def unlock(self) -> None:
        try:
            _lockf(self._fd, _UNLOCK)
        except OSError as error:  # the other workers then wait until this one exits
            log.error("cannot unlock the shared rate table: %s", error.strerror or error)
        finally:
            self._thread_lock.release()

    def clear(self) -> None:
        """Every slot empty. Under the lock."""
        self._map[HEADER.size :] = bytes(SIZE - HEADER.size)
        HEADER.pack_into(self._map, 0, MAGIC, SLOTS, 0)

    def find(self, key: int) -> tuple[int, bool, float, float]:
        """The offset of the slot holding `key` (True, with its tokens and time) or of the
        empty one it would go in (False); -1 when there is neither (a table full of
        damage). Under the lock."""
        buf, index, unpack = self._map, key & _MASK, _unpack_slot
        for _ in range(SLOTS):
            offset = _FIRST + index * _SLOT_SIZE
            found, tokens, at = unpack(buf, offset)
            if found == key:
                return offset, True, tokens, at
            if found == 0:
                return offset, False, 0.0, 0.0
            index = (index + 1) & _MASK
        return -1, False, 0.0, 0.0

    def write(self, offset: int, key: int, tokens: float, at: float, new: bool) -> None:
        _pack_slot(self._map, offset, key, tokens, at)
        if new:
            magic, slots, used = HEADER.unpack_from(self._map, 0)
            HEADER.pack_into(self._map, 0, magic, slots, used + 1)

    def used(self) -> int:
        return int(HEADER.unpack_from(self._map, 0)[2])

    def entries(self) -> list[tuple[int, float, float]]:
        """Every bucket in use: (key, tokens, at). Under the lock."""
        with memoryview(self._map) as view:
            return [slot for slot in SLOT.iter_unpack(view[HEADER.size :]) if slot[0]]


class SharedRateLimiter(RateLimiter):
    """RateLimiter's take/give_back over the node's shared table. Should the lock ever fail
    (it does not on a memfd), this worker counts on in its own memory, as before, rather
    than refuse or fail a request."""

    def __init__(self, rate: str, fd: int) -> None:
        super().__init__(rate)
        self._table = SharedBuckets(fd)
        self._failed = False

    def take(self, name: str) -> float:
        key, table = digest(name), self._table
        try:
            table.lock()  # (no `with`: its generator costs as much as the rest)
        except OSError as error:
            self._fall_back(error)
            return super().take(name)
        try:
            tokens = self._change(key, -1.0, time.monotonic())
        finally:
            table.unlock()
        return 0.0 if tokens is None else (1.0 - tokens) / self.per_second

    def give_back(self, name: str) -> None:
        key, table = digest(name), self._table
        try:
            table.lock()
        except OSError as error:
            self._fall_back(error)
            super().give_back(name)
            return
        try:
            self._change(key, 1.0, time.monotonic())
        finally:
            table.unlock()

    def _change(self, key: int, by: float, now: float) -> float | None:
        """Add `by` to the bucket (refilled to now) if the result is >= 0: None; else its
        level, unchanged. Under the lock."""
        table = self._table
        offset, found, held, at = table.find(key)
        tokens = self._level(held, at, now) if found else self.capacity
        after = min(self.capacity, tokens + by)
        if after < 0.0:  # refused (a new bucket is full: never)
            if found:
                table.write(offset, key, tokens, now, False)
            return tokens
        if found:
            table.write(offset, key, after, now, False)
        elif after < self.capacity:  # a full bucket is the same as none
            if offset < 0 or table.used() >= MAX_NAMES:
                self._rebuild(now)
                offset = table.find(key)[0]
            table.write(offset, key, after, now, True)
        return None

    def _level(self, tokens: float, at: float, now: float) -> float:
        level = tokens + max(0.0, now - at) * self.per_second
        # Never below 0 as written: less (or NaN) is damage, read as a full bucket.
        return min(self.capacity, level) if level >= 0.0 else self.capacity

    def _rebuild(self, now: float) -> None:
        """The table with only the buckets worth keeping (worth_keeping). Under the lock."""
        table = self._table
        levels = {key: self._level(tokens, at, now) for key, tokens, at in table.entries()}
        kept = worth_keeping(levels, self.capacity, MAX_NAMES)
        table.clear()
        for key, level in kept.items():
            table.write(table.find(key)[0], key, level, now, True)

    def _fall_back(self, error: OSError) -> None:
        if not self._failed:
            self._failed = True
            log.error(
                "the shared rate table cannot be locked (%s): this worker counts the "
                "per-key rate limit on its own",
                error.strerror,
            )
