"""Reports that came back, taken in: parsed, stored once, matched, classified, applied.

This is the one entry point of every way a report arrives (a connected account's IMAP
inbox, the bounce listener, `POST /api/v1/bounces`): each calls `BounceIngest.ingest` with
the raw bytes and where they came from. Unlike the parser modules beside it, this module
does I/O (storage, the queue's tables); tests/unit/test_layers.py allows it that.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Connection

from gateway import metrics
from gateway.addresses import mailbox_key
from gateway.bounces.effects import Hit, SoftPolicy, apply, reestablish, tell_sender, undo
from gateway.bounces.model import Entry, Report
from gateway.bounces.report import parse
from gateway.bounces.returnpath import REF_HEADER, ReturnPath, own_message_id
from gateway.bounces.rules import CLASSES, Classification, Rules, shipped
from gateway.bounces.verp import token_for
from gateway.headers import normal_message_id
from gateway.queue.notify import Notifier
from gateway.queue.suppressions import SuppressionCache
from storage import bounce_reports as stored
from storage.db import Database

log = logging.getLogger("postern.bounces")

SourceKind = Literal["imap", "listener", "api"]
Outcome = Literal["processed", "duplicate", "unmatched", "unparsed", "ignored"]
PASSIVE = ("auto_reply", "ignore")  # classes that do nothing
SIGNED = ("verp", "ref")  # the claims a stranger cannot make (Claim.by)
# Kinds whose whole text is kept (size-capped): reports, and what may be one but failed to
# parse (kept, with the error, for a person to read); of the rest only the header block.
REPORT_KINDS = ("dsn", "complaint", "unparsed")


@dataclass(frozen=True)
class Source:
    """Where one report came from. IMAP reports name their mailbox position (account,
    mailbox, UIDVALIDITY, UID): that is what makes them processed once. The listener knows
    the envelope recipient (the VERP address the report was sent to); `shared` says the
    same bytes came in one transaction for other VERP addresses too, so the report is not
    about this address's message by elimination (see `matched`)."""

    kind: SourceKind
    account_id: str | None = None
    mailbox: str | None = None
    uidvalidity: int | None = None
    uid: int | None = None
    envelope_recipient: str | None = None
    shared: bool = False
    # A report uploaded by a caller who may act only on their own mail (not an admin):
    # it matches only a message they sent; one naming another's is kept unmatched, with
    # no effect. None: any message (the inbox, the listener, an admin's upload).
    sender: stored.Sender | None = None


@dataclass(frozen=True)
class IngestResult:
    """What became of one report: `processed` (matched, effects applied), `duplicate`
    (seen before: nothing done again), `unmatched` (kept, listed, no effect), `unparsed`
    (kept with the parser's error), `ignored` (an auto-reply, a delivery notice...).
    `report_id` names the stored report (for a duplicate, the first one), and `status`
    what became of it (for a duplicate, the first one's status: a report met again after
    a crash between the commit and the inbox's mark is marked as that one was to be)."""

    outcome: Outcome
    report_id: int | None
    status: str | None = None


@dataclass(frozen=True)
class Settings:
    """[bounces] soft_limit, soft_window, max_report_size."""

    soft_limit: int = 3
    soft_window: float = 7 * 86400.0
    max_report_size: int = 256 * 1024
    # [storage] retention: of several messages with a returned Message-ID, only one sent
    # within it may be taken.
    retention: float = 30 * 86400.0


@dataclass(frozen=True)
class Claim:
    """The message a report names, before storage is read: by the VERP token (from the
    envelope recipient or the headers), else the reference header, else a Message-ID
    Postern wrote, else the returned Message-ID (`header`), looked up in storage by
    `by_header`. A token that does not verify stops here: the report is unmatched (no
    weaker tier may pin a forged report on a message). `note` says a Message-ID was
    ambiguous (kept in the report's reason)."""

    message_id: str | None
    by: str | None = None
    error: str | None = None
    header: str | None = None
    note: str | None = None


