"""`postern blocklists check|status`: the DNSBL verdicts of the sending IPs and domains (the
same records as GET /api/v1/blocklists). `check` runs a round now, through `[dns]
nameservers`, unless a node holds the check's lease at this moment; a running `serve` takes
its next round `[blocklists] interval` after this one."""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from typing import Any

from gateway.addresses import escape_for_log
from gateway.config import Config
from gateway.process.commands.admin import CommandError, iso_seconds, with_database
from gateway.process.commands.options import leaf
from storage import blocklists as stored
from storage.db import Database

COMMANDS = ("blocklists",)
_TIMES = ("last_checked_at", "attempted_at", "listed_since")


def add_commands(commands: Any) -> None:
    group = commands.add_parser("blocklists", help="DNSBL checks of the sending IPs and domains")
    actions = group.add_subparsers(dest="action", required=True)
    leaf(actions, "check", "check every sending IP and domain now, and store the verdicts")
    leaf(actions, "status", "the latest verdicts, listed first")


def run(args: argparse.Namespace, config: Config) -> int:
    action = {"check": _check, "status": _status}[args.action]
    result = asyncio.run(with_database(config, lambda db: action(db, config)))
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(_text(args.action, result))
    return 0


def _shown(check: stored.StoredCheck) -> dict[str, Any]:
    found = stored.as_json(check)
    return found | {name: iso_seconds(found[name]) for name in _TIMES}


async def _status(db: Database, config: Config) -> dict[str, Any]:
    state = await stored.run_state(db)
    return {
        "enabled": config.blocklists.enabled,
        "lists": list(config.blocklists.lists),
        "last_completed_at": iso_seconds(state.completed_at) if state else None,
        "running_on": state.claimed_by if state and state.claimed_by else None,
        "subjects": [_shown(check) for check in await stored.all_checks(db)],
    }


async def _check(db: Database, config: Config) -> dict[str, Any]:
    from gateway.reputation.dnsbl import BlocklistCheck, subjects  # DNS: `check` alone

    blocklists = config.blocklists
    if not await subjects(db, blocklists.sending_ips):
        raise CommandError(
            "nothing to check: set [blocklists] sending_ips, or verify a sender domain"
        )
    node = f"cli-{uuid.uuid4().hex[:12]}"
    check = BlocklistCheck.build(db, blocklists, config.dns.nameservers, node)
    report = await check.check_now()
    if not report.ran:
        state = await stored.run_state(db)
        holder = state.claimed_by if state else None
        raise CommandError(f"a check is running now (on {holder or 'another node'}); try later")
    checks = {check.subject: check for check in await stored.all_checks(db)}
    return {
        "lists": {name: why or "verified" for name, why in report.verification.items()},
        "completed_at": iso_seconds(report.completed_at),
        "newly_listed": [verdict.subject for verdict in report.newly_listed],
        "subjects": [_shown(checks[v.subject]) for v in report.verdicts if v.subject in checks],
    }


def _text(action: str, result: dict[str, Any]) -> str:
    lines = []
    if action == "check":
        lines += [f"list {name}: {_safe(state)}" for name, state in result["lists"].items()]
        lines.append(f"completed at {result['completed_at']}")
    else:
        lines.append(
            f"last completed check: {result['last_completed_at'] or 'never'}"
            + ("" if result["enabled"] else " (scheduled checks disabled: [blocklists] enabled)")
        )
        if result["running_on"]:
            lines.append(f"a check is running on {result['running_on']}")
    for row in result["subjects"]:
        lines.append(
            f"{row['status']:<8} {row['kind']:<6} {_safe(row['subject'])}  "
            f"checked {row['last_checked_at'] or 'never'}"
        )
        for item in row["listings"]:
            text = f"  ({_safe(item['text'])})" if item.get("text") else ""
            code, meaning = _safe(item["code"]), _safe(item["meaning"])
            lines.append(f"    listed on {_safe(item['list'])}: {code} {meaning}{text}")
        for item in row["errors"]:
            lines.append(f"    {_safe(item['list'])}: no answer: {_safe(item['reason'])}")
    if not result["subjects"]:
        lines.append("no subject checked yet")
    return "\n".join(lines)


def _safe(text: str) -> str:
    """What a list or a resolver answered (a TXT record above all), as one line on a
    terminal: control characters (an escape sequence, a line break) become escapes."""
    return escape_for_log(str(text))
