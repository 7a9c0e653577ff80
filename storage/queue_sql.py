"""The SQL of gateway.queue.store's state changes and reads, named here.

Statements are built once (compiled statements are cached). Parameter names are shared:
`m_id` the message, `node` the claiming node, `now` the time of the change. The functions
below run the statements whose shape depends on their arguments. gateway.queue.store
decides what to write; this module only says how.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    Float,
    LargeBinary,
    Row,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    null,
    select,
    text,
    update,
)
from sqlalchemy.exc import OperationalError

from storage import pieces
from storage.models import (
    HELD_DUE,
    Event,
    Message,
    MessageBody,
    MessagePiece,
    MessageSubjectWord,
    MessageTag,
    Recipient,
)

M = Message
B = MessageBody
P = MessagePiece
R = Recipient
T = MessageTag
W = MessageSubjectWord
E = Event

# --- a new message: its row, body, recipients and tags, in one transaction ---------------

INSERT_MESSAGE = insert(M)
INSERT_BODY = insert(B)
INSERT_RECIPIENT = insert(R)
INSERT_TAG = insert(T)
INSERT_SUBJECT_WORD = insert(W)

# --- an attempt's results ----------------------------------------------------------------

# The message `m_id`, while `node` holds its claim. The claim is compared through
# coalesce(claimed_by, NULL), equal to it (a NULL claim still matches no node), which no
# index serves: beside `id = :m_id`, PostgreSQL's generic plan for the prepared statement
# took ix_message_claimed whenever the statistics had seen few claims (partial, it then
# looks empty) and read every message the node held to update one (under 80 clients, 31
# index entries an attempt's record: pg_stat_user_indexes, EXPLAIN).
CLAIM_HELD = and_(
    M.c.id == bindparam("m_id"), func.coalesce(M.c.claimed_by, null()) == bindparam("node")
)

# One recipient's result (`m_email`): its status, the reply, one more attempt.
UPDATE_RECIPIENT = (
    update(R)
    .where(R.c.message_id == bindparam("m_id"), R.c.email == bindparam("m_email"))
    .values(
        status=bindparam("status"),
        attempts=R.c.attempts + 1,
        code=bindparam("code"),
        response=bindparam("response"),
        updated_at=bindparam("now"),
    )
)
# The message after an attempt, only while `node` holds its claim: its status, when it is
# due again (`due`, NULL once final), the pool and reply; the claim is let go.
UPDATE_MESSAGE = (
    update(M)
    .where(CLAIM_HELD)
    .values(
        status=bindparam("status"),
        attempts=M.c.attempts + 1,
        forced_attempts=M.c.forced_attempts + bindparam("forced"),
        retried_at=None,
        due_at=bindparam("due"),
        claimed_by=None,
        last_pool=bindparam("pool"),
        last_response=bindparam("response"),
        updated_at=bindparam("now"),
    )
)

# An attempt's rows are written only if its message update went through (this node still
# held the claim). That update runs first in the shared transaction and stamps the message
# with the attempt's time and number; the statements below test for that stamp in SQL, so
# that every attempt of a group commit shares one executemany per statement.
RECORDED = (
    select(1)
    .where(
        M.c.id == bindparam("m_id"),
        M.c.updated_at == bindparam("stamp_at"),
        M.c.attempts == bindparam("stamp_attempt"),
    )
    .exists()
)
# Only a recipient still pending takes the attempt's result: one a report bounced while the
# attempt ran (gateway.bounces.effects) stays bounced, the first final state being the one
# that counts (and the one its sender was told of).
RECORD_RECIPIENT = UPDATE_RECIPIENT.where(RECORDED, R.c.status == "pending")
# After RECORD_RECIPIENT, in the same transaction: a message the attempt left `delivered` or
# `deferred` that has a bounced recipient and none pending (a report bounced one while the
# attempt ran, so the attempt's own result for it was not taken) is bounced, final, as its
# next attempt would settle it. It matches nothing otherwise. Such a report locked the
# message's row first, so on PostgreSQL it committed before UPDATE_MESSAGE went on.
_OF_MESSAGE = R.c.message_id == bindparam("m_id")
_BOUNCED_ONE = select(R.c.id).where(_OF_MESSAGE, R.c.status == "bounced").exists()
_PENDING_ONE = select(R.c.id).where(_OF_MESSAGE, R.c.status == "pending").exists()
# Why it bounced, for the dashboard: the reply of its latest bounced recipient (the
# report's), not the attempt's "250 ...".
_BOUNCE_RESPONSE = (
    select(R.c.response)
    .where(_OF_MESSAGE, R.c.status == "bounced")
    .order_by(R.c.updated_at.desc(), R.c.id.desc())
    .limit(1)
    .scalar_subquery()
)
SETTLE_TAKEN = (
    update(M)
    .where(
        M.c.id == bindparam("m_id"),
        M.c.updated_at == bindparam("stamp_at"),
        M.c.attempts == bindparam("stamp_attempt"),
        M.c.status != "bounced",  # delivered, or deferred
        _BOUNCED_ONE,
        ~_PENDING_ONE,
    )
    .values(
        status="bounced",
        due_at=None,
        last_response=func.coalesce(_BOUNCE_RESPONSE, M.c.last_response),
    )
)
# A claimed message with no pending recipient (a report bounced the last one while a lapsed
# claim still named it), settled without an upstream: no attempt is counted, the last pool
# stays, and the last response becomes the bounce's (as SETTLE_TAKEN's), only while `node`
# holds the claim.
SETTLE_CLAIMED = (
    update(M)
    .where(CLAIM_HELD)
    .values(
        status=bindparam("status"),
        retried_at=None,
        due_at=bindparam("due"),
        claimed_by=None,
        last_response=func.coalesce(_BOUNCE_RESPONSE, M.c.last_response),
        updated_at=bindparam("now"),
    )
)
# Every column but those the database fills in (the id, the transaction's id).
_EVENT_COLUMNS = [c for c in E.columns if not c.primary_key and c.server_default is None]
_EVENT_NAMES = [column.name for column in _EVENT_COLUMNS]
_EVENT_VALUES = {c.name: bindparam(c.name, type_=c.type) for c in _EVENT_COLUMNS}
RECORD_EVENT = insert(E).from_select(_EVENT_NAMES, select(*_EVENT_VALUES.values()).where(RECORDED))
# An attempt's event about one recipient (`recipient`), written only if this attempt wrote
# that recipient's row (RECORD_RECIPIENT stamps it with the attempt's time): one a report
# bounced while the attempt ran keeps the report's event as its last, and is counted once
# (webhooks, event_minute). Its message_status is read from the message row as the record
# left it, so it runs after SETTLE_TAKEN: "bounced" when that settled it.
_STAMPED_RECIPIENT = (
    select(1)
    .where(
        _OF_MESSAGE,
        R.c.email == _EVENT_VALUES["recipient"],
        R.c.updated_at == bindparam("stamp_at"),
    )
    .exists()
)
RECORD_RESULT_EVENT = insert(E).from_select(
    _EVENT_NAMES,
    select(
        *(M.c.status if name == "message_status" else v for name, v in _EVENT_VALUES.items())
    ).where(M.c.id == bindparam("m_id"), _STAMPED_RECIPIENT),
)

# --- the claims of one node (`node`) -----------------------------------------------------

# Push the lease of every message it holds to `until`.
RENEW = (
    update(M)
    .where(M.c.claimed_by == bindparam("node"), M.c.due_at.is_not(None))
    .values(due_at=bindparam("until"))
)
# Let go of everything it holds, due at `now` (shutdown, start-up).
RELEASE = (
    update(M)
    .where(M.c.claimed_by == bindparam("node"), M.c.due_at.is_not(None))
    .values(claimed_by=None, due_at=bindparam("now"))
)
# Let go of one message it holds, due at `due`.
RELEASE_ONE = update(M).where(CLAIM_HELD).values(claimed_by=None, due_at=bindparam("due"))
# Let go of one message it holds that must wait until `due` (`why`) with no attempt counted.
POSTPONE = (
    update(M)
    .where(CLAIM_HELD)
    .values(
        status="deferred",
        claimed_by=None,
        due_at=bindparam("due"),
        last_response=bindparam("why"),
        updated_at=bindparam("now"),
    )
)

# What a claim reads of each message (its recipients and body come next).
CLAIMED = (
    M.c.id, M.c.mail_from, M.c.attempts, M.c.created_at, M.c.ip_pool, M.c.pool_id,
    M.c.retried_at, M.c.forced_attempts, M.c.last_response, M.c.updated_at, M.c.route_default,
    M.c.held_for, M.c.scheduled_at, M.c.source,
)  # fmt: skip


def _row_locks(conn: Connection) -> bool:
    """PostgreSQL locks rows (and can skip those locked); SQLite has one writer."""
    return conn.dialect.name != "sqlite"


def claim_due(conn: Connection, node: str, now: float, until: float, limit: int) -> list[Row[Any]]:
    """Claim for `node` up to `limit` messages due at `now`, oldest due first, leased until
    `until`; returns their CLAIMED columns. Rows another node is claiming are skipped, not
    waited for. A held message is never claimed: its due_at is HELD_DUE (past any `now`),
    and its status is tested too, so that no clock or hand-edited row can deliver it."""
    due = (
        select(M.c.id)
        .where(M.c.due_at <= now, M.c.status != "held")
        .order_by(M.c.due_at)
        .limit(limit)
    )
    if _row_locks(conn):
        due = due.with_for_update(skip_locked=True)
    claimed = conn.execute(
        update(M)
        .where(M.c.id.in_(due.scalar_subquery()))
        .values(claimed_by=node, due_at=until)
        .returning(*CLAIMED)
    )
    return list(claimed.all())


def recipients_of(conn: Connection, ids: Sequence[str]) -> list[Any]:
    """(message_id, email, status) of every recipient of these messages, in stored order."""
    query = select(R.c.message_id, R.c.email, R.c.status).where(R.c.message_id.in_(ids))
    return list(conn.execute(query.order_by(R.c.id)))


def still_pending(conn: Connection, message_id: str, emails: Sequence[str]) -> set[str]:
    """Those of `emails` that are still pending recipients of the message. Read after the
    record's UPDATE_MESSAGE holds the message's row, which a report bouncing a recipient
    locks first (storage.bounce_reports.lock_message): such a report has committed by then."""
    query = select(R.c.email).where(
        R.c.message_id == message_id, R.c.email.in_(list(emails)), R.c.status == "pending"
    )
    return {row.email for row in conn.execute(query)}


def status_of(conn: Connection, message_id: str) -> str | None:
    """The message's stored status (None: no such message)."""
    status = conn.execute(select(M.c.status).where(M.c.id == message_id)).scalar()
    return None if status is None else str(status)


