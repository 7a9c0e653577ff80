"""The queue owns every state change of a message; each change is one transaction.

What a change makes of a message is gateway.queue.states' (the state machine); when a
deferred message is due again, gateway.queue.retry's; the SQL is storage.queue_sql's. This
module runs the transactions.

A message with work left has `due_at` set: the time it may next be attempted. A worker that
claims it writes its node id to `claimed_by` and moves `due_at` to the end of its lease, so a
node that dies mid-delivery strands nothing: its lease lapses and any node claims the message
again (on start-up a node also releases what its previous life held). Final messages have
`due_at` NULL; their body stays for `[storage] body_retention` (gateway.queue.retention).
Recipients carry their own status, so a retry goes only to those still pending. A
recipient's first final state stays: a report may bounce one while an attempt runs
(gateway.bounces.effects, which tells its sender); the attempt's record then takes no
result for it, writes no event for it, names it in no notification, and settles the
message bounced rather than delivered (storage.queue_sql.SETTLE_TAKEN).

Accepted messages are normally claimed by the accepting node in the same transaction that
stores them (the fast path): the delivery worker gets the message from memory without a
second read, and the lease still protects it if the node dies.

An operator's hold (`hold`, postsuper -h) makes a queued or deferred message `held`: its
`due_at` becomes storage.models.HELD_DUE (work left, but past any claim) and the claim
skips status `held` too, so a held message is never delivered, and never expires while
held: `release_held` makes it due now and adds the time it spent held to `held_for`, which
the max_age deadline leaves out (a message held for a week still gets its full max_age of
trying). A retry never releases a held message; a cancel stops it.

An operator's retry (`retry`) makes a message due now and stamps `retried_at`. The attempt
it asks for counts in `attempts` (it reached for an upstream) and in `forced_attempts`, but
takes no step of retry_schedule: the schedule's position is `attempts - forced_attempts`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.sql import Executable

from gateway import headers, maillog
from gateway.addresses import mailbox_key
from gateway.message import DIRECT_POOL, DeliveryResult, Outcome, QueuedMessage, Route, Submission
from gateway.queue import events, idempotency, ids, retry, states
from gateway.queue import suppressions as suppression_list
from gateway.queue.idempotency import Duplicate, KeyReused
from gateway.queue.notify import Notifier
from gateway.queue.suppressions import SuppressionCache
from gateway.routing import NO_POOL
from storage import bounce_reports, dml, pieces
from storage import queue_sql as sql
from storage import suppressions as stored_suppressions
from storage.db import Database
from storage.messages import INSERT_META, meta_row
from storage.search_keys import address_key, subject_words
from storage.writer import Batch, Work, Writer

log = logging.getLogger("postern.queue")


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
        notifier: Notifier | None = None,
    ) -> None:
        self._db = db
        self._notifier = notifier  # [delivery] notify_sender: bounces told to SMTP senders
        self._writer = writer
        self.node_id = node_id
        self._schedule = tuple(schedule)
        self._max_age = max_age
        self._lease = lease
        self._suppress = stored_suppressions.add_if_absent(db.is_sqlite)
        self.suppressions = SuppressionCache(db)

    @property
    def db(self) -> Database:
        return self._db

    # --- intake -----------------------------------------------------------------------

    async def enqueue(self, submission: Submission, route: Route, claim: bool) -> QueuedMessage:
        """Store the message durably (group commit); with `claim`, also claim it here.

        A sandbox message is stored final (status `sandbox`, never due). With an
        idempotency key the key is reserved in the same transaction; when another message
        holds it, nothing is stored and `Duplicate` names that message (`KeyReused` when
        it was another request).
        """
        return (await self.enqueue_parts([(submission, route)], claim))[0]

    async def enqueue_parts(
        self, parts: Sequence[tuple[Submission, Route]], claim: bool
    ) -> list[QueuedMessage]:
        """Store the parts of one request (a message split by its recipients' routes: each
        part one queue entry, a message of its own) in one transaction: all or none. The
        idempotency key, when given, is reserved once for the whole request, naming the
        first part (the HTTP door's saved answer lists them all)."""
        now = time.time()
        first = parts[0][0]
        claim = claim and not first.sandbox and first.scheduled_at is None
        batch, stored = self._request_rows(parts, now, claim)
        expected = await self._store_pieces(stored)
        size = _content_left(stored, expected)
        storing = _storing(batch, first, stored[0].id, now, expected)
        holder = await self._writer.submit(storing, size=size)
        if holder is not None:  # another message holds the idempotency key
            raise holder.refusal(first.request_hash)
        return stored

    async def enqueue_many(
        self, items: Sequence[Sequence[tuple[Submission, Route]]]
    ) -> list[list[QueuedMessage] | Duplicate | KeyReused]:
        """Store several messages in ONE transaction (a batch send), each with its parts
        (one per recipients' route, as `enqueue_parts`): each stored, or, when its
        idempotency key is held by another message (one of the same batch too), the
        `Duplicate` / `KeyReused` naming that message (nothing of it stored). None is
        claimed here: delivery's poller takes them (the caller wakes it). A failure of the
        transaction stores none of them (StorageUnavailable)."""
        now = time.time()
        prepared: list[tuple[Submission, str, Batch]] = []
        made: list[list[QueuedMessage]] = []
        for parts in items:
            batch, messages = self._request_rows(parts, now, claim=False)
            prepared.append((parts[0][0], messages[0].id, batch))
            made.append(messages)
        every = [message for messages in made for message in messages]
        expected = await self._store_pieces(every)
        size = _content_left(every, expected)
        holders: list[idempotency.Hit | None] = await self._writer.submit(
            lambda conn: _store_many(conn, prepared, now, expected), size=size
        )
        results: list[list[QueuedMessage] | Duplicate | KeyReused] = []
        for (first, _, _), messages, holder in zip(prepared, made, holders, strict=True):
            results.append(messages if holder is None else holder.refusal(first.request_hash))
        return results

    async def _store_pieces(self, messages: Sequence[QueuedMessage]) -> dict[str, int]:
        """Write the body of each large message (storage.pieces.PIECED bytes or more) in
        pieces, one per commit among the small messages' (storage.writer: a piece rides in
        the commit of the small jobs waiting), before the transaction
        that stores the messages checks them and names them. Returns how many pieces each
        such message has. A failure here stores no message; the pieces already written
        are orphans that the retention pass sweeps (storage.pieces.purge_orphans)."""
        expected: dict[str, int] = {}
        for message in messages:
            if not pieces.pieced(message.content, self._db.dialect):
                continue
            for row in pieces.rows(message.id, message.content, time.time()):
                batch = Batch()
                batch.add(pieces.INSERT_PIECE, row)
                await self._writer.submit(batch, size=len(row["data"]), piece=True)
            expected[message.id] = pieces.count(message.content)
        return expected

    def _request_rows(
        self, parts: Sequence[tuple[Submission, Route]], now: float, claim: bool
    ) -> tuple[Batch, list[QueuedMessage]]:
        """Every row of one request's parts, and the queued message each part becomes."""
        batch = Batch()
        messages: list[QueuedMessage] = []
        for submission, route in parts:
            message_id = submission.message_id or ids.new_id_for(submission.sandbox)
            batch.steps += self._new_message_rows(submission, route, message_id, now, claim).steps
            messages.append(
                QueuedMessage(
                    id=message_id,
                    mail_from=submission.mail_from,
                    recipients=list(submission.recipients),
                    content=submission.content,
                    attempts=0,
                    created_at=now,
                    route=route,
                    scheduled_at=submission.scheduled_at,
                    source=submission.source,
                )
            )
        return batch, messages

    def _new_message_rows(
        self, submission: Submission, route: Route, message_id: str, now: float, claim: bool
    ) -> Batch:
        """Every row of a new message (`new_message_rows`): final at once in the sandbox;
        otherwise due now, or, claimed by this node, due again only when its lease lapses."""
        due = _first_due(submission, now, claim, self._lease)
        claimed_by = self.node_id if claim else None
        pieced = pieces.pieced(submission.content, self._db.dialect)
        return new_message_rows(submission, route, message_id, now, due, claimed_by, pieced)

    # --- delivery ---------------------------------------------------------------------

    async def claim_due(self, limit: int) -> list[QueuedMessage]:
        """Claim up to `limit` due messages for this node and load what delivery needs.

        The bodies are read after the claim has committed, as reads: read in the claim,
        a 20 MB body held the single writer (and on SQLite the GIL, copying it out) for
        ~60 ms, while every message arriving meanwhile waited for its commit. They are this
        node's now, and a body never changes once stored."""
        claimed = await self._writer.submit(lambda conn: self._claim(conn, limit))
        if claimed:
            ids = [message.id for message in claimed]
            try:
                bodies = await self.db.read(lambda conn: sql.bodies_of(conn, ids))
            except Exception:
                with contextlib.suppress(Exception):  # (then their lease lapses)
                    await self._release(ids, 0.0)  # due again now, not when the lease lapses
                raise
            # A message with nothing left to send needs no body: delivery settles it.
            unreadable = [m.id for m in claimed if m.recipients and m.id not in bodies]
            if unreadable:
                await self._set_aside(unreadable)
            claimed = [message for message in claimed if message.id not in unreadable]
            for message in claimed:
                message.content = bodies.get(message.id, b"")
        return list(claimed)

    async def _set_aside(self, message_ids: list[str]) -> None:
        """Messages claimed whose body cannot be read whole (storage.pieces: a piece
        missing; a body gone): never sent without it, nor tried again and again. Held,
        as `postern queue hold` holds (no longer this node's, never claimed or expired
        until released), with a `held` event that says why, for an operator to cancel
        (or release, once the body is back). The others claimed with them go on, whatever
        happens here (a hold that fails leaves the claim to lapse: claimed again later)."""
        try:
            changed: Changed = await self._writer.submit(
                lambda conn: self._hold_unreadable(conn, message_ids)
            )
        except Exception:
            log.exception("could not hold %s (its body cannot be read whole)", message_ids)
            return
        if changed.done:
            log.error(
                "held %s: the stored body cannot be read whole (storage.pieces); cancel, "
                "or release once it is back",
                ", ".join(changed.done),
            )  # fmt: skip
            maillog.held(changed.done)

    def _hold_unreadable(self, conn: Connection, message_ids: Sequence[str]) -> Changed:
        now = time.time()
        rows = [{"m_id": m_id, "node": self.node_id, "due": now} for m_id in message_ids]
        conn.execute(sql.RELEASE_ONE, rows)  # this node's claim given up, in this transaction
        return self._change(conn, message_ids, _HOLDABLE, "held", why=_UNREADABLE)

    def _claim(self, conn: Connection, limit: int) -> list[QueuedMessage]:
        now = time.time()
        rows = sql.claim_due(conn, self.node_id, now, now + self._lease, limit)
        if not rows:
            return []
        claimed = [row.id for row in rows]
        pending: dict[str, list[str]] = {message_id: [] for message_id in claimed}
        bounced: set[str] = set()
        for message_id, email, status in sql.recipients_of(conn, claimed):
            if status == "pending":
                pending[message_id].append(email)
            elif status == "bounced":
                bounced.add(message_id)
        return [
            QueuedMessage(
                id=row.id,
                mail_from=row.mail_from,
                recipients=pending[row.id],
                content=b"",  # read by claim_due, outside the writer
                attempts=row.attempts,
                created_at=row.created_at,
                route=Route(pool_id=row.pool_id, ip_pool=row.ip_pool, default=row.route_default),
                any_bounced=row.id in bounced,
                retried_at=row.retried_at,
                forced_attempts=row.forced_attempts,
                last_response=row.last_response,
                updated_at=row.updated_at,
                held_for=row.held_for or 0.0,
                scheduled_at=row.scheduled_at,
                source=row.source,
            )
            for row in rows
        ]

    async def record(self, attempt: AttemptRecord, patient: bool = True) -> str | None:
        """Store one attempt's results and their events in one transaction.

        `patient`: the commit may linger a moment for company (storage.writer). The caller
        passes False when someone waits on this attempt (an HTTP send answered after it).

        Returns the message's new status (the stored one when someone waits or a
        notification is written: a report may have bounced a recipient meanwhile, making
        it bounced; a batched record, which nobody waits for, returns its own without a
        read), or None when this node no longer holds the claim (its lease lapsed and
        another node took the message over): then nothing is stored, as the new holder's
        attempt is the one that counts.
        """
        now = time.time()
        message = attempt.message
        number = message.attempts + 1  # this attempt's
        forced = message.retried_at is not None
        retry_at: float | None = None
        if states.has_deferred(attempt.results.values()):
            steps = retry.steps_after(message.schedule_steps, forced)
            # The time it spent held does not count towards max_age.
            retry_at = retry.next_attempt(
                steps, message.age_from, now, self._schedule, self._max_age
            )
        settled = states.settle(dict(attempt.results), retry_at, message.any_bounced)
        results, status = settled.results, settled.status
        suppress = suppression_list.from_results(results)
        batch = self._attempt_rows(attempt, settled, now, number)
        # A delivery forgets the address's soft bounces (gateway.bounces), when it is one: the
        # recipient's own MX accepting. A relay's 250 is not: the soft bounce of that very
        # message may come back later, and forgetting at each send would keep a mailbox that
        # is full for good from ever reaching the limit (send, bounce, send, bounce...).
        if attempt.pool == DIRECT_POOL:
            delivered = [
                {"soft_email": mailbox_key(rcpt)}
                for rcpt, result in results.items()
                if result.outcome is Outcome.DELIVERED
            ]
            batch.add(bounce_reports.FORGET_SOFT, delivered)  # (nothing when empty)
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
            "response": states.summary(results),
            "now": now,
            "forced": int(forced),
        }
        # Nothing pending (a report bounced the last one): settled, but no attempt counted.
        update = sql.UPDATE_MESSAGE if results else sql.SETTLE_CLAIMED
        notice = self._notice(message, results, now)
        if notice is None and patient:
            batch.check = (update, params)
            work: Batch | Work = batch
        else:
            # The notification is stored with the bounce, and only if the bounce is: one
            # transaction, so it is never lost nor written twice. A waiter is answered with
            # the stored status (a report may have bounced a recipient meanwhile).
            work = partial(_if_claimed, batch, update, params, notice)
        # Patient: an attempt's record may share the next message's commit (storage.writer),
        # unless an HTTP send waits for it: then every millisecond is the client's.
        done = await self._writer.submit(work, patient=patient)
        if done:
            self.suppressions.add([email for email, _ in suppress])
            return done if isinstance(done, str) else status
        return None

    def _notice(
        self, message: QueuedMessage, results: dict[str, DeliveryResult], now: float
    ) -> Notice | None:
        """What writes the notification to the envelope sender of the recipients this
        attempt bounced, or of those still deferred once the message is older than
        delay_warning (notify.py); None: nothing to tell, not SMTP mail, a null sender,
        notify_sender off, or the sender is suppressed."""
        notifier = self._notifier
        if notifier is None or not notifier.wanted(message, message.source):
            return None
        bounced = {r: res for r, res in results.items() if res.outcome is Outcome.BOUNCED}
        deferred = {r: res for r, res in results.items() if res.outcome is Outcome.DEFERRED}
        make: Callable[[QueuedMessage, Mapping[str, DeliveryResult], float], Submission]
        if bounced:
            told, make = bounced, notifier.bounce
        elif deferred and notifier.delay_due(message, now):
            told, make = deferred, notifier.delay
        else:
            return None
        if self.suppressions.suppressed([message.envelope_sender]):
            return None

        def rows(conn: Connection) -> Batch | None:
            # Of those, the recipients still pending as the attempt is recorded: one a report
            # bounced meanwhile was told by that report (gateway.bounces.effects).
            still = sql.still_pending(conn, message.id, list(told))
            kept = {rcpt: result for rcpt, result in told.items() if rcpt in still}
            if not kept:
                return None
            return notification_rows(make(message, kept, now), ids.new_id_for(False), now)

        return rows

    @staticmethod
    def _attempt_rows(
        attempt: AttemptRecord, settled: states.Settled, now: float, number: int
    ) -> Batch:
        """The recipients' results and their events, written if the claim still held."""
        message_id = attempt.message.id
        batch = Batch()
        if not settled.results:
            return batch
        stamp = {"m_id": message_id, **_stamp(now, number)}
        batch.add(sql.RECORD_RECIPIENT, _result_rows(message_id, settled.results, now, number))
        # A report may have bounced a recipient while this attempt ran: then the message is
        # not delivered, and with nothing left pending it is final. Added whatever the
        # status (it matches nothing when bounced) so that in a group commit it always
        # runs before the events, which read the status it leaves.
        batch.add(sql.SETTLE_TAKEN, stamp)
        rows = _attempt_events(attempt, settled, now, number)
        batch.add(sql.RECORD_RESULT_EVENT, [{**row, **stamp} for row in rows])
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
        await self._release([message_id], delay)

    async def _release(self, message_ids: Sequence[str], delay: float) -> None:
        due = time.time() + delay
        rows = [{"m_id": m_id, "node": self.node_id, "due": due} for m_id in message_ids]
        await self._writer.submit(Batch([(sql.RELEASE_ONE, rows)]))

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
        batch.check = (sql.POSTPONE, params)
        await self._writer.submit(batch)

    async def wake_pool_waiters(self) -> int:
        """Make the messages waiting for an active pool due now (the pools changed);
        returns how many."""
        now = time.time()
        return int(await self._writer.submit(lambda conn: sql.wake_waiting(conn, NO_POOL, now)))

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
        return list(
            await self._writer.submit(lambda conn: sql.retry_now(conn, message_ids, time.time()))
        )

    async def cancel(self, message_ids: Sequence[str]) -> Cancelled:
        """Stop these messages: their pending recipients become `cancelled` (with an event
        each); the bodies stay for body_retention, as any final message's. A message a
        worker is delivering right now is left alone and reported as busy: cancelling it
        could not take back what it is sending. So is one another transaction has locked
        (PostgreSQL): it is skipped, not waited for.
        Ids that are neither cancelled nor busy had no work left (or do not exist)."""
        cancelled: Cancelled = await self._writer.submit(
            lambda conn: self._cancel(conn, message_ids)
        )
        return cancelled

    def _cancel(self, conn: Connection, message_ids: Sequence[str]) -> Cancelled:
        now = time.time()
        asked = list(dict.fromkeys(message_ids))
        free: list[str] = []
        busy: list[str] = []
        for row in sql.active_of(conn, asked):
            lapsed = row.claimed_by is None or row.due_at <= now
            (free if lapsed else busy).append(row.id)
        seen = set(free) | set(busy)
        skipped = [m_id for m_id in asked if m_id not in seen]
        if skipped and not self._db.is_sqlite:
            # Not returned: final, unknown, or locked by someone else. A plain read (no lock)
            # tells them apart; the locked ones are busy, left for the caller to try again.
            locked = sql.with_work_left(conn, skipped)
            busy += [m_id for m_id in skipped if m_id in locked]
        if not free:
            return Cancelled([], busy)
        pending = sql.pending_of(conn, free)
        sql.mark_cancelled(conn, free, now, _CANCELLED)
        if pending:
            conn.execute(
                events.INSERT_EVENT,
                [
                    events.row(events.CANCELLED, m_id, "cancelled", now, email, response=_CANCELLED)
                    for m_id, email in pending
                ],
            )
        return Cancelled(free, busy)

    async def hold(self, message_ids: Sequence[str]) -> Changed:
        """Put these messages on hold (postsuper -h): queued or deferred ones no worker
        holds become `held`, never claimed and never expired until released, with a `held`
        event per pending recipient, each message in this one transaction. One a worker is
        delivering (or, on PostgreSQL, another transaction has locked) is reported busy;
        the others (final, held already, unknown) are in neither list."""
        changed: Changed = await self._writer.submit(
            lambda conn: self._change(conn, message_ids, _HOLDABLE, "held")
        )
        maillog.held(changed.done)
        return changed

    async def release_held(self, message_ids: Sequence[str]) -> Changed:
        """Release these held messages (postsuper -H): due now, `queued` (or `deferred`
        when tried before), with a `released` event per pending recipient. Their time held
        is added to `held_for`, which max_age leaves out."""
        changed: Changed = await self._writer.submit(
            lambda conn: self._change(conn, message_ids, ("held",), "released")
        )
        maillog.held(changed.done, released=True)
        return changed

    def _change(
        self,
        conn: Connection,
        message_ids: Sequence[str],
        among: tuple[str, ...],
        to: str,
        why: str | None = None,
    ) -> Changed:
        now = time.time()
        asked = list(dict.fromkeys(message_ids))
        free: list[str] = []
        busy: list[str] = []
        status_after: dict[str, str] = {}
        for row in sql.active_of(conn, asked):
            if row.status not in among:
                continue
            lapsed = row.claimed_by is None or row.due_at <= now
            (free if lapsed else busy).append(row.id)
            released = "deferred" if row.attempts else "queued"
            status_after[row.id] = "held" if to == "held" else released
        if not self._db.is_sqlite:  # locked by another transaction: busy, try again
            seen = {*free, *busy}
            skipped = [m_id for m_id in asked if m_id not in seen]
            if skipped:
                locked = sql.with_work_left(conn, skipped, among)
                busy += [m_id for m_id in skipped if m_id in locked]
        if not free:
            return Changed([], busy)
        if to == "held":
            sql.mark_held(conn, free, now)
        else:
            sql.mark_released(conn, free, now)
        kind, said = (events.HELD, _HELD) if to == "held" else (events.RELEASED, _RELEASED)
        why = why or said
        pending = sql.pending_of(conn, free)
        if pending:
            conn.execute(
                events.INSERT_EVENT,
                [
                    events.row(kind, m_id, status_after[m_id], now, email, response=why)
                    for m_id, email in pending
                ],
            )
        return Changed(free, busy)

    # --- reads ------------------------------------------------------------------------

    def is_suppressed(self, addresses: Sequence[str]) -> set[str]:
        """The subset of `addresses` on the suppression list (from the in-memory copy: no
        I/O, so no coroutine for each RCPT)."""
        return self.suppressions.suppressed(addresses)

    async def counts(self) -> dict[str, int]:
        """Messages with work left, by state (reads only the due index)."""

        def query(conn: Connection) -> dict[str, int]:
            counts = dict.fromkeys(states.ACTIVE_STATES, 0)
            counts.update({status: n for status, n in conn.execute(sql.COUNT_ACTIVE)})
            return counts

        return await self._db.read(query)

    async def ping(self) -> None:
        await self._db.read(lambda conn: conn.execute(sql.PING))


