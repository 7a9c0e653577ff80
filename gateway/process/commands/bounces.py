"""`postern bounces list|show|reclassify|skipped`: the reports that came back, for operators
(the same records as GET /api/v1/bounces). A reclassification applies the new class's
effects in one transaction; a running `serve` sees a new suppression within its refresh.
`skipped` lists the connected accounts' inbox mail the sync did not hand over (too big; the
same records as GET /api/v1/accounts/{id}/skipped, of every account or one)."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from gateway.bounces.rules import CLASSES
from gateway.config import Config
from gateway.process.commands.admin import CommandError, iso_seconds, with_database
from gateway.process.commands.options import leaf
from storage import bounce_reports as stored
from storage.db import Database
from storage.inbox import latest_skipped

COMMANDS = ("bounces",)


def add_commands(commands: Any) -> None:
    bounces = commands.add_parser("bounces", help="reports that came back (bounces, complaints)")
    actions = bounces.add_subparsers(dest="action", required=True)
    listing = leaf(actions, "list", "the latest reports, newest first")
    listing.add_argument("--unmatched", action="store_true", help="only the unmatched ones")
    listing.add_argument("--status", choices=stored.STATUSES)
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    leaf(actions, "show", "one report, with its raw bytes").add_argument("id", type=int)
    again = leaf(actions, "reclassify", "give a report another class and apply it")
    again.add_argument("id", type=int)
    again.add_argument("--class", dest="cls", required=True, choices=CLASSES)
    skips = leaf(actions, "skipped", "inbox mail the sync skipped (too big), newest first")
    skips.add_argument("--account", help="only this connected account (its id)")
    skips.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")


def run(args: argparse.Namespace, config: Config) -> int:
    action = {"list": _list, "show": _show, "reclassify": _reclassify, "skipped": _skipped}[
        args.action
    ]
    result = asyncio.run(with_database(config, lambda db: action(db, args, config)))
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(_text(args.action, result))
    return 0


def _shown(row: Any, with_raw: bool = False) -> dict[str, Any]:
    found = stored.as_json(row, with_raw)
    return found | {"received_at": iso_seconds(found["received_at"])}


async def _list(db: Database, args: argparse.Namespace, config: Config) -> list[dict[str, Any]]:
    if not 1 <= args.limit <= 10_000:
        raise CommandError("--limit must be 1 to 10000")
    status = "unmatched" if args.unmatched else args.status
    statuses = [status] if status else None
    page = await db.read(lambda conn: stored.page(conn, statuses, args.limit, None))
    return [_shown(row) for row in page.rows]


async def _show(db: Database, args: argparse.Namespace, config: Config) -> dict[str, Any]:
    row = await db.read(lambda conn: stored.get(conn, args.id))
    if row is None:
        raise CommandError(f"no bounce report {args.id}")
    return _shown(row, with_raw=True)


async def _reclassify(db: Database, args: argparse.Namespace, config: Config) -> dict[str, Any]:
    # What applies a class (the ingest's effects, the queue, the secret key) is imported by
    # this action only: list, show and skipped read storage alone.
    from gateway.bounces.ingest import BounceIngest, Settings
    from gateway.bounces.returnpath import VERP_KEY, ReturnPath
    from gateway.bounces.rules import load
    from gateway.queue.notify import notifier_for
    from gateway.security.secrets import SecretBox

    bounces = config.bounces
    key = SecretBox.from_environment(config.server.data_dir).derive(VERP_KEY)
    settings = Settings(bounces.soft_limit, bounces.soft_window, bounces.max_report_size)
    # A recipient the new class bounces is told to its sender as serve's processing tells it.
    notifier = notifier_for(config.server.hostname, config.delivery)
    ingest = BounceIngest(
        db, ReturnPath(bounces.domain, key), load(bounces.rules_file), settings, notifier=notifier
    )
    outcome = await ingest.reclassify(args.id, args.cls)
    if outcome == "unknown":
        raise CommandError(f"no bounce report {args.id}")
    return {"id": args.id, "class": args.cls, "outcome": outcome}


async def _skipped(db: Database, args: argparse.Namespace, config: Config) -> list[dict[str, Any]]:
    if not 1 <= args.limit <= 10_000:
        raise CommandError("--limit must be 1 to 10000")
    found = await db.read(lambda conn: latest_skipped(conn, args.limit, args.account))
    return [skip.__dict__ | {"created_at": iso_seconds(skip.created_at)} for skip in found]


def _text(action: str, result: Any) -> str:
    if action == "list":
        rows = [
            f"{r['id']}  {r['received_at']}  {r['status']:<9}  {r['kind']:<10}  "
            f"{r['classification'] or '-':<10}  {r['message_id'] or '-'}  "
            f"{r['recipient'] or '-'}  {r['error'] or ''}"
            for r in result
        ]
        return "\n".join(rows) if rows else "no bounce reports"
    if action == "skipped":
        rows = [
            f"{r['created_at']}  {r['account_id']}  {r['mailbox']}  uidvalidity {r['uidvalidity']}"
            f"  uid {r['uid']}  {r['size']} bytes  {r['reason']}"
            for r in result
        ]
        return "\n".join(rows) if rows else "no skipped inbox mail"
    if action == "show":
        shown = {k: v for k, v in result.items() if k != "raw"}
        lines = [f"{k}: {json.dumps(v, ensure_ascii=False)}" for k, v in shown.items()]
        return "\n".join(lines) + "\n\n" + result["raw"]
    return f"report {result['id']}: {result['outcome']} (class {result['class']})"
