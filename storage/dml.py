"""Run a Core INSERT/UPDATE/DELETE for a list of rows, cheaply.

`conn.execute(statement, rows)` spends ~50 us of Python per call before the database sees
anything (the compiled cache's key, an execution context, each row's parameters built bind
by bind, a result): half the write thread's user CPU per message on SQLite (issue 22), which
runs a handful of statements per message, and as much again on PostgreSQL, where a commit
of a few messages runs ten. `run` compiles a statement once per set of row keys, with the
connection's own dialect and the column keys `Connection.execute` uses (so the same SQL
text, but for the RETURNING of a new key that a one-row INSERT has on PostgreSQL and `run`
never hands back), turns each row into the tuple SQLAlchemy itself would bind (the row's values; the
statement's own bound values and its columns' scalar defaults for names the rows lack; each
through its type's bind processor) and hands them to the DBAPI cursor's executemany in the
same transaction, as SQLAlchemy's dialect does (sqlite3's; on PostgreSQL SQLAlchemy's
asyncpg adapter, which begins the transaction and translates asyncpg's errors). A failure
is SQLAlchemy's to handle, as it would have been: a unique-key clash is its IntegrityError,
a locked or full database its OperationalError (storage.errors), a lost connection is
invalidated.

Anything that needs more takes `conn.execute` as before: rows of different keys, a
statement with RETURNING, callable defaults, expanding IN, escaped names, a value its type
refuses; a connection with execution events or echo, or outside a transaction; another
dialect or driver.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import Executable

Row = dict[str, Any]
Processor = Callable[[Any], Any]


@dataclass(frozen=True)
class _Plan:
    sql: str
    values: Callable[[Row], tuple[Any, ...]]  # a row's values, in the SQL's order
    constants: Row  # the statement's own values for the names no row has
    processors: tuple[tuple[int, Processor], ...]  # (position, its type's bind processor)


# Per dialect (an engine's), per (statement, row keys, several rows): its plan, or None for
# conn.execute.
# The hot statements are module constants; the bound keeps a statement built per call from
# filling memory (it then takes conn.execute, whose cache knows it by its shape).
_Key = tuple[Executable, frozenset[str], bool]
_plans: weakref.WeakKeyDictionary[Dialect, dict[_Key, _Plan | None]]
_plans = weakref.WeakKeyDictionary()
_MAX_PLANS = 256
# The (dialect, driver) pairs whose rows `run` binds itself: SQLite's own, and PostgreSQL's
# through asyncpg, whose DBAPI adapter's cursor SQLAlchemy itself calls the same way.
_BOUND_HERE = frozenset((("sqlite", "pysqlite"), ("postgresql", "asyncpg")))


def run(conn: Connection, statement: Executable, rows: Row | Sequence[Row]) -> int:
    """Run `statement` once per row (one executemany; a dict is one row) in `conn`'s
    transaction; the number of rows it changed. Exactly what `conn.execute(statement,
    rows)` does."""
    if isinstance(rows, dict):
        rows = [rows]
    bound_here = (conn.dialect.name, conn.dialect.driver) in _BOUND_HERE
    plan = _plan_for(conn, statement, rows) if bound_here else None
    if plan is None:
        return conn.execute(statement, list(rows)).rowcount
    try:
        params = _params(plan, rows)
    except Exception:  # a value its type refuses: SQLAlchemy's own error, nothing ran yet
        return conn.execute(statement, list(rows)).rowcount
    return _execute(conn, plan.sql, params)


def compiled(
    dialect: Dialect, statement: Executable, rows: Row | Sequence[Row]
) -> tuple[str, list[tuple[Any, ...]]] | None:
    """The SQL text and parameter tuples `run` would hand SQLite's driver for these rows
    (so that another process can run them: storage.writer_process), or None when they take
    more than that (`run` would take conn.execute)."""
    if isinstance(rows, dict):
        rows = [rows]
    plan = _cached_plan(dialect, statement, rows)
    if plan is None:
        return None
    try:
        return plan.sql, _params(plan, rows)
    except Exception:  # a value its type refuses: SQLAlchemy says what, in the worker
        return None


def _params(plan: _Plan, rows: Sequence[Row]) -> list[tuple[Any, ...]]:
    if plan.constants:
        rows = [{**row, **plan.constants} for row in rows]
    params = [plan.values(row) for row in rows]
    if plan.processors:
        params = [_processed(values, plan.processors) for values in params]
    return params


def _execute(conn: Connection, sql: str, params: list[tuple[Any, ...]]) -> int:
    """The driver's executemany (execute for one row) on a cursor of `conn`'s connection,
    as SQLAlchemy's dialect calls it; a failure handled by SQLAlchemy as its own (the
    driver's error wrapped, a lost connection invalidated). exec_driver_sql would do the
    same at twice the cost: an execution context and a result per statement."""
    cursor: Any = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    dialect: Any = conn.dialect
    stale = getattr(dialect, "_invalidate_schema_cache_asof", None)
    if stale is not None:  # asyncpg: what its execution context tells the cursor first
        cursor._invalidate_schema_cache_asof = stale
    try:
        if len(params) > 1:
            cursor.executemany(sql, params)
        else:
            cursor.execute(sql, params[0])
        return int(cursor.rowcount)
    except BaseException as error:
        if stale is not None and isinstance(error, _stale_cache_errors(dialect)):
            dialect._invalidate_schema_cache()  # as asyncpg's execution context does
        conn._handle_dbapi_exception(  # (it raises)
            error, sql, params if len(params) > 1 else params[0], cursor, None
        )
    finally:
        cursor.close()


def _stale_cache_errors(dialect: Any) -> tuple[type[BaseException], ...]:
    """The asyncpg adapter's errors after which SQLAlchemy drops its prepared statements
    (another connection changed the schema): PGExecutionContext_asyncpg's list."""
    dbapi = dialect.dbapi
    names = ("InvalidCachedStatementError", "InternalServerError")
    return tuple(getattr(dbapi, name) for name in names if hasattr(dbapi, name))


