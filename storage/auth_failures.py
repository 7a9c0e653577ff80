"""The budgets of failed SMTP AUTH guesses, counted in the database: they hold across the
worker processes of a node and across the nodes sharing the database (budgets in each
process's memory gave N workers N times the guesses).

A budget is a rolling window of `auth_failure` rows, counted by the code of a pool's rate
(storage.throttle.take): at most `count` rows of its subject within `window` seconds. A
guess takes one row from each of its budgets (the client address's, then everyone's) in
one transaction before it is checked, so parallel connections, workers and nodes cannot
overdraw them; a guess found right, or that could not be checked, has its rows deleted
again (`give_back`). So failures alone spend a budget. How many rows the address's window
held before a guess (`Admitted.used`: its recent failures) sets how long its 535 waits.

Serialised per subject: on PostgreSQL by an advisory transaction lock on the subject's hash
(other nodes wait for the commit; two subjects sharing a hash are only serialised), always
taken in the same order, the address before everyone; on SQLite by its one writer.

Rows leave once they count no more: a subject's own at its next guess (storage.throttle),
and each guess also deletes up to PRUNE_PER_GUESS rows, of any subject, older than its
longest window (oldest first, on the `at` index): the rows of addresses that stopped
guessing go at least as fast as new ones come, with no sweep to run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, delete, select, text
from sqlalchemy.exc import SQLAlchemyError

from storage import throttle
from storage.db import Database
from storage.errors import database_failed, unavailable
from storage.models import AuthFailure
from storage.writer import Writer

AF = AuthFailure.__table__  # type: ignore[attr-defined]

EVERYONE = "*"  # the subject of the budget of every address together
_LOCK = 7305  # PostgreSQL advisory lock class (with the subject's hash): one guess at a time
PRUNE_PER_GUESS = 2
_SUBJECT_MAX = 64  # the column's width


def address_subject(client: str) -> str:
    """The subject of a client address's budget (`a:` + it; hashed if it is too long for
    the column, which an address never is)."""
    subject = f"a:{client}"
    if len(subject) <= _SUBJECT_MAX:
        return subject
    return "h:" + hashlib.sha256(client.encode()).hexdigest()[: _SUBJECT_MAX - 2]


@dataclass(frozen=True)
class Budget:
    subject: str
    count: int  # guesses that may fail ...
    window: float  # ... within any window of this many seconds


@dataclass(frozen=True)
class Admitted:
    """The guess may be checked: `rows` were taken for it (to give back if it does not
    count); `used` is how many rows the first budget held before it."""

    rows: tuple[int, ...]
    used: int


@dataclass(frozen=True)
class Spent:
    """A budget is spent (nothing was taken): `subject`'s next guess is allowed at `until`."""

    subject: str
    until: float


def take(conn: Connection, budgets: Sequence[Budget], now: float) -> Admitted | Spent:
    """Take one guess from every budget, in the caller's transaction, or none of them."""
    rows: list[int] = []
    used = 0
    for budget in budgets:
        _lock(conn, budget.subject)
        taken = throttle.take(
            conn, AF.c.subject, budget.subject, now, budget.count, budget.window, slots=1
        )
        if isinstance(taken, throttle.OverLimit):
            give_back(conn, rows)
            return Spent(budget.subject, taken.slots[0] if taken.slots else now)
        if not rows:
            used = taken.used
        rows.append(taken.row_id)
    _prune(conn, now - max((b.window for b in budgets), default=0.0))
    return Admitted(tuple(rows), used)


def give_back(conn: Connection, rows: Sequence[int]) -> None:
    if rows:
        conn.execute(delete(AF).where(AF.c.id.in_(list(rows))))


def _lock(conn: Connection, subject: str) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(
            text("SELECT pg_advisory_xact_lock(:lock, hashtext(:subject))"),
            {"lock": _LOCK, "subject": subject},
        )


def _prune(conn: Connection, before: float) -> None:
    # SKIP LOCKED (PostgreSQL): two guesses pruning at once never wait for each other.
    expired = (
        select(AF.c.id)
        .where(AF.c.at <= before)
        .order_by(AF.c.at)
        .limit(PRUNE_PER_GUESS)
        .with_for_update(skip_locked=True)
    )
    conn.execute(delete(AF).where(AF.c.id.in_(expired.scalar_subquery())))


class AuthFailures:
    """The budgets, for the SMTP door: `take` before a guess is checked, `give_back` when
    it turns out not to count. StorageUnavailable when the database fails."""

    def __init__(self, db: Database, writer: Writer) -> None:
        self._db = db
        self._writer = writer

    async def take(self, budgets: Sequence[Budget], now: float) -> Admitted | Spent:
        # SQLite: through the group-commit writer (one writer serialises; one fsync for
        # many). PostgreSQL: a short transaction of its own, so that a subject's lock is
        # held for one guess, and two guesses' locks never meet in one group commit
        # (two nodes' commits could deadlock on them): as storage.throttle's pools.
        if self._db.is_sqlite:
            result: Admitted | Spent = await self._writer.submit(
                lambda conn: take(conn, budgets, now)
            )
            return result
        try:
            return await self._db.transaction(lambda conn: take(conn, budgets, now))
        except (SQLAlchemyError, OSError) as error:  # as the writer's: down, locked, full
            if not database_failed(error):
                raise
            raise unavailable(error) from error

    async def give_back(self, rows: Sequence[int]) -> None:
        # A function, not a Batch: the writer runs functions in the order they came, so
        # this process's next guess (SQLite) never counts a row given back before it.
        await self._writer.submit(lambda conn: give_back(conn, rows))