LARGE_BODY = 1 << 20  # bytes of a body that SQLite gives through its blob I/O


def bodies_of(conn: Connection, ids: Sequence[str]) -> dict[str, bytes]:
    """The stored bodies of these messages, by message id: none for a message whose body is
    gone (body_retention), or cannot be read whole (storage.pieces.joined: never a shorter
    one). A body stored in pieces (its message_body row is empty) is read joined, in the
    same snapshot as the rows that name it."""
    if conn.dialect.name == "sqlite":
        return _sqlite_bodies(conn, ids)
    # One statement, one snapshot (PostgreSQL's reads are READ COMMITTED): each body, and
    # for an empty one its pieces, never a body row of one moment and pieces of the next.
    piece = P.c.data.label("piece")
    rows = conn.execute(
        select(B.c.message_id, B.c.data, P.c.seq, piece, M.c.size)
        .select_from(
            B.outerjoin(
                P, (P.c.message_id == B.c.message_id) & (func.length(B.c.data) == 0)
            ).outerjoin(M, M.c.id == B.c.message_id)
        )
        .where(B.c.message_id.in_(ids))
        .order_by(B.c.message_id, P.c.seq)
    )
    bodies: dict[str, bytes] = {}
    parts: pieces.Parts = {}
    sizes: dict[str, int | None] = {}
    for row in rows:
        if row.data:  # a whole body
            bodies[row.message_id] = row.data
            continue
        found = parts.setdefault(row.message_id, [])  # an empty row: the pieces, if any
        sizes[row.message_id] = row.size
        if row.seq is not None:
            found.append((row.seq, bytes(row.piece)))
    bodies.update(pieces.whole_bodies(parts, sizes))
    return bodies