def new_message_rows(
    submission: Submission,
    route: Route,
    message_id: str,
    now: float,
    due: float | None,
    claimed_by: str | None,
    pieced: bool = False,
) -> Batch:
    """Every row of a new message, parents first: the message, its body (`pieced`: an
    empty row, the body's pieces written before: storage.pieces), its recipients (those it
    may be sent to), its side rows, its first events."""
    batch = Batch()
    row = _message_row(submission, route, message_id, now, due, claimed_by)
    batch.add(sql.INSERT_MESSAGE, row)
    body = b"" if pieced else submission.content
    batch.add(sql.INSERT_BODY, {"message_id": message_id, "data": body})
    status = "sandbox" if submission.sandbox else "pending"
    batch.add(
        sql.INSERT_RECIPIENT,
        _recipient_rows(message_id, submission.recipients, status, None, now),
    )
    _add_side_rows(batch, submission, message_id, now)
    batch.add(events.INSERT_EVENT, _first_events(submission, message_id, now))
    return batch


def notification_rows(notice: Submission, message_id: str, now: float) -> Batch:
    """The rows of a notification to an envelope sender (gateway.queue.notify), written in
    the transaction of what it tells: routed by the default route, due now, claimed by no
    node (delivery's poller takes it)."""
    return new_message_rows(notice, Route(default=True), message_id, now, now, None)


