"""The inbox sync of connected accounts on SQLite and PostgreSQL, against a real dovecot: two
runners (two nodes, each with its own connection pool to one database) sync an account once;
a runner's stop gives its leases back; an account disconnected mid-sync records nothing."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from gateway.accounts.accounts import seal
from gateway.accounts.sync import AccountSync, SyncSettings
from gateway.security.hostguard import HostGuard
from gateway.security.secrets import SecretBox
from storage import mail_accounts
from storage.db import Database
from storage.mail_accounts import MailAccountRecord
from tests.support.imap import Dovecot, available

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not available(), reason="dovecot-imapd is not installed (.ci/run does)"),
]

USER, PASSWORD = "alice@example.test", "inbox secret"


@pytest.fixture(scope="module")
def imap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    with Dovecot(tmp_path_factory.mktemp("imap"), {USER: PASSWORD}) as server:
        yield server


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(os.urandom(32))


async def _account(db: Database, box: SecretBox, imap: Dovecot) -> MailAccountRecord:
    values = {
        "email": USER, "name": "", "imap_host": "127.0.0.1", "imap_port": imap.port,
        "imap_security": "starttls", "smtp_host": "127.0.0.1", "smtp_port": 25,
        "smtp_security": "none", "tls_verify": False, "username": USER,
    }  # fmt: skip
    return await mail_accounts.create_account(
        db, values, lambda account_id: seal(box, account_id, PASSWORD), "usr_a", 10
    )


def _runner(db: Database, box: SecretBox, node: str) -> AccountSync:
    return AccountSync(db, box, HostGuard(), SyncSettings(node, interval=3600, timeout=10))


def _logins(imap: Dovecot) -> int:
    return imap.log_text().count(f"Login: user=<{USER}>")


async def _new_logins(imap: Dovecot, before: int) -> int:
    """Logins since `before`, once dovecot's log process has written them (it lags)."""
    for _ in range(30):
        if _logins(imap) > before:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)  # a second one, had there been one, is written by now too
    return _logins(imap) - before


async def test_two_nodes_sync_an_account_once(
    backend: Database, other_db: Database, box: SecretBox, imap: Dovecot
) -> None:
    account = await _account(backend, box, imap)
    before = _logins(imap)
    a, b = _runner(backend, box, "node-a"), _runner(other_db, box, "node-b")
    for _ in range(3):  # rounds at once, and again: the account is synced once in all
        done = await asyncio.gather(a.sync_due(), b.sync_due())
        assert sum(done) <= 1
    assert await _new_logins(imap, before) == 1
    state = await mail_accounts.get_account(backend, account.id)
    assert state is not None and state.sync_status == "synced"
    assert state.uidvalidity is not None and state.uidnext == 1


async def test_a_stopping_node_gives_its_lease_back(
    backend: Database, other_db: Database, box: SecretBox, imap: Dovecot
) -> None:
    account = await _account(backend, box, imap)
    a, b = _runner(backend, box, "node-a"), _runner(other_db, box, "node-b")
    job = await a._claim(account.id)  # node a took it, then stopped before syncing
    assert job is not None and await b.sync_due() == 0
    await a.release()
    state = await mail_accounts.get_account(backend, account.id)
    assert state is not None and state.sync_status == "pending"
    assert await b.sync_due() == 1


async def test_a_disconnected_account_records_nothing(
    backend: Database, box: SecretBox, imap: Dovecot
) -> None:
    account = await _account(backend, box, imap)
    runner = _runner(backend, box, "node-a")
    job = await runner._claim(account.id)
    assert job is not None
    await mail_accounts.delete_account(backend, account.id)
    await runner._sync(job)  # its outcome finds no lease: dropped
    assert await mail_accounts.get_account(backend, account.id) is None
    assert await mail_accounts.list_accounts(backend) == []
