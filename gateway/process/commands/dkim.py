"""`postern dkim generate|list|activate|retire`: signing keys for operators.

Keys are stored encrypted (the same secret key as pool passwords); a running `postern serve`
starts signing with a newly active key within two seconds. Rotation without a gap: generate
a second selector (it stays pending while another key is active), publish its record, wait
for DNS, then `activate` it; the old key is retired and its record can go later.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from gateway.config import Config
from gateway.dkim.errors import DkimError
from gateway.dkim.keys import dns_record, generate_key
from gateway.dkim.names import default_selector, normalise_domain, normalise_selector
from gateway.process.commands.admin import CommandError, with_database
from gateway.process.commands.options import leaf
from gateway.security.secrets import SecretBox, SecretError, bind_to_database
from storage import dkim_keys
from storage.db import Database

COMMANDS = ("dkim",)


def add_commands(commands: Any) -> None:
    parser = commands.add_parser("dkim", help="DKIM signing keys")
    actions = parser.add_subparsers(dest="action", required=True)
    generate = leaf(actions, "generate", "create a key and print its DNS record")
    generate.add_argument("--domain", required=True)
    generate.add_argument("--selector", help="default: pYYYYMMDD (then -2, -3...)")
    generate.add_argument("--algorithm", choices=["rsa", "ed25519"], default="rsa")
    leaf(actions, "list", "list keys (never their private halves)").add_argument("--domain")
    for name, text in (("activate", "sign with this key"), ("retire", "stop signing with it")):
        action = leaf(actions, name, text)
        action.add_argument("--domain", required=True)
        action.add_argument("--selector", required=True)


def run(args: argparse.Namespace, config: Config) -> int:
    try:
        box = SecretBox.from_environment(config.server.data_dir)
    except SecretError as error:
        raise CommandError(str(error)) from None
    result = asyncio.run(with_database(config, lambda db: _act(db, box, args)))
    print(json.dumps(result) if args.json else _text(args.action, result))
    return 0


async def _act(db: Database, box: SecretBox, args: argparse.Namespace) -> Any:
    try:
        await bind_to_database(db, box)
        domain = normalise_domain(args.domain) if args.domain else None
        if args.action == "generate":
            assert domain is not None
            return await _generate(db, box, domain, args.selector, args.algorithm)
        if args.action == "list":
            return [_record(key) for key in await dkim_keys.list_keys(db, domain)]
        assert domain is not None
        selector = normalise_selector(args.selector)
        change = dkim_keys.activate_key if args.action == "activate" else dkim_keys.retire_key
        return _record(await change(db, domain, selector))
    except (DkimError, dkim_keys.DkimKeyError, SecretError) as error:
        raise CommandError(str(error)) from None


async def _generate(
    db: Database, box: SecretBox, domain: str, selector: str | None, algorithm: str
) -> dict[str, Any]:
    if selector is None:
        taken = [key.selector for key in await dkim_keys.list_keys(db, domain)]
        selector = default_selector(taken)
    else:
        selector = normalise_selector(selector)
    pair = generate_key(algorithm)
    stored = await dkim_keys.add_key(
        db, box, domain=domain, selector=selector, algorithm=pair.algorithm,
        private_pem=pair.private_pem, public_key=pair.public_key,
    )  # fmt: skip
    record = dns_record(selector, domain, pair.algorithm, pair.public_key)
    return {
        "domain": domain,
        "selector": selector,
        "algorithm": pair.algorithm,
        "name": record.name,
        "value": record.value,
        "status": stored.status,
        "zone": record.zone(),
    }


def _record(key: dkim_keys.DkimKeyRecord) -> dict[str, Any]:
    return {
        "domain": key.domain,
        "selector": key.selector,
        "algorithm": key.algorithm,
        "status": key.status,
        "name": f"{key.selector}._domainkey.{key.domain}",
    }


def _text(action: str, result: Any) -> str:
    if action == "generate":
        note = (
            "active: mail From this domain is signed from now on"
            if result["status"] == "active"
            else "pending: publish the record, wait for DNS, then `postern dkim activate`"
        )
        return f"{result['zone']}\n; {result['selector']} is {note}"
    if action == "list":
        rows = [f"{k['domain']}  {k['selector']}  {k['algorithm']}  {k['status']}" for k in result]
        return "\n".join(rows) if rows else "no DKIM keys"
    return f"{result['domain']} {result['selector']}: {result['status']}"
