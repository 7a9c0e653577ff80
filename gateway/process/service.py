"""Builds and wires the parts of `postern serve`, and runs their lifecycle.

The message path, once:
  1. A client hands over a message: SMTP (gateway.smtpd) or HTTP (api).
  2. Intake applies policy: suppression, idempotency, routing (routing, pure), DKIM.
  3. The queue stores message, body and recipients in one group-committed transaction,
     claimed by this node; only then does the client get its 250 / 200 / 202.
  4. A delivery worker takes the message from memory (or the poller claims it from storage
     when it is due again), picks the route's pools by priority and health, and sends it
     over a pooled upstream session (upstream).
  5. Per-recipient results are recorded in one transaction: delivered, deferred (retried
     on `retry_schedule`), or bounced (5xx or past `max_age`); a 5.1.x bounce suppresses.

Lifecycle: start -> run until SIGTERM/SIGINT -> stop listeners, let end-of-data commits
finish, drain in-flight deliveries (within `drain_timeout` of the signal, cutting off what
still waits for an upstream), release what is left, exit 0. A second signal forces an
immediate exit. SIGHUP reloads `[[pools]]`, `[[routes]]` and `[policy]` from the config file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from functools import partial
from typing import NoReturn

from sqlalchemy.exc import SQLAlchemyError

from api.app import MetricsAccess, create_app, metrics_app
from api.context import ApiContext, People
from api.management import Management
from gateway import metrics
from gateway.accounts.inbox import Inbox, InboxSettings
from gateway.accounts.sync import AccountSync, SyncSettings
from gateway.bounces.ingest import BounceIngest
from gateway.bounces.ingest import Settings as BounceSettings
from gateway.bounces.returnpath import VERP_KEY, ReturnPath
from gateway.bounces.rules import load as load_rules
from gateway.config import Config, ConfigError, load, worker_share
from gateway.delivery import warmup
from gateway.delivery.direct import DirectRoutes
from gateway.delivery.throttle import Throttle
from gateway.delivery.upstream import SessionSettings
from gateway.delivery.warmup import WarmupGate
from gateway.delivery.workers import Delivery, PoolRegistry
from gateway.dkim.cache import Signers
from gateway.dns import Resolver
from gateway.intake.attachments import AttachmentRules
from gateway.intake.identities import Identities
from gateway.intake.pipeline import Intake
from gateway.people.passwords import Passwords
from gateway.people.sessions import Lifetimes, Sessions, purge_expired_sessions
from gateway.people.users import Users
from gateway.process import account_routes, logs
from gateway.process.acceptor import Acceptor
from gateway.process.account_routes import AccountRoutes
from gateway.process.http_server import DoorLimits, HttpDoor
from gateway.process.instance import DataDirLock, database_of
from gateway.process.pools import WATCH_INTERVAL, PoolSync
from gateway.process.startup import Prepared, StartupError, WorkerRole, prepare
from gateway.queue import rollup
from gateway.queue.notify import Notifier, notifier_for
from gateway.queue.retention import Retention
from gateway.queue.store import Queue
from gateway.queue.suppressions import FOLLOW_INTERVAL
from gateway.queue.upkeep import (
    GAUGE_INTERVAL,
    PURGE_INTERVAL,
    count_messages,
    purge_idempotency_keys,
)
from gateway.reputation.dnsbl import BlocklistCheck
from gateway.reputation.watch import ReputationWatch, WatchSettings
from gateway.security.hostguard import HostGuard
from gateway.security.ratelimit import RateLimiter
from gateway.security.secrets import SecretBox, SecretError, bind_to_database
from gateway.security.shared_rate import SharedRateLimiter, SharedTableError
from gateway.smtpd.bounce_listener import BounceHandler
from gateway.smtpd.server import PosternHandler
from gateway.tasks import Loops, watch_lag
from gateway.webhooks.node import Webhooks, start_webhooks
from storage.auth_failures import AuthFailures
from storage.db import (
    Database,
    SchemaError,
    create_schema,
    database_url,
    open_database,
    prepare_data_dir,
)
from storage.keys import KeyStore
from storage.writer import StorageUnavailable, Writer
from storage.writer_link import WriterLink
from web.app import dashboard

log = logging.getLogger("postern")


# What SIGHUP applies; every other section needs a restart.
RELOADED = ("pools", "policy", "routes")


@dataclass(frozen=True)
class Storage:
    db: Database
    writer: Writer  # every write, group-committed
    queue: Queue


@dataclass(frozen=True)
class Outbound:
    """How this node reaches hosts. SSRF: one guard for every connection to a host someone
    else named (pools, pool tests); MX targets and webhook URLs get a stricter one each
    (public addresses only, by default: a key with the webhooks scope must not reach
    internal services)."""

    resolver: Resolver
    pools: HostGuard
    mx: HostGuard
    webhooks: HostGuard


class Service:
    """`postern serve`. start() makes the parts in phases: prepare (gateway.process.startup:
    limits, certificate, secret key, sockets), storage, delivery (the live pools loaded),
    intake (signing, identities), background work, and last the doors. stop() ends the
    parts made."""

    def __init__(
        self,
        config: Config,
        drain_timeout: float = 10.0,
        config_path: str | None = None,
        role: WorkerRole | None = None,
    ) -> None:
        self.config = config
        # One worker of several (gateway.process.supervisor), or None: the only process.
        self.role = role
        # What a node runs once: HTTP, the sweeps, the IMAP sync, the webhook senders.
        self.primary = role is None or role.primary
        # The node's workers: each takes its share of the node's connection caps.
        self.processes = role.count if role is not None else 1
        self.config_path = config_path  # what SIGHUP reads again (None: as at start)
        self.drain_timeout = drain_timeout  # seconds from the stop signal (README: 10 s)
        self._stopping = asyncio.Event()
        self._reloads: set[asyncio.Task[None]] = set()
        self._started = False  # SIGHUP before this: ignored (start reads the file anyway)
        # The parts, in the order start makes them; None until made.
        self._lock: DataDirLock | None = None  # one serve per data_dir
        self.box: SecretBox | None = None
        self.bounces: BounceIngest | None = None  # reports that came back (gateway.bounces)
        self.db: Database | None = None
        self.writer: Writer | None = None
        self.queue: Queue | None = None
        self.registry: PoolRegistry | None = None  # the live pools
        self.delivery: Delivery | None = None
        self.warmup: WarmupGate | None = None  # accounts' and pools' warmups (delivery's)
        # The warmups' clock: their days and hours (a test moves it; the queue keeps time).
        self.warmup_clock: Callable[[], float] = time.time
        self.pool_sync: PoolSync | None = None  # keeps the registry equal to storage
        self.account_routes: AccountRoutes | None = None  # connected accounts' upstreams
        self.signers: Signers | None = None
        self.identities: Identities | None = None
        self.intake: Intake | None = None
        self.retention: Retention | None = None
        self.rollup: rollup.Rollup | None = None  # the charted events per minute
        self.webhooks: Webhooks | None = None
        self.account_sync: AccountSync | None = None  # connected accounts' inboxes
        self.reputation: ReputationWatch | None = None  # the evaluation (one node: a lease)
        self.loops = Loops()  # periodic upkeep: caches, the queue gauge, purges
        self.smtp_handler: PosternHandler | None = None
        self.bounce_handler: BounceHandler | None = None  # [bounces] listen
        self._acceptors: list[Acceptor] = []  # the SMTP listeners (bounces' too)
        self.api: ApiContext | None = None
        self.people: People | None = None  # users and sessions, for the HTTP door
        self._http: list[HttpDoor] = []

    # --- start ------------------------------------------------------------------------

    async def start(self) -> None:
        # A SIGHUP (a reload by systemd, say) during start-up, which may include a schema
        # upgrade, must not end the process as SIGHUP's default action does.
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # main thread only
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._reload_soon)
        data_dir = self.config.server.data_dir
        try:
            prepare_data_dir(data_dir)
            # One serve per data_dir (gateway.process.instance): held until stop() or the exit;
            # by the supervisor when this is one of its workers.
            if self.role is None:
                self._lock = DataDirLock.acquire(data_dir)
        except OSError as error:
            raise StartupError(f"cannot use data_dir {data_dir}: {error.strerror}") from None
        try:
            await self._start()
        except BaseException:
            await self._undo_start()
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            raise
        self._started = True

    async def _start(self) -> None:
        config = self.config
        ready = prepare(config, self.role)
        self.box = ready.box
        storage = await self._open_storage(ready)
        outbound = self._outbound()
        registry, delivery, pools = await self._start_delivery(ready, storage, outbound)
        intake, identities = await self._start_intake(ready, storage, registry, delivery)
        await self._start_background(ready, storage, outbound, pools)
        manage = Management.build(
            config, ready.box, identities, pools, outbound.pools, outbound.webhooks,
            account_routes=self.account_routes, warmup=self.warmup,
        )  # fmt: skip
        await self._open_doors(ready, storage, intake, manage, delivery.wake)
        host, port = config.http.listen
        http = f"{host}:{port}" if ready.http_socket else "in worker 0"
        log.info(
            "postern %s listening: smtp %s, http %s; database %s",
            ready.node,
            ", ".join(f"{h}:{p}" for h, p in config.smtp.listen),
            http,
            database_of(config),
        )

    async def _open_storage(self, ready: Prepared) -> Storage:
        """The database (schema upgraded), its writer, the queue on them."""
        config = self.config
        # A worker of several opens its share of the node's PostgreSQL connections (10 + 10).
        url = database_url(config.storage.url, config.server.data_dir)
        db = self.db = open_database(url, connections=worker_share(10, self.processes, least=2))
        try:
            await create_schema(db)
        except SchemaError as error:
            raise StartupError(str(error)) from None
        except (OSError, SQLAlchemyError) as error:
            raise StartupError(f"cannot open the database: {_first_line(error)}") from None
        try:
            await bind_to_database(db, ready.box)
        except SecretError as error:
            raise StartupError(str(error)) from None
        db.watch_write_lock(
            waited=metrics.STORAGE_LOCK_WAIT.inc, held=metrics.STORAGE_LOCK_HELD.inc
        )
        link = await self._writer_link(db)
        writer = self.writer = Writer(
            db, on_failure=_count_write_failure, on_commit=_count_commit, link=link
        )
        writer.start()
        delivery = config.delivery
        # Renewed every lease/4 while this node holds a message; lapses only if it dies.
        lease = 120.0
        notifier = notifier_for(self.config.server.hostname, delivery)
        queue = self.queue = Queue(
            db, writer, ready.node, delivery.retry_schedule, delivery.max_age, lease,
            notifier=notifier,
        )  # fmt: skip
        await queue.release_claims()  # whatever this node held when it last stopped
        await queue.suppressions.reload()
        self.bounces = self._bounce_ingest(ready, db, queue, notifier)
        return Storage(db, writer, queue)

    async def _writer_link(self, db: Database) -> WriterLink | None:
        """The line to the node's writer process, when the supervisor started one."""
        path = self.role.writer if self.role is not None else None
        dialect = db.write_dialect
        if path is None or dialect is None:
            return None
        link = WriterLink(path, dialect, on_lost=_writer_lost)
        return link if await link.connect() else None

    def _bounce_ingest(
        self, ready: Prepared, db: Database, queue: Queue, notifier: Notifier | None
    ) -> BounceIngest:
        """Where reports that came back go in (the API's upload; the IMAP sync and the
        bounce listener when they run): the user's rules before the shipped ones; a
        recipient of SMTP mail they bounce is told to its sender as the queue tells one."""
        bounces = self.config.bounces
        settings = BounceSettings(
            bounces.soft_limit,
            bounces.soft_window,
            bounces.max_report_size,
            retention=self.config.storage.retention,
        )
        rules = load_rules(bounces.rules_file or None)
        return BounceIngest(
            db, self.return_path(ready), rules, settings, queue.suppressions, notifier=notifier
        )

    def _outbound(self) -> Outbound:
        config = self.config
        resolver = Resolver(config.dns.nameservers)
        guard_resolver = resolver if config.dns.nameservers else None
        deny = config.security.deny_networks
        return Outbound(
            resolver=resolver,
            pools=HostGuard(deny, resolver=guard_resolver),
            mx=HostGuard(
                deny, allow_private=config.delivery.mx_allow_private, resolver=guard_resolver
            ),
            webhooks=HostGuard(
                deny, allow_private=config.webhooks.allow_private, resolver=guard_resolver
            ),
        )

    async def _start_delivery(
        self, ready: Prepared, storage: Storage, outbound: Outbound
    ) -> tuple[PoolRegistry, Delivery, PoolSync]:
        """The live pools loaded from storage, then the workers."""
        config = self.config.delivery
        session = SessionSettings(
            local_hostname=self.config.server.hostname,
            connect_timeout=config.connect_timeout,
            command_timeout=config.command_timeout,
            idle_timeout=config.idle_timeout,
            max_messages_per_connection=config.max_messages_per_connection,
            cooldown=min(10.0, config.retry_schedule[0]),
            guard=outbound.pools,
        )
        # With workers, each opens its share of a pool's max_connections (the node's cap).
        registry = self.registry = PoolRegistry(session, self.processes)
        direct = DirectRoutes(
            outbound.resolver, session, config.mx_port, guard=outbound.mx, processes=self.processes
        )
        db, writer, queue = storage.db, storage.writer, storage.queue
        gate = self.warmup = WarmupGate(
            db, writer, self.config.warmup, self.warmup_clock, node=ready.node,
            keep_events=self.config.storage.retention,
        )  # fmt: skip
        await gate.follow()
        delivery = self.delivery = Delivery(
            queue,
            registry,
            workers=config.workers,
            direct=direct,
            throttle=Throttle(db, writer),
            return_path=self.return_path(ready),
            warmup=gate,
        )
        pools = self.pool_sync = PoolSync(
            db, ready.box, registry, queue, delivery.wake, self.config.pools
        )
        await pools.changed()
        # Connected accounts: each its own upstream beside the pools (gateway.routing).
        accounts = self.account_routes = AccountRoutes(
            db, ready.box, registry, queue, delivery.wake
        )
        await accounts.changed()
        delivery.start()
        delivery.wake()
        return registry, delivery, pools

    def return_path(self, ready: Prepared) -> ReturnPath:
        """The VERP return path ([bounces] domain), its key derived from the secret key:
        the same on every node, so any node verifies what another sent."""
        return ReturnPath(self.config.bounces.domain, ready.box.derive(VERP_KEY))

    async def _start_intake(
        self, ready: Prepared, storage: Storage, registry: PoolRegistry, delivery: Delivery
    ) -> tuple[Intake, Identities]:
        """DKIM signing, the senders' identities, and the policy pipeline of both doors."""
        db = storage.db
        # A key made by `postern dkim generate` in another process is picked up within 2 s.
        # Each worker signs on its own event loop (gateway.dkim.signer says why).
        signers = self.signers = Signers(db, ready.box, ttl=2.0)
        await signers.reload()
        # Verified domains and aliases (routing, policy.sender); other nodes' changes within 2 s.
        enforce = self.config.policy.sender == "verified"
        identities = self.identities = Identities(db, enforce=enforce, routes=self.config.routes)
        await identities.reload()
        # Intake meets delivery only through gateway.queue.handoff: the registry routes,
        # delivery takes the messages it stores.
        self.intake = Intake(
            storage.queue,
            registry,
            delivery,
            signers,
            identities=identities,
            return_path=self.return_path(ready),
        )
        return self.intake, identities

    async def _start_background(
        self, ready: Prepared, storage: Storage, outbound: Outbound, pools: PoolSync
    ) -> None:
        """The retention sweep, the event webhooks, and the loops keeping caches current."""
        config = self.config
        db, writer, queue = storage.db, storage.writer, storage.queue
        loops = self.loops
        loops.run(watch_lag, "event loop lag probe")
        # Every process keeps its caches current (other workers and nodes change them).
        loops.every(FOLLOW_INTERVAL, queue.suppressions.follow, "suppression list refresh")
        loops.every(WATCH_INTERVAL, pools.look, "checking for pool changes")  # other nodes
        if self.warmup is not None:  # each process's gate follows the warmups
            loops.every(warmup.FOLLOW_INTERVAL, self.warmup.follow, "following warmups")
        if self.account_routes is not None:
            watch = account_routes.WATCH_INTERVAL
            loops.every(watch, self.account_routes.look, "checking for account changes")
        if not self.primary:
            # The rest runs in worker 0 alone. The webhook senders and the IMAP sync take
            # leases and would be safe in every worker, but would only multiply their scans
            # (and IMAP IDLE connections, which servers cap per user); the sweeps and the
            # gauge take none and would repeat each other's work.
            return
        self.retention = Retention(
            writer,
            config.storage.retention,
            soft_window=config.bounces.soft_window,
            body_keep=config.storage.body_retention,
        )
        self.retention.start()
        self.webhooks = await start_webhooks(
            config.webhooks, db, writer, ready.box, outbound.webhooks, ready.node
        )
        loops.every(GAUGE_INTERVAL, partial(count_messages, queue), "queue gauge refresh")
        if self.warmup is not None:  # under a lease: one node's worker 0 checks
            check = config.warmup.check_interval
            loops.every(check, self.warmup.check_spikes, "checking warmups for spikes")
        purge = partial(purge_idempotency_keys, db)  # both doors reserve keys
        loops.every(PURGE_INTERVAL, purge, "purging idempotency keys", at_once=True)
        # The Live page's and the pools page's counts per minute, by one node of many (a lease).
        self.rollup = rollup.Rollup(db, ready.node)
        await self.rollup.release()  # whatever this node held when it last stopped
        loops.every(rollup.INTERVAL, self.rollup.run_once, "rolling up events", at_once=True)
        await self._start_account_sync(ready, db, outbound)
        if config.blocklists.enabled:  # a round per interval, by one node of many (a lease)
            dnsbl = BlocklistCheck.build(db, config.blocklists, config.dns.nameservers, ready.node)
            await dnsbl.release()  # whatever this node held when it last stopped
            loops.every(dnsbl.watch, dnsbl.run_once, "checking blocklists", at_once=True)
        self._start_reputation(ready, db)

    def _people(self, db: Database, keys: KeyStore) -> People:
        """Users and their sessions (purged in a loop: idempotent, so on every node). A
        change made here reaches this node's caches of sessions and keys at once."""
        auth = self.config.auth
        sessions = Sessions(db, Lifetimes(auth.session_idle, auth.session_absolute))
        users = Users(db, Passwords(), forget=(sessions.forget_user, keys.forget_user))
        if self.primary:
            purge = partial(purge_expired_sessions, sessions)
            self.loops.every(PURGE_INTERVAL, purge, "purging expired sessions", at_once=True)
        return People(users, sessions)

    def _start_reputation(self, ready: Prepared, db: Database) -> None:
        """The reputation evaluation: every node tries, the lease lets one run it at a time.
        With `pause_on_risk`, an account or pool at risk has its sending paused in the
        transaction that records the crossing (storage.warmup.pause_in: every node's gate
        follows within seconds) until a person resumes it."""
        settings = self.config.reputation
        if not settings.enabled:
            return
        watch_settings = WatchSettings(
            ready.node, settings.interval, settings.threshold, settings.pause_on_risk,
            settings.setup_interval, self.config.storage.retention,
            self.config.blocklists.sending_ips,
        )  # fmt: skip
        # no cache, as the domains' own check: a record fixed a minute ago counts
        resolver = Resolver(self.config.dns.nameservers, cache_size=0)
        self.reputation = ReputationWatch(db, resolver, watch_settings)
        self.loops.every(settings.interval, self._evaluate, "evaluating sender reputation", True)

    async def _evaluate(self) -> None:
        if self.reputation is not None:
            await self.reputation.run_once()

    async def _start_account_sync(self, ready: Prepared, db: Database, outbound: Outbound) -> None:
        """Connected accounts' inboxes, each synced by one node at a time (a lease in
        storage); the pools' SSRF guard, as an account's servers are named like a pool's.
        With the report processing, each sync also hands the inbox's new mail over (and
        IDLE, where offered, wakes it)."""
        accounts, bounces = self.config.accounts, self.config.bounces
        settings = SyncSettings(
            ready.node, accounts.sync_interval, accounts.timeout, idle=bounces.idle
        )
        inbox = None
        if self.bounces is not None:
            inbox_settings = InboxSettings(
                max_size=bounces.max_inbound_size, budget=accounts.timeout,
                processed_folder=bounces.processed_folder,
            )  # fmt: skip
            inbox = Inbox(db, self.bounces, inbox_settings, ready.node)
        sync = AccountSync(db, ready.box, outbound.pools, settings, inbox)
        self.account_sync = sync
        await sync.release()  # whatever this node held when it last stopped
        loops = self.loops
        loops.every(accounts.sync_interval, sync.run_once, "syncing connected accounts", True)

    def _rate_limiter(self) -> RateLimiter:
        """The per-key buckets: in memory for one process; a worker's, in the table every
        worker shares (its own, in memory, should that table be unusable)."""
        rate = self.config.http.rate_limit
        fd = self.role.rates if self.role is not None else None
        if fd is None:
            return RateLimiter(rate)
        with contextlib.suppress(OSError):
            os.set_inheritable(fd, False)  # the workers', not their children's
        try:
            return SharedRateLimiter(rate, fd)
        except SharedTableError as error:
            log.error("%s: this worker counts the per-key rate limit on its own", error)
            return RateLimiter(rate)

    async def _open_doors(
        self,
        ready: Prepared,
        storage: Storage,
        intake: Intake,
        manage: Management,
        wake: Callable[[], None],
    ) -> None:
        """SMTP, then the API on HTTP (and /metrics): from here on, mail comes in."""
        config = self.config
        keys = KeyStore(storage.db)  # API keys: HTTP bearer tokens and SMTP AUTH passwords
        self.people = self._people(storage.db, keys)
        limiter = self._rate_limiter()  # per key, across both doors (and workers)
        failures = AuthFailures(storage.db)  # AUTH's budgets, in storage
        handler = PosternHandler(intake, ready.smtp_limits, keys, storage.writer, limiter, failures)
        self.smtp_handler = handler
        for sock in ready.smtp_sockets:
            self._acceptors.append(Acceptor(sock, handler.protocol))
        await self._open_bounce_listener(ready)
        self.api = ApiContext(
            db=storage.db,
            writer=storage.writer,
            intake=intake,
            keys=keys,
            limiter=limiter,
            suppressions=storage.queue.suppressions,
            hostname=config.server.hostname,
            handoff_timeout=config.delivery.handoff_timeout,
            max_body_size=config.http.max_body_size,
            body_timeout=config.http.body_timeout,
            max_message_size=config.smtp.max_message_size,
            max_header_size=config.smtp.max_header_size,
            queue=storage.queue,
            wake=wake,
            manage=manage,
            people=self.people,
            public_url=config.http.public_url,
            bounces=self.bounces,
            max_report_size=config.bounces.max_report_size,
            attachment_rules=AttachmentRules(
                config.http.max_attachments_size, config.http.refuse_attachment_types
            ),
            reputation_threshold=config.reputation.threshold,
            sending_ips=config.blocklists.sending_ips,
        )
        self._start_http(ready, storage, self.api)

    async def _open_bounce_listener(self, ready: Prepared) -> None:
        """[bounces] listen: reports for the bounce domain, handed to the processing."""
        if ready.bounce_socket is None or ready.bounce_limits is None:
            return
        if self.bounces is None:
            ready.bounce_socket.close()
            log.warning("bounces.listen is set but reports cannot be processed yet: not listening")
            return
        handler = BounceHandler(self.bounces, self.return_path(ready), ready.bounce_limits)
        self.bounce_handler = handler
        self._acceptors.append(Acceptor(ready.bounce_socket, handler.protocol))
        log.info("bounce listener on %s:%d", *self.config.bounces.listen or ("", 0))

    def _start_http(self, ready: Prepared, storage: Storage, api: ApiContext) -> None:
        """The API on http.listen; /metrics there or alone on http.metrics_listen."""
        http = self.config.http
        if ready.http_socket is None:
            return  # another worker serves HTTP
        need_key = http.metrics_need_key()
        metrics_socket = ready.metrics_socket
        access: MetricsAccess = "elsewhere" if metrics_socket else "key" if need_key else "open"
        app = create_app(storage.queue.ping, api, storage.writer.readiness, access)
        app.router.routes.append(dashboard(api))  # the dashboard's pages, after the API's
        limits = DoorLimits("http", ready.budget.caps["http"], http.header_timeout)
        self._http.append(HttpDoor(app, ready.http_socket, limits))
        if metrics_socket is not None:
            limits = DoorLimits("metrics", ready.budget.caps["metrics"], http.header_timeout)
            self._http.append(HttpDoor(metrics_app(api, need_key), metrics_socket, limits))

    # --- run --------------------------------------------------------------------------

    def request_stop(self, sig: signal.Signals | None = None) -> None:
        name = sig.name if sig is not None else "stop request"
        if self._stopping.is_set():
            if self.role is not None:
                # A worker gets SIGTERM from the supervisor and, under systemd's default
                # KillMode=control-group, from systemd too: neither means "at once"; the
                # supervisor's second signal arrives as SIGUSR1 (exit_now).
                log.debug("%s: already stopping", name)
                return
            self.exit_now(sig)
        log.info(
            "%s: stopping within %gs (send it again to exit at once)", name, self.drain_timeout
        )
        self._stopping.set()

    def exit_now(self, sig: signal.Signals | None = None) -> None:
        """A second stop signal: exit without draining."""
        name = sig.name if sig is not None else "stop request"
        log.warning(
            "second stop signal (%s): exiting at once, without draining (messages in "
            "flight are retried when a node starts)",
            name,
        )
        logs.flush()  # os._exit skips atexit: the warning must be written first
        os._exit(1)

    async def run_until_stopped(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig)
        if self.role is not None:  # the supervisor's "at once" (gateway.process.supervisor)
            loop.add_signal_handler(signal.SIGUSR1, self.exit_now, signal.SIGUSR1)
        loop.add_signal_handler(signal.SIGHUP, self._reload_soon)
        await self._stopping.wait()
        await self.stop()

    # --- SIGHUP -----------------------------------------------------------------------

    def _reload_soon(self) -> None:
        if not self._started:
            log.warning("SIGHUP while starting: ignored; send it again once started")
            return
        if self._stopping.is_set():
            log.info("SIGHUP while stopping: ignored")
            return
        task = asyncio.get_running_loop().create_task(self.reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload(self) -> None:
        """Read the config file again and apply its `[[pools]]`, `[[routes]]` and `[policy]`;
        a file that does not load changes nothing. Logged either way, never fatal."""
        identities, pools = self.identities, self.pool_sync
        if identities is None or pools is None:
            return  # not started: start reads the file anyway
        try:
            fresh = load(self.config_path)
        except ConfigError as error:
            log.error("SIGHUP: configuration not reloaded, the running one stays: %s", error)
            return
        ignored = [
            part.name for part in fields(fresh)
            if part.name not in RELOADED
            and getattr(fresh, part.name) != getattr(self.config, part.name)
        ]  # fmt: skip
        for pool in fresh.pools:  # the environment is the one this process started with
            if pool.password_env and pool.password_env not in os.environ:
                log.error(
                    "SIGHUP: pool %r: %s is not set in this process's environment; a secret "
                    "added or changed in the environment (EnvironmentFile) takes a restart",
                    pool.name,
                    pool.password_env,
                )
        self.config = replace(
            self.config, pools=fresh.pools, policy=fresh.policy, routes=fresh.routes
        )
        identities.enforce = fresh.policy.sender == "verified"
        identities.use_config_routes(fresh.routes)
        pools.declared = fresh.pools
        try:
            await pools.changed()  # serialised with the API's changes
        except Exception as error:  # storage down: the old pools keep running
            log.error("SIGHUP: pools not reloaded: %s", _first_line(error))
            return
        log.info(
            "SIGHUP: reloaded %d pool(s) from the file (%s), %d route(s) and policy.sender = %r",
            len(fresh.pools),
            ", ".join(pool.name for pool in fresh.pools) or "none",
            len(fresh.routes),
            fresh.policy.sender,
        )
        if ignored:
            log.warning("SIGHUP: changes to [%s] take a restart; not applied", "], [".join(ignored))

    # --- stop -------------------------------------------------------------------------

    async def stop(self) -> None:
        """End what start made, in about the reverse order; but delivery drains (within
        drain_timeout of the call) as soon as the doors are closed and nothing new starts."""
        log.info("stopping: no new connections; finishing in-flight work")
        await self._end_parts()
        log.info("stopped")

    async def _undo_start(self) -> None:
        """A start that failed part-way ends what it had made (the writer's thread, workers,
        loops, the database) rather than leave them to the event loop's close; its own error
        is the one reported."""
        try:
            await self._end_parts()
        except Exception:
            log.exception("while undoing a failed start")
        finally:
            self._release_lock()

    async def _end_parts(self) -> None:
        """Every part made, ended; a part never made (None) is passed over."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout  # deliveries end within it
        await self._close_doors()
        for task in list(self._reloads):
            task.cancel()
        await self.loops.stop()
        await self._release_rollup()
        await self._release_accounts()
        await self._release_reputation()
        if self.delivery is not None:
            await self.delivery.stop(max(0.0, deadline - loop.time()))
        if self.retention is not None:
            await self.retention.stop()
        if self.webhooks is not None:  # POSTs in flight are cancelled: their events stay owed
            await self.webhooks.stop()
        await self._release_claims()
        if self.api is not None:
            await self.api.stop()  # its background writes need the writer
        if self.writer is not None:
            await self.writer.stop()
        for door in self._http:
            await door.wait_closed(timeout=5)
        if self.db is not None:
            await self.db.dispose()
        self._release_lock()

    async def _close_doors(self) -> None:
        """No new connections or requests; let end-of-data commits finish (5 s at most),
        then end the SMTP sessions. HTTP requests in flight finish on their own."""
        for acceptor in self._acceptors:
            acceptor.close()
        for door in self._http:
            door.close()
        if self.api is not None:
            self.api.closing.set()  # event streams end within a poll
        for handler in (self.smtp_handler, self.bounce_handler):
            if handler is not None:
                await self._end_sessions(handler)

    async def _end_sessions(self, handler: PosternHandler | BounceHandler) -> None:
        await self._wait(lambda: handler.submitting == 0, 5.0)
        for session in list(handler.sessions):
            session.abort()

    async def _release_claims(self) -> None:
        if self.queue is None:
            return
        try:
            await self.queue.release_claims()
        except StorageUnavailable as error:
            # Not fatal: the next start of this node releases them, other nodes when the
            # lease lapses.
            log.warning("could not release claimed messages: %s", error)

    async def _release_rollup(self) -> None:
        """Another node may roll the events at once rather than wait out this one's lease."""
        if self.rollup is None:
            return
        try:
            await self.rollup.release()
        except StorageUnavailable as error:
            log.warning("could not release the events rollup's lease: %s", error)

    async def _release_accounts(self) -> None:
        """IDLE connections end; a sync cut short by the stop gives its account back (else
        it waits out its lease)."""
        if self.account_sync is None:
            return
        try:
            await self.account_sync.stop()
        except StorageUnavailable as error:
            log.warning("could not release connected accounts' sync leases: %s", error)

    async def _release_reputation(self) -> None:
        """Give the evaluation's lease back: another node evaluates at its next turn."""
        if self.reputation is None:
            return
        try:
            await self.reputation.release()
        except StorageUnavailable as error:
            log.warning("could not release the reputation lease: %s", error)

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @staticmethod
    async def _wait(condition: Callable[[], bool], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition() and loop.time() < deadline:
            await asyncio.sleep(0.02)


def _writer_lost(unanswered: int) -> NoReturn:
    """The node's writer process is gone with writes unanswered: end as a crash would."""
    log.critical(
        "the node's writer process is gone with %d writes unanswered, committed or not: "
        "this worker exits (status 70) so that none is written or acknowledged twice",
        unanswered,
    )
    logs.flush()  # os._exit skips atexit
    os._exit(70)


def _count_write_failure(failure: StorageUnavailable) -> None:
    metrics.STORAGE_WRITE_FAILURES.labels(reason=failure.kind).inc()


def _count_commit(seconds: float, jobs: int) -> None:
    metrics.STORAGE_COMMIT_SECONDS.observe(seconds)
    metrics.STORAGE_COMMIT_JOBS.inc(jobs)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [error.__class__.__name__])[0]
