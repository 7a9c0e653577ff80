"""STUB (branch rep-score): the interface of warmup and daily limits, which branch
rep-warmup builds for real; this file is replaced by theirs at merge. The reputation API
reads each account's or pool's warmup through `warmup_states` alone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from storage.db import Database


@dataclass(frozen=True)
class WarmupState:
    status: str  # not_started | active | paused | complete
    daily_limit: int | None
    sent_today: int


async def warmup_states(
    db: Database, kind: str, ids: Sequence[str], now: float
) -> dict[str, WarmupState]:
    """The warmup of each account or pool (`kind` "account" or "pool") of `ids`; one
    without a warmup is missing. The stub knows none."""
    return {}
