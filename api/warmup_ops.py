"""What the doors do with warmups (api.routes.warmup; `postern warmup` works on storage
directly): whose subject it is (a pool: the pool's own visibility, scope `pools`; an
account: seen by its owner, shares and admins, as a person's matter, but changed only by
whoever may change the account itself, `account_ops.may_manage`: a member it is shared with
sees its warmup and may not set, clear, pause or resume it, 403 owner_required), set, clear,
pause, resume, each followed at once by this node's delivery (other nodes within 2 s).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date
from typing import Any

from api import account_ops, errors, pool_ops
from api.auth import Caller
from api.context import ApiContext, iso
from api.warmup_schemas import WarmupSet
from storage import warmup as stored
from storage.warmup import WarmupRecord, WarmupState
from storage.warmup_schedule import Schedule, ScheduleError, hourly_cap, zone

KINDS = stored.KINDS
PERSON_PAUSE = "paused by a person"


@dataclass(frozen=True)
class Subject:
    kind: str
    id: str
    name: str


def now(ctx: ApiContext) -> float:
    """The warmups' time: delivery's warmup clock (the wall clock, but in tests)."""
    live = ctx.management().warmup
    return live.now() if live is not None else time.time()


def _bad(field: str, message: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(f"{field}: {message}", [{"field": field, "message": message}])


async def subject(
    ctx: ApiContext, caller: Caller, kind: str, subject_id: str, change: bool = False
) -> Subject:
    """The pool or account, if `caller` may see it (NotFound otherwise, as for none); with
    `change`, an account only if `caller` may change it too (OwnerRequired)."""
    if kind == "pool":
        pool = await pool_ops.get(ctx, caller, subject_id)
        return Subject(kind, pool.id, pool.name)
    if kind == "account":
        account = await account_ops.get(ctx, caller, subject_id)
        if change:
            await account_ops.may_manage(ctx, caller, account)
        return Subject(kind, account.id, account.email)
    raise errors.NotFound("no such kind of warmup (account or pool)")


async def records(ctx: ApiContext, caller: Caller, kind: str) -> list[tuple[WarmupRecord, str]]:
    """The warmups of `kind` on subjects the caller may see, with the subject's name."""
    if kind == "pool":
        names = {p.id: p.name for p in await pool_ops.records(ctx, caller)}
    elif kind == "account":
        names = {a.id: a.email for a in await account_ops.records(ctx, caller)}
    else:
        raise errors.NotFound("no such kind of warmup (account or pool)")
    found = await stored.list_warmups(ctx.db, now(ctx), kind)
    return [(record, names[record.subject_id]) for record in found if record.subject_id in names]


def schedule_of(body: WarmupSet) -> Schedule:
    """The body's schedule: a preset, or start/step/cap, never both (InvalidRequest)."""
    linear = [body.start, body.step, body.cap]
    if body.preset is not None:
        if any(value is not None for value in linear):
            raise _bad("preset", "give a preset or start, step and cap, not both")
        return Schedule(preset=body.preset)
    if body.start is None or body.cap is None:
        raise _bad("preset", "give a preset, or start and cap (and step)")
    try:
        return Schedule(start=body.start, step=body.step or 0, cap=body.cap)
    except ScheduleError as error:
        raise _bad(
            "step" if "step" in str(error) or "days" in str(error) else "cap", str(error)
        ) from None


async def _followed(ctx: ApiContext, found: Subject) -> None:
    live = ctx.management().warmup
    if live is not None:
        await live.changed(found.kind, found.id)


async def set_warmup(
    ctx: ApiContext, caller: Caller, found: Subject, body: WarmupSet
) -> WarmupRecord:
    schedule = schedule_of(body)
    tz = body.timezone or ctx.management().warmup_timezone
    try:
        zone(tz)
    except ScheduleError as error:
        raise _bad("timezone", str(error)) from None
    if body.start_day is not None:
        try:
            date.fromisoformat(body.start_day)
        except ValueError:
            raise _bad("start_day", "not a date (YYYY-MM-DD)") from None
    by = caller.user.id if caller.user is not None else None
    record = await stored.set_warmup(
        ctx.db, found.kind, found.id, schedule, tz, now(ctx),
        start_day=body.start_day, created_by=by,
    )  # fmt: skip
    await _followed(ctx, found)
    return record


async def get(ctx: ApiContext, found: Subject) -> WarmupRecord:
    record = await stored.get_warmup(ctx.db, found.kind, found.id, now(ctx))
    if record is None:
        raise errors.NotFound(f"{found.kind} {found.name} has no warmup")
    return record


async def clear(ctx: ApiContext, found: Subject) -> None:
    if not await stored.clear_warmup(ctx.db, found.kind, found.id):
        raise errors.NotFound(f"{found.kind} {found.name} has no warmup")
    await _followed(ctx, found)


async def resume(ctx: ApiContext, found: Subject) -> WarmupRecord:
    record = await stored.resume(
        ctx.db, found.kind, found.id, now(ctx), found.name, wall=time.time()
    )
    if record is None:
        raise errors.NotFound(f"{found.kind} {found.name} has no warmup")
    await _followed(ctx, found)
    return record


async def pause(ctx: ApiContext, found: Subject, reason: str | None) -> WarmupRecord:
    await get(ctx, found)
    await stored.pause(ctx.db, found.kind, found.id, reason or PERSON_PAUSE, now(ctx))
    await _followed(ctx, found)
    return await get(ctx, found)


def brief(state: WarmupState | None) -> dict[str, Any] | None:
    """A pool's or account's `warmup` field in its own answers (null: none)."""
    if state is None:
        return None
    return {
        "status": state.status,
        "daily_limit": state.daily_limit,
        "sent_today": state.sent_today,
    }


def warmup_json(ctx: ApiContext, record: WarmupRecord, name: str | None) -> dict[str, Any]:
    schedule = record.schedule
    manage = ctx.management()
    hourly = None
    if record.daily_limit is not None and record.status in ("active", "paused"):
        hourly = hourly_cap(record.daily_limit, manage.warmup_hours, manage.warmup_burst)
    linear = schedule.preset is None
    return {
        "kind": record.kind,
        "id": record.subject_id,
        "name": name,
        "status": record.status,
        "schedule": {
            "preset": schedule.preset,
            "start": schedule.start if linear else None,
            "step": schedule.step if linear else None,
            "cap": schedule.cap if linear else None,
            "days": schedule.days,
            "description": schedule.describe(),
        },
        "timezone": record.timezone,
        "start_day": record.start_day,
        "day": record.day,
        "daily_limit": record.daily_limit,
        "hourly_limit": hourly,
        "sent_today": record.sent_today,
        "paused_reason": record.paused_reason,
        "paused_at": iso(record.paused_at),
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
    }
