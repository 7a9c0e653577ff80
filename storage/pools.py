"""SMTP pool records: those declared in the config file are upserted at start; the others
are created, changed and deleted through the API (gateway never sees a row in clear: the
password column holds a ciphertext made by the caller, bound to the pool's id).

At most one pool is the default. Making an API pool the default clears the flag on the
others in the same transaction; a config pool that is the default cannot be overruled
from the API (the file wins, and at start it clears the flag on API pools).

A pool that queued mail still needs (its explicit route names the pool, or the group the
pool is the last active pool of; or, being the last pool of all, the mail routed by default
through a pool, which would otherwise go direct to MX) is not deleted unless that mail is
moved to another pool in the same transaction: routing never sends mail another way on its
own. A config pool removed from the file (or renamed) while mail needs it is kept,
inactive and no longer the default, with a warning; it goes at the first sync after that
mail has gone (delivered, or expired at max_age), or comes back if the file names it again.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select, text, update
from sqlalchemy.exc import IntegrityError

from storage.db import Database
from storage.errors import InvalidInput, Refused
from storage.models import Message, Pool

P = Pool
M = Message
log = logging.getLogger("postern.pools")

_FIELDS = (
    "name",
    "host",
    "port",
    "username",
    "encryption",
    "ip_pool",
    "priority",
    "max_connections",
    "is_default",
    "is_active",
    "from_email",
    "tls_verify",
    "rate",
    "daily_limit",
)
EDITABLE = frozenset(_FIELDS)
# Where the password goes and under what protection: changing any of these without giving
# a password again clears the stored one, so that nobody who may edit pools (but never read
# a password) can point a pool at a host of theirs and have its password sent there.
ENDPOINT = ("host", "port", "encryption", "tls_verify", "username")
_DEFAULT_LOCK = 7302  # PostgreSQL advisory lock: one default-changing transaction at a time

Seal = Callable[[str], str]  # pool id -> password ciphertext bound to it ("" = no password)


class PoolError(Refused):
    """Base of this module's refusals; the message is safe to show."""


class PoolNotFound(PoolError):
    pass


class PoolReadOnly(PoolError):
    """The pool is declared in the config file: change the file, not the API."""


class PoolNameTaken(PoolError):
    pass


class ConfigDefault(PoolError):
    """A config-file pool is the default; an API pool cannot take the flag from it."""


class PoolInUse(PoolError):
    """Queued mail still needs the pool (delete with move_to)."""


class BadMoveTarget(PoolError, InvalidInput):
    """move_to names no other active pool."""


@dataclass(frozen=True)
class PoolRecord:
    """A stored pool without its password (safe to return and log)."""

    id: str
    name: str
    host: str
    port: int
    username: str
    encryption: str
    ip_pool: str
    priority: int
    max_connections: int
    is_default: bool
    is_active: bool
    from_email: str
    tls_verify: bool
    rate: str  # "" = none (gateway.delivery.throttle)
    daily_limit: int  # 0 = none
    source: str  # config | api
    created_at: float
    has_password: bool
    created_by: str | None = None  # the user who made it (None: console, config, or key)


def _record(row: Any) -> PoolRecord:
    values = {name: getattr(row, name) for name in _FIELDS}
    return PoolRecord(
        id=row.id,
        source=row.source,
        created_at=row.created_at,
        has_password=bool(row.password_enc),
        created_by=row.created_by,
        **values,
    )


def config_pool_id(name: str) -> str:
    """Stable across restarts and nodes, so queued mail keeps pointing at the same pool."""
    return "smtp_cfg_" + hashlib.sha256(name.encode()).hexdigest()[:16]


def _lock_defaults(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"SELECT pg_advisory_xact_lock({_DEFAULT_LOCK})"))


async def sync_config_pools(db: Database, pools: Sequence[Any]) -> None:
    """Make the stored config pools exactly those of the file (by name)."""
    now = time.time()
    wanted = {config_pool_id(pool.name): pool for pool in pools}

    def sync(conn: Connection) -> None:
        _lock_defaults(conn)
        existing = {row.id for row in conn.execute(select(P.c.id).where(P.c.source == "config"))}
        for pool_id in existing - wanted.keys():
            _retire(conn, pool_id)
        for pool_id, pool in wanted.items():
            values = {name: getattr(pool, name) for name in _FIELDS}
            if pool_id in existing:
                conn.execute(P.update().where(P.c.id == pool_id).values(**values))
            else:
                conn.execute(
                    P.insert().values(
                        id=pool_id, source="config", password_enc="", created_at=now, **values
                    )
                )
        if any(pool.is_default for pool in pools):  # the file's default wins
            conn.execute(update(P).where(P.c.source == "api").values(is_default=False))

    # Read and written under one lock (SQLite's write lock from BEGIN; on PostgreSQL the
    # advisory lock above): two processes syncing at once (workers reloading on one SIGHUP,
    # nodes starting together) must not both insert a pool the file added.
    await db.exclusive(sync)


