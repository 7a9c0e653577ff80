"""Operating a real `postern serve` as its users do: `postern queue retry` from another
process, SIGTERM with a slow upstream, a second signal, SIGHUP.

README "Finding and operating on messages", "Stopping and reloading": a retry is like
`postqueue -f` (the pools' cool-down ends, no step of retry_schedule is taken); SIGTERM ends
every delivery in flight within 10 s and records how it ended; a second signal exits at
once and says so in the log; SIGHUP reloads `[[pools]]` and `[policy]`.
"""

from __future__ import annotations

import json
import re
import signal
import smtplib
import time
from datetime import datetime
from typing import Any

from gateway.smtpd import replies
from tests.support.processes import spawn_serve
from tests.support.serve import MakePostern, Postern, run_cli, wait_until
from tests.support.sink import Sink

DRAIN_BOUND = 10.0  # README: in-flight deliveries finish or are cut off within 10 s
EXIT_MARGIN = 3.0  # then the rest of the shutdown (closing storage, the HTTP server)
COOLING = "every pool of this route is cooling down"


def set_delivery(postern: Postern, **values: str) -> None:
    """Replace (or add) keys of the [delivery] section of the process's config file."""
    text = postern.config.read_text()
    for key, value in values.items():
        line = f"{key} = {value}"
        text, found = re.subn(rf"(?m)^{key} = .*$", line, text)
        if not found:
            text = text.replace("[delivery]\n", f"[delivery]\n{line}\n")
    postern.config.write_text(text)


def cli(postern: Postern, *args: str) -> Any:
    """`postern queue ARGS --json` against the process's config; its parsed output."""
    result = run_cli("queue", *args, "--json", "--config", str(postern.config))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def listed(postern: Postern) -> list[dict[str, Any]]:
    return list(cli(postern, "list")["data"])


def seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def sent_ids(postern: Postern, count: int) -> list[str]:
    """The ids of the `count` messages in the queue, oldest first."""
    found = [m["message_id"] for m in reversed(listed(postern))]
    assert len(found) == count, found
    return found


# --- postern queue retry -----------------------------------------------------------------


def test_queue_retry_ends_the_cool_down_and_takes_no_step(
    sink: Sink, postern_process: MakePostern
) -> None:
    sink.stop()  # connections refused
    postern = postern_process(sink.port, start=False)
    set_delivery(postern, retry_schedule='["1h", "3h"]', workers="1")
    postern.start()
    postern.send(4, "cool")
    postern.close_client()

    def all_tried() -> bool:
        return all(m["attempts"] == 1 and m["last_response"] for m in listed(postern))

    assert wait_until(all_tried, 10), listed(postern)
    first, second, _, fourth = sent_ids(postern, 4)
    # Three failures in a row: the pool cools down, and the fourth message met that.
    assert COOLING in cli(postern, "show", fourth)["last_response"]

    sink.start()  # the upstream is back; the cool-down still has seconds to run
    retried = cli(postern, "retry", first)
    assert (retried["matched"], retried["retried"]) == (1, 1)
    assert wait_until(lambda: cli(postern, "show", first)["status"] == "delivered", 5)
    shown = cli(postern, "show", first)
    assert shown["attempts"] == 2
    assert [e["type"] for e in shown["events"]] == ["queued", "deferred", "delivered"]

    sink.stop()  # down again: a retry that fails waits the hour again, not three
    cli(postern, "retry", second)
    assert wait_until(lambda: cli(postern, "show", second)["attempts"] == 2, 5)
    shown = cli(postern, "show", second)
    assert shown["status"] == "deferred" and shown["next_attempt_at"] is not None
    assert seconds(shown["next_attempt_at"]) < time.time() + 1.5 * 3600, shown


# --- SIGTERM with a slow upstream --------------------------------------------------------


def stop_slowly(sink: Sink, postern_process: MakePostern, stage: str) -> tuple[Postern, str]:
    """A message whose delivery hangs at `stage` when SIGTERM comes; the process must end
    within the bound, exit 0, and leave a clean log. Returns the process and the id."""
    sink.hang(stage, seconds=120, times=1)  # far beyond the drain bound
    postern = postern_process(sink.port, start=False)
    set_delivery(postern, retry_schedule='["1h"]', command_timeout='"60s"')
    postern.start()
    postern.send(1, stage)
    postern.close_client()
    assert wait_until(lambda: stage in sink.hung, 10), "the delivery never reached the hang"

    status, took = postern.stop(signal.SIGTERM, timeout=DRAIN_BOUND + 10)
    log = postern.stderr()
    assert status == 0, log
    assert took < DRAIN_BOUND + EXIT_MARGIN, f"exit after {took:.1f}s:\n{log}"
    assert "Traceback" not in log, log
    assert "SIGTERM: stopping within 10s" in log, log
    assert "cutting off the deliveries still in flight" in log, log
    (message_id,) = sent_ids(postern, 1)
    return postern, message_id


def test_sigterm_with_the_upstream_silent_after_the_final_dot(
    sink: Sink, postern_process: MakePostern
) -> None:
    postern, message_id = stop_slowly(sink, postern_process, "eom")
    assert wait_until(lambda: len(sink.dropped_after_data) == 1, 5)  # the sink had it all
    shown = cli(postern, "show", message_id)
    # Recorded: the attempt counts, the event says a retry may duplicate, and the next try
    # waits its schedule step (1 h) rather than going out again as a first attempt.
    assert (shown["status"], shown["attempts"]) == ("deferred", 1), shown
    assert seconds(shown["next_attempt_at"]) > time.time() + 3000, shown
    types = [(e["type"], e["attempt"]) for e in shown["events"]]
    assert types == [("queued", 0), ("possible_duplicate", 1), ("deferred", 1)], types


