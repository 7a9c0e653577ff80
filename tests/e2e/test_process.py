"""`postern serve` as a real process: crash safety, clean shutdown, start-up refusals.

SPEC "Delivery semantics": a 250 after DATA means the message is durable, so `kill -9` at any
moment loses nothing; "Command line": SIGTERM / Ctrl-C drain and exit 0; bad configuration, an
unreadable file or a port in use is one line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import REPO
from tests.support.serve import MakePostern, free_port, run_cli, seqs_received, wait_until
from tests.support.sink import Sink

COUNT = 20
DELIVERY_TIMEOUT = 20.0  # seconds for mail pending at a restart to reach the sink
SETTLE = 2.5  # seconds to watch for late duplicates after everything arrived (> retry 1s)
STOP_BOUND = 15.0  # a signalled postern must exit 0 within this


def expected(tag: str, count: int) -> list[str]:
    return sorted(f"{tag}-{seq}" for seq in range(count))


def wait_all_delivered(sink: Sink, tag: str, count: int) -> tuple[list[str], float]:
    """Wait (bounded) until every seq of `tag` arrived, then SETTLE for duplicates."""
    started = time.monotonic()
    wait_until(lambda: len(set(seqs_received(sink, tag))) >= count, DELIVERY_TIMEOUT)
    took = time.monotonic() - started
    time.sleep(SETTLE)
    return seqs_received(sink, tag), took


def report(label: str, **values: object) -> None:
    print(f"\n[e2e] {label}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


# --- kill -9 ---------------------------------------------------------------------------------


def test_kill9_with_upstream_down_loses_nothing(sink: Sink, postern_process: MakePostern) -> None:
    sink.stop()  # the 20 messages are certainly not delivered before the kill
    postern = postern_process(sink.port)
    started = time.monotonic()
    postern.send(COUNT, "down")
    sent = time.monotonic() - started
    postern.kill()

    sink.start()  # same port
    restart = postern.start()
    got, took = wait_all_delivered(sink, "down", COUNT)
    report(
        "kill -9, sink down",
        sent_s=f"{sent:.2f}",
        restart_s=f"{restart:.2f}",
        delivered_after_restart_s=f"{took:.2f}",
        received=len(got),
        unique=len(set(got)),
    )
    assert sorted(set(got)) == expected("down", COUNT), f"lost: {postern.stderr()}"
    assert sorted(got) == expected("down", COUNT), "duplicates although nothing was delivered"


def test_kill9_right_after_last_250_loses_nothing(sink: Sink, postern_process: MakePostern) -> None:
    postern = postern_process(sink.port)
    started = time.monotonic()
    postern.send(COUNT, "up")
    postern.kill()  # immediately after the last 250, session still open
    sent = time.monotonic() - started
    before_restart = len(set(seqs_received(sink, "up")))

    restart = postern.start()
    got, took = wait_all_delivered(sink, "up", COUNT)
    report(
        "kill -9, sink up",
        sent_s=f"{sent:.2f}",
        delivered_before_kill=before_restart,
        restart_s=f"{restart:.2f}",
        delivered_after_restart_s=f"{took:.2f}",
        received=len(got),
        unique=len(set(got)),
        duplicates=len(got) - len(set(got)),
    )
    assert sorted(set(got)) == expected("up", COUNT), f"lost: {postern.stderr()}"


# --- SIGTERM / Ctrl-C ------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_exits_0_and_pending_mail_survives(
    sink: Sink, postern_process: MakePostern, sig: signal.Signals
) -> None:
    sink.stop()
    postern = postern_process(sink.port)
    tag = sig.name.lower()
    postern.send(5, tag)  # the client session stays open across the signal
    status, took = postern.stop(sig, timeout=STOP_BOUND)
    report(f"{sig.name} with mail pending", exit=status, exit_s=f"{took:.2f}")
    no_traceback(postern.stderr())
    assert status == 0, postern.stderr()

    sink.start()
    postern.start()
    got, _ = wait_all_delivered(sink, tag, 5)
    assert sorted(got) == expected(tag, 5), postern.stderr()


def test_sigterm_with_delivery_in_flight_is_bounded(
    sink: Sink, postern_process: MakePostern
) -> None:
    sink.hang("data", seconds=30)  # upstream goes silent mid-delivery
    postern = postern_process(sink.port)
    postern.send(3, "hung")
    postern.close_client()
    assert wait_until(lambda: sink.connections_open > 0, 5.0), "delivery never started"
    status, took = postern.stop(signal.SIGTERM, timeout=STOP_BOUND)
    report("SIGTERM with delivery hung upstream", exit=status, exit_s=f"{took:.2f}")
    no_traceback(postern.stderr())
    assert status == 0, postern.stderr()

    sink.clear()
    postern.start()
    got, _ = wait_all_delivered(sink, "hung", 3)
    assert sorted(set(got)) == expected("hung", 3), postern.stderr()


# --- start-up refusals -----------------------------------------------------------------------


def toml_config(sections: dict[str, dict[str, object]]) -> str:
    lines = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


def base_sections(tmp_path: Path, smtp_port: int, http_port: int) -> dict[str, dict[str, object]]:
    # Valid and on free ports, so a refusal that fails to happen cannot grab 2525/8080.
    return {
        "server": {"data_dir": str(tmp_path / "var")},
        "smtp": {"listen": [f"127.0.0.1:{smtp_port}"]},
        "http": {"listen": f"127.0.0.1:{http_port}"},
    }


BAD_CONFIGS: dict[str, tuple[dict[str, dict[str, object]], str]] = {
    # name: (sections merged over the base, what the error line must mention)
    "unknown_key": ({"server": {"colour": "blue"}}, "colour"),
    "unknown_section": ({"smpt": {"listen": "x"}}, "smpt"),
    "wrong_type": ({"smtp": {"max_recipients": "many"}}, "smtp.max_recipients"),
    "bad_duration": ({"delivery": {"max_age": "forever"}}, "delivery.max_age"),
    "bad_listen_address": ({"http": {"listen": "127.0.0.1"}}, "http.listen"),
    "non_loopback_without_auth": ({"smtp": {"listen": ["0.0.0.0:{smtp}"]}}, "require_auth"),
    "password_env_unset": (
        {"pools": {"name": "p", "host": "127.0.0.1", "password_env": "POSTERN_E2E_SURELY_UNSET"}},
        "POSTERN_E2E_SURELY_UNSET",
    ),
}


def check_refusal(result: subprocess.CompletedProcess[str], mention: str) -> str:
    """Exit status 2, exactly one line on stderr, no traceback; returns the line."""
    status, stderr = result.returncode, result.stderr
    no_traceback(stderr)
    assert status == 2, f"exit {status}, stderr: {stderr!r}"
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert lines[0].startswith("postern: error:"), lines
    assert mention in lines[0], lines
    return lines[0]


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_exits_2_with_one_line(tmp_path: Path, case: str) -> None:
    smtp_port, http_port = free_port(), free_port()
    sections = base_sections(tmp_path, smtp_port, http_port)
    override, mention = BAD_CONFIGS[case]
    for name, table in override.items():
        text = json.dumps(table).replace("{smtp}", str(smtp_port))
        sections.setdefault(name, {}).update(json.loads(text))
    body = toml_config({k: v for k, v in sections.items() if k != "pools"})
    if "pools" in sections:
        body += (
            "[[pools]]\n"
            + "\n".join(f"{k} = {json.dumps(v)}" for k, v in sections["pools"].items())
            + "\n"
        )
    path = tmp_path / "bad.toml"
    path.write_text(body)
    started = time.monotonic()
    result = run_cli("serve", "--config", str(path), timeout=STOP_BOUND)
    line = check_refusal(result, mention)
    report(f"refusal {case}", exit_s=f"{time.monotonic() - started:.2f}", line=line)


@pytest.fixture
def valid_config(tmp_path: Path) -> Iterator[tuple[Path, int, int]]:
    smtp_port, http_port = free_port(), free_port()
    path = tmp_path / "good.toml"
    path.write_text(toml_config(base_sections(tmp_path, smtp_port, http_port)))
    yield path, smtp_port, http_port


def test_invalid_toml_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[server\ndata_dir = 'x'\n")
    check_refusal(run_cli("serve", "--config", str(path), timeout=STOP_BOUND), str(path))


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "does-not-exist.toml"
    check_refusal(run_cli("serve", "--config", str(path), timeout=STOP_BOUND), str(path))


def test_unreadable_config_file_exits_2(tmp_path: Path) -> None:
    # A directory: unreadable as a file even for root (chmod 000 is not, for root).
    path = tmp_path / "a-directory.toml"
    path.mkdir()
    check_refusal(run_cli("serve", "--config", str(path), timeout=STOP_BOUND), str(path))


def test_non_utf8_config_file_exits_2(valid_config: tuple[Path, int, int]) -> None:
    path, _, _ = valid_config
    path.write_bytes(path.read_bytes() + b"# caf\xe9 (Latin-1, not UTF-8)\n")
    check_refusal(run_cli("serve", "--config", str(path), timeout=STOP_BOUND), str(path))


@pytest.mark.parametrize("which", ["smtp", "http"])
def test_port_in_use_exits_2(valid_config: tuple[Path, int, int], which: str) -> None:
    path, smtp_port, http_port = valid_config
    port = smtp_port if which == "smtp" else http_port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen(1)
        result = run_cli("serve", "--config", str(path), timeout=STOP_BOUND)
    check_refusal(result, f"127.0.0.1:{port}")


def test_check_config_accepts_good_files(valid_config: tuple[Path, int, int]) -> None:
    path, _, _ = valid_config
    for config in (path, REPO / "config.example.toml"):
        result = run_cli("check-config", "--config", str(config))
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        assert "OK" in result.stdout


def test_check_config_refuses_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[delivery]\nconnect_timeout = "soonish"\n')
    check_refusal(run_cli("check-config", "--config", str(path)), "delivery.connect_timeout")
