"""Reports that came back, taken in: parsed, stored once, matched, classified, applied.

This is the one entry point of every way a report arrives (a connected account's IMAP
inbox, the bounce listener, `POST /api/v1/bounces`): each calls `BounceIngest.ingest` with
the raw bytes and where they came from. Unlike the parser modules beside it, this module
does I/O (storage, the queue's tables); tests/unit/test_layers.py allows it that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SourceKind = Literal["imap", "listener", "api"]
Outcome = Literal["processed", "duplicate", "unmatched", "unparsed", "ignored"]


@dataclass(frozen=True)
class Source:
    """Where one report came from. IMAP reports name their mailbox position (account,
    mailbox, UIDVALIDITY, UID): that is what makes them processed once. The listener knows
    the envelope recipient (the VERP address the report was sent to)."""

    kind: SourceKind
    account_id: str | None = None
    mailbox: str | None = None
    uidvalidity: int | None = None
    uid: int | None = None
    envelope_recipient: str | None = None


@dataclass(frozen=True)
class IngestResult:
    """What became of one report: `processed` (matched, effects applied), `duplicate`
    (seen before: nothing done again), `unmatched` (kept, listed, no effect), `unparsed`
    (kept with the parser's error), `ignored` (an auto-reply, a delivery notice...).
    `report_id` names the stored report (for a duplicate, the first one)."""

    outcome: Outcome
    report_id: int | None


class BounceIngest:
    async def ingest(self, raw: bytes, source: Source) -> IngestResult:
        """Store, match, classify and apply one report, once (see the module docstring)."""
        raise NotImplementedError
