"""`postern warmup list|show|set|pause|resume|clear`: the warmups of pools and connected
accounts, on storage directly (the same records as /api/v1/warmup). A running `serve`
follows a change within 2 s; a resume makes the mail the pause held due at once. A pool is
named by its id or name, an account by its id or address."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import date
from typing import Any

from gateway.config import Config
from gateway.process.commands.admin import CommandError, NotFound, iso_seconds, with_database
from gateway.process.commands.options import leaf
from storage import mail_accounts, pools
from storage import warmup as stored
from storage.db import Database
from storage.mailboxes import mailbox_key
from storage.warmup import WarmupRecord
from storage.warmup_schedule import PRESETS, Schedule, ScheduleError, hourly_cap, zone

COMMANDS = ("warmup",)


def add_commands(commands: Any) -> None:
    warmup = commands.add_parser("warmup", help="warmups of pools and connected accounts")
    actions = warmup.add_subparsers(dest="action", required=True)
    listing = leaf(actions, "list", "every warmup and where it stands today")
    listing.add_argument("--kind", choices=stored.KINDS)
    for name, text in (
        ("show", "one warmup"),
        ("resume", "resume a paused warmup, on the day it paused on"),
        ("clear", "remove a warmup (its subject sends unlimited by warmup again)"),
        ("pause", "pause a warmup: its subject sends nothing until resumed"),
        ("set", "start (or replace) a warmup: --preset, or --start, --step and --cap"),
    ):
        action = leaf(actions, name, text)
        action.add_argument("kind", choices=stored.KINDS)
        action.add_argument("subject", help="a pool's id or name, an account's id or address")
        if name == "pause":
            action.add_argument("--reason", default="paused by a person")
        if name == "set":
            action.add_argument("--preset", choices=sorted(PRESETS))
            action.add_argument("--start", type=int, help="linear: day 1's limit")
            action.add_argument("--step", type=int, default=0, help="linear: added each day")
            action.add_argument("--cap", type=int, help="linear: the last day's limit")
            action.add_argument("--timezone", help="zoneinfo name (default [warmup] timezone)")
            action.add_argument("--start-day", help="YYYY-MM-DD, local (default today)")


def run(args: argparse.Namespace, config: Config) -> int:
    action = {
        "list": _list, "show": _show, "set": _set, "pause": _pause,
        "resume": _resume, "clear": _clear,
    }[args.action]  # fmt: skip
    result = asyncio.run(with_database(config, lambda db: action(db, args, config)))
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(_text(args.action, result))
    return 0


async def _subject(db: Database, kind: str, named: str) -> tuple[str, str]:
    """(id, name) of the pool or account `named` (NotFound: exit 1)."""
    if kind == "pool":
        for pool in await pools.pool_records(db):
            if named in (pool.id, pool.name):
                return pool.id, pool.name
        raise NotFound(f"no pool {named!r}")
    for account in await mail_accounts.list_accounts(db):
        if named == account.id or mailbox_key(named) == account.email:
            return account.id, account.email
    raise NotFound(f"no connected account {named!r}")


def _shown(record: WarmupRecord, name: str, config: Config) -> dict[str, Any]:
    hourly = None
    if record.daily_limit is not None and record.status in ("active", "paused"):
        hourly = hourly_cap(record.daily_limit, config.warmup.active_hours, config.warmup.burst)
    return {
        "kind": record.kind,
        "id": record.subject_id,
        "name": name,
        "status": record.status,
        "schedule": record.schedule.describe(),
        "days": record.schedule.days,
        "timezone": record.timezone,
        "start_day": record.start_day,
        "day": record.day,
        "daily_limit": record.daily_limit,
        "hourly_limit": hourly,
        "sent_today": record.sent_today,
        "paused_reason": record.paused_reason,
        "paused_at": iso_seconds(record.paused_at),
    }


async def _names(db: Database) -> dict[tuple[str, str], str]:
    names = {("pool", p.id): p.name for p in await pools.pool_records(db)}
    names.update({("account", a.id): a.email for a in await mail_accounts.list_accounts(db)})
    return names


async def _list(db: Database, args: argparse.Namespace, config: Config) -> list[dict[str, Any]]:
    names = await _names(db)
    found = await stored.list_warmups(db, time.time(), args.kind)
    return [_shown(r, names.get((r.kind, r.subject_id), "?"), config) for r in found]


async def _one(db: Database, args: argparse.Namespace) -> tuple[str, str, WarmupRecord]:
    subject_id, name = await _subject(db, args.kind, args.subject)
    record = await stored.get_warmup(db, args.kind, subject_id, time.time())
    if record is None:
        raise NotFound(f"{args.kind} {name} has no warmup")
    return subject_id, name, record


async def _show(db: Database, args: argparse.Namespace, config: Config) -> dict[str, Any]:
    _, name, record = await _one(db, args)
    return _shown(record, name, config)


async def _set(db: Database, args: argparse.Namespace, config: Config) -> dict[str, Any]:
    subject_id, name = await _subject(db, args.kind, args.subject)
    linear = args.start is not None or args.cap is not None
    if (args.preset is None) == (not linear):
        raise CommandError("give --preset, or --start and --cap (and --step), not both")
    try:
        if args.preset is not None:
            schedule = Schedule(preset=args.preset)
        else:
            if args.start is None or args.cap is None:
                raise CommandError("a linear ramp needs --start and --cap")
            schedule = Schedule(start=args.start, step=args.step, cap=args.cap)
        tz = args.timezone or config.warmup.timezone
        zone(tz)
    except ScheduleError as error:
        raise CommandError(str(error)) from None
    start_day = args.start_day
    if start_day is not None:
        try:
            start_day = date.fromisoformat(start_day).isoformat()
        except ValueError:
            raise CommandError("--start-day: not a date (YYYY-MM-DD)") from None
    record = await stored.set_warmup(
        db, args.kind, subject_id, schedule, tz, time.time(), start_day=start_day
    )
    return _shown(record, name, config)


async def _pause(db: Database, args: argparse.Namespace, config: Config) -> dict[str, Any]:
    subject_id, name, _ = await _one(db, args)
    await stored.pause(db, args.kind, subject_id, args.reason, time.time())
    _, _, record = await _one(db, args)
    return _shown(record, name, config)


async def _resume(db: Database, args: argparse.Namespace, config: Config) -> dict[str, Any]:
    subject_id, name, _ = await _one(db, args)
    record = await stored.resume(db, args.kind, subject_id, time.time(), name)
    assert record is not None
    return _shown(record, name, config)


async def _clear(db: Database, args: argparse.Namespace, config: Config) -> dict[str, Any]:
    subject_id, name, _ = await _one(db, args)
    await stored.clear_warmup(db, args.kind, subject_id)
    return {"kind": args.kind, "id": subject_id, "name": name, "cleared": True}


def _line(r: dict[str, Any]) -> str:
    limit = r["daily_limit"] if r["daily_limit"] is not None else "-"
    hourly = r["hourly_limit"] if r["hourly_limit"] is not None else "-"
    line = (
        f"{r['kind']:<7}  {r['name']:<24}  {r['status']:<11}  day {r['day']}/{r['days']}  "
        f"limit {limit} ({hourly}/h)  sent today {r['sent_today']}  {r['schedule']}"
    )
    if r["paused_reason"]:
        line += f"  paused: {r['paused_reason']}"
    return line


def _text(action: str, result: Any) -> str:
    if action == "list":
        return "\n".join(_line(r) for r in result) if result else "no warmups"
    if action == "clear":
        return f"warmup of {result['kind']} {result['name']} cleared"
    return _line(result)
