"""`postern pools add|test` and `postern aliases add|resend`: setting up what the API sets up,
at the console.

`pools add` takes the fields POST /api/v1/smtp-pools takes (the same schema, the same checks
and SSRF guard, the password read from stdin with `--password-stdin`, never from the command
line, where `ps` shows it) and stores the pool with its password sealed. `pools test` runs the
connection test of a stored pool (the dashboard's button) and exits 1 when it fails.

`aliases add` stores an alias on a verified domain (or a connected account's address) and
prints its verification link instead of mailing it (the console has no running Intake): the
operator opens it or hands it on; `--verified` verifies it at once (the console is trusted,
as an admin key is). `aliases resend` prints a new link; the links given before stop working.
A running `postern serve` follows within seconds (it reloads pools and identities).
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from typing import Any

from pydantic import BaseModel, ValidationError

from api import alias_ops, pool_ops
from api.errors import ApiError
from api.management import TOKEN_TTL
from api.resource_schemas import AliasCreate, PoolCreate
from gateway.config import Config
from gateway.delivery.probe import ProbeTarget
from gateway.errors import Refused
from gateway.process.commands.admin import CommandError, NotFound
from gateway.process.pools import config_password
from gateway.security.hostguard import HostGuard
from gateway.security.pool_secrets import unseal
from gateway.security.secrets import SecretBox, SecretError, bind_to_database
from storage import aliases, pools
from storage.db import Database

MAX_PASSWORD = 1024  # bytes read from stdin, as the API's schema bounds it


def checked(schema: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """The API's schema over the values: its first complaint is the command's one line."""
    try:
        return schema.model_validate(values).model_dump(exclude_unset=True)
    except ValidationError as error:
        first = error.errors()[0]
        raise CommandError(
            f"{'.'.join(map(str, first['loc'])) or 'value'}: {first['msg']}"
        ) from None


async def bound_box(db: Database, config: Config) -> SecretBox:
    """The secret key, as `serve` holds it (bound to this database)."""
    try:
        box = SecretBox.from_environment(config.server.data_dir)
        await bind_to_database(db, box)
    except SecretError as error:
        raise CommandError(str(error)) from None
    return box


def _password(args: argparse.Namespace) -> str | None:
    if not args.password_stdin:
        return None
    line = sys.stdin.readline(MAX_PASSWORD + 2).rstrip("\r\n")
    if not line:
        raise CommandError("--password-stdin: no password on stdin")
    return line


async def add_pool(db: Database, args: argparse.Namespace, config: Config) -> pools.PoolRecord:
    values = {
        "name": args.name, "host": args.host, "port": args.port, "encryption": args.encryption,
        "username": args.username, "ip_pool": args.ip_pool, "priority": args.priority,
        "max_connections": args.max_connections, "is_default": args.default,
        "is_active": not args.inactive, "from_email": args.from_email,
        "tls_verify": not args.no_tls_verify, "rate": args.rate, "daily_limit": args.daily_limit,
    }  # fmt: skip
    password = _password(args)
    body = checked(PoolCreate, {**values, "password": password})
    body.pop("password", None)
    box = await bound_box(db, config)
    try:
        guard = HostGuard(config.security.deny_networks)
        return await pool_ops.store(db, box, guard, body, password, None)
    except (ApiError, Refused) as error:
        raise CommandError(str(error)) from None


async def test_pool(db: Database, pool_id: str, config: Config) -> dict[str, Any]:
    """The connection test of the stored pool, with its stored password."""
    rows = [row for row in await pools.list_pools(db) if row.id == pool_id]
    if not rows:
        raise NotFound(f"no such SMTP pool: {pool_id}")
    row, box = rows[0], await bound_box(db, config)
    target = ProbeTarget(
        host=row.host, port=row.port, encryption=row.encryption, username=row.username,
        password=_password_of(row, box, config), tls_verify=row.tls_verify,
    )  # fmt: skip
    guard = HostGuard(config.security.deny_networks)
    timeout = min(config.delivery.connect_timeout, 15.0)
    result = await pool_ops.probe_through(guard, target, config.server.hostname, timeout)
    return {
        "id": row.id, "name": row.name, "success": result.success, "message": result.message,
        "latency_ms": result.latency_ms, "error": result.error, "reason": result.reason,
    }  # fmt: skip


def _password_of(row: Any, box: SecretBox, config: Config) -> str:
    """A config pool's password is this node's file's (`password_env`), as `serve` uses it;
    an API pool's is sealed in the database."""
    if row.source != "config":
        return unseal(box, row)
    declared = next((pool for pool in config.pools if pool.name == row.name), None)
    return config_password(row, declared)


def _link(config: Config, token: str) -> str:
    host, port = config.http.listen
    shown = f"[{host}]" if ":" in host else host
    base = config.http.public_url or f"http://{shown}:{port}"
    return f"{base}{alias_ops.VERIFY_PATH}?token={token}"


async def add_alias(db: Database, args: argparse.Namespace, config: Config) -> dict[str, Any]:
    values = {"email": args.email, "name": args.name, "ip_pool": args.ip_pool}
    body = AliasCreate.model_validate({**checked(AliasCreate, values), "is_default": args.default})
    token = secrets.token_urlsafe(32)
    try:
        email, name = alias_ops.checked_identity(body)
        await alias_ops.require_verified_domain(db, email)
        record = await aliases.create_alias(
            db, email=email, name=name, is_default=body.is_default, ip_pool=body.ip_pool,
            token_hash=alias_ops.token_hash(token), expires_at=time.time() + TOKEN_TTL,
        )  # fmt: skip
        if args.verified:
            verified = await aliases.redeem_token(db, alias_ops.token_hash(token))
            return {**_alias(verified or record), "verification_link": None}
    except (ApiError, Refused) as error:
        raise CommandError(str(error)) from None
    return {**_alias(record), "verification_link": _link(config, token)}


async def resend_alias(db: Database, alias_id: str, config: Config) -> dict[str, Any]:
    record = await aliases.get_alias(db, alias_id) if len(alias_id) <= 64 else None
    if record is None:
        raise NotFound(f"no such alias: {alias_id}")
    if record.is_verified:
        raise CommandError(f"{record.email} is verified already")
    token = secrets.token_urlsafe(32)
    expires = time.time() + TOKEN_TTL
    record = await aliases.new_token(db, record.id, alias_ops.token_hash(token), expires)
    return {**_alias(record), "verification_link": _link(config, token)}


def _alias(record: aliases.AliasRecord) -> dict[str, Any]:
    return {
        "id": record.id, "email": record.email, "name": record.name,
        "is_verified": record.is_verified, "is_default": record.is_default,
        "ip_pool": record.ip_pool,
    }  # fmt: skip
