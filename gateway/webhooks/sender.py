"""The webhook sender: POSTs each webhook the events after its cursor, in order, signed.

One node at a time sends for a webhook: a scan leases it (storage.webhook_outbox.claim) when
it is active, due and has events after its cursor, and a task of its own then sends batches
strictly in commit order, so a message's events arrive in the order they happened. The task
keeps its lease (and its keep-alive connection) while work keeps coming, gives it back after
`idle` seconds without any, and after a failed POST, which also sets when the webhook may be
tried again (`schedule`, the last step repeating). The cursor moves past a batch only after a
2xx: at-least-once, and a receiver that is down loses nothing younger than `max_age`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import httpx
from sqlalchemy import Connection

from gateway import metrics
from gateway.queue import events
from gateway.security.hostguard import HostGuard, HostRefused, HostUnresolved
from gateway.webhooks.signing import HEADER, signature, unseal
from gateway.webhooks.urls import BadUrl, pin
from storage import webhook_outbox as outbox
from storage.db import Database
from storage.dkim_keys import Cipher
from storage.webhook_outbox import Position
from storage.webhooks import wanted_types
from storage.writer import StorageUnavailable, Writer

log = logging.getLogger("postern.webhooks")

MAX_RESPONSE = 64 * 1024  # bytes of a receiver's answer read (the rest is not wanted)
USER_AGENT = "Postern-Webhooks/1"
_SECRET = "the signing secret cannot be decrypted"


class WebhookSender:
    schedule: tuple[float, ...] = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)
    lease = 60.0  # renewed with every batch and while waiting; lapses if the node dies
    idle = 5.0  # seconds a task keeps its lease waiting for more events
    poll = 0.25  # seconds between looks for new events (other nodes write them too)
    # At most one POST of a partial batch per `linger` seconds: a steady stream goes out in
    # a few large POSTs (each costs ~10 ms of CPU whatever its size: a read, a write, an
    # HTTP round trip; measured), a backlog in full batches back to back, and a lone event
    # at once.
    linger = 0.5

    def __init__(
        self,
        db: Database,
        writer: Writer,
        box: Cipher,
        guard: HostGuard,
        node: str,
        *,
        batch_size: int = 500,
        timeout: float = 10.0,
        max_age: float = 3 * 86400.0,
        schedule: Sequence[float] | None = None,
    ) -> None:
        self._db = db
        self._writer = writer
        self._box = box
        self._guard = guard
        self.node = node
        self.batch_size = batch_size
        self.timeout = timeout
        self.max_age = max_age
        if schedule is not None:
            self.schedule = tuple(schedule)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._tls: ssl.SSLContext | None = None  # made on first use (_client)
        self._scanner: asyncio.Task[None] | None = None

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        self._scanner = asyncio.get_running_loop().create_task(self._scan(), name="webhook-scan")

    async def stop(self) -> None:
        """Cancel every POST in flight (its events stay owed) and give the leases back."""
        tasks = [t for t in (self._scanner, *self._tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._scanner = None
        self._tasks.clear()
        await self.release_all()

    async def release_all(self) -> None:
        try:
            await self._writer.submit(lambda conn: outbox.release(conn, self.node))
        except StorageUnavailable as error:  # they lapse on their own
            log.warning("could not release webhook leases: %s", error)

    # --- finding work -----------------------------------------------------------------

    async def _scan(self) -> None:
        while True:
            try:
                await self._claim()
            except Exception as error:  # storage trouble: look again later
                log.warning("looking for webhook work failed: %s", error)
            await asyncio.sleep(self.poll)

    async def _claim(self) -> None:
        busy = set(self._tasks)
        now = time.time()
        due = await self._db.read(lambda conn: outbox.due(conn, now, busy))
        if not due:
            return
        claimed = await self._writer.submit(
            lambda conn: outbox.claim(conn, self.node, now, now + self.lease, due)
        )
        for webhook in claimed:
            task = asyncio.get_running_loop().create_task(
                self._serve(webhook.id, webhook.failures), name=f"webhook-{webhook.id}"
            )
            self._tasks[webhook.id] = task
            task.add_done_callback(partial(self._finished, webhook.id))

    def _finished(self, webhook_id: str, _task: asyncio.Task[None]) -> None:
        self._tasks.pop(webhook_id, None)

    # --- sending ----------------------------------------------------------------------

    async def _serve(self, webhook_id: str, failures: int) -> None:
        """Send for one leased webhook until it runs dry, fails, or is taken away; then give
        the lease back unless it is lost or a failure's back-off now holds it."""
        hold = _Hold(webhook_id, failures)
        client: httpx.AsyncClient | None = None
        try:
            client = await self._client()
            hold.start(_clock(), self.idle)
            await self._send_batches(client, hold)
        except asyncio.CancelledError:
            hold.ours = False  # stop() gives every lease back at once
            raise
        except Exception as error:
            log.warning("webhook %s: sending failed: %s", webhook_id, error)
        finally:
            if client is not None:
                await client.aclose()
            if hold.ours:
                await self._give_back(webhook_id)

    async def _send_batches(self, client: httpx.AsyncClient, hold: _Hold) -> None:
        """Batch after batch, in commit order, until one of them ends this task's turn."""
        while True:
            now = time.time()
            work = await self._db.read(
                lambda conn: _next_batch(conn, hold.webhook_id, self.batch_size)
            )
            target = work.target
            if target is None or not target.active or target.holder != self.node:
                hold.ours = target is not None and target.holder == self.node  # deactivated
                return
            if not work.rows:
                if not await self._wait_for_events(hold, target, work.upto):
                    return
            elif target.written_at(work.rows[0]) < now - self.max_age:
                await self._drop(hold.webhook_id, target, work, now)
            elif (fill := self._time_to_fill(hold, work)) > 0:
                await asyncio.sleep(fill)
            elif not await self._deliver(client, hold, target, work):
                return

    async def _wait_for_events(
        self, hold: _Hold, target: outbox.WebhookState, upto: Position
    ) -> bool:
        """Nothing wanted to send: move the cursor past what the webhook does not want, keep
        the lease alive, and wait a poll. False when the task should end: idle too long, or
        the lease was lost."""
        if upto > target.cursor:  # events it does not want: skip them
            await self._advance(hold.webhook_id, target, upto)
        if _clock() >= hold.idle_until:
            return False
        if _clock() - hold.renewed > self.lease / 3:
            hold.ours = await self._renew(hold.webhook_id)
            hold.renewed = _clock()
            if not hold.ours:
                return False
        await asyncio.sleep(self.poll)
        return True

    def _time_to_fill(self, hold: _Hold, work: EventBatch) -> float:
        """Seconds to let a partial batch fill: what is left of `linger` since the last POST
        (none when the batch is full or that POST is older)."""
        since_post = _clock() - hold.posted_at
        if len(work.rows) < self.batch_size and since_post < self.linger:
            return self.linger - since_post
        return 0.0

    async def _deliver(
        self, client: httpx.AsyncClient, hold: _Hold, target: outbox.WebhookState, work: EventBatch
    ) -> bool:
        """POST the batch signed; False when the task should end (a failure, or the lease
        lost while recording the delivery)."""
        secret = self._secret(hold, target)
        if secret is None:
            await self._failed(hold.webhook_id, len(work.rows), hold.failures, None, _SECRET, 0)
            hold.ours = False
            return False
        delivered, held = await self._post(client, hold.webhook_id, secret, work, hold.failures)
        hold.ours = delivered and held
        if not hold.ours:
            return False
        hold.delivered(_clock(), self.idle)
        if len(work.rows) < self.batch_size:  # caught up: the next one can wait
            await asyncio.sleep(self.linger)
        return True

    def _secret(self, hold: _Hold, target: outbox.WebhookState) -> str | None:
        """The signing secret in clear (None: it cannot be), unsealed again only when the
        webhook's secret changed."""
        if hold.secret is None or hold.secret[0] != target.secret_enc:
            clear = self._unseal(hold.webhook_id, target.secret_enc)
            if clear is None:
                return None
            hold.secret = (target.secret_enc, clear)
        return hold.secret[1]

    async def _give_back(self, webhook_id: str) -> None:
        with contextlib.suppress(StorageUnavailable):
            await self._writer.submit(lambda conn: outbox.release(conn, self.node, webhook_id))

    async def _client(self) -> httpx.AsyncClient:
        """A client of its own for one webhook (one keep-alive connection)."""
        if self._tls is None:
            # Once, in a thread: the CA bundle costs ~55 ms of CPU and the first transport
            # imports the rest of the HTTP stack; on the event loop both would stall the relay.
            self._tls = await asyncio.to_thread(_tls_context)
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        return httpx.AsyncClient(
            follow_redirects=False, limits=limits, trust_env=False, verify=self._tls
        )

    def _unseal(self, webhook_id: str, token: str) -> str | None:
        """The secret, or None (logged): never sign with anything else."""
        try:
            return unseal(self._box, webhook_id, token)
        except Exception as error:
            log.error("webhook %s: %s: %s", webhook_id, _SECRET, error)
            return None

    async def _renew(self, webhook_id: str) -> bool:
        until = time.time() + self.lease
        held: bool = await self._writer.submit(
            lambda conn: outbox.renew(conn, webhook_id, self.node, until)
        )
        return held

    async def _advance(self, webhook_id: str, seen: outbox.WebhookState, new: Position) -> None:
        await self._writer.submit(
            lambda conn: outbox.advance(conn, webhook_id, self.node, seen, new)
        )

    async def _drop(
        self, webhook_id: str, target: outbox.WebhookState, work: EventBatch, now: float
    ) -> None:
        """Skip what is past max_age: the batch's old events, and on to where events younger
        than max_age start. Counted by a read first: the write only moves the cursor."""
        cutoff = now - self.max_age
        old = target.cursor
        last_old = max(outbox.position_of(r) for r in work.rows if target.written_at(r) < cutoff)

        def skip_to(conn: Connection) -> tuple[Position, int]:
            if target.replayed_at >= cutoff:  # replayed events are young again: step by step
                new = last_old
            else:
                young = outbox.young_from(conn, old, cutoff)
                new = max(last_old, outbox.before(young)) if young is not None else work.upto
            new = min(new, work.upto)
            return new, outbox.count_between(conn, old, new, wanted(target))

        new, dropped = await self._db.read(skip_to)
        attempt = outbox.attempt_row(
            webhook_id, now, dropped, "dropped", error="older than max_age"
        )

        def record(conn: Connection) -> bool:
            if not outbox.advance(conn, webhook_id, self.node, target, new):
                return False
            outbox.log_attempt(conn, attempt)
            return True

        if await self._writer.submit(record) and dropped:
            metrics.WEBHOOK_DELIVERIES.labels(status="dropped").inc(dropped)
            log.warning(
                "webhook %s: dropped %d events older than max_age (%.0f s) undelivered",
                webhook_id,
                dropped,
                self.max_age,
            )

    async def _post(
        self,
        client: httpx.AsyncClient,
        webhook_id: str,
        secret: str,
        work: EventBatch,
        failures: int,
    ) -> tuple[bool, bool]:
        """One POST of a batch and its record: (delivered, lease still held)."""
        assert work.target is not None
        body = ('{"events":[' + ",".join(row.json for row in work.rows) + "]}").encode()
        started = time.time()
        status: int | None = None
        error = ""
        try:
            status = await asyncio.wait_for(
                self._send(client, webhook_id, work.target.url, secret, body), self.timeout
            )
        except TimeoutError:
            error = f"no answer within {self.timeout:g} s"
        except (httpx.HTTPError, OSError, HostRefused, HostUnresolved, BadUrl) as problem:
            error = str(problem) or problem.__class__.__name__
        now = time.time()
        duration = (now - started) * 1000
        count = len(work.rows)
        if status is not None and 200 <= status < 300:
            attempt = outbox.attempt_row(webhook_id, now, count, "delivered", status, "", duration)
            # A batch that was not full held every wanted event up to the horizon.
            full = count >= self.batch_size
            new = outbox.position_of(work.rows[-1]) if full else work.upto
            moved = (work.target, new)
            until = now + self.lease
            held: bool = await self._writer.submit(
                lambda conn: outbox.delivered(conn, webhook_id, self.node, moved, attempt, until)
            )
            metrics.WEBHOOK_DELIVERIES.labels(status="delivered").inc(count)
            return True, held
        if status is not None:
            error = error or f"HTTP {status}"
        await self._failed(webhook_id, count, failures, status, error, duration)
        return False, False

    async def _failed(
        self,
        webhook_id: str,
        count: int,
        failures: int,
        status: int | None,
        error: str,
        duration: float,
    ) -> None:
        """Record a failed attempt; the webhook waits its back-off and loses its lease."""
        now = time.time()
        failures += 1
        retry_at = now + self.schedule[min(failures, len(self.schedule)) - 1]
        attempt = outbox.attempt_row(webhook_id, now, count, "failed", status, error, duration)
        await self._writer.submit(
            lambda conn: outbox.failed(conn, webhook_id, self.node, attempt, retry_at)
        )
        metrics.WEBHOOK_DELIVERIES.labels(status="failed").inc(count)
        log.info(
            "webhook %s: POST of %d events failed (%s); attempt %d, next in %.0f s",
            webhook_id,
            count,
            error,
            failures,
            retry_at - now,
        )

    async def _send(
        self, client: httpx.AsyncClient, webhook_id: str, url: str, secret: str, body: bytes
    ) -> int:
        target = await pin(self._guard, url)
        headers = {
            **target.headers,
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Postern-Webhook-Id": webhook_id,
            HEADER: signature(secret, int(time.time()), body),
        }
        request = client.build_request(
            "POST", target.url, content=body, headers=headers, extensions=target.extensions
        )
        response = await client.send(request, stream=True)
        try:
            seen = 0
            async for chunk in response.aiter_raw():
                seen += len(chunk)
                if seen > MAX_RESPONSE:
                    break
        finally:
            await response.aclose()
        return response.status_code


