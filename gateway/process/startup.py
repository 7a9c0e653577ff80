"""What `postern serve` checks and takes before any task runs: this node's identity, the
open-file budget, the TLS certificate, the secret key, the listening sockets. Whatever an
operator must fix fails here, first, as a StartupError naming it."""

from __future__ import annotations

import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from gateway.config import Config, ConfigError, server_tls_context
from gateway.process.descriptors import Budget, TooFewDescriptors, door_budget
from gateway.security.secrets import SecretBox, SecretError
from gateway.smtpd.server import ListenerLimits

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
    http_socket: socket.socket
    metrics_socket: socket.socket | None  # None: /metrics is served on the http socket
    bounce_limits: ListenerLimits | None = None  # the bounce listener's; None: off
    bounce_socket: socket.socket | None = None


def prepare(config: Config) -> Prepared:
    data_dir = config.server.data_dir
    try:
        node = node_id(data_dir)
    except OSError as error:
        raise StartupError(f"cannot use data_dir {data_dir}: {error.strerror}") from None
    try:
        budget = door_budget(config)  # raises the open-file limit, fits the caps under it
    except TooFewDescriptors as error:
        raise StartupError(str(error)) from None
    smtp_limits = listener_limits(config, budget)  # loads the TLS certificate
    try:
        box = SecretBox.from_environment(data_dir)
    except SecretError as error:
        raise StartupError(str(error)) from None
    metrics_listen = config.http.metrics_listen
    bounce_listen = config.bounces.listen
    return Prepared(
        node=node,
        box=box,
        budget=budget,
        smtp_limits=smtp_limits,
        smtp_sockets=[bind(host, port) for host, port in config.smtp.listen],
        http_socket=bind(*config.http.listen),
        metrics_socket=bind(*metrics_listen) if metrics_listen else None,
        bounce_limits=bounce_limits(config, smtp_limits, budget) if bounce_listen else None,
        bounce_socket=bind(*bounce_listen) if bounce_listen else None,
    )


def node_id(data_dir: Path) -> str:
    """This node's identity, kept in data_dir so a restarted node recognises its own claims."""
    path = data_dir / "node_id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        value = f"node_{secrets.token_hex(6)}"
        path.write_text(value + "\n")
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