def _message_row(
    submission: Submission,
    route: Route,
    message_id: str,
    now: float,
    due: float | None,
    claimed_by: str | None,
) -> dict[str, Any]:
    """The `message` row."""
    sandbox = submission.sandbox
    return {
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
        "due_at": due,
        "claimed_by": claimed_by,
        "last_response": None,
        "api_key_id": submission.sender.api_key_id if submission.sender else None,
        "user_id": submission.sender.user_id if submission.sender else None,
        "header_message_id": headers.message_id(submission.content),
        "scheduled_at": submission.scheduled_at,
        "client_address": address_key(submission.client_address)
        if submission.client_address
        else None,
    }


def _content_left(messages: Sequence[QueuedMessage], expected: Mapping[str, int]) -> int:
    """The content the storing transaction writes itself (the writer's `size`): the bodies
    not written in pieces before it (`expected`)."""
    return sum(len(message.content) for message in messages if message.id not in expected)


def _storing(
    batch: Batch, submission: Submission, message_id: str, now: float, expected: dict[str, int]
) -> Batch | Work:
    """What the writer runs to store a new message: its rows, once the pieces of its large
    bodies (`expected`: how many each) are found there; with an idempotency key, the
    key's reservation first and the rows only if it won (the holder's reservation, when
    another message has the key, is then the result)."""
    if submission.idempotency_key is None:
        if expected:
            batch.first = lambda conn: pieces.check(conn, expected)
        return batch
    reserve = idempotency.reserve_then_store

    def store(conn: Connection) -> idempotency.Hit | None:
        pieces.check(conn, expected)
        return reserve(conn, submission, message_id, now, batch)

    return store


