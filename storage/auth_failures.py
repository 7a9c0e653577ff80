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

A guess counts only its subject's rows within the window (an index range on (subject,
at)); rows that left every window are deleted by the guesses themselves, oldest first on
the `at` index, whatever their subject: every PRUNE_EVERY-th guess of a process deletes
up to PRUNE_PER_GUESS of them, more than the guesses in between added, so the rows of
addresses that stopped guessing go at least as fast as new ones come, with no sweep.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import Connection, delete, select, text
from sqlalchemy.exc import SQLAlchemyError

from storage import throttle
from storage.db import Database
from storage.errors import database_failed, unavailable
from storage.models import AuthFailure

AF = AuthFailure

EVERYONE = "*"  # the subject of the budget of every address together
_LOCK = 7305  # PostgreSQL advisory lock class (with the subject's hash): one guess at a time
# Rows that no budget counts any more, deleted by every PRUNE_EVERY-th guess of a process
# (a statement less for the others): more than the guesses insert (two each at most).
PRUNE_EVERY = 8
PRUNE_PER_GUESS = 4 * PRUNE_EVERY
_SUBJECT_MAX = 64  # the column's width

T = TypeVar("T")


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


def take(
    conn: Connection, budgets: Sequence[Budget], now: float, prune: int = PRUNE_PER_GUESS
) -> Admitted | Spent:
    """Take one guess from every budget, in the caller's transaction, or none of them;
    then delete up to `prune` rows that no budget counts any more."""
    rows: list[int] = []
    used = 0
    for budget in budgets:
        _lock(conn, budget.subject)
        taken = throttle.take(
            conn, AF.c.subject, budget.subject, now, budget.count, budget.window,
            slots=1, prune=False,
        )  # fmt: skip
        if isinstance(taken, throttle.OverLimit):
            give_back(conn, rows)
            return Spent(budget.subject, taken.slots[0] if taken.slots else now)
        if not rows:
            used = taken.used
        rows.append(taken.row_id)
    if prune:
        _prune(conn, now - max((b.window for b in budgets), default=0.0), prune)
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


def _prune(conn: Connection, before: float, limit: int) -> None:
    # SKIP LOCKED (PostgreSQL): two guesses pruning at once never wait for each other.
    expired = (
        select(AF.c.id)
        .where(AF.c.at <= before)
        .order_by(AF.c.at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    conn.execute(delete(AF).where(AF.c.id.in_(expired.scalar_subquery())))


class AuthFailures:
    """The budgets, for the SMTP door: `take` before a guess is checked, `give_back` when
    it turns out not to count. StorageUnavailable when the database fails.

    Each is a short transaction of its own (PostgreSQL: a subject's lock is held for one
    guess, and two guesses' locks never meet in one transaction, where two nodes could
    deadlock on them; SQLite: one writer serialises), committed without waiting for the
    disk (`durable=False`: no fsync on SQLite, no WAL flush on PostgreSQL): a power cut
    may forget the last few guesses counted, never anyone's mail, and a successful AUTH
    costs no fsync. One process's transactions run in the order they were asked for
    (SQLite: one write thread), so its next guess never counts a row given back before it.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._guesses = 0

    async def take(self, budgets: Sequence[Budget], now: float) -> Admitted | Spent:
        self._guesses += 1
        prune = PRUNE_PER_GUESS if self._guesses % PRUNE_EVERY == 1 else 0
        return await self._run(lambda conn: take(conn, budgets, now, prune))

    async def give_back(self, rows: Sequence[int]) -> None:
        await self._run(lambda conn: give_back(conn, rows))

    async def _run(self, work: Callable[[Connection], T]) -> T:
        try:
            return await self._db.transaction(work, durable=False)
        except (SQLAlchemyError, OSError) as error:  # as the writer's: down, locked, full
            if not database_failed(error):
                raise
            raise unavailable(error) from error
