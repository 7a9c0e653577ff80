"""Builds and wires the parts of `postern serve`, and runs their lifecycle.

The message path, once:
  1. A client hands over a message: SMTP (smtp_server) or HTTP (api).
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
immediate exit. SIGHUP reloads `[[pools]]` and `[policy]` from the config file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from api.app import MetricsAccess, create_app, metrics_app
from api.context import ApiContext
from api.management import Management
from gateway import metrics
from gateway.config import Config, ConfigError, PoolConfig, load, server_tls_context
from gateway.delivery.direct import DirectRoutes
from gateway.delivery.throttle import Throttle
from gateway.delivery.upstream import PoolSettings, SessionSettings
from gateway.delivery.workers import Delivery, PoolRegistry
from gateway.dkim.cache import Signers
from gateway.dkim.signing_process import SigningProcess
from gateway.dns import Resolver
from gateway.intake.identities import Identities
from gateway.intake.pipeline import Intake
from gateway.process import logs
from gateway.process.descriptors import Budget, TooFewDescriptors, door_budget
from gateway.process.http_server import DoorLimits, HttpDoor
from gateway.process.instance import DataDirLock, database_of
from gateway.queue.retention import Retention
from gateway.queue.store import Queue
from gateway.security.hostguard import HostGuard
from gateway.security.pool_secrets import unseal
from gateway.security.ratelimit import RateLimiter
from gateway.security.secrets import SecretBox, SecretError, bind_to_database
from gateway.smtpd.server import ListenerLimits, PosternHandler
from gateway.webhooks.node import start_webhooks
from storage.db import SchemaError, create_schema, database_url, open_database, prepare_data_dir
from storage.keys import KeyStore
from storage.pools import list_pools, same_endpoint, sync_config_pools
from storage.writer import StorageUnavailable, Writer

log = logging.getLogger("postern")


class StartupError(ConfigError):
    """Start-up failed for a reason the operator can fix (port in use, unwritable dir)."""


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a StartupError naming the address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it every two-write HTTP response waits out the client's delayed ACK (40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as error:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    sock.setblocking(False)
    return sock


def node_id(data_dir: Path) -> str:
    """This node's identity, kept in data_dir so a restarted node recognises its own claims."""
    path = data_dir / "node_id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        value = f"node_{secrets.token_hex(6)}"
        path.write_text(value + "\n")
        return value


# What SIGHUP applies; every other section needs a restart.
RELOADED = ("pools", "policy")