Notice = Callable[[Connection], Batch | None]  # the rows of a notification, decided in SQL


def _if_claimed(
    batch: Batch,
    update: Executable,
    params: dict[str, Any],
    notice: Notice | None,
    conn: Connection,
) -> str | None:
    """An attempt's record as one function: its message update, then (only if this node
    still held the claim) the notification to the sender of the recipients still pending
    (read before the attempt's results are written), then every other row and the
    notification's. The message's stored status after all that; None: the claim had gone."""
    if not dml.run(conn, update, params):
        return None
    told = notice(conn) if notice is not None else None
    steps = batch.steps + (told.steps if told is not None else [])
    for statement, rows in steps:
        dml.run(conn, statement, rows)
    return sql.status_of(conn, str(params["m_id"]))


def _first_due(submission: Submission, now: float, claim: bool, lease: float) -> float | None:
    """A new message's due_at: never (sandbox: final at once), its scheduled time, the end
    of this node's lease when claimed here, else now."""
    if submission.sandbox:
        return None
    if submission.scheduled_at is not None:
        return max(submission.scheduled_at, now)
    return now + lease if claim else now


def _store_many(
    conn: Connection,
    prepared: Sequence[tuple[Submission, str, Batch]],
    now: float,
    expected: dict[str, int],
) -> list[idempotency.Hit | None]:
    """Inside one transaction: check that the large bodies' pieces (`expected`) are there,
    reserve each message's idempotency key (in order, so a key repeated within the batch is
    the first item's), then write the rows of those that won, statements of the same shape
    as one executemany (each message's parent row first)."""
    pieces.check(conn, expected)
    holders: list[idempotency.Hit | None] = []
    merged: dict[Any, list[dict[str, Any]]] = {}
    for submission, message_id, batch in prepared:
        holder = None
        if submission.idempotency_key is not None:
            holder = idempotency.reserve(conn, submission, message_id, now)
        holders.append(holder)
        if holder is None:
            for statement, params in batch.steps:
                merged.setdefault(statement, []).extend(
                    params if isinstance(params, list) else [params]
                )
    for statement, rows in merged.items():
        dml.run(conn, statement, rows)
    return holders