def _processed(
    values: tuple[Any, ...], processors: tuple[tuple[int, Processor], ...]
) -> tuple[Any, ...]:
    out = list(values)
    for position, process in processors:
        out[position] = process(out[position])
    return tuple(out)


def _plan_for(conn: Connection, statement: Executable, rows: Sequence[Row]) -> _Plan | None:
    if not _plain(conn):
        return None
    return _cached_plan(conn.dialect, statement, rows)


def _cached_plan(dialect: Dialect, statement: Executable, rows: Sequence[Row]) -> _Plan | None:
    if not rows:
        return None
    keys = rows[0].keys()
    if len(rows) > 1 and any(row.keys() != keys for row in rows):  # (the first row's decide)
        return None
    plans = _plans.setdefault(dialect, {})
    key = (statement, frozenset(keys), len(rows) > 1)
    try:
        return plans[key]
    except KeyError:
        pass
    if len(plans) >= _MAX_PLANS:  # statements made per call: conn.execute caches its own
        return None
    try:
        plan = _make_plan(dialect, *key)
    except Exception:  # SQLAlchemy's private names changed: conn.execute says what is wrong
        plan = None
    plans[key] = plan
    return plan


def _plain(conn: Connection) -> bool:
    """Nothing of SQLAlchemy's per-statement work is wanted: no execution events, no echo,
    inside the transaction it began (SQLAlchemy's private names: a version without them
    takes conn.execute)."""
    return (
        conn.in_transaction()
        and not getattr(conn, "_has_events", True)
        and not getattr(conn.engine, "_has_events", True)
        and not getattr(conn.dialect, "_has_events", True)  # do_execute(many) hooks
        and not getattr(conn, "_echo", True)
        and hasattr(conn, "_handle_dbapi_exception")
    )


def _make_plan(
    dialect: Dialect, statement: Executable, keys: frozenset[str], many: bool
) -> _Plan | None:
    """The statement compiled as Connection.execute compiles it for rows of `keys` (`many`
    of them), or None when binding its rows takes more than values, constants and bind
    processors."""
    if statement.get_execution_options() or getattr(statement, "_returning", None):
        return None  # (an explicit RETURNING, of expressions too: conn.execute's)
    compiled: Any = statement.compile(  # type: ignore[attr-defined]
        dialect=dialect, column_keys=sorted(keys), for_executemany=many
    )
    if compiled.effective_returning and not many:
        # PostgreSQL's one-row INSERT returns the new row's key (SQLAlchemy's implicit
        # RETURNING), which `run` never hands back: compiled as for several rows, without.
        compiled = statement.compile(  # type: ignore[attr-defined]
            dialect=dialect, column_keys=sorted(keys), for_executemany=True
        )
    order = getattr(compiled, "positiontup", None)
    processors = getattr(compiled, "_bind_processors", None)
    if (
        not compiled.positional
        or not order
        or processors is None
        or compiled.effective_returning
        or compiled.update_prefetch
        or compiled.post_compile_params
        or compiled.literal_execute_params
        or compiled.escaped_bind_names
        or getattr(compiled, "_insertmanyvalues", None) is not None
        or getattr(compiled, "_collected_params", None)  # from text() clauses
    ):
        return None
    found = _sources(compiled, order, keys)
    if found is None:
        return None
    sources, constants = found
    pick = itemgetter(*sources)
    values: Callable[[Row], tuple[Any, ...]] = (
        pick if len(sources) > 1 else lambda row: (pick(row),)
    )
    steps = tuple(
        (position, processors[name])
        for position, name in enumerate(order)
        if processors.get(name) is not None
    )
    if any(not callable(process) for _, process in steps):  # a tuple type's processors
        return None
    return _Plan(compiled.string, values, constants, steps)


def _sources(
    compiled: Any, order: Sequence[str], keys: frozenset[str]
) -> tuple[list[str], Row] | None:
    """Where each bound value comes from, as construct_params and the execution context
    take it: the row's value under the parameter's key (or its compiled name), else the
    statement's own bound value, or the scalar default of a column an INSERT leaves out.
    The row key of each position, and those constants by name; None when a value needs
    more (a callable default, a value missing)."""
    sources: list[str] = []
    constants: Row = {}
    for name in order:
        bind = compiled.binds.get(name)
        if bind is None or bind.callable or bind.expanding:
            return None
        if bind.key in keys:
            sources.append(bind.key)
            continue
        sources.append(name)
        if name not in keys:
            if bind.required:
                return None  # let SQLAlchemy say which value is missing
            constants[name] = bind.value
    for column in compiled.insert_prefetch:
        default = column.default
        if (
            default is None
            or not default.is_scalar
            or getattr(default, "is_sentinel", False)
            or column.key not in constants
        ):
            return None
        constants[column.key] = default.arg
    return sources, constants
