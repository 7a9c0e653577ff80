"""DKIM keys at rest: private keys encrypted, several selectors per domain, one active.

States: a new key is `pending` (published in DNS, not yet signing) or, when its domain has
no active key, `active` at once. `activate` makes one key active and retires the domain's
previous active key in the same transaction, so there is never a moment with two active keys
or none (rotation without a gap; the old selector stays in DNS for mail already signed).
`retire` stops a key signing. A partial unique index backs the one-active rule in the
database itself; on PostgreSQL `activate` locks the domain's rows first so that two nodes
activating at once serialise instead of failing on that index.

The private key is encrypted with the installation's SecretBox, bound (as associated data)
to its domain and selector, so a ciphertext copied into another row does not decrypt.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from sqlalchemy import Connection, select, update
from sqlalchemy.exc import IntegrityError

from storage.db import Database
from storage.errors import Refused
from storage.models import DkimKey

D = DkimKey

STATUSES = ("pending", "active", "retired")


class Cipher(Protocol):
    """What storage needs of gateway.security.secrets.SecretBox (storage imports no gateway):
    a secret sealed to its context (what it is, which row), which it alone opens again."""

    def seal(self, data: bytes | str, *context: str) -> str: ...

    def unseal(self, token: str, *context: str) -> bytes: ...


class DkimKeyError(Refused):
    """Base of this module's errors."""


class DkimKeyNotFound(DkimKeyError):
    """No key with that domain and selector."""


class DkimKeyExists(DkimKeyError):
    """The domain already has a key with that selector."""


class DkimKeyMoved(DkimKeyError):
    """The key is no longer in the state the change was made from (another request changed
    it first)."""


@dataclass(frozen=True)
class DkimKeyRecord:
    """A stored key without its private half (safe to list, log and return)."""

    id: str
    domain: str
    selector: str
    algorithm: str
    public_key: str
    status: str
    created_at: float


@dataclass(frozen=True, repr=False)
class ActiveKey:
    """A signing key whose private half is decrypted on demand, only to build a signer."""

    record: DkimKeyRecord
    _encrypted: str
    _box: Cipher

    def private_pem(self) -> bytes:
        """The PKCS#8 PEM; raises the box's error (e.g. WrongKeyError) when it cannot."""
        return self._box.unseal(
            self._encrypted, *_context(self.record.domain, self.record.selector)
        )

    def __repr__(self) -> str:
        return f"ActiveKey({self.record!r})"


def _context(domain: str, selector: str) -> tuple[str, ...]:
    return ("dkim_key", domain, selector)


def _record(row: Any) -> DkimKeyRecord:
    return DkimKeyRecord(
        id=row.id,
        domain=row.domain,
        selector=row.selector,
        algorithm=row.algorithm,
        public_key=row.public_key,
        status=row.status,
        created_at=row.created_at,
    )


def _find(conn: Connection, domain: str, selector: str) -> Any:
    row = conn.execute(select(D).where(D.c.domain == domain, D.c.selector == selector)).first()
    if row is None:
        raise DkimKeyNotFound(f"no DKIM key {selector!r} for {domain}")
    return row