def _retire(conn: Connection, pool_id: str) -> None:
    """A config pool gone from the file: deleted, or, while queued mail needs it, kept
    inactive (that mail waits for it, as for any inactive pool)."""
    row = conn.execute(select(P).where(P.c.id == pool_id)).one()
    waiting = _waiting(conn, row)
    if not waiting:
        conn.execute(P.delete().where(P.c.id == pool_id))
        return
    conn.execute(update(P).where(P.c.id == pool_id).values(is_active=False, is_default=False))
    log.warning(
        "pool %r is no longer in the config file but %d queued message(s) still need it: kept, "
        "inactive, until they are gone (name it in the file again to let them go out)",
        row.name,
        waiting,
    )


async def list_pools(db: Database) -> list[Any]:
    """Every row, password ciphertext included: for the service that loads the pools."""
    return await db.read(lambda conn: list(conn.execute(select(P).order_by(P.c.priority, P.c.id))))


async def pool_records(db: Database) -> list[PoolRecord]:
    """Every pool by priority then id, without passwords."""
    return [_record(row) for row in await list_pools(db)]


async def get_pool(db: Database, pool_id: str) -> PoolRecord | None:
    row = await db.read(lambda conn: conn.execute(select(P).where(P.c.id == pool_id)).first())
    return None if row is None else _record(row)


def _take_default(conn: Connection, pool_id: str) -> None:
    """Clear every other pool's default flag (ConfigDefault if a config pool holds it)."""
    holder = conn.execute(
        select(P.c.name).where(P.c.is_default, P.c.source == "config", P.c.id != pool_id)
    ).first()
    if holder is not None:
        raise ConfigDefault(
            f"the config-file pool {holder.name!r} is the default; change the file to move it"
        )
    conn.execute(update(P).where(P.c.id != pool_id, P.c.is_default).values(is_default=False))


def _name_free(conn: Connection, name: str, pool_id: str) -> None:
    taken = conn.execute(select(P.c.id).where(P.c.name == name, P.c.id != pool_id)).first()
    if taken is not None:
        raise PoolNameTaken(f"a pool named {name!r} already exists")


async def create_pool(
    db: Database, values: Mapping[str, Any], seal: Seal, created_by: str | None = None
) -> PoolRecord:
    """Store a new API pool, made by `created_by`; `seal(id)` gives the password ciphertext
    for its new id."""
    unknown = set(values) - EDITABLE
    if unknown:
        raise ValueError(f"not pool fields: {sorted(unknown)}")
    pool_id = "smtp_" + secrets.token_hex(8)
    password_enc = seal(pool_id)
    now = time.time()

    def work(conn: Connection) -> PoolRecord:
        _lock_defaults(conn)
        _name_free(conn, values["name"], pool_id)
        if values.get("is_default"):
            _take_default(conn, pool_id)
        conn.execute(
            P.insert().values(
                id=pool_id,
                source="api",
                password_enc=password_enc,
                created_at=now,
                created_by=created_by,
                **values,
            )
        )
        return _record(conn.execute(select(P).where(P.c.id == pool_id)).one())

    try:
        return await db.transaction(work)
    except IntegrityError:  # a concurrent insert of the same name won
        raise PoolNameTaken(f"a pool named {values['name']!r} already exists") from None


async def update_pool(
    db: Database, pool_id: str, changes: Mapping[str, Any], seal: Seal | None = None
) -> PoolRecord:
    """Change an API pool; `seal` (when given) replaces its password. Without one, a
    change of the pool's ENDPOINT clears the password (decided against the row as it is in
    this transaction, so a concurrent change cannot slip in between)."""
    unknown = set(changes) - EDITABLE
    if unknown:
        raise ValueError(f"not pool fields: {sorted(unknown)}")
    password_enc = seal(pool_id) if seal is not None else None

    def work(conn: Connection) -> PoolRecord:
        _lock_defaults(conn)
        row = conn.execute(select(P).where(P.c.id == pool_id)).first()
        if row is None:
            raise PoolNotFound("no such SMTP pool")
        if row.source != "api":
            raise PoolReadOnly(f"pool {row.name!r} is declared in the config file; change it there")
        if "name" in changes:
            _name_free(conn, changes["name"], pool_id)
        if changes.get("is_default"):
            _take_default(conn, pool_id)
        values = dict(changes)
        if password_enc is not None:
            values["password_enc"] = password_enc
        elif row.password_enc and moves_endpoint(row, changes):
            values["password_enc"] = ""
        if values:
            conn.execute(update(P).where(P.c.id == pool_id).values(**values))
        return _record(conn.execute(select(P).where(P.c.id == pool_id)).one())

    try:
        return await db.transaction(work)
    except IntegrityError:
        raise PoolNameTaken(f"a pool named {changes.get('name')!r} already exists") from None


