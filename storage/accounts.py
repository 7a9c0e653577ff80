"""The accounts that can be shared, each named by (kind, id): the sending identity behind
an alias (`alias`, ali_...) or a domain (`domain`, dom_...), and a connected mail account
(`account`, storage.mail_accounts), whose id is a UUID (the seed's form), with no change to
the rows that name accounts (storage.invitations, storage.shares).

The kind is read from the id alone: a prefix, or the canonical UUID form (lower-case
8-4-4-4-12 hex, as `mail_accounts.new_id` makes them). The forms cannot overlap (a prefix
ends in `_`, which no UUID holds), so no id names two kinds and no lookup tries two tables.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from storage.db import Database
from storage.models import MailAccount, SenderAlias, SenderDomain

A = SenderAlias
D = SenderDomain
MA = MailAccount

ALIAS, DOMAIN, ACCOUNT = "alias", "domain", "account"
KINDS = (ALIAS, DOMAIN, ACCOUNT)
_PREFIXES = {"ali_": ALIAS, "dom_": DOMAIN}
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
Ref = tuple[str, str]  # (kind, id)


@dataclass(frozen=True)
class AccountRecord:
    kind: str
    id: str
    email: str  # the alias's or the connected account's address, or the domain's name
    created_by: str | None  # the user who created it (None: the console, a key, the config)
    is_verified: bool  # a connected account always is: its credentials were checked

    @property
    def ref(self) -> Ref:
        return (self.kind, self.id)


def kind_of(account_id: str) -> str | None:
    """The kind an id names, by its prefix or its UUID form (None: no account's id)."""
    if _UUID.fullmatch(account_id):
        return ACCOUNT
    return _PREFIXES.get(account_id[:4])


def _alias(row: Any) -> AccountRecord:
    return AccountRecord(ALIAS, row.id, row.email, row.created_by, row.is_verified)


def _domain(row: Any) -> AccountRecord:
    return AccountRecord(DOMAIN, row.id, row.domain, row.created_by, row.is_verified)


def _account(row: Any) -> AccountRecord:
    return AccountRecord(ACCOUNT, row.id, row.email, row.created_by, True)


def _read(conn: Connection, refs: Iterable[Ref]) -> dict[Ref, AccountRecord]:
    wanted = {kind: sorted({i for k, i in refs if k == kind}) for kind in KINDS}
    found: dict[Ref, AccountRecord] = {}
    if wanted[ALIAS]:
        for row in conn.execute(select(A).where(A.c.id.in_(wanted[ALIAS]))):
            found[(ALIAS, row.id)] = _alias(row)
    if wanted[DOMAIN]:
        for row in conn.execute(select(D).where(D.c.id.in_(wanted[DOMAIN]))):
            found[(DOMAIN, row.id)] = _domain(row)
    if wanted[ACCOUNT]:
        for row in conn.execute(select(MA).where(MA.c.id.in_(wanted[ACCOUNT]))):
            found[(ACCOUNT, row.id)] = _account(row)
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
