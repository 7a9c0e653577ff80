"""`postern domains add|list`: sender domains for operators (the API's /api/v1/domains).

`add` generates the domain's DKIM key (or keeps one `postern dkim generate` made) and
prints the DNS records to publish; `--verified` marks it verified at once, without a DNS
check (the operator vouches for it, as an admin key may over the API). A running
`postern serve` accepts mail From a domain added here within two seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from gateway.config import Config
from gateway.dkim import domains as sender_domains
from gateway.dkim.errors import DkimError
from gateway.dkim.keys import txt_strings
from gateway.dkim.names import normalise_domain
from gateway.process.commands.admin import CommandError, NotFound, iso_seconds, with_database
from gateway.process.commands.options import leaf
from gateway.security.secrets import SecretBox, SecretError, bind_to_database
from storage import domains
from storage.db import Database
from storage.domains import DomainRecord

COMMANDS = ("domains",)


def add_commands(commands: Any) -> None:
    parser = commands.add_parser("domains", help="domains mail may be sent From")
    actions = parser.add_subparsers(dest="action", required=True)
    add = leaf(actions, "add", "add a domain and print the DNS records to publish")
    add.add_argument("domain")
    add.add_argument("--verified", action="store_true", help="mark it verified now (no DNS check)")
    add.add_argument("--algorithm", choices=["rsa", "ed25519"], default="rsa")
    leaf(actions, "list", "list domains and whether they are verified")
    leaf(actions, "verify", "check the domain's DNS records now").add_argument("domain")
    leaf(actions, "remove", "remove a domain (its DKIM keys stay)").add_argument("domain")


def run(args: argparse.Namespace, config: Config) -> int:
    try:
        box = SecretBox.from_environment(config.server.data_dir)
    except SecretError as error:
        raise CommandError(str(error)) from None
    hostname = config.server.hostname
    args.nameservers = config.dns.nameservers  # verify asks these, as `serve` does
    result = asyncio.run(with_database(config, lambda db: _act(db, box, args, hostname)))
    print(json.dumps(result) if args.json else _text(args.action, result))
    return 0


async def _json(db: Database, record: DomainRecord, hostname: str) -> dict[str, Any]:
    key = await sender_domains.signing_key(db, record.domain)
    return {
        "id": record.id,
        "domain": record.domain,
        "verified": record.is_verified,
        "created_at": iso_seconds(record.created_at),
        "records": [
            {"purpose": r.purpose, "type": r.type, "name": r.name, "value": r.value,
             "required": r.required}
            for r in sender_domains.records(record.domain, key, hostname)
        ],
    }  # fmt: skip


async def _act(db: Database, box: SecretBox, args: argparse.Namespace, hostname: str) -> Any:
    try:
        await bind_to_database(db, box)
    except SecretError as error:
        raise CommandError(str(error)) from None
    if args.action == "list":
        return [await _json(db, record, hostname) for record in await domains.list_domains(db)]
    if args.action in ("verify", "remove"):
        return await _existing(db, args, hostname)
    try:
        name = normalise_domain(args.domain)
        record, _ = await sender_domains.register(
            db, box, name, verified=args.verified, algorithm=args.algorithm
        )
    except (DkimError, domains.DomainExists) as error:
        raise CommandError(str(error)) from None
    return await _json(db, record, hostname)


async def _existing(db: Database, args: argparse.Namespace, hostname: str) -> dict[str, Any]:
    """verify or remove a domain named by name or id (as the API's routes take it)."""
    record = await domains.get_domain(db, args.domain) if len(args.domain) <= 255 else None
    if record is None:
        raise NotFound(f"no such domain: {args.domain}")
    if args.action == "remove":
        await domains.delete_domain(db, record.id)
        return {**await _json(db, record, hostname), "removed": True}
    from gateway.dns import Resolver  # dnspython: for verify only

    resolver = Resolver(args.nameservers)
    updated, checks = await sender_domains.verify(db, resolver, record)
    return {**await _json(db, updated, hostname), "checks": [c.as_json() for c in checks]}


def _text(action: str, result: Any) -> str:
    if action == "remove":
        return f"removed {result['domain']} ({result['id']}); mail From it is refused again"
    if action == "verify":
        return _verify_text(result)
    if action == "list":
        rows = [
            f"{d['domain']}  {'verified' if d['verified'] else 'unverified'}  {d['id']}"
            for d in result
        ]
        return "\n".join(rows) if rows else "no domains"
    lines = [f"; {result['domain']} ({result['id']}): publish these records"]
    for record in result["records"]:
        quoted = " ".join(f'"{part}"' for part in txt_strings(record["value"]))
        optional = "" if record["required"] else "  ; recommended"
        lines.append(f"{record['name']}. IN TXT {quoted}{optional}")
    state = (
        "verified: mail From it is accepted now"
        if result["verified"]
        else f"then run a check: POST /api/v1/domains/{result['id']}/verify"
    )
    lines.append(f"; {state}")
    return "\n".join(lines)


def _verify_text(result: dict[str, Any]) -> str:
    lines = [f"{c['purpose']} {c['name']}: {c['status']}  {c['detail']}".rstrip()
             for c in result["checks"]]  # fmt: skip
    state = "verified" if result["verified"] else "not verified"
    return "\n".join([*lines, f"{result['domain']}: {state}"])