def _sqlite_bodies(conn: Connection, ids: Sequence[str]) -> dict[str, bytes]:
    """pysqlite copies a selected BLOB into a bytes object holding the GIL: 40-90 ms of
    every other thread's time (the event loop's) for 20 MB, measured. Its blob I/O reads
    with the GIL let go: a large body is read that way, in one read.

    All in one read transaction (pysqlite begins none for a SELECT): the rowids found first
    name the same bodies when the blobs are opened. A blob that cannot be read is the
    database failing (OperationalError, as SQLAlchemy raises it), never a body taken as
    empty: delivery would send the message without it."""
    driver = conn.connection.driver_connection
    assert driver is not None  # a checked-out connection
    if not driver.in_transaction:
        driver.execute("BEGIN")  # ended by the rollback as the connection goes back
    sizes = select(B.c.message_id, text("message_body.rowid"), func.length(B.c.data))
    found = conn.execute(sizes.where(B.c.message_id.in_(ids))).all()
    small = [message_id for message_id, _, size in found if 0 < size < LARGE_BODY]
    bodies: dict[str, bytes] = {}
    if small:
        rows = conn.execute(select(B.c.message_id, B.c.data).where(B.c.message_id.in_(small)))
        bodies.update((row.message_id, row.data) for row in rows)
    empty = [message_id for message_id, _, size in found if size == 0]
    bodies.update(pieces.read_sqlite(conn, driver, empty))  # stored in pieces (or empty)
    for message_id, rowid, size in found:
        if size >= LARGE_BODY:
            try:
                with driver.blobopen(B.name, "data", rowid, readonly=True) as blob:
                    bodies[message_id] = blob.read()
            except sqlite3.Error as error:
                raise OperationalError("blob read of message_body", None, error) from error
    return bodies