def _recipient_rows(
    message_id: str, emails: Sequence[str], status: str, response: str | None, now: float
) -> list[dict[str, Any]]:
    return [
        {
            "message_id": message_id,
            "email": email,
            "status": status,
            "message_created_at": now,
            "attempts": 0,
            "code": None,
            "response": response,
            "updated_at": now,
        }
        for email in emails
    ]


def _add_side_rows(batch: Batch, submission: Submission, message_id: str, now: float) -> None:
    """The side rows of an API submission: its meta row, its tags, the recipients it
    suppressed."""
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
    words = subject_words(headers.subject(submission.content))
    if words:
        batch.add(
            sql.INSERT_SUBJECT_WORD,
            [{"message_id": message_id, "word": w, "message_created_at": now} for w in words],
        )
    batch.add(
        sql.INSERT_RECIPIENT,
        _recipient_rows(
            message_id, submission.suppressed, "suppressed", "suppressed before sending", now
        ),
    )


def _first_events(submission: Submission, message_id: str, now: float) -> list[dict[str, Any]]:
    """A new message's events: queued (or sandbox) per recipient, suppressed per recipient
    left out."""
    sandbox = submission.sandbox
    status = "sandbox" if sandbox else "queued"
    kind = events.SANDBOX if sandbox else events.QUEUED
    return [events.row(kind, message_id, status, now, r) for r in submission.recipients] + [
        events.row(events.SUPPRESSED, message_id, status, now, r, response="suppressed")
        for r in submission.suppressed
    ]


