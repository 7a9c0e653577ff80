"""Sender domains: the domains mail may be sent From once verified (policy.sender).

A domain's DKIM keys live in storage.dkim_keys (by domain name); this table only says
whether the domain is verified and when it was last checked.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, select, update
from sqlalchemy.exc import IntegrityError

from storage.db import Database
from storage.errors import Refused
from storage.models import SenderDomain
from storage.shares import end_account

D = SenderDomain


class DomainExists(Refused):
    """The domain is already registered."""


@dataclass(frozen=True)
class DomainRecord:
    id: str
    domain: str
    is_verified: bool
    created_at: float
    verified_at: float | None
    checked_at: float | None
    created_by: str | None = None  # the user who added it (None: console, config, or key)


def _record(row: Any) -> DomainRecord:
    return DomainRecord(
        id=row.id,
        domain=row.domain,
        is_verified=row.is_verified,
        created_at=row.created_at,
        verified_at=row.verified_at,
        checked_at=row.checked_at,
        created_by=row.created_by,
    )


async def add_domain(
    db: Database, domain: str, *, verified: bool = False, created_by: str | None = None
) -> DomainRecord:
    """Register `domain` (already normalised: lower-case A-labels), for `created_by`."""
    now = time.time()
    record = DomainRecord(
        id="dom_" + secrets.token_hex(8),
        domain=domain,
        is_verified=verified,
        created_at=now,
        verified_at=now if verified else None,
        checked_at=None,
        created_by=created_by,
    )

    def work(conn: Connection) -> DomainRecord:
        if conn.execute(select(D.c.id).where(D.c.domain == domain)).first() is not None:
            raise DomainExists(f"{domain} is already registered")
        conn.execute(D.insert().values(**record.__dict__))
        return record

    try:
        return await db.transaction(work)
    except IntegrityError:
        raise DomainExists(f"{domain} is already registered") from None


async def list_domains(db: Database) -> list[DomainRecord]:
    query = select(D).order_by(D.c.domain)
    return await db.read(lambda conn: [_record(row) for row in conn.execute(query)])


async def get_domain(db: Database, key: str) -> DomainRecord | None:
    """By id (dom_...) or by name."""
    column = D.c.id if key.startswith("dom_") else D.c.domain
    row = await db.read(lambda conn: conn.execute(select(D).where(column == key)).first())
    return None if row is None else _record(row)


async def verified_domains(db: Database) -> list[str]:
    query = select(D.c.domain).where(D.c.is_verified)
    return await db.read(lambda conn: [row.domain for row in conn.execute(query)])


async def record_check(db: Database, domain_id: str, passed: bool) -> DomainRecord | None:
    """Note a DNS check; a passing one verifies the domain. A failing one never un-verifies
    it (DNS has bad minutes): delete the domain to stop sending from it."""
    now = time.time()

    def work(conn: Connection) -> DomainRecord | None:
        values: dict[str, Any] = {"checked_at": now}
        row = conn.execute(select(D).where(D.c.id == domain_id)).first()
        if row is None:
            return None
        if passed and not row.is_verified:
            values.update(is_verified=True, verified_at=now)
        conn.execute(update(D).where(D.c.id == domain_id).values(**values))
        return _record(conn.execute(select(D).where(D.c.id == domain_id)).one())

    return await db.transaction(work)


async def delete_domain(db: Database, domain_id: str) -> DomainRecord | None:
    def work(conn: Connection) -> DomainRecord | None:
        row = conn.execute(select(D).where(D.c.id == domain_id)).first()
        if row is None:
            return None
        conn.execute(delete(D).where(D.c.id == domain_id))
        end_account(conn, "domain", domain_id, time.time())  # storage.accounts.DOMAIN
        return _record(row)

    return await db.transaction(work)
