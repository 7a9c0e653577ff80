"""The queue owns every state change of a message; each change is one transaction.

    accept ──> queued ──attempt──> delivered            (every recipient accepted)
                 │                 bounced              (every recipient final, one refused
                 │                                       permanently or expired at max_age)
                 └──attempt──> deferred ──attempt──> ... (some recipient got 4xx, a drop
                                                          or a timeout; retried on schedule)

A message with work left has `due_at` set: the time it may next be attempted. A worker that
claims it writes its node id to `claimed_by` and moves `due_at` to the end of its lease, so a
node that dies mid-delivery strands nothing: its lease lapses and any node claims the message
again (on start-up a node also releases what its previous life held). Final messages have
`due_at` NULL and their body deleted. Recipients carry their own status, so a retry goes only
to those still pending.

Accepted messages are normally claimed by the accepting node in the same transaction that
stores them (the fast path): the delivery worker gets the message from memory without a
second read, and the lease still protects it if the node dies.

An operator's retry (`retry`) makes a message due now and stamps `retried_at`. The attempt
it asks for counts in `attempts` (it reached for an upstream) and in `forced_attempts`, but
takes no step of retry_schedule: the schedule's position is `attempts - forced_attempts`.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection, delete, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from gateway.addresses import mailbox_key
from gateway.message import DeliveryResult, Outcome, QueuedMessage, Route, Submission
from gateway.queue import events
from gateway.queue.suppressions import SuppressionCache
from gateway.routing import NO_POOL
from storage import idempotency
from storage import queue_sql as sql
from storage.db import Database
from storage.messages import INSERT_META, meta_row
from storage.models import Message, MessageBody, MessageTag, Recipient, Suppression
from storage.writer import Batch, Writer

M = Message.__table__  # type: ignore[attr-defined]
B = MessageBody.__table__  # type: ignore[attr-defined]
R = Recipient.__table__  # type: ignore[attr-defined]
S = Suppression.__table__  # type: ignore[attr-defined]
T = MessageTag.__table__  # type: ignore[attr-defined]

ACTIVE_STATES = ("queued", "deferred")
# What a claim reads of each message (its recipients and body come next).
_CLAIMED = (
    M.c.id, M.c.mail_from, M.c.attempts, M.c.created_at, M.c.ip_pool, M.c.pool_id,
    M.c.retried_at, M.c.forced_attempts, M.c.last_response, M.c.updated_at, M.c.route_default,
)  # fmt: skip

_ids = random.Random(secrets.randbits(128))  # seeded once: os.urandom per id costs a syscall


def new_message_id() -> str:
    """Time-ordered and unique: 'msg_' + milliseconds in hex + 64 random bits.

    Not a secret: looking a message up needs the API key that sent it.
    """
    return f"msg_{int(time.time() * 1000):011x}{_ids.getrandbits(64):016x}"


def new_id_for(sandbox: bool) -> str:
    """A new message's id: sandbox ids say so (`sandbox_msg_...`)."""
    return ("sandbox_" if sandbox else "") + new_message_id()


def next_attempt(
    steps: int,
    created_at: float,
    now: float,
    schedule: Sequence[float],
    max_age: float,
    jitter: float = 0.1,
    rng: random.Random | None = None,
) -> float | None:
    """When to try again after `steps` steps of the schedule, or None once the message has
    expired. Each failed attempt takes one step, except one an operator's retry asked for.

    The schedule's last interval repeats; up to `jitter` of the interval is added so that a
    burst of deferred mail does not come back all at once. The last retry falls exactly at
    the deadline, so a message always gets one attempt at max_age before it bounces.
    """
    deadline = created_at + max_age
    if now >= deadline:
        return None
    interval = schedule[min(max(steps, 1), len(schedule)) - 1]
    interval += interval * jitter * (rng or random).random()
    return min(now + interval, deadline)


@dataclass(frozen=True)
class AttemptRecord:
    """What one delivery attempt of one message produced, ready to be stored."""

    message: QueuedMessage
    results: dict[str, DeliveryResult]  # recipient -> result
    pool: str | None


