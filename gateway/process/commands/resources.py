"""`postern pools|aliases|webhooks list|show|remove`: the API's resources for operators
(`pools add|test`, `aliases add|resend` and `webhooks add` set them up, with the API's checks:
pools and aliases in gateway.process.commands.resource_setup).

They read and delete through storage, as the API's *_ops do after their ownership checks
(the operator at the console sees everything); what storage refuses (a pool queued mail
still needs, the last verified alias) is its own one line and exit status 2, an unknown id
exit status 1. A running `postern serve` follows within seconds (it reloads identities and
pools from storage).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from gateway.errors import Refused
from gateway.process.commands.admin import CommandError, NotFound, iso_seconds, with_database
from gateway.process.commands.options import leaf
from gateway.queue import events
from storage import aliases, pools, webhooks
from storage.db import Database

if TYPE_CHECKING:
    from gateway.config import Config

# `list`, `show` and `remove` read and delete through storage alone; what sets up a
# resource (`add`, `test`, `resend`: the API's schemas and checks, pydantic, the SSRF guard,
# DNS, SMTP) is imported by those actions only (gateway.process.commands.resource_setup).

COMMANDS = ("pools", "aliases", "webhooks")
_SINGULAR = {"pools": "SMTP pool", "aliases": "alias", "webhooks": "webhook"}
_TIMES = ("created_at", "updated_at", "verified_at", "next_attempt_at")


def add_commands(commands: Any) -> None:
    for name, text in (
        ("pools", "SMTP pools mail is relayed through"),
        ("aliases", "sender addresses (aliases)"),
        ("webhooks", "webhook endpoints"),
    ):
        parser = commands.add_parser(name, help=text)
        actions = parser.add_subparsers(dest="action", required=True)
        leaf(actions, "list", f"list {name}")
        leaf(actions, "show", f"show one {_SINGULAR[name]}").add_argument("id")
        remove = leaf(actions, "remove", f"remove a {_SINGULAR[name]}")
        remove.add_argument("id")
        if name == "pools":
            remove.add_argument("--move-to", help="pool id that takes the queued mail needing it")
        if name == "webhooks":
            _webhook_add(leaf(actions, "add", "add a webhook and print its signing secret (once)"))
        if name == "pools":
            _pool_add(leaf(actions, "add", "add an SMTP pool"))
            leaf(actions, "test", "test a pool's connection (exit 1 when it fails)").add_argument(
                "id"
            )
        if name == "aliases":
            _alias_add(leaf(actions, "add", "add an alias and print its verification link"))
            leaf(actions, "resend", "print a new verification link").add_argument("id")


def _webhook_add(add: argparse.ArgumentParser) -> None:
    add.add_argument("url")
    add.add_argument(
        "--event", dest="events", action="append", choices=events.TYPES, metavar="TYPE",
        help="repeat for several (default: every type)",
    )  # fmt: skip
    add.add_argument("--final-only", action="store_true", help="only each recipient's outcome")
    add.add_argument("--description", default="")


def _pool_add(add: argparse.ArgumentParser) -> None:
    add.add_argument("name")
    add.add_argument("--host", required=True)
    add.add_argument("--port", type=int, default=587)
    add.add_argument("--encryption", choices=("tls", "ssl", "none"), default="tls")
    add.add_argument("--username", default="")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin (one line)"
    )
    add.add_argument("--ip-pool", default="transactional")
    add.add_argument("--priority", type=int, default=100)
    add.add_argument("--max-connections", type=int, default=10)
    add.add_argument("--default", action="store_true", help="the default pool")
    add.add_argument("--inactive", action="store_true", help="stored, not used yet")
    add.add_argument("--from-email", default="")
    add.add_argument("--no-tls-verify", action="store_true")
    add.add_argument("--rate", default="", help='e.g. "100/minute"')
    add.add_argument("--daily-limit", type=int, default=0)


def _alias_add(add: argparse.ArgumentParser) -> None:
    add.add_argument("email")
    add.add_argument("--name", default=None)
    add.add_argument("--ip-pool", default=None)
    add.add_argument("--default", action="store_true", help="the default sender")
    add.add_argument("--verified", action="store_true", help="verified at once, no link")


def run(args: argparse.Namespace, config: Config) -> int:
    result = asyncio.run(with_database(config, lambda db: _act(db, args, config)))
    print(json.dumps(result, ensure_ascii=False) if args.json else _text(args, result))
    failed = args.action == "test" and not result["success"]
    return 1 if failed else 0


def as_json(record: Any) -> dict[str, Any]:
    """The record's fields, times as the CLI prints them (records hold no secrets)."""
    values = dataclasses.asdict(record)
    for name in _TIMES:
        if name in values and isinstance(values[name], float):
            values[name] = iso_seconds(values[name])
    if isinstance(values.get("event_types"), tuple | list):
        values["event_types"] = list(values["event_types"])
    return values


_GET: dict[str, Callable[[Database, str], Awaitable[Any]]] = {
    "pools": pools.get_pool,
    "aliases": aliases.get_alias,
    "webhooks": webhooks.get_webhook,
}
_LIST: dict[str, Callable[[Database], Awaitable[list[Any]]]] = {
    "pools": pools.pool_records,
    "aliases": aliases.list_aliases,
    "webhooks": webhooks.list_webhooks,
}


