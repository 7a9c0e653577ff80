"""New mail of a connected account's inbox, read by UID and handed to the report processing.

    SELECT INBOX -> UIDVALIDITY (a new one starts the cursor again at UID 0) -> rounds of:
      UID SEARCH UID last+1:* UNKEYWORD $PosternProcessed -> the next `batch` UIDs
      UID FETCH (RFC822.SIZE) -> each message: over `max_size` skipped and recorded; else
      UID FETCH BODY.PEEK[]<0.max_size+1> -> ingest (committed) -> marked on the server
      (a report: \\Seen + $PosternProcessed, or MOVE/COPY to `processed_folder`; any other
      mail: the keyword alone) -> cursor advanced

Never lose, never double-count: the cursor moves past a message only after its report was
committed (or its skip recorded), so a node killed between the two hands it over again,
and the processing's own deduplication (account, mailbox, UIDVALIDITY, UID) makes that a
duplicate. Nothing is ever deleted or expunged. A sync reads at most `max_rounds` batches,
and starts no message after `budget` seconds: the rest waits for the next sync, well within
the account's lease. The cursor is written only while this node holds the lease.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

from aioimaplib import aioimaplib

from gateway.accounts.verify import inbox_state, printable
from gateway.errors import PosternError
from gateway.reports import (
    DUPLICATE,
    IMAP,
    PROCESSED,
    SKIPPED,
    UNMATCHED,
    Ingest,
    IngestResult,
    Source,
    count,
    delivered_to,
    hand_over,
)
from storage import inbox as cursors
from storage.db import Database
from storage.inbox import Cursor, Skipped

log = logging.getLogger("postern.accounts")
MAILBOX = "INBOX"
KEYWORD = "$PosternProcessed"
MAX_SAID = 200  # characters of a server's refusal kept for the log
_UID = re.compile(rb"\bUID (\d+)")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
# What is marked read (or moved) once handed over: a bounce or complaint, matched or not,
# and a duplicate of one (met again after a node died between the commit and the mark: the
# stored report's status says what it was). Anything else (a person's letter, an
# out-of-office reply, what did not parse) only gets the keyword no mail client shows.
REPORTS = (PROCESSED, UNMATCHED)


def is_report(result: IngestResult) -> bool:
    """Whether the mail handed over is marked as a report (see REPORTS)."""
    if result.outcome == DUPLICATE:
        return result.status in REPORTS
    return result.outcome in REPORTS


@dataclass(frozen=True)
class InboxSettings:
    batch: int = 50  # messages one round fetches at most
    max_rounds: int = 20  # rounds one sync runs at most
    max_size: int = 10 * 1024 * 1024  # bytes: a larger message is skipped and recorded
    budget: float = 15.0  # seconds: no message is started after this
    processed_folder: str = ""  # "": processed mail stays, flagged; else moved there


class LeaseLost(PosternError):
    """Another node holds the account now (or it was disconnected): stop at once."""


@dataclass(frozen=True)
class Drained:
    uidvalidity: int
    uidnext: int | None
    handed: int  # reports handed over
    skipped: int  # messages skipped (too big)


class Inbox:
    """Reads one leased account's new mail (a logged-in client given by the sync)."""

    def __init__(self, db: Database, ingest: Ingest, settings: InboxSettings, node: str) -> None:
        self._db = db
        self._ingest = ingest
        self.settings = settings
        self._node = node

    async def drain(self, client: aioimaplib.IMAP4, account_id: str) -> Drained:
        uidvalidity, uidnext = await inbox_state(client)
        if uidvalidity is None:
            raise aioimaplib.Error("the server named no UIDVALIDITY for INBOX")
        run = _Run(self, client, account_id, await self._start(account_id, uidvalidity))
        await run.rounds(time.monotonic() + self.settings.budget)
        return Drained(uidvalidity, uidnext, run.handed, run.skipped)

    async def _start(self, account_id: str, uidvalidity: int) -> Cursor:
        """The stored cursor, or a new one at UID 0 (first sync, or a new UIDVALIDITY)."""
        stored = await self._db.read(lambda conn: cursors.cursor(conn, account_id, MAILBOX))
        if stored is not None and stored.uidvalidity == uidvalidity:
            return stored
        if stored is not None:
            log.warning(
                "account %s: UIDVALIDITY changed (%d -> %d): reading INBOX from the start",
                account_id, stored.uidvalidity, uidvalidity,
            )  # fmt: skip
        start = Cursor(uidvalidity, 0)
        await self.advance(account_id, start)
        return start

    async def advance(self, account_id: str, to: Cursor) -> None:
        node = self._node
        held = await self._db.transaction(
            lambda conn: cursors.advance(conn, account_id, MAILBOX, node, to)
        )
        if not held:
            raise LeaseLost(account_id)

    async def record_skip(self, account_id: str, at: Cursor, size: int) -> None:
        why = f"message of {size} bytes, over the {self.settings.max_size}-byte limit"
        record = Skipped(account_id, MAILBOX, at.uidvalidity, at.last_uid, size, why, time.time())
        await self._db.transaction(lambda conn: cursors.skip(conn, record))
        count(IMAP, SKIPPED)
        log.warning("account %s: UID %d skipped: %s", account_id, at.last_uid, why)

    async def hand_over(self, raw: bytes, account_id: str, at: Cursor) -> IngestResult:
        source = Source(
            kind=IMAP, account_id=account_id, mailbox=MAILBOX, uidvalidity=at.uidvalidity,
            uid=at.last_uid, envelope_recipient=delivered_to(raw),
        )  # fmt: skip
        return await hand_over(self._ingest, raw, source)


