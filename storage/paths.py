"""Where the data lives: data_dir and the database URL. No SQLAlchemy here: the supervisor
(gateway.process.supervisor) prepares data_dir and names the database but opens none."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from urllib.parse import unquote

__all__ = ["database_file", "database_url", "prepare_data_dir", "sqlite_file", "write_whole"]


def prepare_data_dir(data_dir: Path) -> None:
    """Create data_dir private to this user: it holds message bodies and the secret key."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if data_dir.stat().st_mode & 0o077:
        data_dir.chmod(0o700)


def write_whole(path: Path, data: bytes, mode: int, *, replace: bool) -> None:
    """`path` holds `data` whole or not at all, after a crash at any point: written under a
    private draft name (created with `mode`: never wider, whatever the umask), fsynced, then
    put in place, and the directory fsynced. `replace`: over any file there (os.replace);
    else only if there is none (os.link: a file another process put there first stays,
    for the caller to read). The draft never outlives the call."""
    draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(draft, path)
        else:
            with contextlib.suppress(FileExistsError):
                os.link(draft, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(draft)  # (gone once renamed)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """A rename or new file in `directory` made durable (a directory's entries are its own
    data); a filesystem that cannot is left as it is."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def database_url(url: str, data_dir: Path) -> str:
    """The SQLAlchemy URL: the configured one, or SQLite in data_dir."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url:
        return url
    return f"sqlite:///{(data_dir / 'postern.db').resolve()}"


def sqlite_file(url: str) -> str | None:
    """The file an SQLite URL names (`sqlite:///relative`, `sqlite:////absolute`, a
    `file:` URI), as storage.db opens it; None for another database or one in memory."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.startswith("sqlite"):
        return None
    database, _, query = rest.removeprefix("/").partition("?")
    return None if "mode=memory" in query else database_file(unquote(database))


def database_file(database: str | None) -> str | None:
    """The SQLite database's file from a URL's database part (a `file:` URI's path), or
    None in memory."""
    if not database:
        return None
    if database.startswith("file:"):
        path, _, query = database[len("file:") :].partition("?")
        if "mode=memory" in query:
            return None
        database = path
    return None if database in ("", ":memory:") else database
