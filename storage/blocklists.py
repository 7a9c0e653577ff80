"""DNSBL verdicts of the sending IPs and domains, and the lease of the check that makes them.

    latest_results(db, subjects)   subject -> BlocklistResult (a subject never checked: absent)
    record(db, verdicts, now)      store one round's verdicts; the subjects that became listed
    claim(conn, node, now, until, due_before)   lease the scheduled check (one node of many)
    finish(conn, node, now) / release(conn, node)

The check itself (DNS, lists, verification) is gateway.reputation.dnsbl's; this module only
keeps what it found. A subject's `checked_at` is the time the last check that reached a
verdict (clean or listed) completed: an `unknown` round (a list did not answer) keeps it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import Connection, and_, or_, select, update

from storage.db import Database
from storage.dialects import dialect_module
from storage.models import BlocklistCheck, BlocklistRun

BC = BlocklistCheck
BR = BlocklistRun

CLEAN, LISTED, UNKNOWN = "clean", "listed", "unknown"
STATUSES = (CLEAN, LISTED, UNKNOWN)
RUN = "dnsbl"  # the scheduled check's row in blocklist_run
_LISTING_KEYS = ("list", "code", "meaning")  # stored listings may add "text" (the list's TXT)


@dataclass(frozen=True)
class BlocklistResult:
    """A subject's latest verdict, as the reputation score reads it."""

    subject: str
    status: str  # "clean" | "listed" | "unknown"
    listings: tuple[dict[str, str], ...]  # each {"list", "code", "meaning"}
    checked_at: float | None


@dataclass(frozen=True)
class Verdict:
    """One subject's outcome of one round, as the checker hands it over."""

    subject: str
    kind: str  # ip | domain
    status: str
    listings: tuple[dict[str, str], ...] = ()
    errors: tuple[dict[str, str], ...] = ()  # each {"list", "reason"}


@dataclass(frozen=True)
class StoredCheck:
    """What the CLI and the API show of one subject."""

    subject: str
    kind: str
    status: str
    listings: tuple[dict[str, str], ...]
    errors: tuple[dict[str, str], ...]
    checked_at: float | None
    attempted_at: float
    listed_since: float | None


@dataclass(frozen=True)
class RunState:
    claimed_by: str | None
    claimed_until: float | None
    started_at: float | None
    completed_at: float | None


def _pairs(text: str | None) -> tuple[dict[str, str], ...]:
    return tuple({str(k): str(v) for k, v in item.items()} for item in json.loads(text or "[]"))


def _stored(row: Any) -> StoredCheck:
    return StoredCheck(
        row.subject, row.kind, row.status, _pairs(row.listings), _pairs(row.errors),
        row.checked_at, row.attempted_at, row.listed_since,
    )  # fmt: skip


def as_json(check: StoredCheck) -> dict[str, Any]:
    """One subject's verdict as the CLI and the API show it (times in UNIX seconds)."""
    return {
        "subject": check.subject,
        "kind": check.kind,
        "status": check.status,
        "listings": [dict(item) for item in check.listings],
        "errors": [dict(item) for item in check.errors],
        "last_checked_at": check.checked_at,
        "attempted_at": check.attempted_at,
        "listed_since": check.listed_since,
    }


async def latest_results(db: Database, subjects: Sequence[str]) -> dict[str, BlocklistResult]:
    """The latest verdict of each of `subjects` (IP addresses or domains, as checked: domains
    lower case); a subject never checked is absent."""
    wanted = sorted({subject.strip().lower() for subject in subjects})
    if not wanted:
        return {}

    def read(conn: Connection) -> dict[str, BlocklistResult]:
        found: dict[str, BlocklistResult] = {}
        for start in range(0, len(wanted), 500):
            query = select(BC).where(BC.c.subject.in_(wanted[start : start + 500]))
            for row in conn.execute(query):
                listings = tuple(
                    {key: item.get(key, "") for key in _LISTING_KEYS}
                    for item in _pairs(row.listings)
                )
                found[row.subject] = BlocklistResult(
                    row.subject, row.status, listings, row.checked_at
                )
        return found

    return await db.read(read)


