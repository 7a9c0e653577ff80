"""SQLAlchemy's module of a database dialect (its INSERT ... ON CONFLICT, its types), by the
dialect's name, imported when first asked for.

Importing `sqlalchemy.dialects.postgresql` loads every PostgreSQL driver's dialect too: done
at the top of the storage modules that upsert, it cost every `postern` command on SQLite
that much of its start (bench/cli_start.py). The engine imports its own dialect anyway, so
asking here once a connection exists costs nothing more.
"""

from __future__ import annotations

from types import ModuleType


def dialect_module(name: str) -> ModuleType:
    """sqlalchemy.dialects.sqlite or sqlalchemy.dialects.postgresql, by `conn.dialect.name`."""
    if name == "sqlite":
        from sqlalchemy.dialects import sqlite

        return sqlite
    if name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql
    raise KeyError(name)