def _lock_domain(conn: Connection, domain: str) -> None:
    """Serialise activations of one domain across nodes (a no-op on SQLite's single writer)."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(D.c.id).where(D.c.domain == domain).with_for_update()).all()


async def add_key(
    db: Database,
    box: Cipher,
    *,
    domain: str,
    selector: str,
    algorithm: str,
    private_pem: bytes,
    public_key: str,
    activate: bool | None = None,
) -> DkimKeyRecord:
    """Store a new key. `activate`: None = active when the domain has no active key, else
    pending; True = active now (the previous one retired); False = pending.

    `domain` and `selector` must already be normalised (gateway.dkim.names.normalise_*).
    """
    key_id = "dkim_" + secrets.token_hex(8)
    encrypted = box.seal(private_pem, *_context(domain, selector))
    now = time.time()

    def work(conn: Connection) -> DkimKeyRecord:
        _lock_domain(conn, domain)
        taken = conn.execute(
            select(D.c.id).where(D.c.domain == domain, D.c.selector == selector)
        ).first()
        if taken is not None:
            raise DkimKeyExists(f"{domain} already has a DKIM key with selector {selector!r}")
        has_active = (
            conn.execute(select(D.c.id).where(D.c.domain == domain, D.c.status == "active")).first()
            is not None
        )
        make_active = (not has_active) if activate is None else activate
        if make_active and has_active:
            conn.execute(
                update(D)
                .where(D.c.domain == domain, D.c.status == "active")
                .values(status="retired")
            )
        record = DkimKeyRecord(
            id=key_id,
            domain=domain,
            selector=selector,
            algorithm=algorithm,
            public_key=public_key,
            status="active" if make_active else "pending",
            created_at=now,
        )
        conn.execute(D.insert().values(private_key_enc=encrypted, **asdict(record)))
        return record

    try:
        return await db.transaction(work)
    except IntegrityError:
        # Another node inserted concurrently: the same selector (then this is a duplicate) or
        # the domain's first active key (then, tried again, this key is stored as pending).
        return await db.transaction(work)


async def list_keys(db: Database, domain: str | None = None) -> list[DkimKeyRecord]:
    """Every key (of one domain), by domain then age."""
    query = select(D).order_by(D.c.domain, D.c.created_at, D.c.selector)
    if domain is not None:
        query = query.where(D.c.domain == domain)
    return await db.read(lambda conn: [_record(row) for row in conn.execute(query)])


async def get_key(db: Database, domain: str, selector: str) -> DkimKeyRecord:
    return await db.read(lambda conn: _record(_find(conn, domain, selector)))


def _still(row: Any, status: str | None) -> None:
    """DkimKeyMoved unless the key is still `status` (None: any), read under the lock."""
    if status is not None and row.status != status:
        raise DkimKeyMoved(f"the key {row.selector!r} of {row.domain} is {row.status} now")


async def activate_key(
    db: Database, domain: str, selector: str, only_from: str | None = None
) -> DkimKeyRecord:
    """Make this key the domain's signing key; the previous active key becomes retired.
    `only_from`: only if the key is still in that state (DkimKeyMoved otherwise), checked in
    the transaction that changes it."""

    def work(conn: Connection) -> DkimKeyRecord:
        _lock_domain(conn, domain)
        row = _find(conn, domain, selector)
        _still(row, only_from)
        if row.status != "active":
            conn.execute(
                update(D)
                .where(D.c.domain == domain, D.c.status == "active")
                .values(status="retired")
            )
            conn.execute(update(D).where(D.c.id == row.id).values(status="active"))
        return _record(_find(conn, domain, selector))

    return await db.transaction(work)


async def retire_key(
    db: Database, domain: str, selector: str, only_from: str | None = None
) -> DkimKeyRecord:
    """Stop signing with this key (the domain is unsigned until another is activated).
    `only_from`: as for activate_key."""

    def work(conn: Connection) -> DkimKeyRecord:
        _lock_domain(conn, domain)
        row = _find(conn, domain, selector)
        _still(row, only_from)
        conn.execute(update(D).where(D.c.id == row.id).values(status="retired"))
        return _record(_find(conn, domain, selector))

    return await db.transaction(work)


def _active(row: Any, box: Cipher) -> ActiveKey:
    return ActiveKey(_record(row), row.private_key_enc, box)


async def active_key(db: Database, box: Cipher, domain: str) -> ActiveKey | None:
    """The domain's signing key; None when it has none."""
    query = select(D).where(D.c.domain == domain, D.c.status == "active")
    row = await db.read(lambda conn: conn.execute(query).first())
    return None if row is None else _active(row, box)


async def active_keys(db: Database, box: Cipher) -> list[ActiveKey]:
    """Every domain's signing key (for an in-memory signer table)."""
    query = select(D).where(D.c.status == "active").order_by(D.c.domain)
    rows = await db.read(lambda conn: list(conn.execute(query)))
    return [_active(row, box) for row in rows]
