"""Response bodies of sender reputation (seed 004's `GET /mail/accounts/reputation`, field
for field, plus `reputation_status` and `components`; the same for pools and domains under
/api/v1/reputation)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

ReputationStatus = Literal["collecting", "ok", "at_risk"]
WarmupStatus = Literal["not_started", "active", "paused", "complete"]
BlacklistStatus = Literal["clean", "listed", "unknown"]
Kind = Literal["account", "pool", "domain"]


class Component(BaseModel):
    signal: str = Field(
        description="hard_bounce_rate, complaint_rate, deferral_rate, blocklist_listings, "
        "spf_missing, dkim_missing or dmarc_missing"
    )
    value: float | int | bool | None = Field(
        description="null: not known (nothing sent, never checked)"
    )
    points: int = Field(description="what it cost the score (100 minus the sum is the score)")
    window_days: int | None = Field(description="the window a rate was measured over")
    rule: str | None = Field(description="the threshold reached and its source")


class AccountReputation(BaseModel):
    account_id: str
    email: str
    reputation_score: int | None = Field(
        description="0-100, below 70 (configurable) at risk; null while collecting "
        "(fewer than 100 delivered in every window)"
    )
    warmup_status: WarmupStatus
    daily_limit: int | None
    sent_today: int
    blacklist_status: BlacklistStatus
    last_checked_at: str | None = Field(description="the last completed blocklist check")
    reputation_status: ReputationStatus
    components: list[Component]


class AccountReputationList(BaseModel):
    success: Literal[True]
    data: list[AccountReputation]


class SubjectReputation(BaseModel):
    kind: Kind
    id: str = Field(description="the account's or pool's id, the domain's name")
    name: str = Field(description="the account's address, the pool's name, the domain")
    reputation_score: int | None
    reputation_status: ReputationStatus
    warmup_status: WarmupStatus | None = Field(description="null for a domain")
    daily_limit: int | None
    sent_today: int
    blacklist_status: BlacklistStatus
    last_checked_at: str | None
    window_days: int | None = Field(description="the window that counted (the worse)")
    evaluated_at: str | None = Field(description="the last evaluation (counts as of then)")
    components: list[Component]


class ReputationSections(BaseModel):
    accounts: list[SubjectReputation] | None = Field(
        description="null: the caller may not see accounts (a key without 'admin')"
    )
    pools: list[SubjectReputation] | None = Field(description="null: no 'pools' scope")
    domains: list[SubjectReputation] | None = Field(description="null: no 'domains' scope")


class ReputationOverview(BaseModel):
    success: Literal[True]
    data: ReputationSections


class OneReputation(BaseModel):
    success: Literal[True]
    data: SubjectReputation
