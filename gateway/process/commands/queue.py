"""`postern queue list|show|cat|retry|cancel|hold|release|purge`: the API's queue operations
for operators.

The command opens the configured database itself and acts through a Queue of its own (node
id "cli") with its own storage writer, so it works whether `postern serve` runs or not; a
running server's poller picks a retried message up within a second. The CLI sees every
message, as an admin key does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from gateway.addresses import has_control
from gateway.config import Config
from gateway.process.commands.admin import CommandError, iso_seconds, with_database
from gateway.process.commands.options import common_options as admin_options
from gateway.process.commands.options import leaf
from gateway.queue.operations import (
    ACTS_ON,
    DONE_WORD,
    FilterError,
    act,
    bulk,
    make_filter,
    summary_json,
)
from gateway.queue.operations import Action as QueueAction
from storage.db import Database
from storage.message_search import (
    ACTIVE,
    MAX_LIMIT,
    STATUSES,
    InvalidCursor,
    MessageFilter,
    search,
)
from storage.messages import MessageState, message_state
from storage.queue_sql import bodies_of

if TYPE_CHECKING:  # list and show read only: no Queue, no writer
    from gateway.queue.store import Queue

COMMANDS = ("queue",)
NODE_ID = "cli"
LEASE = 120.0  # as `postern serve`; the CLI never claims, but a Queue needs one


def add_commands(commands: Any) -> None:
    parser = commands.add_parser("queue", help="find, retry, cancel, hold and release messages")
    actions = parser.add_subparsers(dest="action", required=True)
    listing = leaf(actions, "list", "list messages, newest first")
    _filters(listing)
    listing.add_argument("--limit", type=int, default=50, help=f"1 to {MAX_LIMIT} (default 50)")
    listing.add_argument("--cursor", help="next_cursor of the previous page")
    leaf(actions, "show", "a message's recipients and events").add_argument("id")
    cat = actions.add_parser("cat", help="print a message's stored bytes, like postcat -q")
    admin_options(cat)
    cat.add_argument("id")
    for name, text in (
        ("retry", "make messages due now, like postqueue -f (ids, or a filter)"),
        ("cancel", "stop messages (ids, or a filter)"),
        ("hold", "hold messages, like postsuper -h: never delivered until released"),
        ("release", "release held messages, like postsuper -H (ids, or a filter)"),
    ):
        command = leaf(actions, name, text)
        command.add_argument("ids", nargs="*", metavar="ID")
        _filters(command, bulk=True)
    purge = leaf(actions, "purge", "cancel every message with work left matching a filter")
    _filters(purge, bulk=True)


def _filters(parser: argparse.ArgumentParser, bulk: bool = False) -> None:
    parser.add_argument("--status", help=f"comma-separated: {', '.join(STATUSES)}")
    parser.add_argument("--pool", help="pool name")
    parser.add_argument("--recipient", help="a recipient's address")
    parser.add_argument("--from", dest="mail_from", help="envelope sender")
    parser.add_argument("--tag")
    parser.add_argument(
        "--message-id", dest="message_id_header", help="the client's own Message-ID header"
    )
    parser.add_argument("--subject", help="words the Subject has, all of them, any order")
    parser.add_argument("--client", help="the client's IP address, or a CIDR block")
    parser.add_argument("--since", help="created at or after: ISO 8601 or UNIX seconds")
    parser.add_argument("--until", help="created before: ISO 8601 or UNIX seconds")
    if bulk:
        parser.add_argument("--all", action="store_true", help="no filter: the whole queue")
        parser.add_argument("--dry-run", action="store_true", help="only count what matches")


def run(args: argparse.Namespace, config: Config) -> int:
    if args.action == "cat":
        return _cat(args.id, config)
    read = _READS.get(args.action)
    if read is not None:  # list and show: no Queue, no writer (nor their imports)
        result = asyncio.run(with_database(config, lambda db: read(db, args)))
    else:
        act = _ACTIONS[args.action]
        result = asyncio.run(with_database(config, lambda db: _with_queue(db, config, args, act)))
    print(json.dumps(result, ensure_ascii=False) if args.json else _text(args.action, result))
    return 0


Action = Callable[[Database, "Queue", argparse.Namespace], Awaitable[Any]]


def _cat(message_id: str, config: Config) -> int:
    """The stored bytes on stdout, exactly (no newline added); exit 1 and one stderr line
    when there is no such message or its body is gone (deleted storage.body_retention
    after the message became final)."""
    found = asyncio.run(with_database(config, lambda db: _body(db, message_id)))
    if isinstance(found, str):
        print(f"postern: {found}", file=sys.stderr)
        return 1
    sys.stdout.flush()
    sys.stdout.buffer.write(found)
    return 0


async def _body(db: Database, message_id: str) -> bytes | str:
    """The body, or why there is none."""
    state = await message_state(db, message_id) if len(message_id) <= 64 else None
    if state is None:
        return f"no message with id {message_id!r}"
    bodies = await db.read(lambda conn: bodies_of(conn, [message_id]))
    if message_id not in bodies:
        why = "bodies are deleted when final, and by retention"
        return f"the body of {message_id} is gone ({state.status}: {why})"
    return bytes(bodies[message_id])


async def _with_queue(db: Database, config: Config, args: argparse.Namespace, act: Action) -> Any:
    from gateway.queue.store import Queue
    from storage.writer import Writer

    writer = Writer(db)
    writer.start()
    try:
        delivery = config.delivery
        queue = Queue(db, writer, NODE_ID, delivery.retry_schedule, delivery.max_age, LEASE)
        return await act(db, queue, args)
    finally:
        await writer.stop()


_OPTIONS = {"message_id_header": "message-id"}  # a filter field's option, where it differs


def _filter(args: argparse.Namespace) -> MessageFilter:
    values = {
        "status": args.status,
        "pool": args.pool,
        "recipient": args.recipient,
        "from": args.mail_from,
        "tag": args.tag,
        "message_id_header": args.message_id_header,
        "subject": args.subject,
        "client": args.client,
        "since": args.since,
        "until": args.until,
    }
    try:
        return make_filter(values)
    except FilterError as error:
        option = _OPTIONS.get(error.field, error.field)
        raise CommandError(f"--{option}: {error.message}") from None


def _state(state: MessageState) -> dict[str, Any]:
    return {
        "message_id": state.id,
        "status": state.status,
        "from": state.mail_from,
        "pool": state.pool,
        "attempts": state.attempts,
        "created_at": iso_seconds(state.created_at),
        "updated_at": iso_seconds(state.updated_at),
        "next_attempt_at": iso_seconds(state.next_attempt_at),
        "last_response": state.last_response,
        "tags": state.tags,
        "metadata": state.metadata,
        "recipients": [
            {"email": r.email, "status": r.status, "attempts": r.attempts, "response": r.response}
            for r in state.recipients
        ],
        "events": state.events,
        "client_address": state.client_address,
    }


async def _list(db: Database, args: argparse.Namespace) -> dict[str, Any]:
    if not 1 <= args.limit <= MAX_LIMIT:
        raise CommandError(f"--limit: 1 to {MAX_LIMIT}")
    flt = _filter(args)
    try:
        page, cursor = await search(db, flt, args.limit, args.cursor or None)
    except InvalidCursor:
        raise CommandError("--cursor: not a cursor `postern queue list` printed") from None
    return {"data": [summary_json(m, iso_seconds) for m in page], "next_cursor": cursor}


async def _show(db: Database, args: argparse.Namespace) -> dict[str, Any]:
    state = await message_state(db, args.id, True) if len(args.id) <= 64 else None
    if state is None:
        raise CommandError(f"no message with id {args.id!r}")
    return _state(state)


async def _by_ids(
    db: Database, queue: Queue, args: argparse.Namespace, action: QueueAction
) -> dict[str, Any]:
    """Act on the messages named; an unknown id refuses the whole command. Those the action
    does not apply to are listed: `final` (no work left) and, for retry, hold and release,
    `skipped` (held, or not held)."""
    active: list[str] = []
    final: list[str] = []
    skipped: list[str] = []
    for message_id in dict.fromkeys(args.ids):
        state = await message_state(db, message_id) if len(message_id) <= 64 else None
        if state is None:
            raise CommandError(f"no message with id {message_id!r}")
        if state.status not in ACTIVE:
            final.append(message_id)
        elif state.status in ACTS_ON[action]:
            active.append(message_id)
        else:
            skipped.append(message_id)
    done: list[str] = []
    if active and not args.dry_run:
        done = await act(queue, action, active)
    if len(args.ids) == 1 and not done and not args.dry_run:
        if final:
            why = "it has no work left"
        elif skipped:
            why = "it is not on hold" if action == "release" else "it is on hold"
        else:
            why = "it is being delivered right now"
        raise CommandError(f"cannot {action} {args.ids[0]}: {why}")
    busy = [] if args.dry_run else [m for m in active if m not in done]
    found: dict[str, Any] = {
        "matched": len(active),
        DONE_WORD[action]: len(done),
        "busy": len(busy),
        "dry_run": args.dry_run,
        "final": final,
    }
    if skipped:
        found["skipped"] = skipped
    return found


async def _act(db: Database, queue: Queue, args: argparse.Namespace) -> dict[str, Any]:
    action: QueueAction = "cancel" if args.action == "purge" else args.action
    flt = _filter(args)
    ids = getattr(args, "ids", [])
    if ids:
        if not flt.is_empty() or args.all:
            raise CommandError("give message ids or a filter, not both")
        return await _by_ids(db, queue, args, action)
    if flt.is_empty() and not args.all:
        raise CommandError("give message ids, a filter (--status, --pool, ...), or --all")
    # No cap here: the HTTP form stops at MAX_BULK per request, an operator's command
    # goes through the whole queue (a chunk per transaction).
    return (await bulk(queue, db, flt, action, args.dry_run, limit=UNCAPPED)).as_json()


UNCAPPED = 1 << 62

_READS: dict[str, Callable[[Database, argparse.Namespace], Awaitable[Any]]] = {
    "list": _list,
    "show": _show,
}
_ACTIONS: dict[str, Action] = {
    "retry": _act,
    "cancel": _act,
    "hold": _act,
    "release": _act,
    "purge": _act,
}


def _safe(text: str | None) -> str:
    if text is None:
        return "-"
    return text.encode("unicode_escape").decode("ascii") if has_control(text) else text


def _text(action: str, result: Any) -> str:
    if action == "list":
        rows = [
            f"{m['message_id']}  {m['status']:<9}  {m['created_at']}  {_safe(m['from'])} -> "
            f"{', '.join(m['recipients'])}  pool={_safe(m['pool'])}  attempts={m['attempts']}"
            f"  client={m['client_address'] or '-'}"
            for m in result["data"]
        ]
        if result["next_cursor"]:
            rows.append(f"more: --cursor {result['next_cursor']}")
        return "\n".join(rows) if rows else "no messages"
    if action == "show":
        lines = [
            f"{result['message_id']}  {result['status']}",
            f"from:       {_safe(result['from'])}   client: {result['client_address'] or '-'}",
            f"pool:       {_safe(result['pool'])}   attempts: {result['attempts']}",
            f"created:    {result['created_at']}   updated: {result['updated_at']}",
            f"next try:   {result['next_attempt_at'] or '-'}",
            f"last reply: {_safe(result['last_response'])}",
            "recipients:",
            *(
                f"  {r['email']}  {r['status']}  {_safe(r['response'])}"
                for r in result["recipients"]
            ),
            "events:",
            *(
                f"  {e['created_at']}  {e['type']:<10}  {e['recipient'] or '-'}"
                + (f"  {_safe(e['response']['text'])}" if e["response"] else "")
                for e in result["events"]
            ),
        ]
        return "\n".join(lines)
    verb = DONE_WORD["cancel" if action == "purge" else action]
    if result["dry_run"]:
        return f"dry run: {result['matched']} message(s) match"
    text = f"{verb} {result[verb]} of {result['matched']} matching message(s)"
    if result["busy"]:
        text += f"; {result['busy']} being delivered, left alone"
    if result.get("final"):
        text += f"; {len(result['final'])} already final"
    if result.get("skipped"):
        state = "not held" if action == "release" else "held"
        text += f"; {len(result['skipped'])} {state}, left alone"
    return text
