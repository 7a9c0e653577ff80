"""What the two views of SMTP pools share (/api/v1/smtp-pools and MailSage's
/api/v1/smtp/configs): checks beyond the schema, the SSRF guard, the password sealed to
the pool's id, the live pools told of every change, and the connection test.

    create/update: fields checked -> host checked (HostGuard) -> stored (password sealed)
                   -> live pools told (they follow storage) -> the record
    test:          host resolved and checked -> gateway.delivery.probe -> with a recipient, a test
                   message through Intake (stored and delivered like any other), its first
                   attempt awaited up to handoff_timeout: delivered, refused, or pending

A refusal of storage.pools (PoolError) or of the guard (HostRefused) is answered from
api.answers.ANSWERS.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from api import errors
from api.auth import Caller
from api.context import ApiContext
from api.management import Management
from api.ownership import visible_to
from api.resource_schemas import HOST_PATTERN
from gateway.addresses import envelope_problem
from gateway.config import is_loopback
from gateway.delivery.probe import ProbeResult, ProbeTarget, failed, probe
from gateway.intake.fields import text_problem
from gateway.intake.message_builder import BuildError, Draft, Mailbox, build
from gateway.intake.pipeline import (
    AllSuppressed,
    NoRoute,
    NotPermitted,
    UnknownAlias,
    UnverifiedSender,
)
from gateway.message import Submission
from gateway.rates import parse_rate
from gateway.security.hostguard import HostGuard, HostUnresolved
from gateway.security.pool_secrets import seal
from storage import pools
from storage.db import Database
from storage.dkim_keys import Cipher
from storage.messages import message_state
from storage.pools import PoolRecord, same_endpoint

_HOST = re.compile(HOST_PATTERN)


@dataclass(frozen=True)
class TestSend:
    """The test message and what the upstream made of it within handoff_timeout."""

    message_id: str
    outcome: str  # delivered | refused | pending (not accepted yet; retried)
    reply: str = ""  # the upstream's refusal


PENDING_TEXT = (
    "the upstream has not accepted the test message within handoff_timeout; it is queued "
    "and retried"
)


def refused(result: ProbeResult, sent: TestSend) -> errors.SmtpTestFailed:
    """The 400 for a test message the upstream refused, naming its reply."""
    return errors.SmtpTestFailed(
        "upstream_rejected",
        f"SMTP server refused the test message: {sent.reply}",
        sent.reply,
        result.latency_ms,
        extra={"message_id": sent.message_id},
    )


def _bad(field: str, message: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(f"{field}: {message}", [{"field": field, "message": message}])


def normalise(values: dict[str, Any]) -> dict[str, Any]:
    """Hosts as the connection wants them: no brackets around an IPv6 literal, no spaces."""
    if isinstance(values.get("rate"), str):
        values["rate"] = values["rate"].strip(" \t")
    host = values.get("host")
    if isinstance(host, str):
        host = host.strip()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        values["host"] = host
    return values


def check_fields(values: Mapping[str, Any]) -> None:
    """Field checks the schema cannot express (InvalidRequest naming the field)."""
    for field in ("name", "username", "password"):
        value = values.get(field)
        problem = text_problem(value, header=True) if isinstance(value, str) else None
        if problem:
            raise _bad(field, problem)
    host = values.get("host")
    if host is not None and not _HOST.fullmatch(host):
        raise _bad("host", "not a host name or IP address")
    from_email = values.get("from_email")
    if from_email:
        problem = text_problem(from_email, header=True) or envelope_problem(from_email)
        if problem:
            raise _bad("from_email", problem)
    rate = values.get("rate")
    if rate is not None:
        try:
            parse_rate(rate)
        except ValueError as error:
            raise _bad("rate", str(error)) from None


CLEAR_TEXT_AUTH = (
    "AUTH over an unencrypted connection would send the password in clear; "
    "use tls or ssl (none is allowed for loopback hosts only)"
)


async def check_target(guard: HostGuard, state: Mapping[str, Any], stored: bool = False) -> None:
    """The merged pool (after the change) may be stored: no clear-text AUTH off loopback,
    no host in a denied network. `stored`: the request left out some of username,
    encryption and host, so a clear-text AUTH comes of the pool's own values: a 409 (the
    request alone breaks no rule /openapi.json states), not a 400."""
    if state["username"] and state["encryption"] == "none" and not is_loopback(state["host"]):
        if stored:
            raise errors.Conflict(
                f"with this pool's other settings, {CLEAR_TEXT_AUTH}",
                [{"field": "encryption", "message": CLEAR_TEXT_AUTH}],
            )
        raise _bad("encryption", CLEAR_TEXT_AUTH)
    await guard.check(state["host"], state["port"])


async def store(
    db: Database,
    box: Cipher,
    guard: HostGuard,
    values: dict[str, Any],
    password: str | None,
    created_by: str | None,
) -> PoolRecord:
    """A new pool (values as PoolCreate checked them) stored with its password sealed, after
    the checks the schema cannot make: the API's create and `postern pools add` alike."""
    check_fields({**values, "password": password})
    values = normalise(values)
    await check_target(guard, values)
    return await pools.create_pool(
        db, values, lambda pool_id: seal(box, pool_id, password or ""), created_by
    )