class Service:
    def __init__(
        self, config: Config, drain_timeout: float = 10.0, config_path: str | None = None
    ) -> None:
        self.config = config
        self.config_path = config_path  # what SIGHUP reads again (None: as at start)
        self.drain_timeout = drain_timeout  # seconds from the stop signal (README: 10 s)
        self._stopping = asyncio.Event()
        self._reloads: set[asyncio.Task[None]] = set()
        self._started = False  # SIGHUP before this: ignored (start reads the file anyway)
        self._servers: list[asyncio.base_events.Server] = []
        self._http: list[HttpDoor] = []

    async def start(self) -> None:
        # A SIGHUP (a reload by systemd, say) during start-up, which may include a schema
        # upgrade, must not end the process as SIGHUP's default action does.
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # main thread only
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._reload_soon)
        data_dir = self.config.server.data_dir
        try:
            prepare_data_dir(data_dir)
            # One serve per data_dir (gateway.process.instance): held until stop() or the exit.
            self._lock = DataDirLock.acquire(data_dir)
        except OSError as error:
            raise StartupError(f"cannot use data_dir {data_dir}: {error.strerror}") from None
        try:
            await self._start()
        except BaseException:
            self._lock.release()
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            raise
        self._started = True

    async def _start(self) -> None:
        config = self.config
        data_dir = config.server.data_dir
        try:
            node = node_id(data_dir)
        except OSError as error:
            raise StartupError(f"cannot use data_dir {data_dir}: {error.strerror}") from None
        try:
            budget = door_budget(config)  # raises the open-file limit, fits the caps under it
        except TooFewDescriptors as error:
            raise StartupError(str(error)) from None
        limits = self._listener_limits(budget)  # loads the TLS certificate: fail before any task
        try:
            self.box = SecretBox.from_environment(data_dir)  # DKIM keys, pool passwords
        except SecretError as error:
            raise StartupError(str(error)) from None
        smtp_sockets = [bind(host, port) for host, port in config.smtp.listen]
        http_socket = bind(*config.http.listen)
        metrics_listen = config.http.metrics_listen
        metrics_socket = bind(*metrics_listen) if metrics_listen else None

        self.db = open_database(database_url(config.storage.url, data_dir))
        try:
            await create_schema(self.db)
        except SchemaError as error:
            raise StartupError(str(error)) from None
        except (OSError, SQLAlchemyError) as error:
            raise StartupError(f"cannot open the database: {_first_line(error)}") from None
        try:
            await bind_to_database(self.db, self.box)
        except SecretError as error:
            raise StartupError(str(error)) from None
        self.writer = Writer(self.db, on_failure=_count_write_failure)
        self.writer.start()
        delivery_cfg = config.delivery
        # Renewed every lease/4 while this node holds a message; lapses only if it dies.
        lease = 120.0
        self.queue = Queue(
            self.db, self.writer, node, delivery_cfg.retry_schedule, delivery_cfg.max_age, lease
        )
        await self.queue.release_claims()  # whatever this node held when it last stopped
        await self.queue.suppressions.reload()

        self.resolver = Resolver(config.dns.nameservers)
        # SSRF: one guard for every connection to a host someone else named (pools, pool
        # tests); MX targets and webhook URLs get a stricter one each (public addresses
        # only, by default: a key with the webhooks scope must not reach internal services).
        guard_resolver = self.resolver if config.dns.nameservers else None
        deny = config.security.deny_networks
        guard = HostGuard(deny, resolver=guard_resolver)
        mx_guard = HostGuard(
            deny, allow_private=delivery_cfg.mx_allow_private, resolver=guard_resolver
        )
        webhook_guard = HostGuard(
            deny, allow_private=config.webhooks.allow_private, resolver=guard_resolver
        )
        session = SessionSettings(
            local_hostname=config.server.hostname,
            connect_timeout=delivery_cfg.connect_timeout,
            command_timeout=delivery_cfg.command_timeout,
            idle_timeout=delivery_cfg.idle_timeout,
            max_messages_per_connection=delivery_cfg.max_messages_per_connection,
            cooldown=min(10.0, delivery_cfg.retry_schedule[0]),
            guard=guard,
        )
        self.registry = PoolRegistry(session)
        await self.reload_pools()
        direct = DirectRoutes(self.resolver, session, delivery_cfg.mx_port, guard=mx_guard)
        self.delivery = Delivery(
            self.queue, self.registry, workers=delivery_cfg.workers, direct=direct,
            throttle=Throttle(self.db, self.writer),
        )  # fmt: skip
        self.delivery.start()
        self.retention = Retention(self.writer, config.storage.retention)
        self.retention.start()
        self.delivery.wake()
        # A key made by `postern dkim generate` in another process is picked up within 2 s.
        self.signers = Signers(self.db, self.box, ttl=2.0, offload=SigningProcess())
        await self.signers.reload()
        # Verified domains and aliases (routing, policy.sender); other nodes' changes within 2 s.
        self.identities = Identities(self.db, enforce=config.policy.sender == "verified")
        await self.identities.reload()
        self.intake = Intake(
            self.queue, self.registry, self.delivery, self.signers, identities=self.identities
        )

        self.keys = KeyStore(self.db)  # API keys: HTTP bearer tokens and SMTP AUTH passwords
        limiter = RateLimiter(config.http.rate_limit)  # per key, across both doors
        self.smtp_handler = PosternHandler(self.intake, limits, self.keys, self.writer, limiter)
        loop = asyncio.get_running_loop()
        for sock in smtp_sockets:
            self._servers.append(await loop.create_server(self.smtp_handler.protocol, sock=sock))
        self.api = ApiContext(
            db=self.db,
            writer=self.writer,
            intake=self.intake,
            keys=self.keys,
            limiter=limiter,
            suppressions=self.queue.suppressions,
            hostname=config.server.hostname,
            handoff_timeout=delivery_cfg.handoff_timeout,
            max_body_size=config.http.max_body_size,
            body_timeout=config.http.body_timeout,
            max_message_size=config.smtp.max_message_size,
            max_header_size=config.smtp.max_header_size,
            queue=self.queue,
            wake=self.delivery.wake,
            manage=Management.build(
                config,
                self.box,
                self.identities,
                self.registry,
                self.reload_pools,
                guard,
                webhook_guard,
            ),
        )
        self.api.start()
        self.webhooks = await start_webhooks(  # signed event webhooks ([webhooks])
            config.webhooks, self.db, self.writer, self.box, webhook_guard, node
        )
        self._start_http(budget, http_socket, metrics_socket)
        log.info(
            "postern %s listening: smtp %s, http %s:%d; database %s",
            node,
            ", ".join(f"{h}:{p}" for h, p in config.smtp.listen),
            *config.http.listen,
            database_of(config),
        )

    async def reload_pools(self) -> None:
        """Make the live pools match storage (config pools are synced into it first)."""
        config_pools = {pool.name: pool for pool in self.config.pools}
        await sync_config_pools(self.db, self.config.pools)
        settings = []
        for row in await list_pools(self.db):
            password = (
                _config_password(row, config_pools.get(row.name))
                if row.source == "config"
                else unseal(self.box, row)  # API pools: AES-GCM, bound to the pool id
            )
            settings.append(
                PoolSettings(
                    id=row.id,
                    name=row.name,
                    host=row.host,
                    port=row.port,
                    username=row.username,
                    password=password,
                    encryption=row.encryption,
                    ip_pool=row.ip_pool,
                    priority=row.priority,
                    max_connections=row.max_connections,
                    is_default=row.is_default,
                    is_active=row.is_active,
                    tls_verify=row.tls_verify,
                    rate=row.rate,
                    daily_limit=row.daily_limit,
                )
            )
        self.registry.load(settings)
        # Mail waiting for an active pool is looked at again now, not at its next poll.
        try:
            woken = await self.queue.wake_pool_waiters()
        except StorageUnavailable as error:  # they wait for their next look instead
            log.warning("waking the mail waiting for a pool failed: %s", error)
            return
        if woken and hasattr(self, "delivery"):
            self.delivery.wake()

    def _start_http(
        self, budget: Budget, http_socket: socket.socket, metrics_socket: socket.socket | None
    ) -> None:
        """The API on http.listen; /metrics there or alone on http.metrics_listen."""
        http = self.config.http
        need_key = http.metrics_need_key()
        access: MetricsAccess = "elsewhere" if metrics_socket else "key" if need_key else "open"
        app = create_app(self.queue.ping, self.api, self.writer.readiness, access)
        limits = DoorLimits("http", budget.caps["http"], http.header_timeout)
        self._http.append(HttpDoor(app, http_socket, limits))
        if metrics_socket is not None:
            limits = DoorLimits("metrics", budget.caps["metrics"], http.header_timeout)
            self._http.append(HttpDoor(metrics_app(self.api, need_key), metrics_socket, limits))

    def _listener_limits(self, budget: Budget) -> ListenerLimits:
        smtp = self.config.smtp
        tls_context = server_tls_context(smtp.tls_cert, smtp.tls_key) if smtp.tls_cert else None
        return ListenerLimits(
            hostname=self.config.server.hostname,
            max_message_size=smtp.max_message_size,
            max_recipients=smtp.max_recipients,
            max_connections=budget.caps["smtp"],
            idle_timeout=smtp.idle_timeout,
            session_timeout=smtp.session_timeout,
            max_header_size=smtp.max_header_size,
            max_data_in_flight=smtp.max_data_in_flight,
            require_auth=smtp.require_auth,
            tls_context=tls_context,
            auth_failures_per_address=smtp.auth_failures_per_address,
            auth_failures_per_minute=smtp.auth_failures_per_minute,
        )

    def request_stop(self, sig: signal.Signals | None = None) -> None:
        name = sig.name if sig is not None else "stop request"
        if self._stopping.is_set():
            log.warning(
                "second stop signal (%s): exiting at once, without draining (messages in "
                "flight are retried when a node starts)",
                name,
            )
            logs.flush()  # os._exit skips atexit: the warning must be written first
            os._exit(1)
        log.info(
            "%s: stopping within %gs (send it again to exit at once)", name, self.drain_timeout
        )
        self._stopping.set()

    async def run_until_stopped(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig)
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
        """Read the config file again and apply its `[[pools]]` and `[policy]`; a file that
        does not load changes nothing. Logged either way, never fatal."""
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
        self.config = replace(self.config, pools=fresh.pools, policy=fresh.policy)
        self.identities.enforce = fresh.policy.sender == "verified"
        try:
            await self.api.management().reload_pools()  # serialised with the API's changes
        except Exception as error:  # storage down: the old pools keep running
            log.error("SIGHUP: pools not reloaded: %s", _first_line(error))
            return
        log.info(
            "SIGHUP: reloaded %d pool(s) from the file (%s) and policy.sender = %r",
            len(fresh.pools),
            ", ".join(pool.name for pool in fresh.pools) or "none",
            fresh.policy.sender,
        )
        if ignored:
            log.warning("SIGHUP: changes to [%s] take a restart; not applied", "], [".join(ignored))

    # --- stop -------------------------------------------------------------------------

    async def stop(self) -> None:
        log.info("stopping: no new connections; finishing in-flight work")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout  # deliveries end within it
        for server in self._servers:
            server.close()
        for door in self._http:
            door.close()  # no new HTTP requests; in-flight ones finish
        await self._wait(lambda: self.smtp_handler.submitting == 0, 5.0)
        for session in list(self.smtp_handler.sessions):
            session.abort()
        for task in list(self._reloads):
            task.cancel()
        await self.delivery.stop(max(0.0, deadline - loop.time()))
        if hasattr(self, "retention"):
            await self.retention.stop()
        webhooks = getattr(self, "webhooks", None)
        if webhooks is not None:  # POSTs in flight are cancelled: their events stay owed
            await webhooks.stop()
        try:
            await self.queue.release_claims()
        except StorageUnavailable as error:
            # Not fatal: the next start of this node releases them, other nodes when the
            # lease lapses.
            log.warning("could not release claimed messages: %s", error)
        if hasattr(self, "api"):
            await self.api.stop()  # its background writes need the writer
        if hasattr(self, "signers"):
            await self.signers.close()
        await self.writer.stop()
        for door in self._http:
            await door.wait_closed(timeout=5)
        await self.db.dispose()
        self._lock.release()
        log.info("stopped")

    @staticmethod
    async def _wait(condition: object, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition() and loop.time() < deadline:  # type: ignore[operator]
            await asyncio.sleep(0.02)


def _config_password(row: Any, declared: PoolConfig | None) -> str:
    """A config pool's password (from this node's environment) goes only to the endpoint
    this node's file declares with it: nodes sharing a database may disagree for a while,
    and the row holds whichever file was synced last."""
    if declared is None or not same_endpoint(row, declared):
        if declared is not None and declared.password():
            log.warning(
                "pool %r: the stored host, port, encryption or username differ from this "
                "node's config file; its password is not used until they agree",
                row.name,
            )
        return ""
    return declared.password()


def _count_write_failure(failure: StorageUnavailable) -> None:
    metrics.STORAGE_WRITE_FAILURES.labels(reason=failure.kind).inc()


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [error.__class__.__name__])[0]
