"""What the ways in (a connected account's inbox, the bounce listener) hand a report to.

The processing itself (parse, match, classify, record: one transaction, deduplicated by
where the report came from) is gateway.bounces.ingest's `BounceIngest`; the ways in know it
only as `Ingest`, the protocol it satisfies, so that they are built and tested on their own
(tests/support/ingest.py), and this module counts what each way in was answered.
"""

from __future__ import annotations

from typing import Protocol

from gateway import metrics
from gateway.bounces.ingest import IngestResult, Source, SourceKind

__all__ = ["Ingest", "IngestResult", "Source", "count", "delivered_to", "hand_over"]

Kind = SourceKind
IMAP: Kind = "imap"
LISTENER: Kind = "listener"
API: Kind = "api"
PROCESSED, DUPLICATE, UNMATCHED, UNPARSED, IGNORED = (
    "processed", "duplicate", "unmatched", "unparsed", "ignored",
)  # fmt: skip
SKIPPED, FAILED = "skipped", "failed"  # counted here only: never handed over, or not stored
MAX_ENVELOPE_HEADER = 64 * 1024  # bytes of a report's header searched for Delivered-To


class Ingest(Protocol):
    async def ingest(self, raw: bytes, source: Source) -> IngestResult:
        """Process one report, all its effects in one transaction, committed on return.
        A storage failure raises (StorageUnavailable): nothing was recorded."""
        ...


async def hand_over(ingest: Ingest, raw: bytes, source: Source) -> IngestResult:
    """`ingest.ingest`, counted in postern_bounce_reports_total{source, result}."""
    try:
        result = await ingest.ingest(raw, source)
    except Exception:
        count(source.kind, FAILED)
        raise
    count(source.kind, result.outcome)
    return result


def count(kind: str, result: str) -> None:
    metrics.BOUNCE_REPORTS.labels(source=kind, result=result).inc()


def delivered_to(raw: bytes) -> str | None:
    """The first Delivered-To or X-Original-To of a message's header (what an inbox keeps
    of the envelope recipient), or None. Only the header's first bytes are read."""
    end = raw.find(b"\r\n\r\n", 0, MAX_ENVELOPE_HEADER)
    head = raw[: end if end >= 0 else MAX_ENVELOPE_HEADER]
    for line in head.split(b"\r\n"):  # unfolded fields only: these are one-line fields
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() in (b"delivered-to", b"x-original-to"):
            address = value.strip().strip(b"<>").decode("ascii", "replace")
            if address and len(address) <= 254 and address.isprintable():
                return address
    return None
