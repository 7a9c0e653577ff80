"""API keys: creation, lookup by hash, listing, revocation, and what each scope allows.

A key is `msk_` + 43 url-safe characters (32 random bytes). Only its SHA-256 is stored: with
256 bits of entropy a slow hash adds nothing, and lookup stays one indexed read. The stored
hash is still compared with `hmac.compare_digest`, so equality never leaks through timing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Connection, Select, select, update

from storage.db import Database
from storage.errors import InvalidInput
from storage.models import ApiKey, User
from storage.users import UserRecord, user_from_row

K = ApiKey
U = User

KEY_PREFIX = "msk_"
SEND_SCOPES = {"send": None, "send:transactional": "transactional", "send:marketing": "marketing"}
SCOPES = (
    "send",
    "send:transactional",
    "send:marketing",
    "sandbox",
    "aliases",
    "pools",
    "domains",
    "suppressions",
    "keys",
    "webhooks",
    "metrics",
    "admin",
)
CACHE_SECONDS = 2.0  # how long a node may keep using a key revoked elsewhere


def scopes_allow(scopes: Iterable[str], scope: str) -> bool:
    """Whether `scopes` allow `scope`: `admin` implies every scope; `send` implies its
    pool-limited forms."""
    held = set(scopes)
    if "admin" in held or scope in held:
        return True
    return scope in SEND_SCOPES and "send" in held


class UnknownScope(InvalidInput, ValueError):
    """A scope name that is not one of SCOPES."""


@dataclass(frozen=True)
class ApiKeyRecord:
    """A stored key, without its secret or hash. `user_id`: the user it belongs to (None:
    made at the console, bounded by its scopes alone); `owner`: that user's record, loaded
    with the key when it authenticates (the gateway caps the key at the owner's role)."""

    id: str
    name: str
    prefix: str
    scopes: tuple[str, ...]
    created_at: float
    revoked_at: float | None = None
    user_id: str | None = None
    owner: UserRecord | None = field(default=None, compare=False, repr=False)

    def has(self, scope: str) -> bool:
        return scopes_allow(self.scopes, scope)

    @property
    def may_send(self) -> bool:
        return any(self.has(scope) for scope in SEND_SCOPES)

    @property
    def may_sandbox(self) -> bool:
        return self.has("sandbox")

    @property
    def ip_pools(self) -> frozenset[str] | None:
        """The ip_pools this key may send through; None when it may use any."""
        if self.has("send"):
            return None
        return frozenset(
            pool for scope, pool in SEND_SCOPES.items() if pool and scope in self.scopes
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "scopes": list(self.scopes),
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "user_id": self.user_id,
        }


class Grants(Protocol):
    """What a key may submit: an ApiKeyRecord, or intake's Sender made from one."""

    @property
    def may_send(self) -> bool: ...

    @property
    def may_sandbox(self) -> bool: ...


def missing_scope(key: Grants, sandbox: bool) -> str | None:
    """The scope `key` lacks to submit a message (a sandbox one when `sandbox`), or None: the
    one check both doors make; each door says it in its own words."""
    if sandbox:
        return None if key.may_sandbox else "sandbox"
    return None if key.may_send else "send"


def check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """The scopes, de-duplicated in order; UnknownScope for a name that is not one."""
    result: list[str] = []
    for scope in scopes:
        if scope not in SCOPES:
            raise UnknownScope(f"unknown scope {scope!r} (one of: {', '.join(SCOPES)})")
        if scope not in result:
            result.append(scope)
    if not result:
        raise UnknownScope("a key needs at least one scope")
    return tuple(result)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def _record(row: Any, owner: UserRecord | None = None) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        scopes=tuple(row.scopes.split()),
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        user_id=row.user_id,
        owner=owner,
    )


def _with_owner() -> Select[Any]:
    """Keys with their owner's columns (prefixed `owner_`), in the same read."""
    owner = [column.label("owner_" + column.name) for column in U.c]
    return select(K, *owner).select_from(K.outerjoin(U, U.c.id == K.c.user_id))


def _owned_record(row: Any) -> ApiKeyRecord | None:
    """The key of a `_with_owner` row, if it may act: unrevoked, and its owner (if it has
    one) still there and not disabled."""
    if row.revoked_at is not None:
        return None
    if row.user_id is None:
        return _record(row)
    if row.owner_id is None or row.owner_disabled_at is not None:
        return None
    return _record(row, user_from_row(row, "owner_"))


async def create_key(
    db: Database, name: str, scopes: Iterable[str], user_id: str | None = None
) -> tuple[ApiKeyRecord, str]:
    """Store a new key (belonging to `user_id`, if given); returns it with its secret, which
    is never available again. Whether the user's role allows the scopes is the caller's
    check (gateway.people.roles), as is every role rule."""
    wanted = check_scopes(scopes)
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKeyRecord(
        id="key_" + secrets.token_hex(8),
        name=name,
        prefix=secret[:12],
        scopes=wanted,
        created_at=time.time(),
        user_id=user_id,
    )
    values = {
        "id": record.id,
        "name": name,
        "hash": hash_secret(secret),
        "prefix": record.prefix,
        "scopes": " ".join(wanted),
        "created_at": record.created_at,
        "revoked_at": None,
        "user_id": user_id,
    }
    await db.transaction(lambda conn: conn.execute(K.insert().values(**values)))
    return record, secret