class Queue:
    def __init__(
        self,
        db: Database,
        writer: Writer,
        node_id: str,
        schedule: Sequence[float],
        max_age: float,
        lease: float,
    ) -> None:
        self._db = db
        self._writer = writer
        self.node_id = node_id
        self._schedule = tuple(schedule)
        self._max_age = max_age
        self._lease = lease
        dialect = sqlite if db.is_sqlite else postgresql
        self._suppress = dialect.insert(S).on_conflict_do_nothing(index_elements=["email"])
        self.suppressions = SuppressionCache(db)

    # --- intake -----------------------------------------------------------------------

    async def enqueue(self, submission: Submission, route: Route, claim: bool) -> QueuedMessage:
        """Store the message durably (group commit); with `claim`, also claim it here.

        A sandbox message is stored final (status `sandbox`, never due). With an
        idempotency key the key is reserved in the same transaction; when another message
        holds it, nothing is stored and `Duplicate` names that message (`KeyReused` when
        it was another request).
        """
        now = time.time()
        sandbox = submission.sandbox
        claim = claim and not sandbox
        message_id = submission.message_id or new_id_for(sandbox)
        batch = Batch()
        batch.add(
            sql.INSERT_MESSAGE,
            {
                "id": message_id,
                "status": "sandbox" if sandbox else "queued",
                "source": submission.source,
                "mail_from": submission.mail_from,
                "alias_id": submission.alias_id,
                "ip_pool": route.ip_pool,
                "pool_id": route.pool_id,
                "route_default": route.default,
                "last_pool": None,
                "attempts": 0,
                "size": len(submission.content),
                "created_at": now,
                "updated_at": now,
                "due_at": None if sandbox else now + self._lease if claim else now,
                "claimed_by": self.node_id if claim else None,
                "last_response": None,
                "api_key_id": submission.sender.api_key_id if submission.sender else None,
            },
        )
        batch.add(sql.INSERT_BODY, {"message_id": message_id, "data": submission.content})
        batch.add(
            sql.INSERT_RECIPIENT,
            [
                {
                    "message_id": message_id,
                    "email": rcpt,
                    "status": "sandbox" if sandbox else "pending",
                    "attempts": 0,
                    "code": None,
                    "response": None,
                    "updated_at": now,
                }
                for rcpt in submission.recipients
            ],
        )
        self._add_extras(batch, submission, message_id, now)
        status = "sandbox" if sandbox else "queued"
        batch.add(
            events.INSERT_EVENT,
            [
                events.row(events.SANDBOX if sandbox else events.QUEUED, message_id, status, now, r)
                for r in submission.recipients
            ]
            + [
                events.row(events.SUPPRESSED, message_id, status, now, r, response="suppressed")
                for r in submission.suppressed
            ],
        )
        key = submission.idempotency_key
        if key is None:
            await self._writer.submit(batch)
        else:
            scope = submission.sender.api_key_id if submission.sender else idempotency.ANONYMOUS
            digest = submission.request_hash
            holder = await self._writer.submit(
                lambda conn: _reserve_then_store(conn, scope, key, message_id, now, digest, batch)
            )
            if holder is not None:
                raise holder.refusal(digest)
        return QueuedMessage(
            id=message_id,
            mail_from=submission.mail_from,
            recipients=list(submission.recipients),
            content=submission.content,
            attempts=0,
            created_at=now,
            route=route,
        )

    @staticmethod
    def _add_extras(batch: Batch, submission: Submission, message_id: str, now: float) -> None:
        """The side rows of an API submission: its meta row, the recipients it suppressed."""
        meta = meta_row(
            message_id,
            submission.sender.api_key_id if submission.sender else None,
            submission.sandbox,
            submission.tags,
            submission.metadata,
            submission.idempotency_key,
        )
        if meta is not None:
            batch.add(INSERT_META, meta)
        if submission.tags:
            tags = sorted(set(submission.tags))
            batch.add(sql.INSERT_TAG, [{"message_id": message_id, "tag": tag} for tag in tags])
        batch.add(
            sql.INSERT_RECIPIENT,
            [
                {
                    "message_id": message_id,
                    "email": rcpt,
                    "status": "suppressed",
                    "attempts": 0,
                    "code": None,
                    "response": "suppressed before sending",
                    "updated_at": now,
                }
                for rcpt in submission.suppressed
            ],
        )

    async def find_idempotent(self, scope: str, key: str) -> idempotency.Hit | None:
        """The live reservation of an idempotency key, if any (a read; no reservation)."""
        return await idempotency.find(self._db, scope, key)

    # --- delivery ---------------------------------------------------------------------

    async def claim_due(self, limit: int) -> list[QueuedMessage]:
        """Claim up to `limit` due messages for this node and load what delivery needs."""
        return list(await self._writer.submit(lambda conn: self._claim(conn, limit)))

    def _claim(self, conn: Connection, limit: int) -> list[QueuedMessage]:
        now = time.time()
        due = select(M.c.id).where(M.c.due_at <= now).order_by(M.c.due_at).limit(limit)
        if not self._db.is_sqlite:
            due = due.with_for_update(skip_locked=True)
        claimed = conn.execute(
            update(M)
            .where(M.c.id.in_(due.scalar_subquery()))
            .values(claimed_by=self.node_id, due_at=now + self._lease)
            .returning(*_CLAIMED)
        )
        rows = claimed.all()
        if not rows:
            return []
        ids = [row.id for row in rows]
        pending: dict[str, list[str]] = {message_id: [] for message_id in ids}
        bounced: set[str] = set()
        recipients = conn.execute(
            select(R.c.message_id, R.c.email, R.c.status)
            .where(R.c.message_id.in_(ids))
            .order_by(R.c.id)
        )
        for message_id, email, status in recipients:
            if status == "pending":
                pending[message_id].append(email)
            elif status == "bounced":
                bounced.add(message_id)
        body_rows = conn.execute(select(B.c.message_id, B.c.data).where(B.c.message_id.in_(ids)))
        bodies: dict[str, bytes] = {row.message_id: row.data for row in body_rows}
        return [
            QueuedMessage(
                id=row.id,
                mail_from=row.mail_from,
                recipients=pending[row.id],
                content=bodies.get(row.id, b""),
                attempts=row.attempts,
                created_at=row.created_at,
                route=Route(pool_id=row.pool_id, ip_pool=row.ip_pool, default=row.route_default),
                any_bounced=row.id in bounced,
                retried_at=row.retried_at,
                forced_attempts=row.forced_attempts,
                last_response=row.last_response,
                updated_at=row.updated_at,
            )
            for row in rows
        ]

    async def record(self, attempt: AttemptRecord) -> str | None:
        """Store one attempt's results and their events in one transaction.

        Returns the message's new status, or None when this node no longer holds the claim
        (its lease lapsed and another node took the message over): then nothing is stored,
        as the new holder's attempt is the one that counts.
        """
        now = time.time()
        message = attempt.message
        results = dict(attempt.results)
        expired: set[str] = set()
        retry_at: float | None = None
        number = message.attempts + 1  # this attempt's
        forced = message.retried_at is not None
        if any(r.outcome is Outcome.DEFERRED for r in results.values()):
            # A forced attempt takes no step: the wait after it is the one the message was
            # on (the first, if it never failed), and its next failure takes the next step.
            steps = message.schedule_steps + (0 if forced else 1)
            retry_at = next_attempt(steps, message.created_at, now, self._schedule, self._max_age)
            if retry_at is None:
                expired = {rcpt for rcpt, r in results.items() if r.outcome is Outcome.DEFERRED}
                results = {rcpt: _expire(r) for rcpt, r in results.items()}
        status = message_status(results.values(), retry_at, message.any_bounced)
        suppress = [
            (mailbox_key(rcpt), "complaint" if result.complaint else "bounced")
            for rcpt, result in results.items()
            if result.hard_bounce or result.complaint
        ]
        batch = self._attempt_rows(attempt, results, expired, status, now, number)
        if retry_at is None:
            batch.add(sql.RECORD_BODY_GONE, {"m_id": message.id, **_stamp(now, number)})
        if suppress:  # the upstream said so, whoever holds the claim now
            batch.add(
                self._suppress,
                [{"email": email, "reason": why, "created_at": now} for email, why in suppress],
            )
        params = {
            "m_id": message.id,
            "node": self.node_id,
            "status": status,
            "due": retry_at,
            "pool": attempt.pool,
            "response": _summary(results),
            "now": now,
            "forced": int(forced),
        }
        batch.first = lambda conn: conn.execute(sql.UPDATE_MESSAGE, params).rowcount > 0
        if await self._writer.submit(batch):
            self.suppressions.add([email for email, _ in suppress])
            return status
        return None

    @staticmethod
    def _attempt_rows(
        attempt: AttemptRecord,
        results: dict[str, DeliveryResult],
        expired: set[str],
        status: str,
        now: float,
        number: int,
    ) -> Batch:
        """The recipients' results and their events, written if the claim still held."""
        message = attempt.message
        batch = Batch()
        batch.add(
            sql.RECORD_RECIPIENT,
            [
                {
                    "m_id": message.id,
                    "m_email": rcpt,
                    "status": _recipient_status(result),
                    "code": result.code,
                    "response": result.describe(),
                    "now": now,
                    **_stamp(now, number),
                }
                for rcpt, result in results.items()
            ],
        )

        def noted(kind: str, response: str, rcpts: list[str]) -> list[dict[str, Any]]:
            return [
                events.row(
                    kind, message.id, status, now, rcpt,
                    pool=attempt.pool, attempt=number, response=response,
                )
                for rcpt in rcpts
            ]  # fmt: skip

        # Before the result: a recipient's last event is its state.
        rows = noted(
            events.POSSIBLE_DUPLICATE,
            "no reply after the end of data: a retry may deliver it twice",
            [rcpt for rcpt, result in results.items() if result.possible_duplicate],
        )
        rows += [
            events.row(
                events.result_type(result, rcpt in expired),
                message.id,
                status,
                now,
                rcpt,
                pool=attempt.pool,
                result=result,
                attempt=number,
            )
            for rcpt, result in results.items()
        ]
        rows += noted(
            events.COMPLAINT,
            "the recipient reported the message as spam",
            [rcpt for rcpt, result in results.items() if result.complaint],
        )
        _add_events_if_stamped(batch, message.id, rows, now, number)
        return batch

    async def note_throttled(self, message_id: str, status: str, pool: str, reason: str) -> None:
        """Record that a pool slowed down (a 421 / 4.7.x) while delivering this message."""
        row = events.row(
            events.THROTTLED, message_id, status, time.time(), pool=pool, response=reason[:1000]
        )
        await self._writer.submit(Batch([(events.INSERT_EVENT, row)]))

    @property
    def lease(self) -> float:
        return self._lease

    async def renew_claims(self) -> None:
        """Extend the lease of every message this node holds."""
        until = time.time() + self._lease
        await self._writer.submit(Batch([(sql.RENEW, {"node": self.node_id, "until": until})]))

    async def release(self, message_id: str, delay: float) -> None:
        """Give back one message this node holds, due again after `delay` seconds."""
        params = {"m_id": message_id, "node": self.node_id, "due": time.time() + delay}
        await self._writer.submit(Batch([(sql.RELEASE_ONE, params)]))

    async def postpone(self, message: QueuedMessage, until: float, pool: str, reason: str) -> None:
        """Give back a message this node holds, `deferred` until `until` because `pool` is
        over its rate or daily limit, or its route has no active pool (a WAIT, in the words
        of gateway.delivery.slowdown; a failed attempt is `record`'s): a `deferred` event per
        waiting recipient says why (once: not again while the reason stays the same), but no
        attempt is counted and no retry schedule step taken (the message did nothing wrong).
        Written only if the claim still held, like an attempt."""
        now = time.time()
        why = reason[:1000]
        batch = Batch()
        if why != message.last_response:
            rows = [
                events.row(events.DEFERRED, message.id, "deferred", now, rcpt, pool=pool,
                           attempt=message.attempts, response=why)
                for rcpt in message.recipients
            ]  # fmt: skip
            _add_events_if_stamped(batch, message.id, rows, now, message.attempts)
        params = {"m_id": message.id, "node": self.node_id, "due": until, "why": why, "now": now}
        batch.first = lambda conn: conn.execute(sql.POSTPONE, params).rowcount > 0
        await self._writer.submit(batch)

    async def wake_pool_waiters(self) -> int:
        """Make the messages waiting for an active pool due now (the pools changed);
        returns how many."""
        now = time.time()
        waiting = update(M).where(
            M.c.due_at > now,
            M.c.claimed_by.is_(None),
            M.c.status == "deferred",
            M.c.last_response.startswith(NO_POOL, autoescape=True),
        )
        return await self._writer.submit(
            lambda conn: conn.execute(waiting.values(due_at=now)).rowcount
        )

    @property
    def max_age(self) -> float:
        return self._max_age

    async def release_claims(self) -> None:
        """Give back every message this node holds so that it is due now (shutdown/start)."""
        await self._writer.submit(
            Batch([(sql.RELEASE, {"node": self.node_id, "now": time.time()})])
        )

    # --- operator actions -------------------------------------------------------------

    async def retry(self, message_ids: Sequence[str]) -> list[str]:
        """Make these messages due now (those with work left that no worker holds), as
        `postqueue -f` does: the attempt this asks for clears the cool-down its pools were
        in at the time of the retry and takes no step of retry_schedule (`record`)."""
        return list(await self._writer.submit(lambda conn: self._retry(conn, message_ids)))

    def _retry(self, conn: Connection, message_ids: Sequence[str]) -> list[str]:
        now = time.time()
        rows = conn.execute(
            update(M)
            .where(M.c.id.in_(list(message_ids)), M.c.due_at.is_not(None), _free(now))
            .values(due_at=now, claimed_by=None, retried_at=now)
            .returning(M.c.id)
        )
        return [row.id for row in rows]

    async def cancel(self, message_ids: Sequence[str]) -> Cancelled:
        """Stop these messages: their pending recipients become `cancelled` (with an event
        each) and the bodies go. A message a worker is delivering right now is left alone
        and reported as busy: cancelling it could not take back what it is sending. So is
        one another transaction has locked (PostgreSQL): it is skipped, not waited for.
        Ids that are neither cancelled nor busy had no work left (or do not exist)."""
        cancelled: Cancelled = await self._writer.submit(
            lambda conn: self._cancel(conn, message_ids)
        )
        return cancelled

    def _cancel(self, conn: Connection, message_ids: Sequence[str]) -> Cancelled:
        now = time.time()
        asked = list(dict.fromkeys(message_ids))
        active = select(M.c.id, M.c.claimed_by, M.c.due_at).where(
            M.c.id.in_(asked), M.c.due_at.is_not(None)
        )
        if not self._db.is_sqlite:
            # Never wait for a row another transaction holds (a node recording or renewing
            # its delivery locks the same rows in its own order: waiting could deadlock).
            active = active.with_for_update(skip_locked=True)
        free: list[str] = []
        busy: list[str] = []
        for row in conn.execute(active):
            lapsed = row.claimed_by is None or row.due_at <= now
            (free if lapsed else busy).append(row.id)
        seen = set(free) | set(busy)
        skipped = [m_id for m_id in asked if m_id not in seen]
        if skipped and not self._db.is_sqlite:
            # Not returned: final, unknown, or locked by someone else. A plain read (no lock)
            # tells them apart; the locked ones are busy, left for the caller to try again.
            still = select(M.c.id).where(M.c.id.in_(skipped), M.c.due_at.is_not(None))
            locked = {row.id for row in conn.execute(still)}
            busy += [m_id for m_id in skipped if m_id in locked]
        if not free:
            return Cancelled([], busy)
        pending = conn.execute(
            select(R.c.message_id, R.c.email)
            .where(R.c.message_id.in_(free), R.c.status == "pending")
            .order_by(R.c.id)
        ).all()
        conn.execute(
            update(M)
            .where(M.c.id.in_(free))
            .values(
                status="cancelled",
                due_at=None,
                claimed_by=None,
                last_response="cancelled by an operator",
                updated_at=now,
            )
        )
        conn.execute(
            update(R)
            .where(R.c.message_id.in_(free), R.c.status == "pending")
            .values(status="cancelled", response="cancelled by an operator", updated_at=now)
        )
        if pending:
            conn.execute(
                events.INSERT_EVENT,
                [
                    events.row(
                        events.CANCELLED,
                        m_id,
                        "cancelled",
                        now,
                        email,
                        response="cancelled by an operator",
                    )
                    for m_id, email in pending
                ],
            )
        conn.execute(delete(B).where(B.c.message_id.in_(free)))
        return Cancelled(free, busy)

    # --- reads ------------------------------------------------------------------------

    async def is_suppressed(self, addresses: Sequence[str]) -> set[str]:
        """The subset of `addresses` on the suppression list (from the in-memory copy)."""
        return self.suppressions.suppressed(addresses)

    async def counts(self) -> dict[str, int]:
        """Messages with work left, by state (reads only the due index)."""

        def query(conn: Connection) -> dict[str, int]:
            rows = conn.execute(
                select(M.c.status, func.count()).where(M.c.due_at.is_not(None)).group_by(M.c.status)
            )
            counts = dict.fromkeys(ACTIVE_STATES, 0)
            counts.update({status: n for status, n in rows})
            return counts

        return await self._db.read(query)

    async def ping(self) -> None:
        await self._db.read(lambda conn: conn.execute(text("SELECT 1")))