def _result_rows(
    message_id: str, results: dict[str, DeliveryResult], now: float, number: int
) -> list[dict[str, Any]]:
    """Each recipient's update from its result in attempt `number`."""
    return [
        {
            "m_id": message_id,
            "m_email": rcpt,
            "status": states.recipient_status(result),
            "code": result.code,
            "response": result.describe(),
            "now": now,
            **_stamp(now, number),
        }
        for rcpt, result in results.items()
    ]


def _attempt_events(
    attempt: AttemptRecord, settled: states.Settled, now: float, number: int
) -> list[dict[str, Any]]:
    """An attempt's events, per recipient: a possible duplicate before the result (a
    recipient's last event is its state), the result, then a complaint."""
    results = settled.results

    def event(
        kind: str, rcpt: str, result: DeliveryResult | None = None, response: str | None = None
    ) -> dict[str, Any]:
        return events.row(
            kind, attempt.message.id, settled.status, now, rcpt,
            pool=attempt.pool, result=result, attempt=number, response=response,
        )  # fmt: skip

    rows = [
        event(events.POSSIBLE_DUPLICATE, rcpt, response=_POSSIBLE_DUPLICATE)
        for rcpt, result in results.items()
        if result.possible_duplicate
    ]
    rows += [
        event(events.result_type(result, rcpt in settled.expired), rcpt, result=result)
        for rcpt, result in results.items()
    ]
    rows += [
        event(events.COMPLAINT, rcpt, response=_COMPLAINT)
        for rcpt, result in results.items()
        if result.complaint
    ]
    return rows


