"""`postern reputation`: each account's, pool's and domain's sender reputation as a table
(or JSON): the score and its status, warmup, today's sends, the blocklists, and what cost
points. The same reports as GET /api/v1/reputation (gateway.reputation.report), as of the
last evaluation a running `postern serve` made ([reputation] interval); works without it."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from gateway.config import Config
from gateway.process.commands.admin import iso_seconds, with_database
from gateway.process.commands.options import common_options
from gateway.reputation.report import KINDS, Report, all_subjects, reports
from gateway.reputation.score import shipped_thresholds
from storage.db import Database

COMMANDS = ("reputation",)
HEADERS = ("KIND", "NAME", "SCORE", "STATUS", "WARMUP", "LIMIT", "TODAY", "BLOCKLIST", "COSTS")


def add_commands(commands: Any) -> None:
    parser = commands.add_parser("reputation", help="sender reputation scores and why")
    common_options(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--kind", choices=KINDS, help="only accounts, pools or domains")


def run(args: argparse.Namespace, config: Config) -> int:
    threshold, ips = config.reputation.threshold, config.blocklists.sending_ips
    found = asyncio.run(with_database(config, lambda db: _reports(db, args.kind, threshold, ips)))
    if args.json:
        print(json.dumps([as_json(report) for report in found]))
    else:
        print(table(found))
    return 0


async def _reports(
    db: Database, kind: str | None, threshold: int, sending_ips: tuple[str, ...]
) -> list[Report]:
    subjects = [s for s in await all_subjects(db, sending_ips) if kind is None or s.kind == kind]
    return await reports(db, subjects, shipped_thresholds(), threshold, time.time())


def as_json(report: Report) -> dict[str, Any]:
    subject = report.subject
    return {
        "kind": subject.kind,
        "id": subject.id,
        "name": subject.name,
        **report.as_json(),
        "last_checked_at": iso_seconds(report.last_checked_at),
        "window_days": report.result.window_days,
        "evaluated_at": iso_seconds(report.evaluated_at),
    }


def table(found: list[Report]) -> str:
    if not found:
        return "no accounts, pools or domains"
    rows = [HEADERS]
    for report in found:
        result = report.result
        costs = ", ".join(f"{c.signal} -{c.points}" for c in result.components if c.points)
        limit = "-" if report.daily_limit is None else str(report.daily_limit)
        rows.append((
            report.subject.kind, report.subject.name,
            "-" if result.score is None else str(result.score), result.status,
            report.warmup_status, limit, str(report.sent_today), report.blacklist_status,
            costs or "-",
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS) - 1)]
    lines = ["  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]])
             for row in rows]  # fmt: skip
    evaluated = found[0].evaluated_at
    when = iso_seconds(evaluated) if evaluated else "never (is `postern serve` running?)"
    return "\n".join([*lines, f"last evaluation: {when}"])
