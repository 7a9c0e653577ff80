"""Which data_dir and database a command uses, and one `postern serve` per data_dir.

A second `postern serve` on a data_dir is refused, as Postfix refuses a second master: two
would share one node id (each would release the other's claims at start) and, on SQLite,
one queue. The guard is an advisory lock (flock) on `data_dir/serve.lock`, held for the
life of the process and dropped by the kernel however it ends, `kill -9` included. CLI
commands never take it: they are meant to run beside a server.

A CLI command other than `serve` does not quietly start an empty queue of its own. With no
config file named (no --config, no $POSTERN_CONFIG), data_dir is ./var in the current
folder, and a command run from the wrong folder would find nothing there: it is refused
unless that folder already holds a database. A command given a config file uses the place
the file names (relative paths are beside the file), and may create the database there, so
that keys and domains can be set up before the first start.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

from gateway.config import Config, ConfigError
from storage.paths import database_url

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

LOCK_FILE = "serve.lock"
# A lock whose holder (the pid in the file) is gone is held by that serve's workers, which
# die with it (gateway.process.supervisor): wait this long for them to finish dying.
LEFTOVER_WAIT = 10.0


class DataDirLock:
    """The lock a running `postern serve` holds on its data_dir."""

    def __init__(self, handle: IO[str]) -> None:
        self._handle = handle

    @classmethod
    def acquire(cls, data_dir: Path) -> DataDirLock:
        """Take the lock (data_dir must exist), or a ConfigError naming who holds it.
        The file keeps the holder's pid, for that message; OSError if it cannot be opened."""
        path = data_dir / LOCK_FILE
        handle = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o600), "r+")
        try:
            _lock(handle)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read(32).strip()
            handle.close()
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise ConfigError(
                f"another postern serve{pid} is running on data_dir {data_dir} ({path} is "
                "locked); stop it first, or give this one a data_dir of its own"
            ) from None
        except OSError:
            handle.close()
            raise
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return cls(handle)

    def fileno(self) -> int:
        """The lock's descriptor: a supervisor's workers inherit it, so that the lock is
        held until the last of them is gone (a supervisor killed with SIGKILL leaves
        workers that take a moment to die, still holding the ports)."""
        return self._handle.fileno()

    def release(self) -> None:
        self._handle.close()  # closing the file drops the flock


def _lock(handle: IO[str]) -> None:
    """flock, at once; or, if the pid in the file is dead (its workers still hold the
    lock while they die), once they are gone, within LEFTOVER_WAIT; else BlockingIOError."""
    deadline = time.monotonic() + LEFTOVER_WAIT
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read(32).strip()
            if not holder.isdigit() or _alive(int(holder)) or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def database_of(config: Config) -> str:
    """The database `config` opens, for people: a SQLite file's path, else the URL with its
    password hidden."""
    url = database_url(config.storage.url, config.server.data_dir)
    path = sqlite_file(url)
    if path is not None:
        return str(path)
    return _parsed(url).render_as_string(hide_password=True)


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL; None for another database or an in-memory one."""
    parsed = _parsed(url)
    name = parsed.database
    if parsed.get_backend_name() != "sqlite" or not name or name == ":memory:":
        return None
    return Path(name)


def _parsed(url: str) -> URL:
    from sqlalchemy.engine import make_url  # not in the supervisor, which parses no URL

    return make_url(url)


def describe(config: Config, config_file: str | None) -> str:
    """The one line `--verbose` prints: which config, data_dir and database."""
    source = f"config {os.path.abspath(config_file)}" if config_file else "built-in defaults"
    data_dir = config.server.data_dir.absolute()
    return f"postern: {source}; data_dir {data_dir}; database {database_of(config)}"


def require_database(config: Config, config_file: str | None) -> None:
    """Refuse a CLI command that would create a database where nobody asked for one: with
    the built-in defaults (no config file), ./var must already hold one."""
    if config_file:
        return
    path = sqlite_file(database_url(config.storage.url, config.server.data_dir))
    if path is None or path.exists():
        return
    raise ConfigError(
        f"no database at {path} (with no config file, data_dir is ./var in the current "
        "folder); `postern serve` creates it, or name your server's config with --config"
    )