def _stamp(now: float, attempt: int) -> dict[str, Any]:
    """What an attempt's message update leaves on the row (storage.queue_sql.RECORDED)."""
    return {"stamp_at": now, "stamp_attempt": attempt}


def _add_events_if_stamped(
    batch: Batch, message_id: str, rows: list[dict[str, Any]], now: float, attempt: int
) -> None:
    """Event rows written only if the batch's `first` update left its stamp on the message."""
    stamp = {"m_id": message_id, **_stamp(now, attempt)}
    batch.add(sql.RECORD_EVENT, [{**row, **stamp} for row in rows])


@dataclass(frozen=True)
class Cancelled:
    cancelled: list[str]
    busy: list[str]  # being delivered or locked right now: not cancelled, try again later


def _free(now: float) -> Any:
    """No worker holds the message, or its holder's lease has lapsed."""
    return M.c.claimed_by.is_(None) | (M.c.due_at <= now)


def message_status(results: Any, retry_at: float | None, any_bounced: bool = False) -> str:
    outcomes = {r.outcome for r in results}
    if retry_at is not None:
        return "deferred"
    if outcomes <= {Outcome.DELIVERED} and not any_bounced:
        return "delivered"
    return "bounced"


def _reserve_then_store(
    conn: Connection,
    scope: str,
    key: str,
    message_id: str,
    now: float,
    digest: str | None,
    batch: Batch,
) -> idempotency.Hit | None:
    """Inside the shared transaction: reserve the key, and store the message only if won."""
    holder = idempotency.reserve(conn, scope, key, message_id, now, digest)
    if holder is None:
        for statement, params in batch.steps:
            conn.execute(statement, params)
    return holder


def _recipient_status(result: DeliveryResult) -> str:
    return "pending" if result.outcome is Outcome.DEFERRED else result.outcome.value


def _expire(result: DeliveryResult) -> DeliveryResult:
    if result.outcome is not Outcome.DEFERRED:
        return result
    text = f"expired after max_age; last: {result.describe()}"
    return replace(result, outcome=Outcome.BOUNCED, enhanced="5.4.7", text=text)


def _summary(results: dict[str, DeliveryResult]) -> str:
    worst = sorted(results.values(), key=lambda r: r.outcome is Outcome.DELIVERED)
    return worst[0].describe() if worst else ""