def _clock() -> float:
    """The event loop's monotonic clock (what leases, idling and lingering are timed by)."""
    return asyncio.get_running_loop().time()


def _tls_context() -> ssl.SSLContext:
    context = httpx.create_ssl_context()
    httpx.AsyncHTTPTransport(verify=context)  # imports what the first request would
    return context


def wanted(target: outbox.WebhookState) -> frozenset[str] | None:
    """The event types the webhook receives (None = every type)."""
    return wanted_types(target.event_types, target.final_only, events.FINAL)


@dataclass
class _Hold:
    """One task's turn at a leased webhook, by the event loop's clock."""

    webhook_id: str
    failures: int  # failed POSTs in a row so far (the back-off step)
    renewed: float = 0.0  # when the lease was last taken, renewed or extended by a delivery
    idle_until: float = 0.0  # when the task gives the lease back if nothing is owed
    posted_at: float = float("-inf")  # when the last batch went out
    secret: tuple[str, str] | None = None  # (ciphertext, clear) of the signing secret
    ours: bool = True  # whether the lease is still this node's to give back

    def start(self, now: float, idle: float) -> None:
        """The turn starts at `now`, the lease just taken."""
        self.renewed = now
        self.idle_until = now + idle

    def delivered(self, now: float, idle: float) -> None:
        """A batch went out at `now`; recording it extended the lease."""
        self.failures = 0
        self.posted_at = now
        self.start(now, idle)


@dataclass(frozen=True)
class EventBatch:
    target: outbox.WebhookState | None  # the webhook as it is now (None: deleted)
    rows: list[outbox.Owed]  # the next events it wants, in their public JSON
    upto: Position  # the horizon they were read up to


def _next_batch(conn: Connection, webhook_id: str, limit: int) -> EventBatch:
    target = outbox.target(conn, webhook_id)
    if target is None:
        return EventBatch(None, [], outbox.START)
    upto = outbox.horizon(conn)
    return EventBatch(target, outbox.batch(conn, target.cursor, upto, wanted(target), limit), upto)
