"""`postern bounces list|show|reclassify|skipped`: the reports as the API shows them, text
and --json; a reclassification applies its class's effect once; the inbox mail the sync
skipped, of every account or one; refusals exit 2."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway.bounces.ingest import BounceIngest, Source
from gateway.bounces.returnpath import ReturnPath
from gateway.process.cli import main
from storage.db import create_schema, database_url, open_database, prepare_data_dir
from storage.inbox import Skipped, skip
from tests.support.reports import dsn

pytestmark = pytest.mark.timeout(60)
MESSAGE_ID = "msg_01900000000aaaaaaaaaaaaaaaa"


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "postern.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path / "var"}"\n')
    asyncio.run(_seed(tmp_path / "var"))
    return str(path)


async def _seed(data_dir: Path) -> None:
    """A delivered message and two reports: a policy block on it (matched by the Message-ID
    Postern wrote) and one naming no message."""
    prepare_data_dir(data_dir)
    db = open_database(database_url("", data_dir))
    try:
        await create_schema(db)
        await db.transaction(lambda conn: conn.execute(text(
            "INSERT INTO message (id, status, source, mail_from, attempts, size, created_at,"
            f" updated_at, route_default, forced_attempts) VALUES ('{MESSAGE_ID}', 'delivered',"
            " 'smtp', 'a@app.test', 1, 10, 1, 1, false, 0);"
        )))  # fmt: skip
        await db.transaction(lambda conn: conn.execute(text(
            "INSERT INTO recipient (message_id, email, status, attempts, updated_at)"
            f" VALUES ('{MESSAGE_ID}', 'r@example.test', 'delivered', 1, 1)"
        )))  # fmt: skip
        ingest = BounceIngest(db, ReturnPath("", b"k" * 32))
        own = f"<{MESSAGE_ID}@postern.test>"
        blocked = dsn("r@example.test", "5.7.1", "550 5.7.1 blocked", message_id=own)
        await ingest.ingest(blocked, Source("listener"))
        await ingest.ingest(dsn("x@example.test", nonce="2"), Source("listener"))
        for account, uid, at in (("acct-a", 7, 100.0), ("acct-b", 9, 200.0)):
            record = Skipped(account, "INBOX", 3, uid, 20_000_000, "over 10485760 bytes", at)
            await db.transaction(lambda conn, record=record: skip(conn, record))
    finally:
        await db.dispose()


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_show_and_reclassify(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "bounces", "list", "--config", config, "--json")
    assert code == 0
    listed = json.loads(out)
    assert [r["status"] for r in listed] == ["unmatched", "processed"]
    policy_id = listed[1]["id"]
    code, out, _ = run(capsys, "bounces", "list", "--config", config, "--unmatched")
    assert code == 0 and len(out.strip().splitlines()) == 1 and "unmatched" in out
    code, out, _ = run(capsys, "bounces", "show", str(policy_id), "--config", config)
    assert code == 0 and "Diagnostic-Code: smtp; 550 5.7.1 blocked" in out
    assert 'classification: "policy"' in out
    args = ("bounces", "reclassify", str(policy_id), "--class", "hard", "--config", config)
    code, out, _ = run(capsys, *args, "--json")
    assert code == 0 and json.loads(out)["outcome"] == "changed"
    code, out, _ = run(capsys, *args)
    assert code == 0 and "unchanged" in out
    code, out, _ = run(capsys, "suppressions", "list", "--config", config, "--json")
    assert [(r["email"], r["reason"]) for r in json.loads(out)] == [
        ("r@example.test", "hard_bounce")
    ]


def test_refusals(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "bounces", "show", "999", "--config", config)
    assert code == 2 and "no bounce report 999" in err
    args = ("bounces", "reclassify", "999", "--class", "hard", "--config", config)
    assert run(capsys, *args)[0] == 2
    with pytest.raises(SystemExit):
        main(["bounces", "reclassify", "1", "--class", "nope", "--config", config])


def test_skipped_inbox_mail(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "bounces", "skipped", "--config", config, "--json")
    assert code == 0
    listed = json.loads(out)
    assert [(r["account_id"], r["uid"], r["size"]) for r in listed] == [
        ("acct-b", 9, 20_000_000),  # newest first
        ("acct-a", 7, 20_000_000),
    ]
    code, out, _ = run(capsys, "bounces", "skipped", "--account", "acct-a", "--config", config)
    assert code == 0 and out.strip().splitlines() == [
        "1970-01-01T00:01:40+00:00  acct-a  INBOX  uidvalidity 3  uid 7  20000000 bytes  "
        "over 10485760 bytes"
    ]
    code, out, _ = run(capsys, "bounces", "skipped", "--account", "none", "--config", config)
    assert code == 0 and out.strip() == "no skipped inbox mail"
    assert run(capsys, "bounces", "skipped", "--limit", "0", "--config", config)[0] == 2