def claim_of(report: Report, envelope_recipient: str, return_path: ReturnPath) -> Claim:
    token = token_for(report, envelope_recipient, return_path.verp)
    if token is not None:
        return _verified(token, "verp", return_path)
    returned = report.returned
    reference = returned.ref(REF_HEADER) if returned is not None else ""
    if reference:
        return _verified(reference, "ref", return_path)
    own = own_message_id(returned.message_id) if returned is not None else None
    if own is not None:
        return Claim(own, "message_id")
    header = normal_message_id(returned.message_id) if returned is not None else None
    if header is not None:
        return Claim(None, "message_id", header=header)
    return Claim(None, error="no VERP token, reference header or Message-ID")


def by_header(
    conn: Connection, header: str, since: float, sender: stored.Sender | None = None
) -> Claim:
    """The message a returned Message-ID names (message.header_message_id): the only one
    (of those `sender` sent, when given); of several, the most recent if it was sent since
    `since` (retention), with a note."""
    found = stored.messages_by_header(conn, header, sender)
    if not found:
        return Claim(None, error=f"no message with Message-ID {header}")
    if len(found) == 1:
        return Claim(found[0].id, "message_id")
    if found[0].created_at < since:
        return Claim(None, error=f"Message-ID {header} names several messages, none recent")
    note = f"Message-ID {header} names several messages: the most recent, {found[0].id}, taken"
    return Claim(found[0].id, "message_id", note=note)


def _verified(token: str, by: str, return_path: ReturnPath) -> Claim:
    message_id = return_path.message_of(token)
    if message_id is None:
        return Claim(None, error=f"the {by} token does not verify (forged or altered)")
    return Claim(message_id, by)


@dataclass(frozen=True)
class Verdict:
    """One entry, its class, and the message's recipient it was matched to ("" if none)."""

    entry: Entry
    classification: Classification
    recipient: str = ""

    def as_json(self) -> dict[str, str]:
        entry, verdict = self.entry, self.classification
        return {
            "recipient": entry.recipient,
            "matched": self.recipient,
            "action": entry.action,
            "status": entry.status,
            "diagnostic": entry.diagnostic,
            "smtp_code": entry.smtp_code,
            "cls": verdict.cls,
            "rule": verdict.rule,
            "reason": verdict.reason,
        }


def matched(
    verdicts: Sequence[Verdict], recipients: Sequence[tuple[str, str]], signed: bool = True
) -> list[Verdict]:
    """Each entry with the message's recipient it speaks of, by its original recipient or
    its recipient (mailbox keys). An entry naming anyone else is matched to nobody: a
    report only ever touches recipients the message had, each only by its own entry.

    One exception, by elimination: when the claim was signed (`signed`: a VERP token or
    the reference header, which only the message's recipients have seen), the message had
    a single recipient, no entry names it and the entries name at most one other address
    (a forwarded address, a redacted complaint), they are about that recipient. A claim by
    a bare Message-ID, which anyone may guess, must name its recipient."""
    by_key = {mailbox_key(email): email for email, _ in recipients}

    def named(entry: Entry) -> str:
        said = (entry.original_recipient, entry.recipient)
        return next((by_key[mailbox_key(a)] for a in said if a and mailbox_key(a) in by_key), "")

    hits = [named(v.entry) for v in verdicts]
    others = {mailbox_key(v.entry.recipient) for v in verdicts if v.entry.recipient}
    only = ""
    if signed and len(by_key) == 1 and not any(hits) and len(others) <= 1:
        only = next(iter(by_key.values()))
    return [
        Verdict(v.entry, v.classification, hit or only)
        for v, hit in zip(verdicts, hits, strict=True)
    ]


