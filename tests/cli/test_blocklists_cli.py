"""`postern blocklists check|status` against a loopback DNS server: a round now, its
verdicts in text and --json, the status read back; nothing to check, and a bad list name in
the config, exit 2; the DQS key never printed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.process.cli import main
from tests.support.dnsbl import list_subject, working_lists
from tests.support.dnsserver import DnsServer

pytestmark = pytest.mark.timeout(60)
KEY = "abcdef0123456789abcdef0123"


@pytest.fixture
def server() -> Iterator[DnsServer]:
    with DnsServer() as started:
        yield started


def write_config(tmp_path: Path, server: DnsServer, blocklists: str) -> str:
    path = tmp_path / "postern.toml"
    path.write_text(
        f'[server]\ndata_dir = "{tmp_path / "var"}"\n'
        f'[dns]\nnameservers = ["{server.nameserver}"]\n'
        f"[blocklists]\ntimeout = 1\n{blocklists}\n"
    )
    return str(path)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_and_status(
    tmp_path: Path, server: DnsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    working_lists(server, ("spamhaus-zen", "spamcop"), key=KEY)
    list_subject(server, "192.0.2.7", "spamhaus-zen", "127.0.0.2", "see spamhaus", key=KEY)
    config = write_config(
        tmp_path, server,
        'sending_ips = ["192.0.2.7", "192.0.2.8"]\nlists = ["spamhaus-zen", "spamcop"]\n'
        f'spamhaus_dqs_key = "{KEY}"',
    )  # fmt: skip
    code, out, err = run(capsys, "blocklists", "status", "--config", config)
    assert code == 0 and "last completed check: never" in out and "no subject checked" in out
    code, out, err = run(capsys, "blocklists", "check", "--config", config, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["lists"] == {"spamhaus-zen": "verified", "spamcop": "verified"}
    assert report["newly_listed"] == ["192.0.2.7"]
    statuses = {row["subject"]: row["status"] for row in report["subjects"]}
    assert statuses == {"192.0.2.7": "listed", "192.0.2.8": "clean"}
    code, out, _ = run(capsys, "blocklists", "status", "--config", config)
    assert code == 0
    lines = out.splitlines()
    assert lines[1].startswith("listed") and "192.0.2.7" in lines[1]
    assert "listed on spamhaus-zen: 127.0.0.2 SBL" in out and "(see spamhaus)" in out
    assert KEY not in out
    code, out, _ = run(capsys, "blocklists", "status", "--config", config, "--json")
    status = json.loads(out)
    assert status["last_completed_at"] is not None and status["running_on"] is None


def test_refusals(tmp_path: Path, server: DnsServer, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, server, "")
    code, _, err = run(capsys, "blocklists", "check", "--config", config)
    assert code == 2 and "nothing to check" in err
    assert sum(server.transports.values()) == 0
    config = write_config(tmp_path, server, 'lists = ["nope"]')
    code, _, err = run(capsys, "blocklists", "status", "--config", config)
    assert code == 2 and "unknown list 'nope'" in err


def test_text_from_dns_is_printed_without_control_characters() -> None:
    """A list's TXT (and a resolver's reason) reach the terminal escaped: an escape
    sequence or a line break in them cannot paint or forge a line."""
    from gateway.process.commands.blocklists import _text

    listing = {"list": "spamcop", "code": "127.0.0.2", "meaning": "spam",
               "text": "see \x1b[2J\x1b]0;owned\x07 here\nlisted on x: fake"}  # fmt: skip
    error = {"list": "zen", "reason": "bad\r\x9bnews"}
    row = {"status": "listed", "kind": "ip", "subject": "192.0.2.7", "last_checked_at": None,
           "listings": [listing], "errors": [error]}  # fmt: skip
    result = {"lists": {"spamcop": "verified", "zen": "odd \x1b[31m"}, "completed_at": None,
              "subjects": [row]}  # fmt: skip
    printed = _text("check", result)
    assert not any((ord(c) < 32 and c != "\n") or 0x7F <= ord(c) <= 0x9F for c in printed)
    assert printed.count("\n") == 5  # 2 lists, completed, the subject, its listing, its error
    assert "listed on x: fake" in printed and "\\n" in printed