async def create(
    ctx: ApiContext, caller: Caller, values: dict[str, Any], password: str | None
) -> PoolRecord:
    manage = ctx.management()
    record = await store(ctx.db, manage.box, manage.guard, values, password, caller.user_id)
    await manage.pools.changed()
    return record


async def update(
    ctx: ApiContext,
    caller: Caller,
    pool_id: str,
    changes: dict[str, Any],
    password: str | None,
    new_password: bool,
    partial: bool = True,
) -> PoolRecord:
    """`new_password`: the body named a password (None or "" removes it); `partial`: it did
    not give all of username, encryption and host (see check_target)."""
    manage = ctx.management()
    current = await get(ctx, caller, pool_id)
    if current.source != "api":
        raise errors.ConfigPool(
            f"pool {current.name!r} is declared in the config file; change it there"
        )
    check_fields({**changes, "password": password})
    changes = normalise(changes)
    state = {name: getattr(current, name) for name in ("username", "encryption", "host", "port")}
    state.update({k: v for k, v in changes.items() if k in state})
    await check_target(manage.guard, state, stored=partial)
    sealer = (lambda pid: seal(manage.box, pid, password or "")) if new_password else None
    record = await pools.update_pool(ctx.db, pool_id, changes, sealer)
    await manage.pools.changed()
    return record


async def delete(ctx: ApiContext, caller: Caller, pool_id: str, move_to: str | None) -> int:
    """Delete the pool; queued mail that needs it moves to `move_to` (else 409
    pool_in_use). Returns how many messages moved."""
    manage = ctx.management()
    if move_to is not None and (
        not move_to or len(move_to) > 64 or text_problem(move_to, header=True)
    ):
        raise _bad("move_to", "not a pool id")
    await get(ctx, caller, pool_id)
    if move_to is not None and not await _sees(ctx, caller, move_to):
        raise pools.BadMoveTarget("move_to must name another active SMTP pool")
    _, moved = await pools.delete_pool(ctx.db, pool_id, move_to)
    await manage.pools.changed()
    return moved


async def get(ctx: ApiContext, caller: Caller, pool_id: str) -> PoolRecord:
    """The pool, if the caller may see it (another's is a 404, as for none)."""
    record = await pools.get_pool(ctx.db, pool_id) if len(pool_id) <= 64 else None
    seen = await visible_to(ctx, caller, "pool")
    if record is None or not seen.allows(record.id, record.created_by):
        raise errors.NotFound("no such SMTP pool")
    return record


async def _sees(ctx: ApiContext, caller: Caller, pool_id: str) -> bool:
    record = await pools.get_pool(ctx.db, pool_id)
    seen = await visible_to(ctx, caller, "pool")
    return record is None or seen.allows(record.id, record.created_by)  # none: storage says


async def records(ctx: ApiContext, caller: Caller) -> list[PoolRecord]:
    """The pools the caller may see (both views list these)."""
    seen = await visible_to(ctx, caller, "pool")
    return seen.only(await pools.pool_records(ctx.db), lambda r: (r.id, r.created_by))