def body_prefix(conn: Connection, message_id: str, length: int) -> bytes | None:
    """The first `length` bytes of a message's stored body (None: no body is kept), read
    without loading the rest: a late DSN needs the header of a body of up to 20 MB. (An
    empty body row is a body in pieces, or an empty body: its pieces tell; None when it has
    none, as for a body gone: an empty body has no header to quote either.)"""
    head = func.substr(B.c.data, 1, length, type_=LargeBinary)  # BLOB and BYTEA alike
    query = select(func.length(B.c.data), head).where(B.c.message_id == message_id)
    row = conn.execute(query).first()
    if row is None:
        return None
    size, data = row  # (SQLite's substr of an empty BLOB is NULL)
    if size == 0:
        return pieces.prefix(conn, message_id, length)
    return bytes(data)


def body_prefixes(conn: Connection, ids: Sequence[str], length: int) -> dict[str, bytes]:
    """`body_prefix` of each of these messages, those whose body is kept."""
    found = ((message_id, body_prefix(conn, message_id, length)) for message_id in ids)
    return {message_id: head for message_id, head in found if head is not None}


def wake_waiting(conn: Connection, prefix: str, now: float) -> int:
    """Make due at `now` the unclaimed deferred messages waiting for a later time whose
    last_response begins with `prefix`; returns how many."""
    waiting = update(M).where(
        M.c.due_at > now,
        M.c.claimed_by.is_(None),
        M.c.status == "deferred",
        M.c.last_response.startswith(prefix, autoescape=True),
    )
    return int(conn.execute(waiting.values(due_at=now)).rowcount)


# --- operator actions -------------------------------------------------------------------


def _free(now: float) -> Any:
    """No worker holds the message, or its holder's lease has lapsed."""
    return M.c.claimed_by.is_(None) | (M.c.due_at <= now)


def retry_now(conn: Connection, ids: Sequence[str], now: float) -> list[str]:
    """Make these messages due at `now`, stamped `retried_at`: those with work left that no
    worker holds, and not on hold (a retry never releases: `postqueue -f` leaves held mail
    held). Returns their ids."""
    rows = conn.execute(
        update(M)
        .where(M.c.id.in_(list(ids)), M.c.due_at.is_not(None), M.c.status != "held", _free(now))
        .values(due_at=now, claimed_by=None, retried_at=now)
        .returning(M.c.id)
    )
    return [row.id for row in rows]