async def all_checks(db: Database) -> list[StoredCheck]:
    """Every subject's latest verdict: listed first, then unknown, then clean, by subject."""
    rank = {LISTED: 0, UNKNOWN: 1, CLEAN: 2}
    rows = await db.read(lambda conn: [_stored(row) for row in conn.execute(select(BC))])
    return sorted(rows, key=lambda row: (rank.get(row.status, 3), row.subject))


def _dumps(items: Sequence[dict[str, str]]) -> str:
    return json.dumps(list(items), ensure_ascii=False, sort_keys=True)


async def record(
    db: Database, verdicts: Sequence[Verdict], now: float | None = None
) -> list[Verdict]:
    """Store one round's verdicts (each subject's row replaced); the verdicts whose subject
    became listed with this round (it was not listed before, or never checked)."""
    at = time.time() if now is None else now

    def work(conn: Connection) -> list[Verdict]:
        subjects = [verdict.subject for verdict in verdicts]
        before = {
            row.subject: row
            for start in range(0, len(subjects), 500)
            for row in conn.execute(
                select(BC).where(BC.c.subject.in_(subjects[start : start + 500]))
            )
        }
        newly: list[Verdict] = []
        for verdict in verdicts:
            old = before.get(verdict.subject)
            checked_at = at if verdict.status != UNKNOWN else (old.checked_at if old else None)
            # Listed before (an unknown round in between keeps listed_since: no delisting).
            since = old.listed_since if old is not None else None
            if verdict.status == LISTED:
                listed_since = since or at
                if since is None:
                    newly.append(verdict)
            elif verdict.status == UNKNOWN:
                listed_since = since  # no answer: not a delisting
            else:
                listed_since = None
            values = {
                "kind": verdict.kind,
                "status": verdict.status,
                "listings": _dumps(verdict.listings),
                "errors": _dumps(verdict.errors),
                "checked_at": checked_at,
                "attempted_at": at,
                "listed_since": listed_since,
            }
            if old is None:
                conn.execute(BC.insert().values(subject=verdict.subject, **values))
            else:
                conn.execute(update(BC).where(BC.c.subject == verdict.subject).values(**values))
        return newly

    return await db.transaction(work)


# --- the lease ---------------------------------------------------------------------------------


@cache
def _insert_if_absent(dialect_name: str) -> Any:
    """Built once per dialect (when first asked)."""
    return dialect_module(dialect_name).insert(BR).on_conflict_do_nothing(index_elements=["name"])


def claim(
    conn: Connection, node: str, now: float, until: float, due_before: float, name: str = RUN
) -> bool:
    """Lease the scheduled check to `node` until `until` if no live lease holds it and the last
    round completed before `due_before` (or never): of two nodes claiming at once, exactly one
    gets it (a conditional UPDATE). `name`: another periodic job's row, leased alike (the
    warmup spike check's, gateway.delivery.warmup)."""
    conn.execute(_insert_if_absent(conn.dialect.name).values(name=name))
    done = conn.execute(
        update(BR)
        .where(
            BR.c.name == name,
            or_(BR.c.claimed_by.is_(None), BR.c.claimed_until < now, BR.c.claimed_by == node),
            or_(BR.c.completed_at.is_(None), BR.c.completed_at < due_before),
        )
        .values(claimed_by=node, claimed_until=until, started_at=now)
    )
    return done.rowcount == 1


def finish(conn: Connection, node: str, now: float, name: str = RUN) -> bool:
    """The round `node` leased has completed: record when, give the lease back. False when the
    lease was no longer this node's (it lapsed and another node took it)."""
    done = conn.execute(
        update(BR)
        .where(BR.c.name == name, BR.c.claimed_by == node)
        .values(claimed_by=None, claimed_until=None, completed_at=now)
    )
    return done.rowcount == 1


def release(conn: Connection, node: str, name: str = RUN) -> None:
    """Give the lease back without completing (a round cut short, start-up, shutdown)."""
    conn.execute(
        update(BR)
        .where(and_(BR.c.name == name, BR.c.claimed_by == node))
        .values(claimed_by=None, claimed_until=None)
    )


async def run_state(db: Database) -> RunState | None:
    """The scheduled check's lease and last completed round (None: never run)."""
    row = await db.read(lambda conn: conn.execute(select(BR).where(BR.c.name == RUN)).first())
    if row is None:
        return None
    return RunState(row.claimed_by, row.claimed_until, row.started_at, row.completed_at)
