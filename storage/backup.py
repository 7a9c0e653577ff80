"""An online copy of the SQLite database, taken with SQLite's backup API while the server
writes.

The copy is made in one step (all pages under one read transaction): in WAL mode that
snapshot never blocks the server's writers, and nothing they commit meanwhile can change or
restart it (a backup in several steps restarts whenever another connection writes, and may
never finish under steady mail). Every message committed before the copy began is in it,
whole; none committed after it began is half in it. The copy is private (0600), checked
(`PRAGMA quick_check`) and fsynced under a temporary name, and only then gets its name.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from storage.errors import StorageError
from storage.models import Meta


class BackupError(StorageError):
    """The copy could not be made or does not check out; nothing was left at the target."""


@dataclass(frozen=True)
class Snapshot:
    bytes: int
    messages: int
    meta: dict[str, str]  # the postern_meta table: schema version, secret key id


def backup_sqlite(source: Path, target: Path, busy_timeout: float = 30.0) -> Snapshot:
    """Copy the database at `source` to `target`, a file that must not exist yet."""
    if target.exists():
        raise BackupError(f"{target} exists")
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    # Created private before SQLite opens it: the copy holds message bodies.
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    try:
        # A read-write connection that writes nothing: read-only ones leave -wal and -shm
        # files behind in data_dir, owned by whoever ran the backup.
        with contextlib.closing(sqlite3.connect(source, timeout=busy_timeout)) as live:
            live.execute("PRAGMA query_only=1")
            with contextlib.closing(sqlite3.connect(temp)) as copy:
                live.backup(copy)  # pages=-1: one step, one snapshot (see above)
        snapshot = _check(temp)
        _fsync(temp)
        os.rename(temp, target)
        _fsync(target.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    return snapshot


def _check(path: Path) -> Snapshot:
    with contextlib.closing(sqlite3.connect(path)) as copy:
        verdict = copy.execute("PRAGMA quick_check").fetchone()[0]
        if verdict != "ok":
            raise BackupError(f"the copy fails SQLite's quick_check: {verdict}")
        try:
            messages = copy.execute("SELECT count(*) FROM message").fetchone()[0]
            meta = dict(copy.execute(f"SELECT key, value FROM {Meta.name}").fetchall())
        except sqlite3.OperationalError:  # a database no server ever ran on
            messages, meta = 0, {}
    return Snapshot(bytes=path.stat().st_size, messages=int(messages), meta=meta)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
