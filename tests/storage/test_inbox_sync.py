"""A connected account's new mail, read by UID from a real dovecot and handed to the report
processing (a recording stand-in), on SQLite and PostgreSQL: each message once, with its
mailbox position; nothing new the second time; a node stopped between the hand-over and the
cursor makes the next sync hand the message over again (a duplicate, by the processing's
dedupe); a new UIDVALIDITY reads the mailbox again; processed mail flagged or moved, never
deleted; a message over the size cap skipped and recorded."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.accounts.accounts import seal
from gateway.accounts.idle import MAX_FAILURES, IdleWatch
from gateway.accounts.inbox import KEYWORD, Inbox, InboxSettings, _Run
from gateway.accounts.sync import AccountSync, SyncSettings
from gateway.accounts.verify import Endpoint
from gateway.reports import DUPLICATE, PROCESSED
from gateway.security.hostguard import HostGuard
from gateway.security.secrets import SecretBox
from storage import inbox as cursors
from storage import mail_accounts
from storage.db import Database
from storage.inbox import Cursor
from tests.support.imap import Dovecot, available
from tests.support.ingest import RecordingIngest
from tests.support.processes import free_port

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not available(), reason="dovecot-imapd is not installed (.ci/run does)"),
]

USER, PASSWORD = "bounces@example.test", "inbox secret"
BOUNCES = Path(__file__).parents[1] / "data" / "bounces"


def _report(name: str, delivered_to: str = "") -> bytes:
    raw = (BOUNCES / name).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return (f"Delivered-To: {delivered_to}\r\n".encode() if delivered_to else b"") + raw


@pytest.fixture
def imap(tmp_path: Path) -> Iterator[Dovecot]:
    with Dovecot(tmp_path / "imap", {USER: PASSWORD}) as server:
        yield server


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(os.urandom(32))


async def _account_id(db: Database, box: SecretBox, imap: Dovecot) -> str:
    values = {
        "email": USER, "name": "", "imap_host": "127.0.0.1", "imap_port": imap.port,
        "imap_security": "starttls", "smtp_host": "127.0.0.1", "smtp_port": 25,
        "smtp_security": "none", "tls_verify": False, "username": USER,
    }  # fmt: skip
    account = await mail_accounts.create_account(
        db, values, lambda account_id: seal(box, account_id, PASSWORD), "usr_a", 10
    )
    return account.id


def _runner(
    db: Database, box: SecretBox, ingest: RecordingIngest, **settings: object
) -> AccountSync:
    inbox = Inbox(db, ingest, InboxSettings(**settings), "node-a")  # type: ignore[arg-type]
    # interval 0: due again at once, so each sync_due() below is a new sync
    return AccountSync(db, box, HostGuard(), SyncSettings("node-a", 0, 10), inbox)


def _mailbox(imap: Dovecot, mailbox: str = "INBOX") -> dict[int, bytes]:
    """UID -> FLAGS of every message in the mailbox (deleted ones included)."""
    with imap.client(USER) as client:
        client.select(f'"{mailbox}"')
        _, lines = client.uid("FETCH", "1:*", "(UID FLAGS)")
    found = {}
    for line in lines:
        match = re.search(rb"UID (\d+) FLAGS \(([^)]*)\)", line or b"")
        if match:
            found[int(match.group(1))] = match.group(2)
    return found


async def _cursor(db: Database, account_id: str) -> Cursor | None:
    return await db.read(lambda conn: cursors.cursor(conn, account_id, "INBOX"))


async def test_new_mail_is_handed_over_once_with_its_position(
    backend: Database, box: SecretBox, imap: Dovecot
) -> None:
    account_id = await _account_id(backend, box, imap)
    imap.append(USER, _report("rfc3464_simple.eml", "bounces+tok1@bounce.example.test"))
    imap.append(USER, _report("arf_rfc5965.eml"))
    ingest = RecordingIngest()
    sync = _runner(backend, box, ingest)
    assert await sync.sync_due() == 1
    state = await mail_accounts.get_account(backend, account_id)
    assert state is not None and state.sync_status == "synced", state
    first, second = ingest.sources
    assert (first.kind, first.account_id, first.mailbox, first.uid) == (
        "imap", account_id, "INBOX", 1,
    )  # fmt: skip
    assert first.uidvalidity == state.uidvalidity and first.uidvalidity is not None
    assert first.envelope_recipient == "bounces+tok1@bounce.example.test"
    assert (second.uid, second.envelope_recipient) == (2, None)
    assert ingest.calls[0][0] == _report("rfc3464_simple.eml", "bounces+tok1@bounce.example.test")
    assert ingest.results == [PROCESSED, PROCESSED]
    flags = _mailbox(imap)
    assert sorted(flags) == [1, 2]  # both still there: nothing is deleted
    for uid in (1, 2):
        assert b"\\Seen" in flags[uid] and KEYWORD.encode() in flags[uid]
        assert b"\\Deleted" not in flags[uid]
    assert await _cursor(backend, account_id) == Cursor(first.uidvalidity, 2)

    assert await sync.sync_due() == 1  # synced again: nothing new
    assert len(ingest.calls) == 2
    imap.append(USER, _report("qmail.eml"))
    await sync.sync_due()
    assert [source.uid for source in ingest.sources] == [1, 2, 3]


async def test_a_stop_before_the_cursor_moves_hands_over_again_as_a_duplicate(
    backend: Database, box: SecretBox, imap: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    account_id = await _account_id(backend, box, imap)
    imap.append(USER, _report("rfc3464_simple.eml"))
    ingest = RecordingIngest()
    sync = _runner(backend, box, ingest)

    async def killed(self: _Run, uid: int) -> None:  # the node dies after the commit
        raise RuntimeError("killed")

    monkeypatch.setattr(_Run, "_mark", killed)
    await sync.sync_due()
    state = await mail_accounts.get_account(backend, account_id)
    assert state is not None and state.sync_status == "error"
    assert ingest.results == [PROCESSED]
    assert (await _cursor(backend, account_id)) == Cursor(ingest.sources[0].uidvalidity or 0, 0)

    monkeypatch.undo()
    await sync.sync_due()
    assert ingest.results == [PROCESSED, DUPLICATE]  # handed over again, counted once
    assert [source.uid for source in ingest.sources] == [1, 1]
    # marked as the stored report was to be: a report (\\Seen), not only the keyword
    assert KEYWORD.encode() in _mailbox(imap)[1] and b"\\Seen" in _mailbox(imap)[1]
    await sync.sync_due()
    assert len(ingest.calls) == 2


async def test_a_stop_after_the_mark_hands_nothing_over_again(
    backend: Database, box: SecretBox, imap: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    account_id = await _account_id(backend, box, imap)
    imap.append(USER, _report("rfc3464_simple.eml"))
    ingest = RecordingIngest()
    sync = _runner(backend, box, ingest)
    advance = Inbox.advance

    async def killed(self: Inbox, account: str, to: Cursor) -> None:
        if to.last_uid:  # the first message's cursor update never happens
            raise RuntimeError("killed")
        await advance(self, account, to)

    monkeypatch.setattr(Inbox, "advance", killed)
    await sync.sync_due()
    monkeypatch.undo()
    imap.append(USER, _report("qmail.eml"))
    await sync.sync_due()
    assert [source.uid for source in ingest.sources] == [1, 2]  # 1 was marked: not again
    cursor = await _cursor(backend, account_id)
    assert cursor is not None and cursor.last_uid == 2


async def test_a_new_uidvalidity_reads_the_mailbox_again(
    backend: Database, box: SecretBox, imap: Dovecot
) -> None:
    account_id = await _account_id(backend, box, imap)
    imap.append(USER, _report("rfc3464_simple.eml"))
    ingest = RecordingIngest()
    sync = _runner(backend, box, ingest)
    await sync.sync_due()
    uidvalidity = ingest.sources[0].uidvalidity
    assert uidvalidity is not None
    imap.append(USER, _report("qmail.eml"))
    # What a mailbox recreated, or restored from a backup, looks like from here: the stored
    # UIDs belong to another UIDVALIDITY, and one past every UID there is now.
    old = Cursor(uidvalidity - 1, 99)

    def tamper(conn: object) -> None:
        cursors.advance(conn, account_id, "INBOX", "tamper", old)  # type: ignore[arg-type]

    await backend.transaction(
        lambda conn: conn.execute(
            mail_accounts.A.update().values(claimed_by="tamper")  # advance checks the lease
        )
    )
    await backend.transaction(tamper)
    await backend.transaction(
        lambda conn: conn.execute(mail_accounts.A.update().values(claimed_by=None))
    )
    await sync.sync_due()
    # From the start again: UID 2 (below the old cursor) is read; UID 1 carries the
    # processed keyword and is not handed over twice.
    assert [source.uid for source in ingest.sources] == [1, 2]
    assert await _cursor(backend, account_id) == Cursor(uidvalidity, 2)


async def test_processed_mail_is_moved_to_the_named_folder_never_deleted(
    backend: Database, box: SecretBox, imap: Dovecot
) -> None:
    await _account_id(backend, box, imap)
    imap.append(USER, _report("rfc3464_simple.eml"))
    imap.append(USER, _report("yahoo.eml"))
    ingest = RecordingIngest()
    await _runner(backend, box, ingest, processed_folder="Postern Processed").sync_due()
    assert len(ingest.calls) == 2
    assert _mailbox(imap) == {}
    moved = _mailbox(imap, "Postern Processed")
    assert len(moved) == 2 and all(b"\\Deleted" not in flags for flags in moved.values())


async def test_a_folder_the_server_refuses_leaves_the_mail_flagged(
    backend: Database, box: SecretBox, imap: Dovecot
) -> None:
    await _account_id(backend, box, imap)
    imap.append(USER, _report("rfc3464_simple.eml"))
    ingest = RecordingIngest()
    await _runner(backend, box, ingest, processed_folder="a/b").sync_due()  # "/": not here
    flags = _mailbox(imap)
    assert len(ingest.calls) == 1 and KEYWORD.encode() in flags[1]


async def test_a_message_over_the_cap_is_skipped_and_recorded(
    backend: Database, box: SecretBox, imap: Dovecot
) -> None:
    account_id = await _account_id(backend, box, imap)
    imap.append(USER, b"Subject: huge\r\n\r\n" + (b"x" * 70 + b"\r\n") * 1000)
    imap.append(USER, _report("qmail.eml"))
    ingest = RecordingIngest()
    cap = len(_report("qmail.eml")) + 10
    await _runner(backend, box, ingest, max_size=cap).sync_due()
    assert [source.uid for source in ingest.sources] == [2]
    skipped = await backend.read(lambda conn: cursors.skipped(conn, account_id))
    assert [(s.uid, s.mailbox) for s in skipped] == [(1, "INBOX")]
    assert skipped[0].size > cap and "limit" in skipped[0].reason
    flags = _mailbox(imap)
    assert sorted(flags) == [1, 2] and KEYWORD.encode() not in flags[1]  # left as it was
    cursor = await _cursor(backend, account_id)
    assert cursor is not None and cursor.last_uid == 2


async def test_a_storage_failure_hands_nothing_over_and_moves_nothing(
    backend: Database, box: SecretBox, imap: Dovecot
) -> None:
    account_id = await _account_id(backend, box, imap)
    imap.append(USER, _report("rfc3464_simple.eml"))
    ingest = RecordingIngest()
    ingest.fail = True
    sync = _runner(backend, box, ingest)
    await sync.sync_due()
    state = await mail_accounts.get_account(backend, account_id)
    assert state is not None and state.sync_status == "error"
    assert state.last_error is not None and "storage" in state.last_error
    assert KEYWORD.encode() not in _mailbox(imap)[1]
    ingest.fail = False
    await sync.sync_due()
    assert [source.uid for source in ingest.sources] == [1]


async def test_a_round_takes_a_bounded_batch(
    backend: Database, box: SecretBox, imap: Dovecot
) -> None:
    await _account_id(backend, box, imap)
    for _ in range(5):
        imap.append(USER, _report("qmail.eml"))
    ingest = RecordingIngest()
    sync = _runner(backend, box, ingest, batch=2, max_rounds=2)
    await sync.sync_due()
    assert [source.uid for source in ingest.sources] == [1, 2, 3, 4]
    await sync.sync_due()
    assert [source.uid for source in ingest.sources] == [1, 2, 3, 4, 5]


async def test_idle_picks_new_mail_up_without_waiting_for_the_poll(
    backend: Database, box: SecretBox, imap: Dovecot
) -> None:
    account_id = await _account_id(backend, box, imap)
    ingest = RecordingIngest()
    inbox = Inbox(backend, ingest, InboxSettings(), "node-a")
    settings = SyncSettings("node-a", 3600, 10, idle=True, idle_renew=1.0, idle_retry=0.2)
    sync = AccountSync(backend, box, HostGuard(), settings, inbox)
    try:
        assert await sync.sync_due() == 1  # nothing yet; due again only in an hour
        assert sync.idle is not None and sync.idle.watching(account_id)
        await asyncio.sleep(1.5)  # an IDLE renewed (DONE, NOOP, IDLE) in the meantime
        imap.append(USER, _report("rfc3464_simple.eml"))
        await asyncio.wait_for(ingest.committed.wait(), 10)
        assert [source.uid for source in ingest.sources] == [1]
        await mail_accounts.delete_account(backend, account_id)
        imap.append(USER, _report("qmail.eml"))  # a disconnected account is not watched
        for _ in range(50):
            if not sync.idle.watching(account_id):
                break
            await asyncio.sleep(0.1)
        assert not sync.idle.watching(account_id) and len(ingest.calls) == 1
    finally:
        await sync.stop()


async def test_a_disconnected_accounts_idle_logs_out_at_the_next_sync_round(
    backend: Database, box: SecretBox, imap: Dovecot
) -> None:
    """With the default renewal (24 minutes), the watch would keep its connection until the
    next renewal: the sync loop's next round (run_once) notices the account is gone and
    the IDLE ends with DONE and LOGOUT (dovecot logs `Logged out`, not a dropped
    connection)."""
    account_id = await _account_id(backend, box, imap)
    inbox = Inbox(backend, RecordingIngest(), InboxSettings(), "node-a")
    settings = SyncSettings("node-a", 3600, 10, idle=True)  # renew: 24 minutes
    sync = AccountSync(backend, box, HostGuard(), settings, inbox)
    try:
        await sync.run_once()
        assert sync.idle is not None and sync.idle.watching(account_id)
        for _ in range(50):  # the IDLE session logged in (the sync's own has logged out)
            if imap.log_text().count("Login: user=") == 2:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.2)  # into its IDLE
        logged_out = imap.log_text().count("Logged out")
        assert logged_out == 1  # the sync's session only
        await sync.run_once()  # still connected: still watched
        assert sync.idle.watching(account_id)
        await mail_accounts.delete_account(backend, account_id)
        await sync.run_once()
        for _ in range(50):
            if not sync.idle.watching(account_id):
                break
            await asyncio.sleep(0.1)
        assert not sync.idle.watching(account_id)
        for _ in range(50):  # dovecot writes its log line as the session ends
            if imap.log_text().count("Logged out") > logged_out:
                break
            await asyncio.sleep(0.1)
        assert imap.log_text().count("Logged out") == logged_out + 1, imap.log_text()
    finally:
        await sync.stop()


async def test_an_idle_watch_that_cannot_log_in_gives_up() -> None:
    """A server gone, or a password changed since the sync: a few tries, then no more (no
    lock-out by our retries); the next good sync starts the watch again. (Nothing listens
    on the port: dovecot itself slows repeated failed logins down to seconds.)"""
    asked: list[bool] = []

    async def wake(account_id: str, news: bool) -> bool:
        asked.append(news)
        return True

    watch = IdleWatch(HostGuard(), wake, 5, renew=1.0, retry=0.05)
    endpoint = Endpoint("127.0.0.1", free_port(), "starttls", USER, "changed", False)
    try:
        watch.watch("acc", endpoint)
        for _ in range(100):
            if not watch.watching("acc"):
                break
            await asyncio.sleep(0.1)
        assert not watch.watching("acc")
        assert asked == [False] * (MAX_FAILURES - 1)  # still wanted, between the tries
    finally:
        await watch.stop()
