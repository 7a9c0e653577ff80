"""`postern keys ...` and `postern suppressions ...`: the API's operations for operators.

They open the configured database directly (a running `postern serve` sees new keys at
once, suppressions within seconds, removals within a minute). Text for people, `--json`
for scripts; a refusal is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from gateway.addresses import envelope_problem, escape_for_log, has_control, mailbox_key
from gateway.config import Config
from gateway.process.commands.options import leaf

# Re-exported: the commands import both from here.
from gateway.process.commands.refusals import CommandError as CommandError
from gateway.process.commands.refusals import NotFound as NotFound
from storage.db import (
    Database,
    SchemaError,
    create_schema,
    database_url,
    open_database,
    prepare_data_dir,
)
from storage.keys import SCOPES, UnknownScope, create_key, list_keys, revoke_key
from storage.suppressions import (
    REASONS,
    add_suppression,
    list_suppressions,
    remove_suppression,
)

COMMANDS = ("keys", "suppressions")


def add_commands(commands: Any) -> None:
    """Register the subcommands on the `postern` parser's subparsers."""
    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    key_actions = keys.add_subparsers(dest="action", required=True)
    create = leaf(key_actions, "create", "create a key and print it (once)")
    create.add_argument("--name", required=True)
    create.add_argument(
        "--scope", dest="scopes", action="append", required=True, metavar="SCOPE",
        help=f"repeat for several: {', '.join(SCOPES)}",
    )  # fmt: skip
    leaf(key_actions, "list", "list keys (never their secrets)")
    leaf(key_actions, "revoke", "revoke a key").add_argument("id")

    suppressions = commands.add_parser("suppressions", help="the suppression list")
    actions = suppressions.add_subparsers(dest="action", required=True)
    add = leaf(actions, "add", "stop sending to an address")
    add.add_argument("email")
    add.add_argument("--reason", default="manual", choices=REASONS)
    listing = leaf(actions, "list", "list suppressed addresses")
    listing.add_argument("--reason", choices=REASONS)
    listing.add_argument("--limit", type=int, default=0, help="at most this many (0: all)")
    leaf(actions, "remove", "send to an address again").add_argument("email")


def run(args: argparse.Namespace, config: Config) -> int:
    """Run one admin command to completion; CommandError for a refusal."""
    action: Callable[[Database, argparse.Namespace], Awaitable[Any]] = _ACTIONS[
        (args.command, args.action)
    ]
    result = asyncio.run(with_database(config, lambda db: action(db, args)))
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(_text(args.command, args.action, result))
    return 0


async def with_database(config: Config, work: Callable[[Database], Awaitable[Any]]) -> Any:
    data_dir = config.server.data_dir
    try:
        if not config.storage.url:
            prepare_data_dir(data_dir)
        db = open_database(database_url(config.storage.url, data_dir))
    except OSError as error:
        raise CommandError(f"cannot use data_dir {data_dir}: {error.strerror}") from None
    try:
        await create_schema(db)
        return await work(db)
    except SchemaError as error:
        raise CommandError(str(error)) from None
    except (OSError, ValueError) as error:
        raise CommandError(str(error).splitlines()[0] if str(error) else repr(error)) from None
    except Exception as error:  # a database that is down or refuses: one line, no traceback
        if isinstance(error, CommandError):
            raise
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CommandError(f"database error: {first}") from None
    finally:
        await db.dispose()


def iso_seconds(timestamp: float | None) -> str | None:
    """UNIX seconds -> ISO 8601 to the second, UTC (what the CLI prints)."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _key(record: Any) -> dict[str, Any]:
    return {
        **record.as_json(),
        "created_at": iso_seconds(record.created_at),
        "revoked_at": iso_seconds(record.revoked_at),
    }


def _email(value: str) -> str:
    """The address's mailbox key (the form the list stores), or CommandError."""
    problem = envelope_problem(value) if not has_control(value) else "control character"
    if problem:
        raise CommandError(f"{value!r} is not an address: {problem}")
    return mailbox_key(value)


async def _keys_create(db: Database, args: argparse.Namespace) -> dict[str, Any]:
    if not args.name.strip() or has_control(args.name) or len(args.name) > 128:
        raise CommandError("--name must be 1 to 128 printable characters")
    try:
        record, secret = await create_key(db, args.name, args.scopes)
    except UnknownScope as error:
        raise CommandError(str(error)) from None
    return {"id": record.id, "key": secret, "name": record.name, "scopes": list(record.scopes)}


async def _keys_list(db: Database, args: argparse.Namespace) -> list[dict[str, Any]]:
    return [_key(record) for record in await list_keys(db)]


async def _keys_revoke(db: Database, args: argparse.Namespace) -> dict[str, Any]:
    record = await revoke_key(db, args.id)
    if record is None:
        raise CommandError(f"no API key with id {args.id!r}")
    return _key(record)


async def _suppressions_add(db: Database, args: argparse.Namespace) -> dict[str, Any]:
    record, created = await add_suppression(db, _email(args.email), args.reason)
    return {**record.as_json(), "created_at": iso_seconds(record.created_at), "created": created}


async def _suppressions_list(db: Database, args: argparse.Namespace) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page, cursor = await list_suppressions(db, args.reason, 500, cursor)
        found += [{**r.as_json(), "created_at": iso_seconds(r.created_at)} for r in page]
        if cursor is None or (args.limit and len(found) >= args.limit):
            return found[: args.limit] if args.limit else found


async def _suppressions_remove(db: Database, args: argparse.Namespace) -> dict[str, Any]:
    email = _email(args.email)
    if not await remove_suppression(db, email):
        raise CommandError(f"{email} is not suppressed")
    return {"email": email, "removed": True}


_ACTIONS: dict[tuple[str, str], Callable[[Database, argparse.Namespace], Awaitable[Any]]] = {
    ("keys", "create"): _keys_create,
    ("keys", "list"): _keys_list,
    ("keys", "revoke"): _keys_revoke,
    ("suppressions", "add"): _suppressions_add,
    ("suppressions", "list"): _suppressions_list,
    ("suppressions", "remove"): _suppressions_remove,
}


def _text(command: str, action: str, result: Any) -> str:
    if (command, action) == ("keys", "create"):
        return (
            f"id:     {result['id']}\nname:   {result['name']}\n"
            f"scopes: {' '.join(result['scopes'])}\nkey:    {result['key']}\n"
            "The key is shown this once: store it now."
        )
    if (command, action) == ("keys", "list"):
        rows = [
            f"{k['id']}  {k['prefix']}…  {'revoked' if k['revoked_at'] else 'active '}  "
            f"{k['created_at']}  {' '.join(k['scopes'])}  {escape_for_log(k['name'])}"
            for k in result
        ]
        return "\n".join(rows) if rows else "no API keys"
    if (command, action) == ("keys", "revoke"):
        return f"revoked {result['id']} ({escape_for_log(result['name'])})"
    if action == "list":
        rows = [f"{r['email']}  {r['reason']}  {r['created_at']}" for r in result]
        return "\n".join(rows) if rows else "no suppressed addresses"
    if action == "add":
        verb = "suppressed" if result["created"] else "updated"
        return f"{verb} {result['email']} ({result['reason']})"
    return f"removed {result['email']}"
