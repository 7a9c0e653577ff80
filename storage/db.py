"""The database: SQLite (WAL, fsync on commit) or PostgreSQL, behind one small interface.

Queries are plain functions of a synchronous SQLAlchemy `Connection`; `Database` runs them
without blocking the event loop. On SQLite it runs them in threads of its own with the
standard `sqlite3` driver: a whole transaction costs one hop to a thread instead of one per
statement. On PostgreSQL it runs them on asyncpg through SQLAlchemy's `run_sync`.

`synchronous=FULL` makes every SQLite commit durable across power loss; group commit
(storage.writer) keeps that cheap by committing many messages per fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, inspect, select, text
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DisconnectionError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry

from storage.errors import StorageError, database_failed, unavailable
from storage.models import EVENT_TXID, SCHEMA_VERSION, Meta, metadata

# Re-exported: where the data lives is asked of storage.db as much as of storage.paths.
from storage.paths import database_url as database_url
from storage.paths import prepare_data_dir as prepare_data_dir
from storage.write_lock import LockHook, WriteLock
from storage.write_lock import sqlite_pragmas as _sqlite_pragmas  # (by name: tests replace it)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger("postern.storage")
T = TypeVar("T")
Query = Callable[[Connection], T]
LOCK_WAIT = 300.0  # seconds to wait for another process's schema upgrade (SQLite)
# PostgreSQL: a pooled connection idle this long is pinged at its next checkout (a busy
# one never is): firewalls and NATs drop idle connections after minutes, silently.
IDLE_PING_AFTER = 30.0
_RETURNED_AT = "postern_returned_at"  # in a pooled connection's `info`


class SchemaError(StorageError):
    """The database was written by a newer Postern than this one."""


def _sqlite_engine(url: str, connections: int, overflow: int) -> Engine:
    # hide_parameters: an error's text (logged) must not carry message content, addresses
    # or key hashes.
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False},
        pool_size=connections,
        max_overflow=overflow,
        hide_parameters=True,
    )
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


class Database:
    """Runs synchronous-style queries against SQLite or PostgreSQL from async code."""

    def __init__(self, url: str, connections: int = 10) -> None:
        """`connections`: PostgreSQL's pool (as many again may overflow); a worker of
        several takes its share, so that a node asks the server for the same number."""
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._sync: Engine | None = None
        self._async: AsyncEngine | None = None
        if self.is_sqlite:
            url = url.replace("sqlite+aiosqlite:", "sqlite:")
            self._sync = _sqlite_engine(url, connections=5, overflow=5)
            # Writes keep one connection of their own: its page cache stays warm between
            # transactions (a pooled connection that another one wrote behind would start
            # each transaction by re-reading the pages it touches), and reads never wait
            # for it.
            self._writes = _sqlite_engine(url, connections=1, overflow=0)
            self._write_conn: Connection | None = None  # held by the write thread
            # One writer thread (SQLite has one writer anyway), a few for reads.
            self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="db-write")
            self._write_lock = WriteLock(self._sync.url.database)
            self._read_threads = ThreadPoolExecutor(3, thread_name_prefix="db-read")
        else:
            # Imported for PostgreSQL alone: it loads SQLAlchemy's ORM (~70 ms of every
            # start of `postern` on SQLite).
            from sqlalchemy.ext.asyncio import create_async_engine

            on_asyncpg = make_url(url).get_driver_name() == "asyncpg"
            self._async = create_async_engine(
                url,
                pool_size=connections,
                max_overflow=connections,
                pool_pre_ping=not on_asyncpg,  # on asyncpg, _refuse_if_hung_up instead
                hide_parameters=True,
            )
            if on_asyncpg:
                pool = self._async.sync_engine.pool
                event.listen(pool, "checkout", _refuse_if_hung_up)
                event.listen(pool, "checkin", _note_returned)

    @property
    def dialect(self) -> str:
        return "sqlite" if self.is_sqlite else "postgresql"

    def watch_write_lock(
        self, *, waited: LockHook | None = None, held: LockHook | None = None
    ) -> None:
        """SQLite: `waited(seconds)` after each wait of this database's write transactions
        for the write lock another process held (the workers of `serve`, a CLI command),
        one that timed out included; `held(seconds)` each time one lets the lock go, with
        how long it had it (the SQL, the fsync, any wait for the GIL between). Summed over
        every process and divided by the wall time, the lock's busy share: near 1, writes
        queue on it however many workers there are. Told on the write thread; a hook that
        raises is logged once and not called again. On PostgreSQL a no-op: there writers
        wait in the server, row by row, unseen here."""
        if self._sync is not None:
            self._write_lock.on_wait, self._write_lock.on_held = waited, held

    @property
    def write_dialect(self) -> Dialect | None:
        """SQLite: the dialect its writes are compiled for (storage.dml); else None."""
        return self._writes.dialect if self._sync is not None else None

    def tell_write_lock(self, *, held: float, waited: float) -> None:
        """A hold of the write lock (and the wait for it, if any) by another process on
        this one's behalf (the node's writer process, storage.writer_process), told as
        this process's own are."""
        if self._sync is not None:
            if waited:
                self._write_lock.tell("on_wait", waited)
            self._write_lock.tell("on_held", held)

    async def read(self, query: Query[T]) -> T:
        """Run `query` on a connection outside any explicit transaction. The database failing
        (down, locked, I/O) is raised as the StorageUnavailable it stands for, as a write's
        is; any other error (a bug in the query) is raised as it is, with its traceback."""
        try:
            return await self._read(query)
        except (SQLAlchemyError, OSError) as error:
            if not database_failed(error):
                raise
            raise unavailable(error) from error

    async def _read(self, query: Query[T]) -> T:
        if self._sync is not None:
            engine = self._sync

            def run() -> T:
                with engine.connect() as conn:
                    return query(conn)

            return await asyncio.get_running_loop().run_in_executor(self._read_threads, run)
        assert self._async is not None
        async with self._async.connect() as conn:
            return await conn.run_sync(query)

    async def transaction(self, work: Query[T], *, durable: bool = True) -> T:
        """Run `work` in one transaction, committed before this returns. `durable=False`:
        the commit need not be on disk yet (SQLite: synchronous=NORMAL for it, so no
        fsync in WAL mode; PostgreSQL: synchronous_commit off). A power cut may then lose
        it, never corrupt anything: for counts that matter for minutes, never for mail."""
        if self._sync is not None:

            def run() -> T:
                with self._write_lock.held():
                    conn = self._write_connection()
                    try:
                        if not durable:
                            _synchronous(conn, "NORMAL")
                        try:
                            with conn.begin():
                                return work(conn)
                        finally:
                            if not durable:
                                _back_to_full(conn)
                    except BaseException:
                        # Whatever failed, the next transaction starts on a fresh checkout
                        # (this one goes back through the pool's reset, or is invalidated).
                        self._drop_write_connection()
                        raise

            return await asyncio.get_running_loop().run_in_executor(self._write_thread, run)
        assert self._async is not None
        async with self._async.begin() as conn:
            if not durable:
                await conn.execute(text("SET LOCAL synchronous_commit TO OFF"))
            return await conn.run_sync(work)

    async def exclusive(self, work: Query[T]) -> T:
        """Run `work` in one transaction that holds SQLite's write lock from its start
        (`BEGIN IMMEDIATE`): what it reads cannot change before it writes. pysqlite's own
        transactions begin only at the first INSERT/UPDATE/DELETE (its DDL and reads run
        outside any), so the driver's autocommit is turned on and the BEGIN is ours.
        On PostgreSQL, a plain transaction (`work` takes its own locks)."""
        if self._sync is None:
            return await self.transaction(work)
        engine = self._writes

        def run() -> T:
            self._drop_write_connection()  # the pool's one connection, for this checkout
            with self._write_lock.held(LOCK_WAIT), engine.connect() as conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                _begin_immediate(conn)
                try:
                    result = work(conn)
                except BaseException:
                    conn.exec_driver_sql("ROLLBACK")
                    raise
                conn.exec_driver_sql("COMMIT")
                return result

        return await asyncio.get_running_loop().run_in_executor(self._write_thread, run)

    def _write_connection(self) -> Connection:
        """The write thread's connection, kept checked out from one transaction to the next:
        a checkout and check-in each time (pool events, the reset's ROLLBACK) cost ~10 us a
        transaction, 1-2 transactions a message. Only the write thread calls this."""
        conn = self._write_conn
        # A listener added to the engine since (a test's statement capture) reaches only
        # connections made after it: SQLAlchemy copies `_has_events` into each.
        if (
            conn is None
            or conn.closed
            or conn.invalidated
            or getattr(conn, "_has_events", None) != getattr(self._writes, "_has_events", None)
        ):
            self._drop_write_connection()
            conn = self._write_conn = self._writes.connect()
        return conn

    def _drop_write_connection(self) -> None:
        """Back to the pool (its reset rolls back anything left open), on the write thread."""
        conn, self._write_conn = self._write_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    async def dispose(self) -> None:
        if self._sync is not None:
            with contextlib.suppress(RuntimeError):  # an executor shut down already
                self._write_thread.submit(self._drop_write_connection)
            self._write_thread.shutdown(wait=True)
            self._write_lock.close()
            self._read_threads.shutdown(wait=True)
            self._sync.dispose()
            self._writes.dispose()
        if self._async is not None:
            await self._async.dispose()


