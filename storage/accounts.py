"""The accounts that can be shared, each named by (kind, id): today the sending identity
behind an alias (`alias`, ali_...) or a domain (`domain`, dom_...); a connected mail account
(`account`, a UUID) is one more kind here, with no change to the rows that name accounts
(storage.invitations, storage.shares).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from storage.db import Database
from storage.models import SenderAlias, SenderDomain

A = SenderAlias.__table__  # type: ignore[attr-defined]
D = SenderDomain.__table__  # type: ignore[attr-defined]

ALIAS, DOMAIN = "alias", "domain"
KINDS = (ALIAS, DOMAIN)
_PREFIXES = {"ali_": ALIAS, "dom_": DOMAIN}
Ref = tuple[str, str]  # (kind, id)


@dataclass(frozen=True)
class AccountRecord:
    kind: str
    id: str
    email: str  # the alias's address, or the domain's name
    created_by: str | None  # the user who created it (None: the console, a key, the config)
    is_verified: bool

    @property
    def ref(self) -> Ref:
        return (self.kind, self.id)


def kind_of(account_id: str) -> str | None:
    """The kind an id names, by its prefix (None: no account's id)."""
    return _PREFIXES.get(account_id[:4])


def _alias(row: Any) -> AccountRecord:
    return AccountRecord(ALIAS, row.id, row.email, row.created_by, row.is_verified)


def _domain(row: Any) -> AccountRecord:
    return AccountRecord(DOMAIN, row.id, row.domain, row.created_by, row.is_verified)


def _read(conn: Connection, refs: Iterable[Ref]) -> dict[Ref, AccountRecord]:
    wanted = {kind: sorted({i for k, i in refs if k == kind}) for kind in KINDS}
    found: dict[Ref, AccountRecord] = {}
    if wanted[ALIAS]:
        for row in conn.execute(select(A).where(A.c.id.in_(wanted[ALIAS]))):
            found[(ALIAS, row.id)] = _alias(row)
    if wanted[DOMAIN]:
        for row in conn.execute(select(D).where(D.c.id.in_(wanted[DOMAIN]))):
            found[(DOMAIN, row.id)] = _domain(row)
    return found


async def get_account(db: Database, account_id: str) -> AccountRecord | None:
    kind = kind_of(account_id)
    if kind is None:
        return None
    found = await db.read(lambda conn: _read(conn, [(kind, account_id)]))
    return found.get((kind, account_id))


async def get_accounts(db: Database, refs: Iterable[Ref]) -> dict[Ref, AccountRecord]:
    """The accounts of `refs` that exist, in one read per kind."""
    wanted = list(refs)
    return await db.read(lambda conn: _read(conn, wanted)) if wanted else {}