async def list_keys(db: Database, user_id: str | None = None) -> list[ApiKeyRecord]:
    """Every key, or only those of `user_id` when given."""
    query = select(K).order_by(K.c.created_at)
    if user_id is not None:
        query = query.where(K.c.user_id == user_id)
    rows = await db.read(lambda conn: list(conn.execute(query)))
    return [_record(row) for row in rows]


async def get_key(db: Database, key_id: str) -> ApiKeyRecord | None:
    rows = await db.read(lambda conn: list(conn.execute(select(K).where(K.c.id == key_id))))
    return _record(rows[0]) if rows else None


async def active_key(db: Database, key_id: str) -> ApiKeyRecord | None:
    """The key with its owner, if it may still act (see _owned_record), else None."""
    query = _with_owner().where(K.c.id == key_id)
    row = await db.read(lambda conn: conn.execute(query).first())
    return _owned_record(row) if row is not None else None


async def revoke_key(db: Database, key_id: str) -> ApiKeyRecord | None:
    """Revoke the key (idempotent: a revoked key keeps its first revocation time)."""

    def run(conn: Connection) -> Any:
        conn.execute(
            update(K).where(K.c.id == key_id, K.c.revoked_at.is_(None)).values(revoked_at=now)
        )
        return conn.execute(select(K).where(K.c.id == key_id)).first()

    now = time.time()
    row = await db.transaction(run)
    return _record(row) if row is not None else None


async def find_by_secret(db: Database, secret: str) -> ApiKeyRecord | None:
    """The active key whose secret this is, with its owner (one read, joined), or None: an
    unknown or revoked key, or one whose owner is disabled."""
    if not secret.startswith(KEY_PREFIX) or len(secret) > 128:
        return None
    wanted = hash_secret(secret)
    query = _with_owner().where(K.c.hash == wanted)
    rows = await db.read(lambda conn: list(conn.execute(query)))
    for row in rows:
        if hmac.compare_digest(row.hash, wanted):
            return _owned_record(row)
    return None


class KeyStore:
    """Key lookups with a short per-node cache, shared by the HTTP API and SMTP AUTH.

    Only hits are cached (for CACHE_SECONDS), keyed by the secret's hash, so a revocation
    on another node or from the CLI takes effect here within that time; one on this node
    at once. A key comes with its owner, read in the same query: the owner's disabling or
    new role reaches the key within the same bound. `current` answers the same for a key
    already authenticated (an SMTP session asks at every MAIL).
    """

    def __init__(self, db: Database, ttl: float = CACHE_SECONDS) -> None:
        self._db = db
        self._ttl = ttl
        self._cache: dict[str, tuple[float, ApiKeyRecord]] = {}
        # key id -> until when it is known active, and as it was then (owner included)
        self._active: dict[str, tuple[float, ApiKeyRecord]] = {}

    async def authenticate(self, secret: str) -> ApiKeyRecord | None:
        digest = hash_secret(secret)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        record = await find_by_secret(self._db, secret)
        if record is None:
            self._cache.pop(digest, None)
            return None
        if len(self._cache) > 10_000:  # bounded: drop everything rather than grow
            self._cache.clear()
        self._cache[digest] = (now + self._ttl, record)
        return record

    async def current(self, key_id: str) -> ApiKeyRecord | None:
        """The key with its owner as of at most CACHE_SECONDS ago; None once it may no
        longer act (revoked, or its owner disabled)."""
        now = time.monotonic()
        cached = self._active.get(key_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        record = await active_key(self._db, key_id)
        if record is None:
            self._active.pop(key_id, None)
            return None
        if len(self._active) > 10_000:  # bounded: drop everything rather than grow
            self._active.clear()
        self._active[key_id] = (now + self._ttl, record)
        return record

    async def still_active(self, key_id: str) -> bool:
        """Whether the key may still act (as of at most CACHE_SECONDS ago)."""
        return await self.current(key_id) is not None

    def forget_user(self, user_id: str) -> None:
        """Drop the keys of a user from the cache (their role or state just changed here)."""
        self._active = {k: e for k, e in self._active.items() if e[1].user_id != user_id}
        self._cache = {d: e for d, e in self._cache.items() if e[1].user_id != user_id}

    def forget(self, key_id: str) -> None:
        """Drop a key from the cache (it was just revoked here)."""
        self._active.pop(key_id, None)
        for digest, (_, record) in list(self._cache.items()):
            if record.id == key_id:
                del self._cache[digest]
