"""The database: engine for SQLite (WAL, fsync on commit) or PostgreSQL, schema and version.

SQLite is the embedded default in `data_dir`. `synchronous=FULL` makes every commit durable
across power loss; group commit (storage.writer) keeps that cheap by committing many
messages per fsync.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel import SQLModel

from storage.models import SCHEMA_VERSION, Meta


class SchemaError(Exception):
    """The database was written by a newer Postern than this one."""


def database_url(url: str, data_dir: Path) -> str:
    """The SQLAlchemy URL: the configured one, or SQLite in data_dir."""
    if url:
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            return "postgresql+asyncpg://" + url.split("://", 1)[1]
        return url
    return f"sqlite+aiosqlite:///{(data_dir / 'postern.db').resolve()}"


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA temp_store=MEMORY")
    cursor.close()


def make_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, pool_size=4, max_overflow=4)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


async def create_schema(engine: AsyncEngine) -> None:
    """Create missing tables and record the schema version; refuse a newer database."""
    async with engine.begin() as conn:
        if not is_sqlite(engine):
            # Nodes starting together must not race to create the same tables.
            await conn.execute(text("SELECT pg_advisory_xact_lock(7301)"))
        await conn.run_sync(SQLModel.metadata.create_all)
        row = (
            await conn.execute(select(Meta.value).where(Meta.key == "schema_version"))  # type: ignore[arg-type]
        ).scalar_one_or_none()
        if row is None:
            await conn.execute(
                Meta.__table__.insert().values(key="schema_version", value=str(SCHEMA_VERSION))  # type: ignore[attr-defined]
            )
        elif int(row) > SCHEMA_VERSION:
            raise SchemaError(
                f"the database has schema version {row}, newer than this Postern's "
                f"{SCHEMA_VERSION}; upgrade Postern"
            )