def test_sigterm_with_the_upstream_silent_at_data(sink: Sink, postern_process: MakePostern) -> None:
    postern, message_id = stop_slowly(sink, postern_process, "data")
    shown = cli(postern, "show", message_id)
    # The upstream never had the body: handed back, due at once, no attempt counted.
    assert (shown["status"], shown["attempts"]) == ("queued", 0), shown
    assert [e["type"] for e in shown["events"]] == ["queued"]
    postern.start()
    assert sink.wait_for(1, timeout=10), postern.stderr()  # the hang was used up
    assert len(sink.messages) == 1


def test_a_second_signal_exits_at_once_and_says_so(
    sink: Sink, postern_process: MakePostern
) -> None:
    sink.hang("eom", seconds=120, times=1)
    postern = postern_process(sink.port, start=False)
    set_delivery(postern, command_timeout='"60s"')
    postern.start()
    postern.send(1, "twice")
    postern.close_client()
    assert wait_until(lambda: "eom" in sink.hung, 10)
    assert postern.proc is not None
    postern.proc.send_signal(signal.SIGTERM)
    assert wait_until(lambda: "SIGTERM: stopping" in postern.stderr(), 5), postern.stderr()
    status, took = postern.stop(signal.SIGINT, timeout=5)
    assert status == 1
    assert took < 3
    assert "second stop signal (SIGINT): exiting at once" in postern.stderr(), postern.stderr()


# --- SIGHUP -----------------------------------------------------------------------------


def smtp_send(postern: Postern, sender: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", postern.smtp_port, timeout=10) as client:
        client.ehlo("client.test")
        code, reply = client.mail(sender)
        if code != 250:
            return code, reply
        code, reply = client.rcpt("someone@example.org")
        if code != 250:
            return code, reply
        return client.data(b"From: " + sender.encode() + b"\r\nSubject: hup\r\n\r\nhi\r\n")


def test_sighup_reloads_pools_and_policy(sink: Sink, postern_process: MakePostern) -> None:
    postern = postern_process(sink.port)
    config = postern.config
    other = Sink().start()
    try:
        # Move the pool to another upstream and require verified senders.
        original = config.read_text()
        moved = original.replace(f"port = {sink.port}", f"port = {other.port}")
        moved = moved.replace('sender = "any"', 'sender = "verified"')
        moved = moved.replace('hostname = "postern.e2e.test"', 'hostname = "renamed.test"')
        config.write_text(moved)
        assert postern.proc is not None
        postern.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "SIGHUP: reloaded 1 pool" in postern.stderr(), 5), (
            postern.stderr()
        )
        log = postern.stderr()
        assert "policy.sender = 'verified'" in log, log
        assert "changes to [server] take a restart" in log, log

        code, reply = smtp_send(postern, "app@unverified.test")
        refused = replies.NOT_PERMITTED  # the new policy
        assert code == refused.code and refused.enhanced.encode() in reply, (code, reply)
        config.write_text(moved.replace('sender = "verified"', 'sender = "any"'))
        postern.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: postern.stderr().count("SIGHUP: reloaded") == 2, 5)
        code, reply = smtp_send(postern, "app@unverified.test")
        assert code == 250, (code, reply)
        assert other.wait_for(1, timeout=10), postern.stderr()  # through the moved pool
        assert sink.messages == []

        # A file that does not load changes nothing, and the process carries on.
        config.write_text(moved + "\n[nonsense]\n")
        postern.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "configuration not reloaded" in postern.stderr(), 5)
        assert postern.proc.poll() is None and postern.healthy()
        code, _ = smtp_send(postern, "app@unverified.test")
        assert code == 250
        assert other.wait_for(2, timeout=10)

        status, _ = postern.stop(signal.SIGTERM)
        assert status == 0, postern.stderr()
        assert "Traceback" not in postern.stderr(), postern.stderr()
    finally:
        other.stop()


def _catches_sighup(pid: int) -> bool:
    """SIGHUP ignored or handled by the process (from /proc: its default would end it)."""
    with open(f"/proc/{pid}/status") as status:
        masks = dict(line.split(":\t", 1) for line in status.read().splitlines() if ":\t" in line)
    return any(int(masks.get(name, "0"), 16) & 1 for name in ("SigIgn", "SigCgt"))


def test_a_sighup_while_starting_does_not_end_the_process(
    sink: Sink, postern_process: MakePostern
) -> None:
    """`systemctl reload` right after a start (a schema upgrade can make it long): SIGHUP's
    default action would end the process before its handler was installed."""
    postern = postern_process(sink.port, start=False)
    postern.proc = spawn_serve(postern.config, postern.stderr_path)
    pid = postern.pid
    assert wait_until(lambda: postern.proc is not None and (
        postern.proc.poll() is not None or _catches_sighup(pid) or postern.healthy()
    ), timeout=30, interval=0.005)  # fmt: skip
    assert not postern.healthy(), "SIGHUP was left to its default until start-up had ended"
    deadline = time.monotonic() + 30
    while not postern.healthy() and time.monotonic() < deadline:
        assert postern.proc.poll() is None, postern.stderr()
        postern.proc.send_signal(signal.SIGHUP)
        time.sleep(0.05)
    assert postern.healthy() and postern.proc.poll() is None, postern.stderr()
    postern.proc.send_signal(signal.SIGHUP)  # once started: a reload, as ever
    assert wait_until(lambda: "SIGHUP: reloaded" in postern.stderr(), timeout=10)
