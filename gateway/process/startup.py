"""What `postern serve` checks and takes before any task runs: this node's identity, the
open-file budget, the TLS certificate, the secret key, the listening sockets. Whatever an
operator must fix fails here, first, as a StartupError naming it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config import Config, ConfigError, server_tls_context
from gateway.process.descriptors import Budget, TooFewDescriptors, door_budget
from gateway.security.secrets import SecretBox, SecretError
from gateway.smtpd.limits import ListenerLimits
from storage.paths import write_whole

_NODE_ID = re.compile(r"[\w.-]{1,64}", re.ASCII)  # what node_id accepts from its file
BOUNCE_RECIPIENTS = 10  # a report goes to one return path; a few at most in one transaction
BOUNCE_DATA_FACTOR = 8  # the bounce listener holds at most this many largest reports at once


class StartupError(ConfigError):
    """Start-up failed for a reason the operator can fix (port in use, unwritable dir)."""


@dataclass(frozen=True)
class Prepared:
    """What start-up took, for the phases that use it."""

    node: str  # this node's identity in its claims
    box: SecretBox  # DKIM keys, pool passwords
    budget: Budget  # file descriptors per door
    smtp_limits: ListenerLimits  # holds the TLS certificate
    smtp_sockets: list[socket.socket]
    http_socket: socket.socket | None  # None: another worker serves HTTP
    metrics_socket: socket.socket | None  # None: /metrics is served on the http socket
    bounce_limits: ListenerLimits | None = None  # the bounce listener's; None: off
    bounce_socket: socket.socket | None = None


ROLE_ENV = "POSTERN_WORKER"  # set by the supervisor in each worker's environment


@dataclass(frozen=True)
class WorkerRole:
    """One worker of a supervised `serve` (gateway.process.supervisor): its index, how many
    there are, and the listening sockets it was handed (inherited descriptors; the
    supervisor bound them, so a port in use is its error, said once)."""

    index: int
    count: int
    parent: int  # the supervisor's pid: a worker whose parent is gone exits
    smtp: list[int] = field(default_factory=list)
    http: int | None = None  # worker 0 alone serves HTTP
    metrics: int | None = None
    bounce: int | None = None
    rates: int | None = None  # the node's per-key rate table (gateway.security.shared_rate)
    writer: str | None = None  # the node's writer process's socket (SQLite: storage.writer_link)

    @property
    def primary(self) -> bool:
        """Runs what one process of a node runs: HTTP, sweeps, the IMAP sync, webhooks."""
        return self.index == 0

    def node(self, base: str) -> str:
        """This worker's identity in claims and leases: worker 0 keeps the node's own (so a
        node that ran as one process finds its claims), the others `<node>-w<index>`."""
        return base if self.index == 0 else f"{base}-w{self.index}"

    def to_env(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_env(cls, text: str) -> WorkerRole:
        return cls(**json.loads(text))


def prepare(config: Config, role: WorkerRole | None = None) -> Prepared:
    data_dir = config.server.data_dir
    try:
        node = node_id(data_dir)
    except OSError as error:
        raise StartupError(f"cannot use data_dir {data_dir}: {error.strerror}") from None
    if role is not None:
        node = role.node(node)
    try:
        budget = door_budget(config)  # raises the open-file limit, fits the caps under it
    except TooFewDescriptors as error:
        raise StartupError(str(error)) from None
    smtp_limits = listener_limits(config, budget)  # loads the TLS certificate
    try:
        box = SecretBox.from_environment(data_dir)
    except SecretError as error:
        raise StartupError(str(error)) from None
    bounce_listen = config.bounces.listen
    sockets = Listeners.bind(config) if role is None else Listeners.inherited(role)
    return Prepared(
        node=node,
        box=box,
        budget=budget,
        smtp_limits=smtp_limits,
        smtp_sockets=sockets.smtp,
        http_socket=sockets.http,
        metrics_socket=sockets.metrics,
        bounce_limits=(
            bounce_limits(config, smtp_limits, budget)
            if bounce_listen and sockets.bounce is not None
            else None
        ),
        bounce_socket=sockets.bounce,
    )


@dataclass
class Listeners:
    """The listening sockets of one process: bound here, or inherited from the supervisor."""

    smtp: list[socket.socket]
    http: socket.socket | None
    metrics: socket.socket | None = None
    bounce: socket.socket | None = None

    @classmethod
    def bind(cls, config: Config) -> Listeners:
        metrics_listen, bounce_listen = config.http.metrics_listen, config.bounces.listen
        return cls(
            smtp=[bind(host, port) for host, port in config.smtp.listen],
            http=bind(*config.http.listen),
            metrics=bind(*metrics_listen) if metrics_listen else None,
            bounce=bind(*bounce_listen) if bounce_listen else None,
        )

    @classmethod
    def inherited(cls, role: WorkerRole) -> Listeners:
        def adopt(fd: int | None) -> socket.socket | None:
            if fd is None:
                return None
            sock = socket.socket(fileno=fd)
            sock.setblocking(False)
            return sock

        return cls(
            smtp=[sock for sock in map(adopt, role.smtp) if sock is not None],
            http=adopt(role.http),
            metrics=adopt(role.metrics),
            bounce=adopt(role.bounce),
        )


@dataclass
class SharedListeners:
    """What a supervisor binds for `count` workers: for each SMTP address one socket per
    worker, all in one SO_REUSEPORT group (the kernel spreads connections over them by a
    hash of the client's address and port); the HTTP, metrics and bounce sockets once, for
    worker 0. The supervisor keeps them open for the life of `serve`: a worker that dies
    and is replaced finds its socket, and the connections queued on it, still there."""

    smtp: list[list[socket.socket]]  # [address][worker]
    http: socket.socket
    metrics: socket.socket | None
    bounce: socket.socket | None

    @classmethod
    def bind(cls, config: Config, count: int) -> SharedListeners:
        metrics_listen, bounce_listen = config.http.metrics_listen, config.bounces.listen
        made: list[socket.socket] = []
        try:
            smtp = []
            for host, port in config.smtp.listen:
                group = reuseport_group(host, port, count)
                made.extend(group)
                smtp.append(group)
            http = bind(*config.http.listen)
            made.append(http)
            metrics = bind(*metrics_listen) if metrics_listen else None
            made.extend([metrics] if metrics else [])
            bounce = bind(*bounce_listen) if bounce_listen else None
        except BaseException:
            for sock in made:
                sock.close()
            raise
        return cls(smtp, http, metrics, bounce)

    def role(self, index: int, count: int, rates: int | None = None) -> WorkerRole:
        """Worker `index`'s share: its SMTP socket of each group; HTTP for worker 0; the
        rate table (`rates`) for all."""
        first = index == 0
        return WorkerRole(
            index=index,
            count=count,
            parent=os.getpid(),
            smtp=[group[index].fileno() for group in self.smtp],
            http=self.http.fileno() if first else None,
            metrics=self.metrics.fileno() if first and self.metrics else None,
            bounce=self.bounce.fileno() if first and self.bounce else None,
            rates=rates,
        )

    def all(self) -> list[socket.socket]:
        extra = [self.http, self.metrics, self.bounce]
        return [sock for group in self.smtp for sock in group] + [s for s in extra if s]

    def close(self) -> None:
        for sock in self.all():
            sock.close()


def reuseport_group(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` listening sockets on host:port in one SO_REUSEPORT group. The address is
    first bound alone, without SO_REUSEPORT: that fails if anyone at all listens there
    (another program, or another `postern serve` of this user, which SO_REUSEPORT would
    otherwise let in silently), with the error one process gives."""
    probe = bind(host, port)
    port = probe.getsockname()[1]  # port 0: the one the kernel chose, for the whole group
    probe.close()
    group: list[socket.socket] = []
    try:
        for _ in range(count):
            group.append(bind(host, port, reuse_port=True))
    except BaseException:
        for sock in group:
            sock.close()
        raise
    return group


def node_id(data_dir: Path) -> str:
    """This node's identity, kept in data_dir so a restarted node recognises its own claims.
    Written whole or not at all (storage.paths.write_whole): a crash while writing it must
    not leave a torn identity, empty or NUL-filled, which another node could share or the
    database refuse. One that is not a plain name (from an earlier release's torn write) is
    replaced. The callers hold data_dir's lock."""
    path = data_dir / "node_id"
    with contextlib.suppress(FileNotFoundError):
        value = path.read_text(errors="replace").strip()
        if _NODE_ID.fullmatch(value):
            return value
    value = f"node_{secrets.token_hex(6)}"
    write_whole(path, value.encode("ascii") + b"\n", 0o644, replace=True)
    return value


def listener_limits(config: Config, budget: Budget) -> ListenerLimits:
    """The SMTP door's limits from `[smtp]`, its connections capped by the budget."""
    smtp = config.smtp
    tls_context = server_tls_context(smtp.tls_cert, smtp.tls_key) if smtp.tls_cert else None
    return ListenerLimits(
        hostname=config.server.hostname,
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


def bounce_limits(config: Config, smtp: ListenerLimits, budget: Budget) -> ListenerLimits:
    """The bounce listener's limits: `[bounces] max_inbound_size`, the SMTP door's timeouts
    and certificate (STARTTLS offered as the door offers it), a DATA budget of its own."""
    size = config.bounces.max_inbound_size
    return ListenerLimits(
        hostname=config.server.hostname,
        max_message_size=size,
        max_recipients=BOUNCE_RECIPIENTS,
        max_connections=budget.caps["bounces"],
        idle_timeout=smtp.idle_timeout,
        session_timeout=smtp.session_timeout,
        max_header_size=smtp.max_header_size,
        max_data_in_flight=max(size, min(smtp.max_data_in_flight, BOUNCE_DATA_FACTOR * size)),
        tls_context=smtp.tls_context,
    )


# Connections the kernel completes before the listener accepts them: past it a burst of
# clients has SYNs dropped (retried after 1 s). (asyncio's and uvloop's create_server would
# listen again with 100; the SMTP listeners are served by gateway.process.acceptor.)
BACKLOG = 1024


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A listening socket, or a StartupError naming the address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it every two-write HTTP response waits out the client's delayed ACK (40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as error:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    sock.setblocking(False)
    return sock
