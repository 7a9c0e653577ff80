"""End to end through `serve`'s own parts: a message leaves with its VERP return path, its
DSN comes back (at the bounce listener, or in a connected account's IMAP inbox on a real
dovecot), the real processing matches it and suppresses the recipient; the same report met
again is a duplicate; mail for any other address is no relay."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.accounts.accounts import seal
from gateway.accounts.inbox import KEYWORD
from storage import mail_accounts
from tests.support.imap import Dovecot, available
from tests.support.processes import LOOPBACK, free_port
from tests.support.reports import dsn
from tests.support.service import ManagedService, ServiceFactory, make_config, metric
from tests.support.sink import Sink
from tests.support.smtp import smtp_send

pytestmark = pytest.mark.timeout(60)

DOMAIN = "bounce.postern.test"
RECIPIENT = "ann@example.test"
USER, PASSWORD = "bounces@app.test", "inbox secret"
MESSAGE = (
    b"From: app@app.test\r\nTo: ann@example.test\r\nSubject: hello\r\n"
    b"Message-ID: <1@app.test>\r\n\r\nHello.\r\n"
)


def _reports(source: str, result: str) -> float:
    return metric("postern_bounce_reports_total", source=source, result=result)


async def _sent(svc: ManagedService, sink: Sink) -> str:
    """Send one message through the service; the return path the sink saw."""
    code, reply = await smtp_send(svc.smtp_port, "app@app.test", [RECIPIENT], MESSAGE)
    assert code == 250, reply
    assert await sink.wait_for_async(1, timeout=10)
    return_path = sink.messages[0].mail_from
    assert return_path.startswith("bounces+") and return_path.endswith(f"@{DOMAIN}")
    return return_path


async def test_a_dsn_at_the_bounce_listener_suppresses_the_recipient(
    tmp_path: Path, service: ServiceFactory, sink: Sink
) -> None:
    port = free_port()
    bounces = {"domain": DOMAIN, "listen": f"{LOOPBACK}:{port}"}
    svc = await service(make_config(tmp_path, sink, bounces=bounces))
    return_path = await _sent(svc, sink)
    report = dsn(RECIPIENT, to=return_path)
    before = _reports("listener", "processed"), _reports("listener", "duplicate")

    assert (await smtp_send(port, "", [return_path], report))[0] == 250
    assert svc.queue is not None and svc.queue.suppressions.suppressed([RECIPIENT])
    assert (await smtp_send(port, "", [return_path], report))[0] == 250  # a retry: once
    after = _reports("listener", "processed"), _reports("listener", "duplicate")
    assert after == (before[0] + 1, before[1] + 1)
    assert (await smtp_send(port, "", ["ann@example.test"], report))[0] == 550  # no relay


@pytest.fixture
def imap(tmp_path: Path) -> Iterator[Dovecot]:
    if not available():
        pytest.skip("dovecot-imapd is not installed (.ci/run does)")
    with Dovecot(tmp_path / "imap", {USER: PASSWORD}) as server:
        yield server


async def test_a_dsn_in_a_connected_inbox_suppresses_the_recipient(
    tmp_path: Path, service: ServiceFactory, sink: Sink, imap: Dovecot
) -> None:
    bounces = {"domain": DOMAIN, "idle": False}
    accounts = {"sync_interval": "1h"}  # synced below, not by the loop's next round
    svc = await service(make_config(tmp_path, sink, bounces=bounces, accounts=accounts))
    return_path = await _sent(svc, sink)
    assert svc.db is not None and svc.box is not None and svc.account_sync is not None
    box = svc.box
    values = {
        "email": USER, "name": "", "imap_host": "127.0.0.1", "imap_port": imap.port,
        "imap_security": "starttls", "smtp_host": "127.0.0.1", "smtp_port": 25,
        "smtp_security": "none", "tls_verify": False, "username": USER,
    }  # fmt: skip
    await mail_accounts.create_account(
        svc.db, values, lambda account_id: seal(box, account_id, PASSWORD), "usr_a", 10
    )
    # The MX of the bounce domain delivers into this mailbox: Delivered-To keeps the VERP
    # address (the DSN's own To names it too, as providers' do).
    imap.append(USER, f"Delivered-To: {return_path}\r\n".encode() + dsn(RECIPIENT, to=return_path))
    before = _reports("imap", "processed")

    await svc.account_sync.sync_due()
    assert svc.queue is not None and svc.queue.suppressions.suppressed([RECIPIENT])
    assert _reports("imap", "processed") == before + 1
    with imap.client(USER) as client:
        client.select("INBOX")
        _, flags = client.fetch("1", "(FLAGS)")
    assert KEYWORD.encode() in (flags[0] or b"")  # processed, and still there


async def test_a_persons_letter_in_a_connected_inbox_stays_unread_and_is_not_copied(
    tmp_path: Path, service: ServiceFactory, sink: Sink, imap: Dovecot
) -> None:
    bounces = {"domain": DOMAIN, "idle": False, "processed_folder": "Processed"}
    accounts = {"sync_interval": "1h"}
    svc = await service(make_config(tmp_path, sink, bounces=bounces, accounts=accounts))
    assert svc.db is not None and svc.box is not None and svc.account_sync is not None
    box = svc.box
    values = {
        "email": USER, "name": "", "imap_host": "127.0.0.1", "imap_port": imap.port,
        "imap_security": "starttls", "smtp_host": "127.0.0.1", "smtp_port": 25,
        "smtp_security": "none", "tls_verify": False, "username": USER,
    }  # fmt: skip
    await mail_accounts.create_account(
        svc.db, values, lambda account_id: seal(box, account_id, PASSWORD), "usr_a", 10
    )
    letter = (
        b"From: friend@example.org\r\nTo: bounces@app.test\r\nSubject: lunch?\r\n"
        b"Message-ID: <lunch@example.org>\r\n\r\nShall we meet at noon? A private line.\r\n"
    )
    imap.append(USER, letter)
    await svc.account_sync.sync_due()
    with imap.client(USER) as client:
        client.select("INBOX")
        _, flags = client.fetch("1", "(FLAGS)")
    marks = flags[0] or b""
    assert KEYWORD.encode() in marks and b"\\Seen" not in marks  # unread, where it was
    kept = await svc.db.read(
        lambda conn: [bytes(r[0]) for r in conn.exec_driver_sql("SELECT raw FROM bounce_report")]
    )
    assert kept and b"Subject: lunch?" in kept[0] and b"private line" not in kept[0]
