"""Response bodies of /api/v1/bounces: the reports that came back (gateway.bounces)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ReportStatus = Literal["processed", "unmatched", "unparsed", "ignored"]


class BounceEntry(BaseModel):
    recipient: str  # as the report names it
    matched: str  # the message's recipient it was matched to ("" when none)
    action: str
    status: str
    diagnostic: str
    smtp_code: str
    cls: str
    rule: str
    reason: str


class Bounce(BaseModel):
    id: int
    received_at: str
    source: Literal["imap", "listener", "api"]
    account_id: str | None
    mailbox: str | None
    uid: int | None
    kind: str
    format: str
    status: ReportStatus
    error: str | None
    message_id: str | None
    recipient: str | None
    matched_by: str | None
    classification: str | None
    rule: str | None
    reason: str | None
    size: int
    entries: list[BounceEntry]


class BounceDetail(Bounce):
    raw: str  # the stored report (cut at [bounces] max_report_size), as UTF-8 with escapes
    truncated: bool


class BounceList(BaseModel):
    success: Literal[True]
    bounces: list[Bounce]
    next_cursor: str | None


class BounceResponse(BaseModel):
    success: Literal[True]
    bounce: BounceDetail


class BounceReclassify(BaseModel):
    """POST /api/v1/bounces/{id}/reclassify: the report's new class (gateway.bounces.ingest
    CLASSES), applied to its matched recipients."""

    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=False)
    cls: Literal["hard", "soft", "policy", "complaint", "auto_reply", "ignore"] = Field(
        alias="class"
    )


class BounceReclassified(BaseModel):
    success: Literal[True]
    outcome: Literal["changed", "unchanged"]
    bounce: BounceDetail


class BounceUploaded(BaseModel):
    success: Literal[True]
    outcome: Literal["processed", "duplicate", "unmatched", "unparsed", "ignored"]
    report_id: int | None