def status_of(report: Report, verdicts: Sequence[Verdict], claim_error: str | None) -> Outcome:
    if report.kind == "unparsed":
        return "unparsed"
    acting = [v for v in verdicts if v.classification.cls not in PASSIVE]
    if not acting:
        return "ignored"
    if claim_error is None and any(v.recipient for v in acting):
        return "processed"
    return "unmatched"


@dataclass
class _Stored:
    result: IngestResult
    suppressed: list[str] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)  # the class of each entry applied


class BounceIngest:
    """Takes reports in (`ingest`) and lets an operator change a report's class
    (`reclassify`); each one transaction: the report's row and all its effects, or
    nothing, so a crash at any point neither loses a report nor applies it twice."""

    def __init__(
        self,
        db: Database,
        return_path: ReturnPath,
        rules: Rules | None = None,
        settings: Settings | None = None,
        suppressions: SuppressionCache | None = None,
        clock: Callable[[], float] = time.time,
        notifier: Notifier | None = None,
    ) -> None:
        self._db = db
        self._return_path = return_path
        self._rules = rules or shipped()
        self._settings = settings or Settings()
        self._suppressions = suppressions  # this node's copy, told at once
        self._clock = clock
        # [delivery] notify_sender: a recipient of SMTP mail a report moves into bounced is
        # told to the envelope sender (effects.tell_sender); None: never.
        self._notifier = notifier

    async def ingest(self, raw: bytes, source: Source) -> IngestResult:
        """Store, match, classify and apply one report, once (see the module docstring)."""
        report = await asyncio.to_thread(parse, raw)
        claim = claim_of(report, source.envelope_recipient or "", self._return_path)
        verdicts = [Verdict(e, c) for e, c in self._rules.classify_report(report)]
        now = self._clock()

        def store(conn: Connection) -> _Stored:
            return self._store(conn, _Incoming(raw, source, report, claim, verdicts, now))

        done = await self._db.transaction(store)
        self._after(done)
        return done.result

    def _after(self, done: _Stored) -> None:
        if self._suppressions is not None and done.suppressed:
            self._suppressions.add(done.suppressed)
        for cls in done.applied:  # counted once committed
            metrics.BOUNCE_CLASSES.labels(**{"class": cls}).inc()
        result = done.result
        log.info("bounce report %s: %s", result.report_id, result.outcome)

    def _store(self, conn: Connection, incoming: _Incoming) -> _Stored:
        key, ident, digest = incoming.keys()
        rcpt = incoming.source.envelope_recipient

        def seen() -> int | None:
            return stored.existing(conn, key, ident, digest, rcpt)

        found = seen()
        if found is not None:
            return _Stored(IngestResult("duplicate", found, stored.status(conn, found)))
        claim, verdicts = incoming.claim, incoming.verdicts
        sender = incoming.source.sender
        if claim.header is not None and claim.message_id is None:
            since = incoming.now - self._settings.retention
            claim = by_header(conn, claim.header, since, sender)
        recipients: list[tuple[str, str]] = []
        message_id = claim.message_id
        if message_id is not None:
            if stored.message_of(conn, message_id) is None:
                claim = Claim(None, error=f"no message {message_id} (unknown or purged)")
            elif sender is not None and not stored.sent_by(conn, message_id, sender):
                # Another's message: the uploader may not bounce its recipients, change its
                # status or send its owner events. Kept unmatched, not linked to it.
                claim = Claim(None, error="it names a message its uploader did not send")
            else:
                recipients = stored.recipients_of(conn, message_id)
        if recipients:  # the fallback to the only recipient needs a signed claim (VERP, ref)
            signed = claim.by in SIGNED and not incoming.source.shared
            verdicts = matched(verdicts, recipients, signed)
        status = status_of(incoming.report, verdicts, claim.error)
        cap = self._settings.max_report_size
        row = incoming.row(key, ident, digest, claim, verdicts, status, cap)
        report_id = stored.insert(conn, row)
        if report_id is None:  # another node or process stored it meanwhile
            first = seen()
            status_of_first = stored.status(conn, first) if first is not None else None
            return _Stored(IngestResult("duplicate", first, status_of_first))
        suppressed: list[str] = []
        applied: list[str] = []
        if status == "processed" and claim.message_id is not None:
            matched_hits = hits(report_id, claim.message_id, verdicts, incoming.source.kind)
            suppressed, applied = self._apply(conn, report_id, matched_hits, incoming.now)
        return _Stored(IngestResult(status, report_id, status), suppressed, applied)

    def _apply(
        self, conn: Connection, report_id: int, found: Sequence[Hit], now: float
    ) -> tuple[list[str], list[str]]:
        """Apply each hit of one report (all about one message); tell the sender of the
        recipients they moved into bounced (from delivered or pending), in one
        notification. The addresses
        suppressed and the class of each hit applied."""
        suppressed: list[str] = []
        applied: list[str] = []
        bounced_now: list[Hit] = []
        for hit in found:
            done = apply(conn, hit, self._soft, now)
            suppressed += done.suppressed
            applied.append(hit.cls)
            if done.bounced_now:
                bounced_now.append(hit)
        if bounced_now and self._notifier is not None:
            notice = tell_sender(conn, self._notifier, bounced_now, now)
            if notice is not None:
                log.info("bounce report %s: sender told in %s", report_id, notice)
        return suppressed, applied

    @property
    def _soft(self) -> SoftPolicy:
        return SoftPolicy(self._settings.soft_limit, self._settings.soft_window)

    async def reclassify(self, report_id: int, cls: str) -> str:
        """Give a stored report another class and apply what that class does to its
        matched recipients: "changed", "unchanged" (it and each of its entries had that
        class: nothing is applied again) or "unknown" (no such report). Two at once for
        one report run one after the other (its row is locked). The suppressions this
        report itself added (their note names it) are lifted first; an operator's own
        entry, or one another report added, stays (and one another processed report still
        justifies is put back: gateway.bounces.effects.reestablish). The rest of what the
        old class did stays done: events sent, soft-bounce counts, a recipient or message
        marked bounced."""
        if cls not in CLASSES:
            raise ValueError(f"class must be one of {', '.join(CLASSES)}")
        now = self._clock()
        done = await self._db.transaction(lambda conn: self._reclassify(conn, report_id, cls, now))
        outcome, suppressed, lifted, applied = done
        if self._suppressions is not None:
            for key in set(lifted) - set(suppressed):
                self._suppressions.discard(key)
        self._after(_Stored(IngestResult("processed", report_id), suppressed, applied))
        return outcome

    def _reclassify(
        self, conn: Connection, report_id: int, cls: str, now: float
    ) -> tuple[str, list[str], list[str], list[str]]:
        if not stored.lock(conn, report_id):  # a concurrent change of it waits for ours
            return "unknown", [], [], []
        row = stored.get(conn, report_id)
        if row is None:
            return "unknown", [], [], []
        if row.cls == cls and all(e.get("cls") == cls for e in _entries(row)):
            return "unchanged", [], [], []
        spellings = sorted({e["matched"] for e in _entries(row) if e.get("matched")})
        keys = sorted({mailbox_key(e) for e in spellings})
        lifted = undo(conn, report_id, keys)
        # another report's complaint or hard bounce for the address still stands
        kept = reestablish(conn, report_id, lifted, spellings, now)
        if lifted:
            log.info(
                "bounce report %s reclassified: lifted %d suppressions (%d still justified"
                " by another report)", report_id, len(lifted), len(kept),
            )  # fmt: skip
        reason = "reclassified by an operator"
        entries = [{**e, "cls": cls, "rule": OPERATOR, "reason": reason} for e in _entries(row)]
        acting = cls not in PASSIVE and row.message_id is not None
        chosen = [e for e in entries if e["matched"]] if acting else []
        status = "processed" if chosen else "ignored" if cls in PASSIVE else row.status
        stored.update_report(
            conn, report_id, cls=cls, rule=OPERATOR, reason=reason, status=status,
            entries=json.dumps(entries), updated_at=now,
        )  # fmt: skip
        found = [_hit_of(report_id, row.message_id, e, row.source) for e in chosen]
        suppressed, applied = self._apply(conn, report_id, found, now)
        return "changed", list(kept) + suppressed, lifted, applied