async def test(
    ctx: ApiContext, key: Caller, record: PoolRecord, recipient: str | None
) -> tuple[ProbeResult, TestSend | None]:
    """Run the connection test; on success with a recipient, send the test message and
    wait up to handoff_timeout for the upstream's answer."""
    manage = ctx.management()
    if recipient is not None:
        problem = text_problem(recipient, header=True) or envelope_problem(recipient)
        if problem:
            raise _bad("recipient", problem)
        may_send_through(key, record)
    target = await _target(manage, record)
    result = await probe_through(manage.guard, target, manage.hostname, manage.probe_timeout)
    if not result.success or recipient is None:
        return result, None
    if not record.is_active:
        raise errors.Conflict("the pool is inactive: a test message would not go through it")
    return result, await _send_test_message(ctx, key, record, recipient)


async def probe_through(
    guard: HostGuard, target: ProbeTarget, hostname: str, timeout: float
) -> ProbeResult:
    """The connection test of `target`, to the addresses the SSRF guard allows (a name
    that does not resolve is a failed test, not an error)."""
    try:
        addresses = await guard.resolve(target.host, target.port)
    except HostUnresolved as unresolved:
        return failed("connect_failed", str(unresolved), None)
    return await probe(target, addresses, local_hostname=hostname, timeout=timeout)


def may_send_through(key: Caller, record: PoolRecord) -> None:
    """A test message is mail like any other: the key needs a send scope that covers the
    pool's ip_pool, as well as `pools` (403 otherwise, before anything is sent)."""
    allowed = key.ip_pools
    if not key.may_send or (allowed is not None and record.ip_pool not in allowed):
        raise errors.Forbidden(
            f"sending a test message needs a send scope for ip_pool {record.ip_pool!r} "
            "('send' or 'send:<ip_pool>') as well as 'pools'"
        )


async def _target(manage: Management, record: PoolRecord) -> ProbeTarget:
    """What to test: the pool as stored, with the password delivery holds for it only when
    that was loaded for the same endpoint (another node may have changed the host a moment
    ago: this node's registry then still pairs the old host with the old password)."""
    live = manage.pools.live(record.id)
    if live is None or not same_endpoint(live, record):
        await manage.pools.changed()
        live = manage.pools.live(record.id)
    fresh = live is not None and same_endpoint(live, record)
    return ProbeTarget(
        host=record.host,
        port=record.port,
        encryption=record.encryption,
        username=record.username,
        password=live.password if live is not None and fresh else "",
        tls_verify=record.tls_verify,
    )


async def _send_test_message(
    ctx: ApiContext, key: Caller, record: PoolRecord, recipient: str
) -> TestSend:
    sender = record.from_email or f"postern@{ctx.hostname}"
    draft = Draft(
        sender=Mailbox(sender, "Postern"),
        to=[Mailbox(recipient)],
        subject=f"Postern test message through pool {record.name}",
        text=(
            f"This message was sent through the SMTP pool {record.name!r} "
            f"({record.host}:{record.port}) to test it. Nothing else needs doing.\n"
        ),
    )
    try:
        built = build(draft, ctx.hostname)
    except BuildError as error:
        problem = error.problems[0]
        field = "recipient" if problem.field.startswith("to") else "from_email"
        raise _bad(field, problem.message) from None
    submission = Submission(
        mail_from=built.mail_from,
        recipients=built.recipients,
        content=built.content,
        source="http",
        alias_id=record.id,
        tags=("pool-test",),
        sender=key.sender(may_sandbox=False),
        # Postern's own address needs no verified domain; an operator's from_email does.
        system=not record.from_email,
    )
    try:
        accepted = await ctx.intake.submit(submission, watch=ctx.handoff_timeout > 0)
    except UnverifiedSender as refusal:
        raise errors.UnverifiedSender(f"from_email: {refusal.reason}") from None
    except AllSuppressed:
        raise errors.Suppressed() from None
    except (UnknownAlias, NoRoute, NotPermitted) as refusal:  # the pool changed meanwhile
        raise errors.Conflict(f"the test message was refused: {refusal.reason}") from None
    status = await accepted.outcome(ctx.handoff_timeout)
    if status == "delivered":
        return TestSend(accepted.message_id, "delivered")
    if status != "bounced":
        return TestSend(accepted.message_id, "pending")
    state = await message_state(ctx.db, accepted.message_id)
    replies = [r.response for r in state.recipients if r.response] if state else []
    return TestSend(accepted.message_id, "refused", replies[0] if replies else "refused")