async def _act(db: Database, args: argparse.Namespace, config: Config) -> Any:
    setting_up = _SET_UP.get((args.command, args.action))
    if setting_up is not None:
        return await setting_up(db, args, config)
    if args.action == "list":
        return [as_json(record) for record in await _LIST[args.command](db)]
    record = await _GET[args.command](db, args.id) if len(args.id) <= 64 else None
    if record is None:
        raise NotFound(f"no such {_SINGULAR[args.command]}: {args.id}")
    if args.action == "show":
        return as_json(record)
    try:
        return {**as_json(record), **await _remove(db, args)}
    except Refused as error:
        raise CommandError(str(error)) from None


async def _add_pool(db: Database, args: argparse.Namespace, config: Config) -> dict[str, Any]:
    from gateway.process.commands import resource_setup as setup

    return as_json(await setup.add_pool(db, args, config))


async def _test_pool(db: Database, args: argparse.Namespace, config: Config) -> dict[str, Any]:
    from gateway.process.commands import resource_setup as setup

    return await setup.test_pool(db, args.id, config)


async def _add_alias(db: Database, args: argparse.Namespace, config: Config) -> dict[str, Any]:
    from gateway.process.commands import resource_setup as setup

    return await setup.add_alias(db, args, config)


async def _resend(db: Database, args: argparse.Namespace, config: Config) -> dict[str, Any]:
    from gateway.process.commands import resource_setup as setup

    return await setup.resend_alias(db, args.id, config)


async def _remove(db: Database, args: argparse.Namespace) -> dict[str, Any]:
    if args.command == "pools":
        _, moved = await pools.delete_pool(db, args.id, args.move_to)
        return {"removed": True, "moved": moved}
    if args.command == "aliases":
        await aliases.delete_alias(db, args.id)
    elif not await webhooks.delete_webhook(db, args.id):
        raise NotFound(f"no such webhook: {args.id}")
    return {"removed": True}


async def _add_webhook(db: Database, args: argparse.Namespace, config: Config) -> dict[str, Any]:
    """The API's checks and storing (webhook_ops.create_with), the same schema first."""
    from api import webhook_ops
    from api.errors import ApiError
    from api.webhook_schemas import WebhookCreate
    from gateway.dns import Resolver
    from gateway.process.commands import resource_setup as setup
    from gateway.security.hostguard import HostGuard

    values = {"url": args.url, "final_only": args.final_only, "description": args.description}
    if args.events:
        values["event_types"] = args.events
    body = setup.checked(WebhookCreate, values)
    box = await setup.bound_box(db, config)
    nameservers = config.dns.nameservers
    guard = HostGuard(
        config.security.deny_networks, allow_private=config.webhooks.allow_private,
        resolver=Resolver(nameservers) if nameservers else None,
    )  # fmt: skip
    try:
        record, secret = await webhook_ops.create_with(db, box, guard, body, None)
    except ApiError as error:
        raise CommandError(str(error)) from None
    return {**as_json(record), "secret": secret}


_SET_UP: dict[tuple[str, str], Callable[[Database, argparse.Namespace, Config], Awaitable[Any]]] = {
    ("webhooks", "add"): _add_webhook,
    ("pools", "add"): _add_pool,
    ("pools", "test"): _test_pool,
    ("aliases", "add"): _add_alias,
    ("aliases", "resend"): _resend,
}


def _line(kind: str, item: dict[str, Any]) -> str:
    if kind == "pools":
        state = "active" if item["is_active"] else "inactive"
        return f"{item['id']}  {item['name']}  {item['host']}:{item['port']}  {state}"
    if kind == "aliases":
        state = "verified" if item["is_verified"] else "unverified"
        return f"{item['id']}  {item['email']}  {state}{'  default' if item['is_default'] else ''}"
    types = ",".join(item["event_types"]) or "all events"
    return f"{item['id']}  {item['url']}  {types}{'' if item['is_active'] else '  inactive'}"


def _text(args: argparse.Namespace, result: Any) -> str:
    if args.action == "list":
        rows = [_line(args.command, item) for item in result]
        return "\n".join(rows) if rows else f"no {args.command}"
    if args.command == "pools" and args.action in ("add", "test"):
        return _test_line(result) if args.action == "test" else _pool_line(result)
    if args.command == "aliases" and args.action in ("add", "resend"):
        return _alias_line(result)
    if args.action == "add":
        return (f"added webhook {result['id']} -> {result['url']}\nsecret: {result['secret']}\n"
                "The secret is shown this once: store it now.")  # fmt: skip
    if args.action == "show":
        return "\n".join(f"{name}: {value}" for name, value in result.items())
    moved = f"; {result['moved']} queued messages moved" if result.get("moved") else ""
    return f"removed {_SINGULAR[args.command]} {result['id']}{moved}"


def _pool_line(pool: dict[str, Any]) -> str:
    return f"added SMTP pool {pool['id']} ({pool['name']}, {pool['host']}:{pool['port']})"


def _test_line(result: dict[str, Any]) -> str:
    if result["success"]:
        return f"{result['name']}: OK in {result['latency_ms']} ms: {result['message']}"
    failure = f"FAILED ({result['reason']}) after {result['latency_ms']} ms"
    return f"{result['name']}: {failure}: {result['error']}"


def _alias_line(result: dict[str, Any]) -> str:
    if result["verification_link"] is None:
        return f"alias {result['id']} ({result['email']}) is verified"
    return (
        f"alias {result['id']} ({result['email']}) waits for verification: open this link "
        f"within 48 hours (it works once):\n{result['verification_link']}"
    )
