"""STUB (branch rep-score): the interface of the DNSBL checks, which branch rep-dnsbl
builds for real; this file is replaced by theirs at merge. The reputation score reads the
latest results through `latest_results` alone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from storage.db import Database


@dataclass(frozen=True)
class BlocklistResult:
    subject: str
    status: str  # "clean" | "listed" | "unknown"
    listings: tuple[dict[str, str], ...]  # {"list", "code", "meaning"}
    checked_at: float | None


async def latest_results(db: Database, subjects: Sequence[str]) -> dict[str, BlocklistResult]:
    """The last completed check of each subject (an IP or a domain); a subject never
    checked is missing. The stub knows none."""
    return {}
