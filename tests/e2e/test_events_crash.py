"""kill -9 during delivery: after the restarts, events and message states still agree.

Events are written in the transaction of the change they describe (SPEC "Events"), so a
crash at any moment leaves either both or neither: every message has exactly one `queued`
event per recipient, exactly one final event per recipient once it is final, and its last
event names its current status.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import time
from collections import defaultdict
from pathlib import Path

import pytest

from tests.support.serve import MakePostern, seqs_received, wait_until
from tests.support.sink import Sink

pytestmark = pytest.mark.timeout(120)

ROUNDS = 3
PER_ROUND = 30
FINAL = {"delivered", "bounced", "expired", "suppressed", "sandbox", "cancelled"}


def check_consistent(database: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        messages = {row["id"]: row for row in conn.execute("SELECT * FROM message")}
        recipients = defaultdict(dict)
        for row in conn.execute("SELECT * FROM recipient"):
            recipients[row["message_id"]][row["email"]] = row["status"]
        events = defaultdict(list)
        for row in conn.execute("SELECT * FROM event ORDER BY id"):
            events[row["message_id"]].append(row)
    finally:
        conn.close()
    assert set(events) == set(messages), "an event without its message or the reverse"
    for message_id, row in messages.items():
        mine = events[message_id]
        assert mine[-1]["message_status"] == row["status"], message_id
        for email, status in recipients[message_id].items():
            theirs = [e["type"] for e in mine if e["recipient"] == email]
            assert theirs.count("queued") == 1, (message_id, email, theirs)
            finals = [t for t in theirs if t in FINAL]
            assert len(finals) == (0 if status == "pending" else 1), (message_id, theirs)
        attempts = {e["attempt"] for e in mine if e["attempt"]}
        assert attempts == set(range(1, row["attempts"] + 1)), message_id
    return {"messages": len(messages), "events": sum(len(v) for v in events.values())}


def test_kill9_during_delivery_keeps_events_and_states_in_step(
    sink: Sink, postern_process: MakePostern
) -> None:
    rng = random.Random(9)
    sink.hang("eom", seconds=0.05)  # keep deliveries in flight when the kill comes
    postern = postern_process(sink.port)
    for round_ in range(ROUNDS):
        for seq in rng.sample(range(PER_ROUND), 5):
            sink.fail("rcpt", "451 4.3.0 busy", times=1, match=f"rcpt{seq}@example.org")
        postern.send(PER_ROUND, f"r{round_}")
        time.sleep(rng.uniform(0.0, 0.4))
        postern.kill()
        postern.close_client()
        postern.start()
    sink.clear()
    expected = ROUNDS * PER_ROUND
    delivered = wait_until(
        lambda: sum(len(set(seqs_received(sink, f"r{r}"))) for r in range(ROUNDS)) >= expected,
        60.0,
    )
    time.sleep(1.5)  # let the last results be recorded
    status, _ = postern.stop(signal.SIGTERM)
    assert status == 0, postern.stderr()
    assert delivered, f"not everything arrived:\n{postern.stderr()}"
    counts = check_consistent(postern.config.parent / "var" / "postern.db")
    print(f"\n[e2e] events after {ROUNDS} kills: {counts}")
    assert counts["messages"] == expected