OPERATOR = "operator"


@dataclass(frozen=True)
class _Incoming:
    raw: bytes
    source: Source
    report: Report
    claim: Claim
    verdicts: list[Verdict]
    now: float

    def keys(self) -> tuple[str, str, str]:
        """(dedupe key, identity, hash of the bytes): see storage.bounce_reports."""
        digest = stored.content_hash(self.raw)
        s = self.source
        ident = stored.identity(digest, s.envelope_recipient)
        key = stored.dedupe_key(ident, s.account_id, s.mailbox, s.uidvalidity, s.uid)
        return key, ident, digest

    def kept(self, cap: int) -> bytes:
        """What is stored of the raw message: a report's first `cap` bytes; of mail that is no
        report (a person's, in a connected inbox), its header block only: nobody's letters
        are copied into Postern."""
        if self.report.kind in REPORT_KINDS:
            return self.raw[:cap]
        end = self.raw.find(b"\r\n\r\n", 0, cap)
        return self.raw[: end + 2 if end >= 0 else min(cap, 8192)]

    def row(
        self,
        key: str,
        ident: str,
        digest: str,
        claim: Claim,
        verdicts: list[Verdict],
        status: str,
        cap: int,
    ) -> dict[str, Any]:
        report, source = self.report, self.source
        first = next((v for v in verdicts if v.classification.cls not in PASSIVE), None)
        first = first or (verdicts[0] if verdicts else None)
        error = report.error or (claim.error if status == "unmatched" else None)
        if status == "unmatched" and error is None:
            error = "no entry names a recipient of the message"
        return {
            "dedupe_key": key, "content_hash": ident, "raw_hash": digest,
            "received_at": self.now, "updated_at": self.now,
            "source": source.kind, "account_id": source.account_id, "mailbox": source.mailbox,
            "uidvalidity": source.uidvalidity, "uid": source.uid,
            "envelope_recipient": source.envelope_recipient,
            "raw": self.kept(cap), "size": len(self.raw),
            "kind": report.kind, "format": report.format[:32], "status": status,
            "error": error[:1000] if error else None,
            "message_id": claim.message_id, "matched_by": claim.by,
            "recipient": first.recipient or None if first else None,
            "cls": first.classification.cls if first else None,
            "rule": first.classification.rule[:64] if first else None,
            "reason": _reason(first, claim.note),
            "entries": json.dumps([v.as_json() for v in verdicts]),
        }  # fmt: skip


def _reason(first: Verdict | None, note: str | None) -> str | None:
    """The first acting entry's reason, with the claim's note (an ambiguous Message-ID)."""
    reason = first.classification.reason if first else None
    return "; ".join(part for part in (reason, note) if part) or None


def hits(report_id: int, message_id: str, verdicts: Sequence[Verdict], source: str) -> list[Hit]:
    return [
        _hit_of(report_id, message_id, v.as_json(), source)
        for v in verdicts
        if v.recipient and v.classification.cls not in PASSIVE
    ]


def _hit_of(report_id: int, message_id: str, entry: dict[str, str], source: str) -> Hit:
    return Hit(
        report_id=report_id, message_id=message_id, recipient=entry["matched"],
        key=mailbox_key(entry["matched"]), cls=entry["cls"], rule=entry["rule"],
        reason=entry["reason"], status=entry["status"], diagnostic=entry["diagnostic"],
        smtp_code=entry["smtp_code"], source=source,
    )  # fmt: skip


def _entries(row: Any) -> list[dict[str, str]]:
    found = json.loads(row.entries or "[]")
    return found if isinstance(found, list) else []
