"""Response body of /api/v1/blocklists: DNSBL verdicts of the sending IPs and domains."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class Listing(BaseModel):
    list: str  # the list's name (gateway/reputation/lists.py)
    code: str  # the A record it answered, e.g. "127.0.0.2"
    meaning: str  # what the list documents that code to mean
    text: str | None = None  # the list's TXT for the entry, when it gives one


class ListError(BaseModel):
    list: str
    reason: str  # a query error, or why the list failed its verification


class BlocklistSubject(BaseModel):
    subject: str  # an IP address or a domain
    kind: Literal["ip", "domain"]
    status: Literal["clean", "listed", "unknown"]
    listings: list[Listing]
    errors: list[ListError]
    last_checked_at: str | None  # the last check that reached a verdict (clean or listed)
    attempted_at: str  # the last round that asked, whatever came back
    listed_since: str | None


class BlocklistOverview(BaseModel):
    success: Literal[True]
    last_completed_at: str | None  # the last whole round
    subjects: list[BlocklistSubject]
