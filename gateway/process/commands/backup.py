"""`postern backup PATH`: a copy of data_dir that `postern serve` can run on, taken while
the server runs and writes.

PATH must be new or empty. It gets (directory 0700, files 0600):

  postern.db   the SQLite database, one consistent snapshot (storage.backup)
  node_id      the node's identity, so that a node restored from PATH takes back its claims
  secret.key   the key that seals pool passwords and DKIM private keys. Copied: a backup
               that cannot decrypt them is no backup. Not copied when the key comes from
               $POSTERN_SECRET_KEY or with --without-key. Each case is said loudly on
               stderr: with the key, whoever holds the backup can read those secrets;
               without it, the backup alone cannot restore them.

To restore, stop the server and run it with PATH as data_dir (README "Backup and
restore"). PostgreSQL storage is backed up with pg_dump: the command says so (exit 2).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from gateway.config import Config, ConfigError
from gateway.process.commands.options import common_options
from gateway.security.secrets import ENV_VAR, KEY_FILE, META_KEY_ID, SecretError, installed_key_id
from storage.backup import BackupError, backup_sqlite
from storage.db import database_url

COMMANDS = ("backup",)
DATABASE = "postern.db"
NODE_ID = "node_id"


class BackupRefused(ConfigError):
    """The one line the operator sees (exit 2)."""


def add_commands(commands: Any) -> None:
    parser = commands.add_parser(
        "backup", help="copy the database (online) and the secret key into a new directory"
    )
    parser.add_argument("path", help="a new or empty directory: the copy of data_dir")
    common_options(parser)  # --config and --verbose after the subcommand too
    parser.add_argument(
        "--without-key",
        action="store_true",
        help=f"leave {KEY_FILE} out (keep it safe elsewhere: the backup needs it)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace, config: Config) -> int:
    """Back up; BackupRefused (one line, exit 2) when it cannot."""
    report = backup(config, Path(args.path), with_key=not args.without_key)
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        print(_text(report))
    for warning in report["warnings"]:
        print(f"WARNING: {warning}", file=sys.stderr)
    return 0


def backup(config: Config, target: Path, *, with_key: bool) -> dict[str, Any]:
    data_dir = config.server.data_dir
    source = _sqlite_file(database_url(config.storage.url, data_dir))
    if not source.is_file():
        raise BackupRefused(f"no database at {source}: nothing to back up")
    try:
        key_id = installed_key_id(data_dir)
    except SecretError as error:
        raise BackupRefused(str(error)) from None
    _make_private_dir(target)
    try:
        snapshot = backup_sqlite(source, target / DATABASE)
    except (BackupError, sqlite3.Error, OSError) as error:
        raise BackupRefused(f"backup of {source} failed: {_first_line(error)}") from None
    files = [DATABASE]
    try:
        if _copy_private(data_dir / NODE_ID, target / NODE_ID):
            files.append(NODE_ID)
        key, warnings = _secret_key(data_dir, target, key_id, with_key)
    except OSError as error:
        raise BackupRefused(f"copying into {target} failed: {_first_line(error)}") from None
    if key == "copied":
        files.append(KEY_FILE)
    sealed_with = snapshot.meta.get(META_KEY_ID)
    if sealed_with and key_id and sealed_with != key_id:
        warnings.append(
            f"this database's secrets are sealed with key {sealed_with}, but data_dir's key "
            f"is {key_id}: find the key {sealed_with} before you need this backup"
        )
    return {
        "path": str(target.resolve()),
        "database": str(source),
        "bytes": snapshot.bytes,
        "messages": snapshot.messages,
        "files": files,
        "secret_key": key,  # copied | environment | excluded | none
        "warnings": warnings,
    }


def _sqlite_file(url: str) -> Path:
    if url.startswith("postgresql"):
        raise BackupRefused(
            "storage.url is PostgreSQL: back it up with pg_dump (pg_dump --format=custom "
            "--file=postern.dump DBNAME) and keep POSTERN_SECRET_KEY with it; see README "
            '"Backup and restore"'
        )
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupRefused(f"storage.url {url!r} names no database file to back up")
    return Path(database)


def _make_private_dir(target: Path) -> None:
    try:
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        if any(target.iterdir()):
            raise BackupRefused(f"{target} is not empty: give a new or empty directory")
        if target.stat().st_mode & 0o077:
            target.chmod(0o700)
    except (NotADirectoryError, FileExistsError):
        raise BackupRefused(f"{target} exists and is not a directory") from None
    except OSError as error:
        raise BackupRefused(f"cannot use {target}: {error.strerror or error}") from None


def _secret_key(
    data_dir: Path, target: Path, key_id: str | None, with_key: bool
) -> tuple[str, list[str]]:
    """Where the key went ("copied", "environment", "excluded", "none"), and what to say."""
    lost = "pool passwords and DKIM private keys in it cannot be decrypted"
    if os.environ.get(ENV_VAR, "").strip():
        return "environment", [
            f"the secret key comes from ${ENV_VAR} and is NOT in this backup: without it "
            f"the {lost}. Keep a copy of ${ENV_VAR} (key id {key_id}) apart from the backup"
        ]
    if key_id is None:
        return "none", []  # no server has sealed anything with a key yet
    if not with_key:
        return "excluded", [
            f"{KEY_FILE} was left out (--without-key): without it the {lost}. Keep "
            f"{data_dir / KEY_FILE} (key id {key_id}) safe elsewhere"
        ]
    if not _copy_private(data_dir / KEY_FILE, target / KEY_FILE):
        return "none", []  # gone since it was read: nothing to copy
    return "copied", [
        f"{target / KEY_FILE} is a copy of the secret key (mode 0600): whoever holds this "
        "backup can decrypt the pool passwords and DKIM private keys in it. Keep it as "
        "safe as the server"
    ]


def _copy_private(source: Path, target: Path) -> bool:
    """Copy a small file as mode 0600 (never through a symlink); False if it is missing."""
    try:
        data = source.read_bytes()
    except FileNotFoundError:
        return False
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    fd = os.open(target, flags, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    with contextlib.suppress(OSError):
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    return True


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _text(report: dict[str, Any]) -> str:
    size = report["bytes"] / 1e6
    lines = [
        f"backed up {report['database']} to {report['path']}/{DATABASE}: one consistent "
        f"snapshot, {report['messages']} messages, {size:.1f} MB",
        f"files: {', '.join(report['files'])}",
        f"to restore: stop postern, make {report['path']} its data_dir (see README "
        '"Backup and restore")',
    ]
    return "\n".join(lines)
