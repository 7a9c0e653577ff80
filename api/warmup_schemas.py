"""Request and response bodies of /api/v1/warmup (api.routes.warmup)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from api.schemas import Strict
from storage.warmup_schedule import MAX_VOLUME, PRESETS

Volume = Annotated[int, Field(ge=1, le=MAX_VOLUME)]
Preset = Literal["conservative", "transactional", "aggressive"]
assert set(PRESETS) == {"conservative", "transactional", "aggressive"}


class WarmupSet(Strict):
    """A preset, or a linear ramp (`start`, `step`, `cap`): one or the other."""

    preset: Preset | None = Field(
        None,
        description="conservative (30 days, 20 -> 3,500 a day), transactional (21 days, "
        "50 -> 10,000), aggressive (14 days, 50 -> 15,000); see the README for every day",
    )
    start: Volume | None = Field(None, description="linear: day 1's limit")
    step: Annotated[int, Field(ge=0, le=MAX_VOLUME)] | None = Field(
        None, description="linear: added each day"
    )
    cap: Volume | None = Field(None, description="linear: the last day's limit (and no more)")
    timezone: (
        Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_+/-]+$")] | None
    ) = Field(
        None, description="zoneinfo name whose midnight rolls the day; [warmup] timezone by default"
    )
    start_day: Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2}$")] | None = Field(
        None, description="YYYY-MM-DD, local: day 1 (default today); before it: not_started"
    )


class WarmupSchedule(BaseModel):
    preset: str | None
    start: int | None
    step: int | None
    cap: int | None
    days: int
    description: str


class Warmup(BaseModel):
    kind: Literal["account", "pool"]
    id: str
    name: str | None = Field(None, description="the pool's name, the account's address")
    status: Literal["not_started", "active", "paused", "complete"]
    schedule: WarmupSchedule
    timezone: str
    start_day: str
    day: int = Field(
        description="the day of the schedule it is on (while paused: the day paused on)"
    )
    daily_limit: int | None
    hourly_limit: int | None = Field(description="at most this many in any rolling hour")
    sent_today: int
    paused_reason: str | None
    paused_at: str | None
    created_at: str | None
    updated_at: str | None


class WarmupList(BaseModel):
    warmups: list[Warmup]


class WarmupPause(Strict):
    reason: Annotated[str, Field(min_length=1, max_length=500)] | None = None
