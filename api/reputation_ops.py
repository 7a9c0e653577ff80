"""What the API's routes and the dashboard's page do with sender reputation (issue 21),
written once: the reports of the accounts, pools and domains a caller may see (each kind's
own visibility: api.account_ops, api.pool_ops, api.domain_ops), in the shapes they answer.

Scores are as of the last evaluation (gateway.reputation.watch rolls the counts up); the
warmup and the blocklists are read as they are now.
"""

from __future__ import annotations

import time
from typing import Any

from api import account_ops, domain_ops, errors, pool_ops
from api.auth import Caller
from api.context import ApiContext, iso
from gateway.reputation.report import (
    ACCOUNT,
    DOMAIN,
    POOL,
    Report,
    Subject,
    account_subject,
    domain_subject,
    pool_subject,
    reports,
)
from gateway.reputation.score import shipped_thresholds

KINDS = (ACCOUNT, POOL, DOMAIN)


def may_see_accounts(caller: Caller) -> bool:
    """Accounts are a person's matter: a session, or a key with `admin` itself."""
    return caller.key is None or caller.key.has("admin")


def may_see(caller: Caller, kind: str) -> bool:
    if kind == ACCOUNT:
        return may_see_accounts(caller)
    return caller.has("pools" if kind == POOL else "domains")


async def subjects(ctx: ApiContext, caller: Caller, kind: str) -> list[Subject]:
    """The subjects of `kind` the caller may see."""
    if kind == ACCOUNT:
        return [account_subject(r) for r in await account_ops.records(ctx, caller)]
    if kind == POOL:
        return [pool_subject(r, ctx.sending_ips) for r in await pool_ops.records(ctx, caller)]
    return [domain_subject(r.domain) for r in await domain_ops.records(ctx, caller)]


async def subject(ctx: ApiContext, caller: Caller, kind: str, key: str) -> Subject:
    """One subject, if the caller may see it (another's is a 404, as for none)."""
    if kind == ACCOUNT:
        return account_subject(await account_ops.get(ctx, caller, key))
    if kind == POOL:
        return pool_subject(await pool_ops.get(ctx, caller, key), ctx.sending_ips)
    if kind == DOMAIN:
        return domain_subject((await domain_ops.get(ctx, caller, key)).domain)
    raise errors.NotFound(f"no such kind {kind[:20]!r} (account, pool or domain)")


async def of(ctx: ApiContext, found: list[Subject]) -> list[Report]:
    return await reports(ctx.db, found, shipped_thresholds(), ctx.reputation_threshold, time.time())


def account_json(report: Report) -> dict[str, Any]:
    """Seed 004's item, field for field, plus reputation_status and components."""
    shared = report.as_json()
    return {
        "account_id": report.subject.id,
        "email": report.subject.name,
        "reputation_score": shared["reputation_score"],
        "warmup_status": shared["warmup_status"],
        "daily_limit": shared["daily_limit"],
        "sent_today": shared["sent_today"],
        "blacklist_status": shared["blacklist_status"],
        "last_checked_at": iso(report.last_checked_at),
        "reputation_status": shared["reputation_status"],
        "components": shared["components"],
    }


def subject_json(report: Report) -> dict[str, Any]:
    """The item of /api/v1/reputation, one shape for every kind."""
    shared = report.as_json()
    if report.subject.kind == DOMAIN:
        shared |= {"warmup_status": None, "daily_limit": None}
    return {
        "kind": report.subject.kind,
        "id": report.subject.id,
        "name": report.subject.name,
        **shared,
        "last_checked_at": iso(report.last_checked_at),
        "window_days": report.result.window_days,
        "evaluated_at": iso(report.evaluated_at),
    }
