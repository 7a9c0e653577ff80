"""Queue search: messages matching a filter, newest first, a page at a time.

Every filter starts from an index (status, from, pool, API key, the client's Message-ID,
the client's address, created_at, or the recipient, tag and subject word side tables), so
a search never scans `message` whole, however large the queue.
Pages are keyset-paginated on (created_at, id): a cursor names the last row seen, so pages
stay stable while mail keeps arriving and a deep page costs what the first one does.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection, Select, and_, exists, func, or_, select, tuple_

from storage.db import Database
from storage.errors import InvalidInput
from storage.mailboxes import normalise
from storage.messages import next_attempt_at
from storage.models import (
    Message,
    MessageMeta,
    MessageSubjectWord,
    MessageTag,
    Pool,
    Recipient,
)
from storage.search_keys import address_of

M = Message
META = MessageMeta
R = Recipient
P = Pool
T = MessageTag
W = MessageSubjectWord

STATUSES = ("queued", "deferred", "held", "delivered", "bounced", "sandbox", "cancelled")
ACTIVE = ("queued", "deferred", "held")  # with work left (held: until released)
MAX_LIMIT = 100
PROBE = 1000  # index entries counted per subject word to tell the rarest (rarest_first)
CHUNK = 500  # ids per transaction in the bulk operations

Key = tuple[float, str]  # (created_at, id): a position in newest-first order


class InvalidCursor(InvalidInput, ValueError):
    """The cursor was not one this module made."""


@dataclass(frozen=True)
class MessageFilter:
    """What to look for; every criterion given must match. `api_key_id` and `user_id` are
    not criteria but restrictions: a key other than an admin's sees only the mail it sent,
    a member only their own (api.routes.messages says who is restricted how)."""

    statuses: tuple[str, ...] = ()
    pool: str | None = None
    recipient: str | None = None
    mail_from: str | None = None
    tag: str | None = None
    message_id_header: str | None = None  # normalised `<...>` (gateway.headers)
    # Words the Subject must all have (storage.search_keys.subject_words); the first is
    # the one read from its index (rarest_first puts the rarest there).
    subject: tuple[str, ...] = ()
    # The client's address: the first and last key (storage.search_keys.address_range) of
    # one address (both the same) or of a CIDR block.
    client: tuple[str, str] | None = None
    since: float | None = None  # created_at >= since
    until: float | None = None  # created_at < until
    api_key_id: str | None = None
    user_id: str | None = None

    def is_empty(self) -> bool:
        """True when no criterion narrows the search (the restriction does not count)."""
        return not (
            self.statuses
            or self.pool is not None
            or self.recipient is not None
            or self.mail_from is not None
            or self.tag is not None
            or self.message_id_header is not None
            or bool(self.subject)
            or self.client is not None
            or self.since is not None
            or self.until is not None
        )


@dataclass(frozen=True)
class MessageSummary:
    id: str
    status: str
    mail_from: str
    recipients: list[str]
    pool: str | None
    attempts: int
    tags: list[str]
    created_at: float
    updated_at: float
    next_attempt_at: float | None
    last_response: str | None
    client_address: str | None = None  # the submitting client's IP (None: not recorded)


def encode_cursor(key: Key) -> str:
    raw = json.dumps([key[0], key[1]], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> Key:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, message_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError) as error:
        raise InvalidCursor("invalid cursor") from error
    if not isinstance(created_at, int | float) or isinstance(created_at, bool):
        raise InvalidCursor("invalid cursor")
    if not isinstance(message_id, str) or len(message_id) > 64:
        raise InvalidCursor("invalid cursor")
    return float(created_at), message_id


def criteria(flt: MessageFilter, statuses: Sequence[str] | None = None) -> list[Any]:
    """The WHERE clauses of `flt` (`statuses`, when given, replaces its statuses)."""
    wanted = flt.statuses if statuses is None else tuple(statuses)
    clauses: list[Any] = []
    if wanted:
        clauses.append(M.c.status == wanted[0] if len(wanted) == 1 else M.c.status.in_(wanted))
    if flt.pool is not None:
        at_intake = select(P.c.id).where(P.c.name == flt.pool)
        clauses.append(
            or_(
                M.c.last_pool == flt.pool,
                and_(M.c.last_pool.is_(None), M.c.pool_id.in_(at_intake)),
            )
        )
    if flt.recipient is not None:
        spellings = sorted({flt.recipient, normalise(flt.recipient)})
        clauses.append(M.c.id.in_(select(R.c.message_id).where(R.c.email.in_(spellings))))
    if flt.mail_from is not None:
        clauses.append(M.c.mail_from == flt.mail_from)
    if flt.tag is not None:
        clauses.append(M.c.id.in_(select(T.c.message_id).where(T.c.tag == flt.tag)))
    if flt.message_id_header is not None:  # ix_message_header_id
        clauses.append(M.c.header_message_id == flt.message_id_header)
    if flt.subject:
        # The first word drives (its entries, an IN the planners read from the index);
        # the others are looked up by primary key, message by message.
        first = select(W.c.message_id).where(W.c.word == flt.subject[0])
        clauses += [M.c.id.in_(first), *subject_has(flt.subject[1:])]
    if flt.client is not None:  # ix_message_client: one address, or a block as a range
        clauses.append(from_client(flt.client))
    if flt.since is not None:
        clauses.append(M.c.created_at >= flt.since)
    if flt.until is not None:
        clauses.append(M.c.created_at < flt.until)
    if flt.api_key_id is not None:
        # On `message` itself (ix_message_sent_by_key), so that a page is read from the
        # index in order rather than by sorting every message the key ever sent.
        clauses.append(M.c.api_key_id == flt.api_key_id)
    if flt.user_id is not None:  # ix_message_sent_by_user, for the same reason
        clauses.append(M.c.user_id == flt.user_id)
    return clauses


def subject_has(words: Sequence[str]) -> list[Any]:
    """Each word of `words` is in the Subject of the message (a primary key lookup each;
    also what storage.event_stream checks an event's message with)."""
    other = W.alias("other_word")  # not the W a page by subject reads from
    return [exists().where(other.c.message_id == M.c.id, other.c.word == word) for word in words]


def from_client(block: tuple[str, str]) -> Any:
    """The message came from the address or block whose first and last key are `block`
    (storage.search_keys.address_range): one value of ix_message_client, or one range."""
    low, high = block
    return M.c.client_address == low if low == high else M.c.client_address.between(low, high)


def _page(query: Select[Any], after: Key | None, limit: int) -> Select[Any]:
    if after is not None:
        query = query.where(tuple_(M.c.created_at, M.c.id) < tuple_(after[0], after[1]))
    return query.order_by(M.c.created_at.desc(), M.c.id.desc()).limit(limit)


def search_query(flt: MessageFilter, after: Key | None, limit: int) -> Select[Any]:
    """One page of summaries plus one row (to tell whether another page follows). Each row
    carries `sort_at`, the time the page is ordered by, whose last value the next page's
    cursor takes (a side table's copy of the time, read in order from its index, may
    differ from the message's: a row an older node wrote during an upgrade holds 0)."""
    columns = (M, META.c.tags, P.c.name.label("pool_name"))
    spellings = {flt.recipient, normalise(flt.recipient)} if flt.recipient else set()
    if len(spellings) == 1:
        return _by_recipient(columns, flt, spellings.pop(), after, limit + 1)
    if flt.subject:
        return _by_subject(columns, flt, after, limit + 1)
    query = (
        select(*columns, M.c.created_at.label("sort_at"))
        .select_from(
            M.outerjoin(META, META.c.message_id == M.c.id).outerjoin(P, P.c.id == M.c.pool_id)
        )
        .where(*criteria(flt))
    )
    return _page(query, after, limit + 1)


def _by_recipient(
    columns: tuple[Any, ...], flt: MessageFilter, email: str, after: Key | None, limit: int
) -> Select[Any]:
    """A page of the mail to one address (spelt as stored), read in time order from
    ix_recipient_email_time: as many index entries as the page needs (and those the other
    criteria pass over), not every message the address ever got. (A message lists an
    address once, so it appears once.)"""
    others = criteria(replace(flt, recipient=None))
    query = (
        select(*columns, R.c.message_created_at.label("sort_at"))
        .select_from(
            R.join(M, M.c.id == R.c.message_id)
            .outerjoin(META, META.c.message_id == M.c.id)
            .outerjoin(P, P.c.id == M.c.pool_id)
        )
        .where(R.c.email == email, *others)
    )
    if after is not None:
        query = query.where(
            tuple_(R.c.message_created_at, R.c.message_id) < tuple_(after[0], after[1])
        )
    order = (R.c.message_created_at.desc(), R.c.message_id.desc())
    return query.order_by(*order).limit(limit)


def _by_subject(
    columns: tuple[Any, ...], flt: MessageFilter, after: Key | None, limit: int
) -> Select[Any]:
    """A page of the messages whose Subject has every word, read in time order from
    ix_subject_word_time for the first word (as many entries as the page needs and those
    the other criteria pass over), the other words checked by primary key. (A message
    lists a word once, so it appears once.)"""
    others = criteria(replace(flt, subject=()))
    query = (
        select(*columns, W.c.message_created_at.label("sort_at"))
        .select_from(
            W.join(M, M.c.id == W.c.message_id)
            .outerjoin(META, META.c.message_id == M.c.id)
            .outerjoin(P, P.c.id == M.c.pool_id)
        )
        .where(W.c.word == flt.subject[0], *subject_has(flt.subject[1:]), *others)
    )
    if after is not None:
        query = query.where(
            tuple_(W.c.message_created_at, W.c.message_id) < tuple_(after[0], after[1])
        )
    order = (W.c.message_created_at.desc(), W.c.message_id.desc())
    return query.order_by(*order).limit(limit)


def _summaries(conn: Connection, rows: Sequence[Any], now: float) -> list[MessageSummary]:
    recipients: dict[str, list[str]] = {row.id: [] for row in rows}
    if rows:
        found = conn.execute(
            select(R.c.message_id, R.c.email)
            .where(R.c.message_id.in_(list(recipients)))
            .order_by(R.c.id)
        )
        for message_id, email in found:
            recipients[message_id].append(email)
    return [
        MessageSummary(
            id=row.id,
            status=row.status,
            mail_from=row.mail_from,
            recipients=recipients[row.id],
            pool=row.last_pool or row.pool_name,
            attempts=row.attempts,
            tags=json.loads(row.tags) if row.tags else [],
            created_at=row.created_at,
            updated_at=row.updated_at,
            next_attempt_at=next_attempt_at(row.due_at, row.claimed_by, now),
            last_response=row.last_response,
            client_address=address_of(row.client_address) if row.client_address else None,
        )
        for row in rows
    ]


async def rarest_first(db: Database, flt: MessageFilter) -> MessageFilter:
    """`flt` with its subject words rarest first, so that the search reads the index of the
    one with the fewest messages and checks the others (a common word such as `receipt`
    beside an order number would otherwise be read through). Each word's entries are
    counted up to PROBE: at most that many index entries a word, one short read."""
    if len(flt.subject) < 2:
        return flt

    def probe(conn: Connection) -> list[int]:
        counts = []
        for word in flt.subject:
            some = select(W.c.message_id).where(W.c.word == word).limit(PROBE).subquery()
            counts.append(int(conn.execute(select(func.count()).select_from(some)).scalar_one()))
        return counts

    counts = await db.read(probe)
    order = sorted(range(len(counts)), key=counts.__getitem__)  # ties: as given (longest)
    return replace(flt, subject=tuple(flt.subject[i] for i in order))


async def search(
    db: Database, flt: MessageFilter, limit: int = 50, cursor: str | None = None
) -> tuple[list[MessageSummary], str | None]:
    """One page, newest first, and the cursor of the next page (None on the last)."""
    limit = max(1, min(limit, MAX_LIMIT))
    flt = await rarest_first(db, flt)
    query = search_query(flt, decode_cursor(cursor) if cursor else None, limit)

    def run(conn: Connection) -> tuple[list[MessageSummary], Key | None]:
        rows = conn.execute(query).all()
        last = (float(rows[limit - 1].sort_at), rows[limit - 1].id) if len(rows) > limit else None
        return _summaries(conn, rows[:limit], time.time()), last

    page, last = await db.read(run)
    return page, encode_cursor(last) if last is not None else None


def _active(flt: MessageFilter, among: Sequence[str] = ACTIVE) -> tuple[str, ...]:
    """The active statuses `flt` asks for (all of `among` when it names none)."""
    return tuple(s for s in among if not flt.statuses or s in flt.statuses)


def count_query(
    flt: MessageFilter, after: Key | None = None, among: Sequence[str] = ACTIVE
) -> Select[Any] | None:
    """Counts the matching messages with work left (None: the filter rules them all out),
    those older than `after` when given; only those in a status of `among` (an operation
    acts on some: a release only on held mail)."""
    statuses = _active(flt, among)
    if not statuses:
        return None
    query = select(func.count()).select_from(M).where(*criteria(flt, statuses))
    if after is not None:
        query = query.where(tuple_(M.c.created_at, M.c.id) < tuple_(after[0], after[1]))
    return query


def ids_query(
    flt: MessageFilter, after: Key | None, chunk: int, among: Sequence[str] = ACTIVE
) -> Select[Any] | None:
    """One chunk of the matching messages with work left (None: the filter rules them out)."""
    statuses = _active(flt, among)
    if not statuses:
        return None
    return _page(select(M.c.id, M.c.created_at).where(*criteria(flt, statuses)), after, chunk)


async def count_active(
    db: Database, flt: MessageFilter, after: Key | None = None, among: Sequence[str] = ACTIVE
) -> int:
    """How many messages with work left match (what a bulk dry run reports); with `after`,
    how many of them come after that position (what a capped bulk operation left)."""
    query = count_query(await rarest_first(db, flt), after, among)
    if query is None:
        return 0
    return int(await db.read(lambda conn: conn.execute(query).scalar_one()))


def _fetch(query: Select[Any]) -> Callable[[Connection], Sequence[Any]]:
    return lambda conn: conn.execute(query).all()


async def active_keys(
    db: Database,
    flt: MessageFilter,
    chunk: int = CHUNK,
    after: Key | None = None,
    among: Sequence[str] = ACTIVE,
) -> AsyncGenerator[list[Key]]:
    """The positions (created_at, id) of matching messages with work left, newest first,
    `chunk` at a time, starting after `after` when given.

    Each chunk is its own read, so a bulk operation over a large queue never holds one
    long transaction; acting on a chunk does not move the position of the next one.
    """
    flt = await rarest_first(db, flt)
    while True:
        query = ids_query(flt, after, chunk, among)
        if query is None:
            return
        rows = await db.read(_fetch(query))
        if not rows:
            return
        yield [(row.created_at, row.id) for row in rows]
        if len(rows) < chunk:
            return
        after = (rows[-1].created_at, rows[-1].id)


async def active_ids(
    db: Database, flt: MessageFilter, chunk: int = CHUNK
) -> AsyncIterator[list[str]]:
    """The ids of matching messages with work left, newest first, `chunk` at a time."""
    async for keys in active_keys(db, flt, chunk):
        yield [message_id for _, message_id in keys]