def same_endpoint(current: Any, other: Any) -> bool:
    """Whether two pools (rows, records or configs) send AUTH to the same place the same way."""
    return all(_same(name, getattr(current, name), getattr(other, name)) for name in ENDPOINT)


def moves_endpoint(row: Any, changes: Mapping[str, Any]) -> bool:
    return any(
        not _same(name, getattr(row, name), changes[name]) for name in ENDPOINT if name in changes
    )


def _same(name: str, old: Any, new: Any) -> bool:
    if name == "host" and isinstance(old, str) and isinstance(new, str):
        return old.lower().rstrip(".") == new.lower().rstrip(".")  # DNS names ignore case
    return bool(old == new)


async def delete_pool(
    db: Database, pool_id: str, move_to: str | None = None
) -> tuple[PoolRecord, int]:
    """Remove an API pool; returns it and how many queued messages moved to `move_to`.

    PoolInUse when queued mail needs it and no `move_to` is given; BadMoveTarget when
    `move_to` is not another active pool."""

    def work(conn: Connection) -> tuple[PoolRecord, int]:
        row = conn.execute(select(P).where(P.c.id == pool_id)).first()
        if row is None:
            raise PoolNotFound("no such SMTP pool")
        if row.source != "api":
            raise PoolReadOnly(f"pool {row.name!r} is declared in the config file; remove it there")
        if move_to is not None:
            _check_target(conn, pool_id, move_to)
        needing = _needing(conn, row)
        waiting = _waiting(conn, row)
        if waiting and move_to is None:
            raise PoolInUse(
                f"{waiting} queued message(s) still need this pool: let them drain, or "
                "delete with ?move_to=<pool id> to move them to another pool"
            )
        if waiting:
            now = time.time()
            moving = {"pool_id": move_to, "ip_pool": None, "route_default": False}
            conn.execute(update(M).where(needing).values(**moving))
            # Due now, unless a worker holds it (its due_at is then the claim's lease).
            moved = and_(M.c.pool_id == move_to, M.c.claimed_by.is_(None), M.c.due_at > now)
            conn.execute(update(M).where(moved).values(due_at=now))
        conn.execute(P.delete().where(P.c.id == pool_id))
        return _record(row), waiting

    return await db.transaction(work)


def _check_target(conn: Connection, pool_id: str, move_to: str) -> None:
    target = conn.execute(select(P.c.is_active).where(P.c.id == move_to)).first()
    if move_to == pool_id or target is None or not target.is_active:
        raise BadMoveTarget("move_to must name another active SMTP pool")


def _needing(conn: Connection, row: Any) -> Any:
    """Messages with work left whose route needs the pool `row`: their explicit route names
    it, or names its group and it is the group's last active pool; or it is the last pool
    of all and they were routed by default through a pool (they would go direct)."""
    explicit = M.c.route_default.is_(False)
    routes = [and_(explicit, M.c.pool_id == row.id)]
    others = select(P.c.id).where(P.c.id != row.id)
    same_group = others.where(P.c.ip_pool == row.ip_pool, P.c.is_active)
    if conn.execute(same_group.limit(1)).first() is None:
        routes.append(and_(explicit, M.c.pool_id.is_(None), M.c.ip_pool == row.ip_pool))
    if conn.execute(others.limit(1)).first() is None:
        relayed = or_(M.c.pool_id.is_not(None), M.c.ip_pool.is_not(None))
        routes.append(and_(M.c.route_default.is_(True), relayed))
    return and_(M.c.due_at.is_not(None), or_(*routes))


def _waiting(conn: Connection, row: Any) -> int:
    """How many queued messages need the pool `row` (`_needing`)."""
    needing = _needing(conn, row)
    return conn.execute(select(func.count()).select_from(M).where(needing)).scalar() or 0