def _refuse_if_hung_up(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: object) -> None:
    """A pooled PostgreSQL connection the server has closed (a restart, an idle timeout,
    pg_terminate_backend) is refused at checkout, and the pool opens another in its place
    (SQLAlchemy tries a checkout that raises DisconnectionError once more). asyncpg marks a
    connection closed as soon as the loop reads the server's goodbye, so this costs no
    round trip, where `pool_pre_ping` cost three at every checkout on asyncpg (BEGIN, an
    empty query, ROLLBACK): a quarter of a message's statements (bench/README.md). A
    connection idle for IDLE_PING_AFTER seconds is pinged first, as every checkout was: one
    a firewall or NAT dropped answers the ping with a reset, and the caller's work goes to a
    new connection. (One dropped without any answer stalls the ping as it did before, until
    TCP gives up.)"""
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError("the database server closed this connection")
    returned = record.info.get(_RETURNED_AT)
    if returned is not None and time.monotonic() - returned > IDLE_PING_AFTER:
        try:
            dbapi_connection.ping()
        except Exception as error:
            raise DisconnectionError(
                f"the database server did not answer a ping: {error}"
            ) from error


def _note_returned(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    """When the connection went back to the pool (`record.info` lasts as long as the
    connection: a new one starts without it)."""
    record.info[_RETURNED_AT] = time.monotonic()


def _synchronous(conn: Connection, level: str) -> None:
    """SQLite's `synchronous` for the next commits of `conn` (set outside a transaction:
    pysqlite begins none for a PRAGMA, and the commit ends SQLAlchemy's own)."""
    conn.exec_driver_sql(f"PRAGMA synchronous={level}")
    conn.commit()


def _back_to_full(conn: Connection) -> None:
    """Every later commit of the write connection fsyncs again; a connection that cannot be
    told so is thrown away (the next one is opened with synchronous=FULL), never reused."""
    try:
        _synchronous(conn, "FULL")
    except BaseException:
        conn.invalidate()
        raise


def open_database(url: str, connections: int = 10) -> Database:
    return Database(url, connections)


def _begin_immediate(conn: Connection) -> None:
    """Take SQLite's write lock, waiting up to LOCK_WAIT for another process that holds it
    (the busy timeout alone is shorter than a long upgrade)."""
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            return
        except OperationalError as error:
            if "locked" not in str(error.orig) or time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def _create_schema(conn: Connection) -> None:
    # Nodes and CLI commands starting together must not race to create or upgrade the same
    # tables: PostgreSQL takes a lock here, SQLite holds its write lock already (exclusive);
    # the version is read under the lock, so only the first one upgrades.
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(7301)"))
    metadata.create_all(conn)
    version = conn.execute(select(Meta.c.value).where(Meta.c.key == "schema_version")).scalar()
    if version is None:
        conn.execute(Meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
    elif int(version) > SCHEMA_VERSION:
        raise SchemaError(
            f"the database has schema version {version}, newer than this Postern's "
            f"{SCHEMA_VERSION}; upgrade Postern"
        )
    elif int(version) < SCHEMA_VERSION:
        _upgrade(conn)
        conn.execute(
            Meta.update().where(Meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION))
        )
    if conn.dialect.name == "postgresql":
        _rebase_event_txids(conn)


def _rebase_event_txids(conn: Connection) -> None:
    """Events restored from another PostgreSQL cluster (pg_dump, logical replication) keep
    its transaction ids, which can be ahead of this cluster's: new events would sort before
    every webhook's cursor and wait until the counter caught up. Renumber them to txid 0
    (then in id order) and start each cursor before the lowest id it had not been sent, and
    each replay mark at the highest id it covered: some events may be sent twice, none
    skipped or dropped."""
    # Every transaction this cluster committed has an id below its snapshot's xmax: a
    # stored one at or above it cannot come from here (a single statement, one snapshot).
    foreign = conn.execute(
        text("SELECT max(txid) >= pg_snapshot_xmax(pg_current_snapshot())::text::bigint FROM event")
    ).scalar()
    if not foreign:
        return
    conn.execute(text("LOCK TABLE event IN SHARE ROW EXCLUSIVE MODE"))  # no writer between
    conn.execute(
        text(
            "UPDATE webhook SET cursor_txid = 0, cursor_id = COALESCE("
            "(SELECT MIN(e.id) - 1 FROM event e"
            " WHERE (e.txid, e.id) > (webhook.cursor_txid, webhook.cursor_id)),"
            " (SELECT MAX(id) FROM event), 0), replayed_txid = 0, replayed_id = COALESCE("
            "(SELECT MAX(e.id) FROM event e"
            " WHERE (e.txid, e.id) <= (webhook.replayed_txid, webhook.replayed_id)), 0)"
        )
    )
    conn.execute(text("UPDATE event SET txid = 0 WHERE txid <> 0"))
    log.warning("events carried another PostgreSQL cluster's transaction ids: renumbered")


# Columns added to tables that existed before: (table, column, DDL type and default).
_ADDED_COLUMNS = (
    ("smtp_pool", "rate", "VARCHAR NOT NULL DEFAULT ''"),
    ("smtp_pool", "daily_limit", "INTEGER NOT NULL DEFAULT 0"),
    ("message", "api_key_id", "VARCHAR(64)"),
    ("event", "txid", "BIGINT NOT NULL DEFAULT 0"),  # PostgreSQL: EVENT_TXID, below
    ("webhook", "cursor_txid", "BIGINT NOT NULL DEFAULT 0"),
    ("webhook", "cursor_id", "BIGINT NOT NULL DEFAULT 0"),
    ("webhook", "replayed_txid", "BIGINT NOT NULL DEFAULT 0"),
    ("webhook", "replayed_id", "BIGINT NOT NULL DEFAULT 0"),
    ("webhook", "replayed_at", "FLOAT NOT NULL DEFAULT 0"),
    ("message", "retried_at", "FLOAT"),
    ("message", "forced_attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("idempotency", "request_hash", "VARCHAR(64)"),  # NULL: a reservation that matches any
    ("message", "route_default", "BOOLEAN NOT NULL DEFAULT FALSE"),
    # Schema 7: who owns what (users), and the role a session was opened for.
    ("message", "user_id", "VARCHAR(64)"),
    ("api_key", "user_id", "VARCHAR(64)"),
    ("smtp_pool", "created_by", "VARCHAR(64)"),
    ("sender_domain", "created_by", "VARCHAR(64)"),
    ("sender_alias", "created_by", "VARCHAR(64)"),
    ("webhook", "created_by", "VARCHAR(64)"),
    ("sessions", "role", "VARCHAR(16) NOT NULL DEFAULT ''"),
    # Schema 8: reports that came back (bounce_report and soft_bounce are new tables).
    ("event", "detail", "TEXT"),
    ("suppression", "note", "TEXT"),
    # Schema 9: the client's Message-ID, for bounce matching and the search.
    ("message", "header_message_id", "VARCHAR(255)"),
    # Schema 10: the search by recipient reads by (email, time).
    ("recipient", "message_created_at", "FLOAT NOT NULL DEFAULT 0"),
    # Schema 10: DNSBL checks (blocklist_check and blocklist_run are new tables, no column).
    # Schema 10: each upstream answer's transaction time, for the Live page's latency chart.
    ("event", "upstream_seconds", "FLOAT"),
    # Schema 10: sender reputation (reputation_day, reputation_job and reputation_subject
    # are new tables: no column added).
    # Schema 10: warmup schedules (a new table, `warmup`, from create_all; no new column).
    # Schema 10: hold and release (postsuper -h/-H), held time left out of max_age.
    ("message", "held_at", "FLOAT"),
    ("message", "held_for", "FLOAT NOT NULL DEFAULT 0"),
    # Schema 10: scheduled sends (the time a message waits for; max_age counts from it).
    ("message", "scheduled_at", "FLOAT"),
    # Schema 10: soft bounces counted in a sliding window (each bounce's time kept).
    ("soft_bounce", "recent", "TEXT"),
    # Schema 10: the search by client address (message_subject_word is a new table).
    ("message", "client_address", "VARCHAR(32)"),
    # Schema 10: a bounce report's bytes hashed alone (the same bytes with and without an
    # envelope recipient are one report); ix_bounce_report_raw_hash comes from the model.
    ("bounce_report", "raw_hash", "VARCHAR(64)"),
    # Schema 10: the charted events per minute (event_minute and event_roll are new tables,
    # no column; the roll starts before the last two days' events: storage.event_minutes).
    # Schema 11: SMTP AUTH failure budgets shared by workers and nodes (auth_failure is a
    # new table, from create_all: no column added).
    # Schema 11: large bodies written in pieces (message_piece is a new table, from
    # create_all, with its index; no column added: a pieced body's message_body row is empty).
    # Schema 12: no column; three indexes of `message` made partial (_DROPPED_INDEXES).
)

# Run once, right after their column was added, to fill it in for the rows already there.
_BACKFILLS = {
    # A report stored for no envelope recipient had the bare hash of its bytes as its
    # identity; one that came for a recipient cannot be told without hashing it: left NULL.
    ("bounce_report", "raw_hash"): (
        "UPDATE bounce_report SET raw_hash = content_hash WHERE envelope_recipient IS NULL"
    ),
    ("recipient", "message_created_at"): (
        "UPDATE recipient SET message_created_at = COALESCE((SELECT message.created_at"
        " FROM message WHERE message.id = recipient.message_id), 0)"
    ),
    ("message", "api_key_id"): (
        "UPDATE message SET api_key_id = (SELECT message_meta.api_key_id FROM message_meta"
        " WHERE message_meta.message_id = message.id)"
        " WHERE EXISTS (SELECT 1 FROM message_meta WHERE message_meta.message_id = message.id"
        " AND message_meta.api_key_id IS NOT NULL)"
    ),
    # Older rows did not say whether their route was the default. Read as the default (it
    # follows the current default pool) only what can have been nothing else: a pool id
    # without an alias_id (aliases route by group; a pool id came from alias_id or the
    # default) or no route at all (direct, queued while no pool existed). A group without
    # an alias_id may have come from a From alias or a key's own group: read as explicit,
    # it keeps to that group, as it did.
    ("message", "route_default"): (
        "UPDATE message SET route_default = TRUE WHERE alias_id IS NULL"
        " AND (pool_id IS NOT NULL OR ip_pool IS NULL)"
    ),
    # Schema 3 fanned events out to webhook_delivery rows: each webhook's cursor starts
    # before the first event it was still owed or that was not yet fanned out (on
    # PostgreSQL a later id could be fanned out before an earlier one), else at the end.
    ("webhook", "cursor_id"): (
        "UPDATE webhook SET cursor_id = COALESCE((SELECT MIN(x) - 1 FROM ("
        "SELECT event_id AS x FROM webhook_delivery WHERE webhook_id = webhook.id"
        " UNION ALL SELECT id FROM event WHERE pending) AS owed),"
        " (SELECT MAX(id) FROM event), 0)"
    ),
}


# Indexes an older schema had that a newer one replaced.
_DROPPED_INDEXES = (
    "ix_recipient_message",  # by ix_recipient_message_email
    "ix_recipient_email",  # by ix_recipient_email_time (schema 10)
    # Schema 12: full indexes replaced by partial ones (storage.models: the rows whose
    # column is NULL no longer write an entry), under new names, so that the drop and the
    # create below are both done once, whichever process upgrades first.
    "ix_message_claimed_by",  # by ix_message_claimed
    "ix_message_api_key",  # by ix_message_sent_by_key
    "ix_message_user",  # by ix_message_sent_by_user
)

# What schema 3's webhook fan-out used. Dropped on SQLite (one node); kept on PostgreSQL,
# where nodes not yet upgraded still write `pending` and read `webhook_delivery` during a
# rolling upgrade (the column gets a default, as schema 4 no longer writes it).
_FAN_OUT_INDEX, _FAN_OUT_TABLE, _FAN_OUT_COLUMN = "ix_event_pending", "webhook_delivery", "pending"


def _upgrade(conn: Connection) -> None:
    """Bring an older schema up to date: new columns and the indexes of existing tables
    (create_all creates whole missing tables, but not what an existing one lacks)."""
    inspector = inspect(conn)
    for name, column, ddl in _ADDED_COLUMNS:
        if column not in {c["name"] for c in inspector.get_columns(name)}:
            conn.execute(text(f"ALTER TABLE {name} ADD COLUMN {column} {ddl}"))
            backfill = _BACKFILLS.get((name, column))
            if backfill is not None:  # before the indexes: no index to maintain row by row
                conn.execute(text(backfill))
    if conn.dialect.name == "postgresql":
        # Events written from now on carry their transaction's id; those already there
        # keep 0 and come first, in id order, as they did.
        conn.execute(text(f"ALTER TABLE event ALTER COLUMN txid SET DEFAULT {EVENT_TXID}"))
        # Schema 5 has longer event types (`possible_duplicate`); a wider varchar is a
        # change of the catalogue only, no table rewrite.
        conn.execute(text("ALTER TABLE event ALTER COLUMN type TYPE VARCHAR(32)"))
    fanned_out = _FAN_OUT_COLUMN in {c["name"] for c in inspector.get_columns("event")}
    if fanned_out and conn.dialect.name == "postgresql":
        conn.execute(text(f"ALTER TABLE event ALTER COLUMN {_FAN_OUT_COLUMN} SET DEFAULT false"))
    elif fanned_out:
        conn.execute(text(f"DROP INDEX IF EXISTS {_FAN_OUT_INDEX}"))
        conn.execute(text(f"DROP TABLE IF EXISTS {_FAN_OUT_TABLE}"))
        conn.execute(text(f"ALTER TABLE event DROP COLUMN {_FAN_OUT_COLUMN}"))
    for table in metadata.sorted_tables:
        for index in table.indexes:
            index.create(conn, checkfirst=True)
    # Superseded indexes (each costs work on every write) go last: on PostgreSQL a DROP
    # INDEX locks its table against reads too until the commit, where building the new
    # ones first lets a node of the old schema still read the table meanwhile.
    for old in _DROPPED_INDEXES:
        conn.execute(text(f"DROP INDEX IF EXISTS {old}"))
    from storage.suppressions import rekey  # it imports this module

    rekeyed = rekey(conn)  # schema 5: one key per mailbox, whatever the case or quotes
    if rekeyed:
        log.warning("%d suppression entries re-keyed to the lower-cased address", rekeyed)


async def create_schema(db: Database) -> None:
    """Create missing tables and record the schema version; refuse a newer database."""
    await db.exclusive(_create_schema)
