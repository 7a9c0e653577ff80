"""A recording stand-in for the report processing (gateway.reports.Ingest): what the ways in
(the IMAP sync, the bounce listener) handed over, each answered as the real one answers a
report seen before: `duplicate` for the same mailbox position (its stored report `processed`).
Free of pytest."""

from __future__ import annotations

import asyncio

from gateway.errors import StorageUnavailable
from gateway.reports import DUPLICATE, PROCESSED, IngestResult, Source


class RecordingIngest:
    def __init__(self) -> None:
        self.calls: list[tuple[bytes, Source]] = []
        self.results: list[str] = []
        self.fail = False  # raise StorageUnavailable (nothing recorded), as a database down
        self.delay = 0.0  # seconds before the "commit"
        self.committed = asyncio.Event()
        self._seen: set[tuple[object, ...]] = set()

    async def ingest(self, raw: bytes, source: Source) -> IngestResult:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise StorageUnavailable("the database is unreachable")
        self.calls.append((raw, source))
        key = (source.account_id, source.mailbox, source.uidvalidity, source.uid)
        status = DUPLICATE if source.uid is not None and key in self._seen else PROCESSED
        self._seen.add(key)
        self.results.append(status)
        self.committed.set()
        return IngestResult(status, report_id=len(self.calls), status=PROCESSED)

    @property
    def sources(self) -> list[Source]:
        return [source for _, source in self.calls]