def active_of(conn: Connection, ids: Sequence[str]) -> list[Row[Any]]:
    """(id, claimed_by, due_at, status, attempts) of those of these messages with work left,
    locked for the
    transaction. On PostgreSQL rows another transaction holds are skipped, never waited for
    (a node recording or renewing its delivery locks the same rows in its own order:
    waiting could deadlock)."""
    active = select(M.c.id, M.c.claimed_by, M.c.due_at, M.c.status, M.c.attempts).where(
        M.c.id.in_(ids), M.c.due_at.is_not(None)
    )
    if _row_locks(conn):
        active = active.with_for_update(skip_locked=True)
    return list(conn.execute(active))


def with_work_left(
    conn: Connection, ids: Sequence[str], statuses: Sequence[str] | None = None
) -> set[str]:
    """Those of these messages with work left (in one of `statuses`, when given), read
    without a lock (locked ones included)."""
    still = select(M.c.id).where(M.c.id.in_(ids), M.c.due_at.is_not(None))
    if statuses is not None:
        still = still.where(M.c.status.in_(list(statuses)))
    return {row.id for row in conn.execute(still)}


def pending_of(conn: Connection, ids: Sequence[str]) -> list[Any]:
    """(message_id, email) of the pending recipients of these messages, in stored order."""
    query = select(R.c.message_id, R.c.email).where(
        R.c.message_id.in_(ids), R.c.status == "pending"
    )
    return list(conn.execute(query.order_by(R.c.id)))


def mark_cancelled(conn: Connection, ids: Sequence[str], now: float, why: str) -> None:
    """These messages and their pending recipients become `cancelled`, never due again."""
    conn.execute(
        update(M)
        .where(M.c.id.in_(ids))
        .values(status="cancelled", due_at=None, claimed_by=None, last_response=why, updated_at=now)
    )
    conn.execute(
        update(R)
        .where(R.c.message_id.in_(ids), R.c.status == "pending")
        .values(status="cancelled", response=why, updated_at=now)
    )


def mark_held(conn: Connection, ids: Sequence[str], now: float) -> None:
    """Put these messages on hold: status `held`, due at HELD_DUE (never claimed), the time
    they were held in `held_at`."""
    conn.execute(
        update(M)
        .where(M.c.id.in_(ids))
        .values(status="held", due_at=HELD_DUE, claimed_by=None, held_at=now, updated_at=now)
    )


def mark_released(conn: Connection, ids: Sequence[str], now: float) -> None:
    """Release these held messages: due at `now` (a scheduled send never tried: at its
    time, if that is still to come), `deferred` when tried before, else `queued`; the time
    they spent held after their scheduled time is added to `held_for` (max_age leaves it
    out; max_age counts from the scheduled time anyway)."""
    at_now = literal(now, Float)
    scheduled = func.coalesce(M.c.scheduled_at, literal(0.0, Float))
    held_since = func.coalesce(M.c.held_at, at_now)
    counted_from = case((held_since > scheduled, held_since), else_=scheduled)
    conn.execute(
        update(M)
        .where(M.c.id.in_(ids), M.c.status == "held")
        .values(
            status=case((M.c.attempts > 0, "deferred"), else_="queued"),
            due_at=case(((M.c.attempts == 0) & (scheduled > at_now), scheduled), else_=at_now),
            claimed_by=None,
            held_for=M.c.held_for
            + case((at_now > counted_from, at_now - counted_from), else_=literal(0.0, Float)),
            held_at=None,
            updated_at=now,
        )
    )


def delete_bodies(conn: Connection, ids: Sequence[str]) -> None:
    """Delete these messages' bodies; pieces of theirs are then orphans, for
    storage.pieces.purge_orphans to delete a few at a time."""
    conn.execute(delete(B).where(B.c.message_id.in_(ids)))


# --- reads ------------------------------------------------------------------------------

# Messages with work left, by status (reads only the due index).
COUNT_ACTIVE = select(M.c.status, func.count()).where(M.c.due_at.is_not(None)).group_by(M.c.status)
PING = text("SELECT 1")
