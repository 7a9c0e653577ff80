"""`postern users create|list|disable|reset-password`: people, for operators.

The operator at the console may do anything a user's role allows no one else, but the last
active owner stays: it can be neither disabled nor demoted. A password is generated and
printed once, or read from the first line of stdin with `--password-stdin` (never from the
command line, where other users of the machine could read it). Refusals are one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from gateway.addresses import escape_for_log
from gateway.config import Config
from gateway.errors import Refused
from gateway.people.roles import ROLES
from gateway.process.commands.admin import CommandError, iso_seconds, with_database
from gateway.process.commands.options import leaf
from storage.db import Database
from storage.users import UserRecord, list_users

COMMANDS = ("users",)


def add_commands(commands: Any) -> None:
    parser = commands.add_parser("users", help="people who log in to the dashboard")
    actions = parser.add_subparsers(dest="action", required=True)
    create = leaf(actions, "create", "create a user and print their password (once)")
    create.add_argument("--email", required=True)
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--name", default="")
    _password_stdin(create)
    leaf(actions, "list", "list users (never their passwords)")
    leaf(actions, "disable", "disable a user and end their sessions").add_argument("email")
    reset = leaf(actions, "reset-password", "set a new password and end the user's sessions")
    reset.add_argument("email")
    _password_stdin(reset)


def _password_stdin(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-stdin", action="store_true",
        help="read the password from the first line of stdin instead of generating one",
    )  # fmt: skip


def run(args: argparse.Namespace, config: Config) -> int:
    password = _read_password() if getattr(args, "password_stdin", False) else None
    result = asyncio.run(with_database(config, lambda db: _act(db, args, password)))
    print(json.dumps(result, ensure_ascii=False) if args.json else _text(args.action, result))
    return 0


def _read_password() -> str:
    """The first line of stdin, without its line ending; nothing more is read."""
    from gateway.people import passwords  # argon2: not for `users list`

    line = sys.stdin.readline()
    password = line.removesuffix("\n").removesuffix("\r")
    if not password:
        raise CommandError("--password-stdin: stdin has no password on its first line")
    try:
        return passwords.check_new(password)
    except passwords.WeakPassword as error:
        raise CommandError(str(error)) from None


def _json(user: UserRecord) -> dict[str, Any]:
    """What the record shows (never the hash: UserRecord.as_json), times as the CLI prints them."""
    times = ("disabled_at", "created_at", "updated_at")
    return {**user.as_json(), **{name: iso_seconds(getattr(user, name)) for name in times}}


async def _act(db: Database, args: argparse.Namespace, password: str | None) -> Any:
    if args.action == "list":
        return [_json(user) for user in await list_users(db)]
    from gateway.people import passwords  # argon2: not for `users list`
    from gateway.people.users import Users

    people = Users(db, passwords.Passwords())
    generated = passwords.generate() if password is None else None
    try:
        if args.action == "create":
            user = await people.create(args.email, args.role, password or generated or "",
                                       name=args.name)  # fmt: skip
        else:
            user = await people.find(args.email)
            if args.action == "disable":
                return _json(await people.disable(user.id))
            user = await people.reset_password(user.id, password or generated or "")
    except Refused as error:
        raise CommandError(str(error)) from None
    return {**_json(user), "password": generated} if generated else _json(user)


def _text(action: str, result: Any) -> str:
    if action == "list":
        rows = [
            f"{u['id']}  {u['role']:<6}  {'disabled' if u['disabled_at'] else 'active  '}  "
            f"{u['email']}  {escape_for_log(u['name'])}"
            for u in result
        ]
        return "\n".join(rows) if rows else "no users"
    if action == "disable":
        return f"disabled {result['email']} ({result['id']}); their sessions ended"
    verb = "created" if action == "create" else "new password for"
    lines = [f"{verb} {result['email']} ({result['id']}, {result['role']})"]
    if "password" in result:
        lines.append(f"password: {result['password']}")
        lines.append("The password is shown this once: store it now.")
    return "\n".join(lines)
