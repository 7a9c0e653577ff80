"""Messages put straight into a storage Database and read back from it, on any backend:
a Submission to enqueue, a thousand rows written without the queue, one message's row."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection, insert, text

from gateway.message import Submission
from storage.db import Database
from storage.models import (
    Message,
    MessageBody,
    MessageMeta,
    MessageSubjectWord,
    MessageTag,
    Recipient,
)
from storage.search_keys import address_key, subject_words
from tests.support.service import SINK_POOL

CONTENT = b"From: app@example.com\r\nSubject: hello\r\n\r\nbody line\r\n"
M = Message
B = MessageBody
STATUSES = ("queued", "deferred", "delivered", "bounced")


def submission(*recipients: str, content: bytes = CONTENT) -> Submission:
    return Submission(
        mail_from="app@example.com",
        recipients=recipients or ("alice@example.com", "bob@example.com"),
        content=content,
        source="http",
    )


async def fetch(db: Database, sql: str, **params: Any) -> list[Any]:
    return await db.read(lambda conn: list(conn.execute(text(sql), params)))


async def message_row(db: Database, message_id: str) -> Any:
    found = await fetch(db, "SELECT * FROM message WHERE id = :id", id=message_id)
    assert len(found) == 1, f"message {message_id}: {len(found)} rows"
    return found[0]


async def seed(db: Database, n: int, owners: list[str]) -> list[dict[str, Any]]:
    """n messages written straight to storage (no delivery touches them: the active ones
    are due in an hour). Message i: status STATUSES[i % 4], sender s{i % 5}, recipient
    r{i % 10}, tag t{i % 10}, Message-ID <m{i % 7}@app.test>, owner owners[i % len(owners)],
    pool `sink` when i is odd, Subject "Order {i % 9} shipped" (its words indexed), client
    198.51.100.{i % 6}."""
    now = time.time()
    messages, recipients, meta, tags, words = [], [], [], [], []
    for i in range(n):
        message_id = f"msg_seed{i:05d}"
        status = STATUSES[i % 4]
        active = status in ("queued", "deferred")
        created = float(int(now) - 10_000 + i // 2)  # pairs tie: the cursor orders by id
        messages.append(
            {"id": message_id, "status": status, "source": "http",
             "mail_from": f"s{i % 5}@sender.test", "last_pool": SINK_POOL if i % 2 else "other",
             "attempts": 0 if status == "queued" else 1, "size": 10, "created_at": created,
             "updated_at": created, "due_at": now + 3600 if active else None,
             "api_key_id": owners[i % len(owners)], "header_message_id": f"<m{i % 7}@app.test>",
             "client_address": address_key(f"198.51.100.{i % 6}")}
        )  # fmt: skip
        words += [
            {"message_id": message_id, "word": word, "message_created_at": created}
            for word in subject_words(f"Order {i % 9} shipped")
        ]
        recipients.append(
            {"message_id": message_id, "email": f"r{i % 10}@example.test",
             "status": "pending" if active else status, "updated_at": created,
             "message_created_at": created}
        )  # fmt: skip
        meta.append(
            {"message_id": message_id, "api_key_id": owners[i % len(owners)], "provider": "smtp",
             "tags": f'["t{i % 10}"]', "metadata_json": "{}"}
        )  # fmt: skip
        tags.append({"message_id": message_id, "tag": f"t{i % 10}"})

    def fill(conn: Connection) -> None:
        conn.execute(insert(M), messages)
        conn.execute(insert(B), [{"message_id": m["id"], "data": b"x"} for m in messages])
        conn.execute(insert(Recipient), recipients)
        conn.execute(insert(MessageMeta), meta)
        conn.execute(insert(MessageTag), tags)
        conn.execute(insert(MessageSubjectWord), words)

    await db.transaction(fill)
    return messages
