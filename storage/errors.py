"""The root of Postern's errors and the families storage shares, with storage's own.

Storage is the bottom layer: it imports nothing of `gateway` or `api`, so the root and the
families that have members down here live in this module. `gateway.errors` re-exports them
and draws the whole tree; this is the part of it that storage sees:

    PosternError                   every error Postern raises on purpose
    ├── Refused                    what the client asked is refused; nothing was done
    │   └── InvalidInput           a value it sent is malformed or not allowed
    ├── IdempotencyError           the idempotency key was seen before
    └── StorageError               storage's own failures
        ├── StorageUnavailable     the database failed: nothing of the operation was done
        │   ├── StorageFull        ... for want of space (ENOSPC, SQLITE_FULL, PG 53100)
        │   └── WriterStopped      ... because the writer is not running
        ├── SchemaError            (storage.db) written by a newer Postern
        └── BackupError            (storage.backup) the copy failed or does not check out

A driver error (SQLAlchemy's, an OSError) never leaves storage as it is where a caller
waits for a result: `unavailable()` turns it into the StorageUnavailable it stands for,
on reads (storage.db) as on writes (storage.writer).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator


class PosternError(Exception):
    """The root: an error Postern raises on purpose (anything else is a bug)."""


class Refused(PosternError):
    """What the client asked is refused (its input, what is stored, or policy forbids it):
    nothing was done, and the text is safe to show."""


class InvalidInput(Refused):
    """A value the client sent is malformed or not allowed."""


class IdempotencyError(PosternError):
    """The idempotency key was seen before: the first request stands."""


class StorageError(PosternError):
    """Storage failed or refuses to work on this database."""


class StorageUnavailable(StorageError):
    """The database refused or failed the operation; nothing of it was committed."""

    kind = "error"  # the label of postern_storage_write_failures_total{reason}


class StorageFull(StorageUnavailable):
    """The write failed for want of space: the disk, a quota, the database's size cap."""

    kind = "full"


class WriterStopped(StorageUnavailable):
    """The writer is not running (stopping, or never started)."""

    kind = "stopped"


_SQLITE_FULL = 13  # SQLite's primary result code for "database or disk is full"
# SQLite's NOMEM, CORRUPT, NOTADB: the file or the library, never one write's data.
_SQLITE_BROKEN = {7, 11, 26}
_PG_DISK_FULL = "53100"  # PostgreSQL's SQLSTATE disk_full


def _causes(error: BaseException) -> Iterator[BaseException]:
    """`error`, then what it wraps (a driver's `orig`, or its `__cause__`), each once."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = getattr(current, "orig", None) or current.__cause__


def _sqlite_code(error: BaseException) -> int | None:
    code = getattr(error, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC/EDQUOT, SQLITE_FULL or PostgreSQL's disk_full, however deeply wrapped."""
    for current in _causes(error):
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if _sqlite_code(current) == _SQLITE_FULL:
            return True
        if getattr(current, "sqlstate", None) == _PG_DISK_FULL:
            return True
    return False


def is_database_broken(error: BaseException) -> bool:
    """SQLite out of memory, its file corrupt or not a database, however wrapped: every
    write fails so, whatever its data."""
    return any(
        isinstance(current, MemoryError) or _sqlite_code(current) in _SQLITE_BROKEN
        for current in _causes(error)
    )


def database_failed(error: BaseException) -> bool:
    """The database itself failed (full, locked, I/O, corrupt, down), not one write's data
    (a unique-key clash): every write would fail the same way for now."""
    # Imported here: the error tree is imported by the config's checks, which a command
    # that only reads the config should not pay SQLAlchemy for (0.6 s).
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    if isinstance(error, OSError | OperationalError | InterfaceError) or is_disk_full(error):
        return True  # (asyncpg's disk_full arrives as a bare DBAPIError)
    if is_database_broken(error):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


def unavailable(error: BaseException) -> StorageUnavailable:
    """The storage error a driver's failure stands for: StorageFull for want of space,
    else StorageUnavailable; its text is the driver's first line (no SQL, no values)."""
    kind = StorageFull if is_disk_full(error) else StorageUnavailable
    text = str(error).strip()
    return kind(text.splitlines()[0] if text else repr(error))