class _Run:
    """One sync's rounds over one mailbox, from `at`."""

    def __init__(self, inbox: Inbox, client: aioimaplib.IMAP4, account_id: str, at: Cursor):
        self.inbox, self.client, self.account_id, self.at = inbox, client, account_id, at
        self.settings = inbox.settings
        self.handed = self.skipped = 0

    async def rounds(self, deadline: float) -> None:
        for _ in range(self.settings.max_rounds):
            uids = await self._new_uids()
            if not uids:
                return
            sizes = await self._sizes(uids)
            for uid in uids:
                if time.monotonic() >= deadline:
                    return  # the rest at the next sync
                await self._one(uid, sizes.get(uid))

    async def _one(self, uid: int, size: int | None) -> None:
        at = Cursor(self.at.uidvalidity, uid)
        limit = self.settings.max_size
        raw = await self._fetch(uid) if size is not None and size <= limit else None
        if raw is not None and len(raw) <= limit:
            result = await self.inbox.hand_over(raw, self.account_id, at)
            await self._mark(uid, report=is_report(result))
            self.handed += 1
        elif size is not None and (size > limit or raw is not None):
            await self.inbox.record_skip(self.account_id, at, max(size, len(raw or b"")))
            self.skipped += 1
        # else: expunged by someone else meanwhile, nothing to read
        await self.inbox.advance(self.account_id, at)
        self.at = at

    async def _new_uids(self) -> list[int]:
        """The next UIDs above the cursor not yet marked processed, oldest first."""
        since = f"{self.at.last_uid + 1}:*"
        response = await self.client.uid_search("UID", since, "UNKEYWORD", KEYWORD, charset=None)
        _ok(response, "UID SEARCH")
        found = {int(n) for line in response.lines[:-1] for n in bytes(line).split() if n.isdigit()}
        # `n:*` names the last message even when its UID is below n (RFC 3501 6.4.8).
        return sorted(uid for uid in found if uid > self.at.last_uid)[: self.settings.batch]

    async def _sizes(self, uids: list[int]) -> dict[int, int]:
        response = await self.client.uid("fetch", _set(uids), "(UID RFC822.SIZE)")
        _ok(response, "UID FETCH")
        sizes = {}
        for line in response.lines:
            uid, size = _UID.search(bytes(line)), _SIZE.search(bytes(line))
            if uid and size:
                sizes[int(uid.group(1))] = int(size.group(1))
        return sizes

    async def _fetch(self, uid: int) -> bytes | None:
        """The message, at most max_size + 1 bytes of it (a partial FETCH: the server
        cannot make us read more), without setting \\Seen; None when it is gone."""
        part = f"(UID BODY.PEEK[]<0.{self.settings.max_size + 1}>)"
        response = await self.client.uid("fetch", str(uid), part)
        _ok(response, "UID FETCH")
        lines = response.lines
        for index, line in enumerate(lines[1:], 1):
            head = _UID.search(bytes(lines[index - 1]))
            if isinstance(line, bytearray) and head and int(head.group(1)) == uid:
                return bytes(line)
        return None

    async def _mark(self, uid: int, report: bool) -> None:
        """Processed, on the server. A report (a bounce, a complaint): moved to the folder
        the user named, else (or when the move is refused) flagged \\Seen and processed. Any
        other mail (a person's letter, an out-of-office reply) only gets the keyword the
        user's client does not show: it stays unread, where it was. Never deleted. A
        refusal is logged: the cursor, not the mark, is what counts; the mark keeps a new
        UIDVALIDITY from reading it again."""
        folder = self.settings.processed_folder
        try:
            if report and folder and await _moved(self.client, str(uid), folder):
                return
        except aioimaplib.Error as error:
            who = self.account_id
            log.warning("account %s: UID %d not moved to %r: %s", who, uid, folder, error)
        flags = f"(\\Seen {KEYWORD})" if report else f"({KEYWORD})"
        response = await self.client.uid("store", str(uid), "+FLAGS.SILENT", flags)
        if response.result != "OK":
            log.warning("account %s: UID %d not flagged processed", self.account_id, uid)


async def _moved(client: aioimaplib.IMAP4, uid: str, folder: str) -> bool:
    """MOVE (or COPY where MOVE is not offered: the original is then flagged) to `folder`,
    created once if the server says it does not exist. Whether the message left INBOX."""
    quoted = aioimaplib.quoted(folder)
    verb = "move" if client.has_capability("MOVE") else "copy"
    response = await client.uid(verb, uid, quoted)
    if response.result != "OK" and b"TRYCREATE" in b" ".join(map(bytes, response.lines)):
        await client.create(quoted)
        response = await client.uid(verb, uid, quoted)
    if response.result != "OK":
        said = b" ".join(bytes(line) for line in response.lines[-1:]).decode("utf-8", "replace")
        raise aioimaplib.Error(f"UID {verb.upper()} refused: {printable(said, MAX_SAID)}")
    return verb == "move"


def _set(uids: list[int]) -> str:
    return ",".join(str(uid) for uid in uids)


def _ok(response: aioimaplib.Response, what: str) -> None:
    if response.result != "OK":
        raise aioimaplib.Error(f"{what} refused")