_POSSIBLE_DUPLICATE = "no reply after the end of data: a retry may deliver it twice"
_COMPLAINT = "the recipient reported the message as spam"


def _stamp(now: float, attempt: int) -> dict[str, Any]:
    """What an attempt's message update leaves on the row (storage.queue_sql.RECORDED)."""
    return {"stamp_at": now, "stamp_attempt": attempt}


def _add_events_if_stamped(
    batch: Batch, message_id: str, rows: list[dict[str, Any]], now: float, attempt: int
) -> None:
    """Event rows written only if the batch's `first` update left its stamp on the message."""
    stamp = {"m_id": message_id, **_stamp(now, attempt)}
    batch.add(sql.RECORD_EVENT, [{**row, **stamp} for row in rows])


_CANCELLED = "cancelled by an operator"  # the response of what an operator cancels


_HOLDABLE = ("queued", "deferred")
_HELD = "held by an operator"
_UNREADABLE = "held: its stored body cannot be read whole"  # (Queue._set_aside)
_RELEASED = "released by an operator"


@dataclass(frozen=True)
class Changed:
    """What a hold or release did: `done` changed; `busy` being delivered or locked right
    now (left alone, try again later)."""

    done: list[str]
    busy: list[str]


@dataclass(frozen=True)
class Cancelled:
    cancelled: list[str]
    busy: list[str]  # being delivered or locked right now: not cancelled, try again later
