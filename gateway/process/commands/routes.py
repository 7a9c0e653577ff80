"""`postern routes list|add|remove`: routes by recipient domain (Postfix's transport maps).

The API's checks and storing (api.route_ops): the config file's `[[routes]]` are listed
(source config) and win over a stored entry for the same domain, which `add` refuses. A
running `postern serve` follows within 2 s. A refusal is one line and exit status 2; an
unknown route exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from api import errors, route_ops
from gateway.config import Config
from gateway.process.commands.admin import CommandError, NotFound, iso_seconds, with_database
from gateway.process.commands.options import leaf
from storage.db import Database

COMMANDS = ("routes",)


def add_commands(commands: Any) -> None:
    parser = commands.add_parser("routes", help="routes by recipient domain (transport maps)")
    actions = parser.add_subparsers(dest="action", required=True)
    leaf(actions, "list", "list the routes in force (the config's, then the stored ones)")
    add = leaf(actions, "add", "route a recipient domain through a pool or an ip_pool group")
    add.add_argument("recipient_domain", help="gmail.com, or .example.com for its subdomains")
    target = add.add_mutually_exclusive_group(required=True)
    target.add_argument("--pool", help="a pool's name")
    target.add_argument("--ip-pool", dest="ip_pool", help="a group of pools")
    remove = leaf(actions, "remove", "delete a stored route")
    remove.add_argument("id", help="its id (rte_...) or its recipient domain")


def run(args: argparse.Namespace, config: Config) -> int:
    result = asyncio.run(with_database(config, lambda db: _act(db, args, config)))
    print(json.dumps(result, ensure_ascii=False) if args.json else _text(args.action, result))
    return 0


async def _act(db: Database, args: argparse.Namespace, config: Config) -> Any:
    try:
        if args.action == "list":
            return [
                entry.as_json(iso_seconds) for entry in await route_ops.entries(db, config.routes)
            ]
        if args.action == "add":
            record = await route_ops.create(
                db, config.routes, args.recipient_domain, args.pool, args.ip_pool,
                config_pools=[pool.name for pool in config.pools],
            )  # fmt: skip
            return {**_json(record), "added": True}
        record = await route_ops.remove(db, args.id, config.routes)
        return {**_json(record), "removed": True}
    except errors.NotFound:
        raise NotFound(f"no such route: {args.id}") from None
    except errors.ApiError as error:
        raise CommandError(str(error)) from None


def _json(record: Any) -> dict[str, Any]:
    return route_ops.Entry(
        record.recipient_domain, record.pool, record.ip_pool, "api", record.id, record.created_at
    ).as_json(iso_seconds)


def _target(item: dict[str, Any]) -> str:
    return f"pool {item['pool']}" if item["pool"] else f"ip_pool {item['ip_pool']}"


def _text(action: str, result: Any) -> str:
    if action == "list":
        rows = [
            f"{item['recipient_domain']}  -> {_target(item)}  ({item['source']}"
            + (f" {item['id']}" if item["id"] else "")
            + (", shadowed by the config" if item["shadowed"] else "")
            + ")"
            for item in result
        ]
        return "\n".join(rows) if rows else "no routes"
    verb = "added" if action == "add" else "removed"
    return f"{verb} route {result['id']}: {result['recipient_domain']} -> {_target(result)}"
