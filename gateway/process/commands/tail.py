"""`postern tail`: message events as they are written, like `tail -f` on the mail log.

It reads the events table as GET /v1/events/stream does (storage.event_stream: commit order,
up to the horizon, at most BATCH rows a read), every POLL seconds, from the last `--lines`
events (or after `--since-id`), filtered by type, recipient, Subject words and client
address (the last three as `postern queue list` takes them). One line per event: time,
message id, type, recipient and the reply; or, with --json, the public event JSON (as
webhooks send it), one per line.
Ctrl-C and SIGTERM end it cleanly (exit 0); --once prints what is there and exits. The CLI
sees every message, as an admin key does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from typing import Any

from sqlalchemy import Connection

from gateway.addresses import has_control
from gateway.config import Config
from gateway.process.commands.admin import CommandError, with_database
from gateway.process.commands.options import common_options
from gateway.queue import events
from gateway.queue.operations import FilterError, make_filter
from storage import event_stream
from storage.db import Database
from storage.event_stream import EventFilter, Position

COMMANDS = ("tail",)
POLL = 0.5  # seconds between reads when there is nothing new
BATCH = 200  # rows a read, as the HTTP stream


def add_commands(commands: Any) -> None:
    tail = commands.add_parser("tail", help="print message events as they happen (tail -f)")
    common_options(tail)
    tail.add_argument("--json", action="store_true", help="one event JSON object per line")
    tail.add_argument("--type", help=f"comma-separated: {', '.join(events.TYPES)}")
    tail.add_argument("--recipient", help="a recipient's address")
    # As `postern queue list`'s: the same names, parser (make_filter) and meaning.
    tail.add_argument("--subject", help="words the Subject has, all of them, any order")
    tail.add_argument("--client", help="the client's IP address, or a CIDR block")
    start = tail.add_mutually_exclusive_group()
    start.add_argument("--since-id", type=int, metavar="N", help="start after event N (evt_N)")
    start.add_argument(
        "--lines", "-n", type=int, default=10, metavar="N", help="start with the last N (10)"
    )
    tail.add_argument("--once", action="store_true", help="print what is there, then exit")


def run(args: argparse.Namespace, config: Config) -> int:
    flt = _filter(args)
    return int(asyncio.run(with_database(config, lambda db: _follow(db, args, flt))))


def _filter(args: argparse.Namespace) -> EventFilter:
    types: tuple[str, ...] = ()
    if args.type is not None:
        types = tuple(sorted({t.strip() for t in args.type.split(",") if t.strip()}))
        if not types or any(t not in events.TYPES for t in types):
            raise CommandError(f"--type: one or more, comma-separated: {', '.join(events.TYPES)}")
    searched = {"recipient": args.recipient, "subject": args.subject, "client": args.client}
    try:  # the message search's checks; each field is named as its option
        checked = make_filter(searched)
    except FilterError as error:
        raise CommandError(f"--{error.field}: {error.message}") from None
    return EventFilter(
        types=types, recipient=checked.recipient, subject=checked.subject, client=checked.client
    )


async def _start(db: Database, args: argparse.Namespace) -> Position:
    if args.since_id is not None:
        if args.since_id < 0:
            raise CommandError("--since-id: an event id, 0 or more")
        return await db.read(lambda conn: event_stream.resume_at(conn, args.since_id))
    if args.lines < 0:
        raise CommandError("--lines: 0 or more")
    return await db.read(lambda conn: event_stream.before_last(conn, args.lines))


async def _follow(db: Database, args: argparse.Namespace, flt: EventFilter) -> int:
    position = await _start(db, args)
    stop = _stop_on_signals()
    while not stop.is_set():
        rows, position = await _read(db, position, flt)
        for row in rows:
            print(row.json if args.json else _line(row.json))
        sys.stdout.flush()
        if len(rows) == BATCH:
            continue  # more are there already
        if args.once:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), POLL)
    return 0


async def _read(
    db: Database, after: Position, flt: EventFilter
) -> tuple[list[event_stream.Streamed], Position]:
    def query(conn: Connection) -> tuple[list[event_stream.Streamed], Position]:
        return event_stream.read(conn, after, event_stream.horizon(conn), flt, BATCH)

    return await db.read(query)


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM: the loop ends between reads, exit status 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, stop.set)
    return stop


def _line(document: str) -> str:
    event = json.loads(document)
    response = event.get("response") or {}
    detail = " ".join(str(response.get(k) or "") for k in ("code", "enhanced_status", "text"))
    fields = (
        event["created_at"],
        event["message_id"],
        f"{event['type']:<10}",
        event.get("recipient") or "-",
        " ".join(detail.split()) or "-",
    )
    return "  ".join(_safe(str(field)) for field in fields)


def _safe(text: str) -> str:
    """Control characters (a hostile reply or address) escaped: one event, one line."""
    return text.encode("unicode_escape").decode("ascii") if has_control(text) else text
