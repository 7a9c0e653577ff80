"""Idempotency keys: one message per (API key, idempotency key) within 24 hours.

The reservation is a row inserted in the same transaction that stores the message, with
`ON CONFLICT`: of two racing requests (on one node or several) exactly one inserts it, the
other finds the winner's message id and stores nothing. Losing never fails the shared
group-commit transaction, so a client hammering one key cannot slow anyone else down.
The first request's response is saved on the row once it is known, for replays.

The row also keeps a digest of the request (each door says what its canonical request is):
the same key with a different request is `KeyReused`, never the first answer, so a key
reused by mistake for another message is an error the client sees, as at Stripe or Resend.
Rows written without a digest (before it existed, or by a node not yet upgraded) match any
request.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import Connection, bindparam, delete, select, update

from storage.db import Database
from storage.dialects import dialect_module
from storage.errors import IdempotencyError
from storage.models import Idempotency
from storage.writer import Batch, Writer

I = Idempotency  # noqa: E741

TTL = 24 * 3600.0
ANONYMOUS = ""  # the scope of keys sent over SMTP without AUTH (trusted local clients)


_SAVE_RESPONSE = (
    update(I)
    .where(
        I.c.api_key_id == bindparam("scope"),
        I.c.key == bindparam("i_key"),
        I.c.message_id == bindparam("m_id"),
    )
    .values(response=bindparam("response"))
)


@cache
def _reserve_statement(dialect_name: str) -> Any:
    """INSERT the reservation, or take over an expired one; built once per dialect."""
    return (
        dialect_module(dialect_name)
        .insert(I)
        .values(
            api_key_id=bindparam("scope"),
            key=bindparam("i_key"),
            message_id=bindparam("m_id"),
            response=None,
            request_hash=bindparam("r_hash"),
            created_at=bindparam("now"),
        )
        .on_conflict_do_update(
            index_elements=["api_key_id", "key"],
            set_={
                "message_id": bindparam("m_id"),
                "response": None,
                "request_hash": bindparam("r_hash"),
                "created_at": bindparam("now"),
            },
            where=I.c.created_at <= bindparam("cutoff"),
        )
    )


class Duplicate(IdempotencyError):
    """The idempotency key was used already: the first message stands, nothing was stored."""

    def __init__(self, message_id: str, response: dict[str, Any] | None = None) -> None:
        super().__init__(message_id)
        self.message_id = message_id
        self.response = response  # {"status": int, "body": {...}}, once the first answered


class KeyReused(IdempotencyError):
    """The idempotency key was used already for a different request: nothing was stored."""

    def __init__(self, message_id: str) -> None:
        super().__init__(message_id)
        self.message_id = message_id  # the first request's message


@dataclass(frozen=True)
class Hit:
    message_id: str
    response: dict[str, Any] | None
    request_hash: str | None = None

    def refusal(self, request_hash: str | None) -> Duplicate | KeyReused:
        """What a request with this digest gets: the first answer, unless it differs."""
        if request_hash and self.request_hash and request_hash != self.request_hash:
            return KeyReused(self.message_id)
        return Duplicate(self.message_id, self.response)


def _hit(row: Any) -> Hit:
    response = json.loads(row.response) if row.response else None
    return Hit(row.message_id, response, row.request_hash)


_HOLDER = (I.c.message_id, I.c.response, I.c.request_hash)


def lookup(conn: Connection, scope: str, key: str, now: float) -> Hit | None:
    """The live reservation of `key`, if any."""
    row = conn.execute(
        select(*_HOLDER).where(I.c.api_key_id == scope, I.c.key == key, I.c.created_at > now - TTL)
    ).first()
    return None if row is None else _hit(row)


def reserve(
    conn: Connection,
    scope: str,
    key: str,
    message_id: str,
    now: float,
    request_hash: str | None = None,
) -> Hit | None:
    """Claim `key` for `message_id`; None when claimed, else the live reservation holding it.

    An expired reservation is taken over in place (the purge may not have run yet).
    """
    params = {
        "scope": scope,
        "i_key": key,
        "m_id": message_id,
        "r_hash": request_hash,
        "now": now,
        "cutoff": now - TTL,
    }
    statement = _reserve_statement(conn.dialect.name)
    if conn.execute(statement, params).rowcount:
        return None
    # The WHERE above failed, so the row is live: the reservation that holds it.
    holder = select(*_HOLDER).where(I.c.api_key_id == scope, I.c.key == key)
    return _hit(conn.execute(holder).one())


async def find(db: Database, scope: str, key: str) -> Hit | None:
    now = time.time()
    return await db.read(lambda conn: lookup(conn, scope, key, now))


async def save_response(
    writer: Writer, scope: str, key: str, message_id: str, status: int, body: dict[str, Any]
) -> None:
    """Keep the first request's answer on its reservation, for replays."""
    params = {
        "scope": scope,
        "i_key": key,
        "m_id": message_id,
        "response": json.dumps({"status": status, "body": body}),
    }
    await writer.submit(Batch([(_SAVE_RESPONSE, params)]))


async def purge_expired(db: Database) -> int:
    """Delete reservations older than TTL; returns how many went."""
    cutoff = time.time() - TTL
    return int(
        await db.transaction(
            lambda conn: conn.execute(delete(I).where(I.c.created_at <= cutoff)).rowcount
        )
    )
