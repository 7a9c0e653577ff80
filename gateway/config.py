"""Configuration: TOML in, frozen dataclasses out, every check done here.

Any problem becomes one `ConfigError` whose message is the single line the CLI prints
before exiting with status 2. Durations are an integer of seconds or a string such as
"30s", "5m", "2h", "5d". Relative file paths in a config file name places beside that file,
so every command given the same file uses the same data_dir, whatever its current folder.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import ConfigError
from gateway.nameservers import parse_nameserver
from gateway.reputation.lists import DEFAULT_LISTS, LISTS

if TYPE_CHECKING:
    import ssl

    from gateway.routing import DomainRoute

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object, where: str = "duration") -> float:
    """Seconds from an int/float of seconds or a string like '5m'."""
    if isinstance(value, bool):
        raise ConfigError(f'{where}: expected a duration like 30 or "5m", got {value!r}')
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"{where}: a duration must be a finite number of seconds >= 0")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2)]
    raise ConfigError(f'{where}: bad duration {value!r} (use seconds or "30s", "5m", "2h", "5d")')


def parse_address(value: str, where: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f'{where}: expected "host:port", got {value!r}')
    host = host.strip("[]")
    number = int(port)
    if not 0 < number < 65536:
        raise ConfigError(f"{where}: port {number} out of range")
    return host, number


def is_loopback(host: str, mapped: bool = False) -> bool:
    """Whether `host` names this machine: localhost, 127/8, ::1; with `mapped`, also 127/8
    mapped into IPv6, which is how a dual-stack socket shows an IPv4 peer (hosts an operator
    writes are taken in the plain forms only, as LOOPBACK_PATTERN documents them)."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    ipv4 = getattr(address, "ipv4_mapped", None) if mapped else None
    return address.is_loopback or (ipv4 is not None and ipv4.is_loopback)


@dataclass(frozen=True)
class ServerConfig:
    hostname: str = "postern.localdomain"
    data_dir: Path = Path("./var")
    # Processes `serve` runs (gateway.process.supervisor): 1 = one process; more = a
    # supervisor and that many workers sharing the SMTP port (SO_REUSEPORT). By default
    # ("auto") one per CPU this process may run on (taskset and cpusets count).
    workers: int = field(default_factory=lambda: auto_workers())  # defined below


@dataclass(frozen=True)
class SmtpConfig:
    listen: tuple[tuple[str, int], ...] = (("127.0.0.1", 2525),)
    require_auth: bool = False
    max_message_size: int = 26_214_400
    max_recipients: int = 100
    max_connections: int = 1000
    idle_timeout: float = 300.0
    session_timeout: float = 3600.0
    max_header_size: int = 102_400  # as Postfix's header_size_limit
    max_data_in_flight: int = 104_857_600  # bytes of DATA held by all sessions at once
    tls_cert: str = ""
    tls_key: str = ""
    # Failed AUTH allowed per client address (IPv4, IPv6 /64) across all its connections.
    auth_failures_per_address: str = "30/h"
    auth_failures_per_minute: int = 0  # from every address together; 0 = no such limit


@dataclass(frozen=True)
class HttpConfig:
    listen: tuple[str, int] = ("127.0.0.1", 8080)
    max_body_size: int = 31_457_280
    body_timeout: float = 60.0  # to receive a whole request body (slow clients: 408)
    rate_limit: str = "50/s"
    public_url: str = ""  # base of links in Postern's own mail; "" = http://<listen>
    max_connections: int = 1000  # past it a new connection gets a 503 and is closed
    header_timeout: float = 10.0  # to send a complete request head (slowloris)
    metrics_listen: tuple[str, int] | None = None  # /metrics there, not on `listen`
    metrics_auth: bool | None = None  # a key with scope `metrics`; None: off loopback only
    max_attachments_size: int = 26_214_400  # decoded attachment bytes of one /v1/send
    # Attachments refused (422 attachment_refused): extensions (".exe") and MIME types
    # ("application/x-msdownload", "application/*"), lower-cased; empty: all allowed.
    refuse_attachment_types: tuple[str, ...] = ()

    def metrics_need_key(self) -> bool:
        """Whether /metrics asks for a key: as set, else when served off loopback."""
        if self.metrics_auth is not None:
            return self.metrics_auth
        return not is_loopback((self.metrics_listen or self.listen)[0])


@dataclass(frozen=True)
class StorageConfig:
    url: str = field(default="", repr=False)  # may carry the database password
    # Final messages and their events are kept this long, and bounce reports and skipped-
    # inbox records from their arrival (storage.retention).
    retention: float = 30 * 86400.0
    # The stored bodies of final messages go sooner (the metadata stays until retention).
    body_retention: float = 7 * 86400.0


@dataclass(frozen=True)
class DeliveryConfig:
    retry_schedule: tuple[float, ...] = (60.0, 300.0, 900.0, 3600.0, 14400.0)
    max_age: float = 5 * 86400.0
    connect_timeout: float = 30.0
    command_timeout: float = 300.0
    handoff_timeout: float = 10.0
    mx_port: int = 25
    mx_allow_private: bool = False
    workers: int = 64
    idle_timeout: float = 60.0
    max_messages_per_connection: int = 1000
    # A bounce of SMTP mail is told to its envelope sender (an RFC 3464 report), as Postfix does.
    notify_sender: bool = True
    # With notify_sender: a message of SMTP mail still deferred this long after it was
    # accepted (or its scheduled time) makes one delay notice to the sender; 0: none.
    delay_warning: float = 0.0


@dataclass(frozen=True)
class PolicyConfig:
    sender: str = "verified"


@dataclass(frozen=True)
class DnsConfig:
    nameservers: tuple[str, ...] = ()


@dataclass(frozen=True)
class SecurityConfig:
    deny_networks: tuple[str, ...] = ()  # beyond link-local and cloud metadata (hostguard)


@dataclass(frozen=True)
class WebhooksConfig:
    enabled: bool = True  # this node sends webhook events
    max_age: float = 3 * 86400.0  # undelivered events older than this are dropped (>= 24 h)
    timeout: float = 10.0
    batch_size: int = 500  # events per POST (at most)
    allow_private: bool = False  # receivers on loopback/private addresses (hostguard)


@dataclass(frozen=True)
class AuthConfig:
    session_idle: float = 12 * 3600.0  # a session unused this long ends
    session_absolute: float = 7 * 86400.0  # a session ends this long after login, used or not


@dataclass(frozen=True)
class AccountsConfig:
    max_per_user: int = 10  # connected mail accounts one user may have (403 account_quota)
    sync_interval: float = 60.0  # how often this node looks for accounts to sync
    timeout: float = 15.0  # each credential check and each sync's connection, end to end


@dataclass(frozen=True)
class BouncesConfig:
    # The VERP return-path domain: mail leaves as bounces+<token>@domain; "" = off (the
    # client's envelope sender is kept, as before). The bounce listener takes mail for it.
    domain: str = ""
    rules_file: str = ""  # the user's classification rules, tried before the shipped ones
    soft_limit: int = 3  # soft bounces of one address within soft_window: then suppressed
    soft_window: float = 7 * 86400.0
    max_report_size: int = 256 * 1024  # bytes of a raw report stored (and taken by the API)
    listen: tuple[str, int] | None = None  # the inbound bounce listener; None: off
    listen_public: bool = False  # a listen address off loopback (it takes only `domain`)
    # Bytes of one message the listener takes and the IMAP sync fetches (more: refused 552,
    # or skipped and recorded); what is stored of it is max_report_size.
    max_inbound_size: int = 10 * 1024 * 1024
    processed_folder: str = ""  # IMAP: processed mail moved there; "": flagged in place
    idle: bool = True  # IMAP IDLE where the server offers it (else the sync interval only)


@dataclass(frozen=True)
class BlocklistsConfig:
    enabled: bool = True  # the scheduled DNSBL check (one node of many runs each round)
    interval: float = 6 * 3600.0  # a round this long after the last completed one
    timeout: float = 5.0  # one DNS query, end to end
    concurrency: int = 8  # queries in flight at once
    # The addresses the world sees this gateway's mail come from (see config.example.toml).
    sending_ips: tuple[str, ...] = ()
    lists: tuple[str, ...] = DEFAULT_LISTS  # gateway.reputation.dnsbl.LISTS by name
    # Spamhaus Data Query Service key: ZEN and DBL asked at <key>.zen.dq.spamhaus.net (a
    # secret: never logged nor shown).
    spamhaus_dqs_key: str = field(default="", repr=False)


@dataclass(frozen=True)
class ReputationConfig:
    enabled: bool = True  # this node may run the evaluation (one node at a time, a lease)
    interval: float = 300.0  # between evaluations (never per message)
    threshold: int = 70  # a score below it is at risk: reputation_at_risk, once per crossing
    pause_on_risk: bool = False  # also pause the account's or pool's sending (warmup)
    setup_interval: float = 6 * 3600.0  # a domain's SPF, DKIM and DMARC looked up again after


@dataclass(frozen=True)
class WarmupConfig:
    # The zone whose midnight rolls a warmup's day (zoneinfo name); stored with each warmup
    # when it is set, so a later change here moves none already running.
    timezone: str = "UTC"
    # The hourly cap: ceil(daily limit / active_hours) plus a burst of `burst` of it (at
    # least one), in any rolling hour: the day's limit is spread, not spent at once.
    active_hours: int = 24
    burst: float = 0.2
    # The spike check, every check_interval on each node, over the last `window` of mail
    # through each warming subject: pause at a hard-bounce rate of bounce_rate or more
    # (Amazon SES puts an account under review at 5 %) or a complaint rate of
    # complaint_rate or more (Gmail's bulk-sender rules: never reach 0.3 %), once at least
    # min_volume recipients were sent in the window.
    check_interval: float = 60.0
    window: float = 86400.0
    min_volume: int = 20
    bounce_rate: float = 0.05
    complaint_rate: float = 0.003
    # A receiver's throttling replies (421, or 4.7.x saying "rate limited", "try again
    # later"...): this many within throttle_window pause the warmup; 0 = never.
    throttle_replies: int = 3
    throttle_window: float = 3600.0
    # Mail of a paused subject waits in the queue; it looks again this often (a resume
    # wakes it at once, on every node: this is only the backstop, hence long).
    paused_recheck: float = 3600.0


@dataclass(frozen=True)
class PoolConfig:
    name: str
    host: str
    port: int = 587
    username: str = ""
    password_env: str = ""
    encryption: str = "tls"
    ip_pool: str = "transactional"
    priority: int = 100
    max_connections: int = 10
    is_default: bool = False
    is_active: bool = True
    from_email: str = ""
    tls_verify: bool = True
    rate: str = ""  # "100/min": sends per rolling window across nodes; "" = none
    daily_limit: int = 0  # sends per UTC day across nodes; 0 = none

    def password(self) -> str:
        """The password from the environment variable named in the file, or ''."""
        return os.environ.get(self.password_env, "") if self.password_env else ""


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    accounts: AccountsConfig = field(default_factory=AccountsConfig)
    bounces: BouncesConfig = field(default_factory=BouncesConfig)
    blocklists: BlocklistsConfig = field(default_factory=BlocklistsConfig)
    reputation: ReputationConfig = field(default_factory=ReputationConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    pools: tuple[PoolConfig, ...] = ()
    # [[routes]]: mail by recipient domain (Postfix's transport maps), before /api/v1/routes'
    routes: tuple[DomainRoute, ...] = ()


# --- converters: (value, where) -> typed value ------------------------------------------

Converter = Callable[[Any, str], Any]


def _typed(kind: type, label: str) -> Converter:
    def convert(value: Any, where: str) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise ConfigError(f"{where}: expected {label}, got {value!r}")
        if not isinstance(value, kind):
            raise ConfigError(f"{where}: expected {label}, got {value!r}")
        return value

    return convert


_str = _typed(str, "a string")
_bool = _typed(bool, "true or false")
_int_any = _typed(int, "an integer")


def _positive_int(value: Any, where: str) -> int:
    number: int = _int_any(value, where)
    if number <= 0:
        raise ConfigError(f"{where}: must be a positive integer, got {number}")
    return number


MAX_WORKERS = 256


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (taskset, a cpuset), else all."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def worker_share(cap: int, processes: int, least: int = 1) -> int:
    """Each of `processes` workers' share of a node-wide `cap` (a pool's max_connections,
    direct delivery's connections per destination, PostgreSQL's connections): rounded up,
    at least `least`."""
    return max(least, -(-cap // max(1, processes)))


def auto_workers() -> int:
    """`[server] workers = "auto"`, the default: one worker per usable CPU."""
    return min(MAX_WORKERS, usable_cpus())


def _workers(value: Any, where: str) -> int:
    """`"auto"` (one per usable CPU) or a count from 1 to MAX_WORKERS."""
    if value == "auto":
        return auto_workers()
    if isinstance(value, str):
        raise ConfigError(f'{where}: expected "auto" or a number of processes, got {value!r}')
    number = _positive_int(value, where)
    if number > MAX_WORKERS:
        raise ConfigError(f'{where}: at most {MAX_WORKERS} (or "auto"), got {number}')
    return number


def _port(value: Any, where: str) -> int:
    number: int = _int_any(value, where)
    if not 0 < number < 65536:
        raise ConfigError(f"{where}: port {number} out of range")
    return number


def _duration(value: Any, where: str) -> float:
    return parse_duration(value, where)


def _positive_duration(value: Any, where: str) -> float:
    """A wait or timeout that must not be zero (zero would spin or never succeed)."""
    seconds = parse_duration(value, where)
    if seconds <= 0:
        raise ConfigError(f"{where}: must be longer than zero")
    return seconds


_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def _hostname(value: Any, where: str) -> str:
    """A DNS name for EHLO and Message-IDs: no spaces, no control characters, valid labels."""
    name: str = _str(value, where)
    labels = name.removesuffix(".").split(".")
    if not name or len(name) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise ConfigError(f"{where}: {name!r} is not a valid host name (letters, digits, '-', '.')")
    return name


def _bounce_domain(value: Any, where: str) -> str:
    """ "" (off) or a host name, lower-cased."""
    if value == "":
        return ""
    return _hostname(value, where).lower().rstrip(".")


def _folder(value: Any, where: str) -> str:
    """An IMAP mailbox name as the user's server spells it: printable, no quote or
    backslash (sent as a quoted string), not INBOX itself."""
    text: str = _str(value, where)
    if len(text) > 200 or not text.isprintable() or any(c in text for c in '"\\'):
        raise ConfigError(f"{where}: {text!r} is not a mailbox name Postern can use")
    if text.upper() == "INBOX":
        raise ConfigError(f"{where}: processed mail cannot go to INBOX itself")
    return text


def _choice(*options: str) -> Converter:
    def convert(value: Any, where: str) -> str:
        text: str = _str(value, where)
        if text not in options:
            raise ConfigError(f"{where}: must be one of {', '.join(options)}; got {text!r}")
        return text

    return convert


def _listen_list(value: Any, where: str) -> tuple[tuple[str, int], ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f'{where}: expected a list of "host:port" strings')
    return tuple(parse_address(_str(item, where), where) for item in value)


def _listen_one(value: Any, where: str) -> tuple[str, int]:
    return parse_address(_str(value, where), where)


def _listen_optional(value: Any, where: str) -> tuple[str, int] | None:
    text: str = _str(value, where)
    return parse_address(text, where) if text else None


def _bool_or_auto(value: Any, where: str) -> bool | None:
    if value == "auto":
        return None
    if not isinstance(value, bool):
        raise ConfigError(f'{where}: expected true, false or "auto", got {value!r}')
    return value


def _rate(value: Any, where: str) -> str:
    """A rate that must be set (`[http] rate_limit`), in gateway.rates' grammar."""
    text = _pool_rate(value, where)
    if not text:
        raise ConfigError(f'{where}: expected a rate like "50/s" or "100/min", got {value!r}')
    return text


def _pool_rate(value: Any, where: str) -> str:
    """A rate in gateway.rates' grammar, or "" for none."""
    from gateway.rates import parse_rate  # only for a config that sets a rate

    text: str = _str(value, where)
    try:
        parse_rate(text)
    except ValueError as error:
        raise ConfigError(f"{where}: {error}") from None
    return text.strip(" \t")


def _non_negative_int(value: Any, where: str) -> int:
    number: int = _int_any(value, where)
    if number < 0:
        raise ConfigError(f"{where}: must be an integer >= 0, got {number}")
    return number


def _score(value: Any, where: str) -> int:
    number: int = _int_any(value, where)
    if not 1 <= number <= 100:
        raise ConfigError(f"{where}: must be a score from 1 to 100")
    return number


def _schedule(value: Any, where: str) -> tuple[float, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: expected a non-empty list of durations")
    return tuple(_positive_duration(item, f"{where}[{i}]") for i, item in enumerate(value))


def _nameservers(value: Any, where: str) -> tuple[str, ...]:
    entries = _strings(value, where)
    for entry in entries:
        parse_nameserver(entry)
    return entries


def _networks(value: Any, where: str) -> tuple[str, ...]:
    entries = _strings(value, where)
    for entry in entries:
        try:
            ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            raise ConfigError(f'{where}: {entry!r} is not a network like "10.0.0.0/8"') from None
    return entries


def _public_url(value: Any, where: str) -> str:
    text: str = _str(value, where)
    if text and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", text):
        raise ConfigError(f'{where}: expected "" or a URL like "https://mail.example.com"')
    return text.rstrip("/")


# Compiled by re (and kept in its cache) only for a config that sets the option.
_REFUSABLE = (
    r"\.[a-z0-9_~+-][a-z0-9._~+-]*|[a-z0-9][a-z0-9!#$&^_.+-]*/(\*|[a-z0-9][a-z0-9!#$&^_.+-]*)"
)


def _refusable(value: Any, where: str) -> tuple[str, ...]:
    """Extensions and MIME types, compared case aside (so stored lower-cased)."""
    entries = tuple(entry.strip().lower() for entry in _strings(value, where))
    for entry in entries:
        if not re.fullmatch(_REFUSABLE, entry):
            raise ConfigError(
                f'{where}: {entry!r} is neither an extension (".exe") nor a MIME type '
                '("application/x-msdownload", "application/*")'
            )
    return entries


def _ip_addresses(value: Any, where: str) -> tuple[str, ...]:
    found = []
    for entry in _strings(value, where):
        try:
            found.append(str(ipaddress.ip_address(entry.strip())))
        except ValueError:
            raise ConfigError(f"{where}: {entry!r} is not an IP address") from None
    return tuple(dict.fromkeys(found))


def _list_names(value: Any, where: str) -> tuple[str, ...]:
    names = _strings(value, where)
    for name in names:
        if name not in LISTS:
            raise ConfigError(f"{where}: unknown list {name!r} (one of: {', '.join(LISTS)})")
    return tuple(dict.fromkeys(names))


def _dqs_key(value: Any, where: str) -> str:
    text: str = _str(value, where).strip()
    if text and not re.fullmatch(r"[a-z0-9]{8,64}", text):
        raise ConfigError(f"{where}: expected the key Spamhaus gave (lower-case letters, digits)")
    return text


def _timezone(value: Any, where: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # only for a [warmup] timezone

    name = _str(value, where)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{where}: unknown time zone {name!r} (a zoneinfo name)") from None
    return name


def _fraction(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError(f"{where}: expected a number from 0 to 1")
    return float(value)


def _positive_fraction(value: Any, where: str) -> float:
    """A rate above 0 and at most 1 (a rate of 0 would be reached by any mail at all)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ConfigError(f"{where}: expected a number above 0, at most 1")
    return float(value)


def _hours(value: Any, where: str) -> int:
    hours = _positive_int(value, where)
    if hours > 24:
        raise ConfigError(f"{where}: at most 24")
    return hours


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of strings")
    return tuple(_str(item, where) for item in value)


_SECTIONS: dict[str, tuple[type, dict[str, Converter]]] = {
    "server": (
        ServerConfig,
        {"hostname": _hostname, "data_dir": lambda v, w: Path(_str(v, w)), "workers": _workers},
    ),
    "smtp": (
        SmtpConfig,
        {
            "listen": _listen_list,
            "require_auth": _bool,
            "max_message_size": _positive_int,
            "max_recipients": _positive_int,
            "max_connections": _positive_int,
            "idle_timeout": _positive_duration,
            "session_timeout": _positive_duration,
            "max_header_size": _positive_int,
            "max_data_in_flight": _positive_int,
            "tls_cert": _str,
            "tls_key": _str,
            "auth_failures_per_address": _rate,
            "auth_failures_per_minute": _non_negative_int,
        },
    ),
    "http": (
        HttpConfig,
        {
            "listen": _listen_one,
            "max_body_size": _positive_int,
            "body_timeout": parse_duration,
            "rate_limit": _rate,
            "public_url": _public_url,
            "max_connections": _positive_int,
            "header_timeout": _positive_duration,
            "metrics_listen": _listen_optional,
            "metrics_auth": _bool_or_auto,
            "max_attachments_size": _positive_int,
            "refuse_attachment_types": _refusable,
        },
    ),
    "storage": (
        StorageConfig,
        {"url": _str, "retention": parse_duration, "body_retention": parse_duration},
    ),
    "delivery": (
        DeliveryConfig,
        {
            "retry_schedule": _schedule,
            "max_age": _positive_duration,
            "connect_timeout": _positive_duration,
            "command_timeout": _positive_duration,
            "handoff_timeout": _duration,
            "mx_port": _port,
            "mx_allow_private": _bool,
            "notify_sender": _bool,
            "delay_warning": _duration,
            "workers": _positive_int,
            "idle_timeout": _positive_duration,
            "max_messages_per_connection": _positive_int,
        },
    ),
    "policy": (PolicyConfig, {"sender": _choice("verified", "any")}),
    "dns": (DnsConfig, {"nameservers": _nameservers}),
    "security": (SecurityConfig, {"deny_networks": _networks}),
    "webhooks": (
        WebhooksConfig,
        {
            "enabled": _bool,
            "max_age": _positive_duration,
            "timeout": _positive_duration,
            "batch_size": _positive_int,
            "allow_private": _bool,
        },
    ),
    "auth": (
        AuthConfig,
        {"session_idle": _positive_duration, "session_absolute": _positive_duration},
    ),
    "accounts": (
        AccountsConfig,
        {
            "max_per_user": _positive_int,
            "sync_interval": _positive_duration,
            "timeout": _positive_duration,
        },
    ),
    "bounces": (
        BouncesConfig,
        {
            "domain": _bounce_domain,
            "rules_file": _str,
            "soft_limit": _positive_int,
            "soft_window": _positive_duration,
            "max_report_size": _positive_int,
            "listen": _listen_optional,
            "listen_public": _bool,
            "max_inbound_size": _positive_int,
            "processed_folder": _folder,
            "idle": _bool,
        },
    ),
    "blocklists": (
        BlocklistsConfig,
        {
            "enabled": _bool,
            "interval": _positive_duration,
            "timeout": _positive_duration,
            "concurrency": _positive_int,
            "sending_ips": _ip_addresses,
            "lists": _list_names,
            "spamhaus_dqs_key": _dqs_key,
        },
    ),
    "reputation": (
        ReputationConfig,
        {
            "enabled": _bool,
            "interval": _positive_duration,
            "threshold": _score,
            "pause_on_risk": _bool,
            "setup_interval": _positive_duration,
        },
    ),
    "warmup": (
        WarmupConfig,
        {
            "timezone": _timezone,
            "active_hours": _hours,
            "burst": _fraction,
            "check_interval": _positive_duration,
            "window": _positive_duration,
            "min_volume": _positive_int,
            "bounce_rate": _positive_fraction,
            "complaint_rate": _positive_fraction,
            "throttle_replies": _non_negative_int,
            "throttle_window": _positive_duration,
            "paused_recheck": _positive_duration,
        },
    ),
}

_POOL_KEYS: dict[str, Converter] = {
    "name": _str,
    "host": _str,
    "port": _port,
    "username": _str,
    "password_env": _str,
    "encryption": _choice("tls", "ssl", "none"),
    "ip_pool": _str,
    "priority": _int_any,
    "max_connections": _positive_int,
    "is_default": _bool,
    "is_active": _bool,
    "from_email": _str,
    "tls_verify": _bool,
    "rate": _pool_rate,
    "daily_limit": _non_negative_int,
}


def _build(kind: type, table: Any, keys: Mapping[str, Converter], where: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"[{where}]: expected a table")
    unknown = sorted(set(table) - set(keys))
    if unknown:
        raise ConfigError(f"[{where}]: unknown key {unknown[0]!r}")
    values = {key: keys[key](value, f"{where}.{key}") for key, value in table.items()}
    return kind(**values)


def _pools(raw: Any) -> tuple[PoolConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError("[[pools]]: expected an array of tables")
    pools = []
    for index, table in enumerate(raw):
        where = f"pools[{index}]"
        if isinstance(table, dict):
            for required in ("name", "host"):
                if required not in table:
                    raise ConfigError(f"{where}: missing required key {required!r}")
        pools.append(_build(PoolConfig, table, _POOL_KEYS, where))
    names = [pool.name for pool in pools]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"[[pools]]: the name {name!r} is used twice")
    for pool in pools:
        if pool.password_env and pool.password_env not in os.environ:
            raise ConfigError(
                f"pool {pool.name!r}: environment variable {pool.password_env} is not set"
            )
    return tuple(pools)


_ROUTE_KEYS: dict[str, Converter] = {
    "recipient_domain": _str,
    "pool": _str,
    "ip_pool": _str,
}


def _routes(raw: Any) -> tuple[DomainRoute, ...]:
    """`[[routes]]`: each with recipient_domain and exactly one of pool (a pool's name) and
    ip_pool (a group); a domain given twice is refused (which would win?)."""
    # Imported here: routing (with addresses and message) is for a config with [[routes]].
    from gateway.routing import DomainRoute, InvalidRouteDomain, route_domain

    if not isinstance(raw, list):
        raise ConfigError("[[routes]]: expected an array of tables")
    routes: list[DomainRoute] = []
    seen: dict[str, int] = {}
    for index, table in enumerate(raw):
        where = f"routes[{index}]"
        if not isinstance(table, dict):
            raise ConfigError(f"[{where}]: expected a table")
        unknown = sorted(set(table) - set(_ROUTE_KEYS))
        if unknown:
            raise ConfigError(f"[{where}]: unknown key {unknown[0]!r}")
        values = {key: _ROUTE_KEYS[key](value, f"{where}.{key}") for key, value in table.items()}
        if "recipient_domain" not in values:
            raise ConfigError(f"{where}: missing required key 'recipient_domain'")
        try:
            domain = route_domain(values["recipient_domain"])
        except InvalidRouteDomain as error:
            raise ConfigError(f"{where}.recipient_domain: {error}") from None
        pool, ip_pool = values.get("pool"), values.get("ip_pool")
        if (pool is None) == (ip_pool is None):
            raise ConfigError(
                f'{where}: give exactly one of pool = "<pool name>" or ip_pool = "<group>"'
            )
        if pool == "" or ip_pool == "":
            raise ConfigError(f"{where}: {'pool' if pool == '' else 'ip_pool'} is empty")
        if domain in seen:
            raise ConfigError(
                f"[[routes]]: recipient_domain {domain!r} is given twice "
                f"(routes[{seen[domain]}] and {where})"
            )
        seen[domain] = index
        routes.append(DomainRoute(domain, pool=pool, ip_pool=ip_pool, source="config"))
    return tuple(routes)


def _check_bounces(bounces: BouncesConfig) -> None:
    if bounces.listen is None:
        return
    if not bounces.domain:
        raise ConfigError("bounces.listen: set bounces.domain, the only domain it accepts mail for")
    host, port = bounces.listen
    if not bounces.listen_public and not is_loopback(host):
        raise ConfigError(
            f"bounces.listen: {host}:{port} is not loopback; set bounces.listen_public = true "
            "to listen there (it accepts mail for bounces.domain only)"
        )


def _check(config: Config) -> None:
    if not config.smtp.require_auth:
        for host, port in config.smtp.listen:
            if not is_loopback(host):
                raise ConfigError(
                    f"smtp.listen: {host}:{port} is not loopback; set smtp.require_auth = true "
                    "to listen there (Postern is never an open relay)"
                )
    if config.http.metrics_listen is not None and config.http.metrics_listen == config.http.listen:
        raise ConfigError('http.metrics_listen: must differ from http.listen (or be "")')
    if config.smtp.max_data_in_flight < config.smtp.max_message_size:
        raise ConfigError(
            "smtp.max_data_in_flight must be at least smtp.max_message_size "
            f"({config.smtp.max_message_size}): else the largest messages never fit"
        )
    if bool(config.smtp.tls_cert) != bool(config.smtp.tls_key):
        raise ConfigError("smtp: tls_cert and tls_key must be set together")
    for name in ("tls_cert", "tls_key"):
        path = getattr(config.smtp, name)
        if path and not os.access(path, os.R_OK):
            raise ConfigError(f"smtp.{name}: cannot read {path}")
    if config.smtp.tls_cert:
        server_tls_context(config.smtp.tls_cert, config.smtp.tls_key)
    _check_bounces(config.bounces)
    defaults = [pool.name for pool in config.pools if pool.is_default]
    if len(defaults) > 1:
        raise ConfigError(f"[[pools]]: only one pool may be is_default (got {', '.join(defaults)})")
    for pool in config.pools:
        if pool.username and pool.encryption == "none" and not is_loopback(pool.host):
            raise ConfigError(
                f"pool {pool.name!r}: AUTH over an unencrypted connection to {pool.host} would "
                'send the password in clear; use encryption = "tls" or "ssl"'
            )
    if config.webhooks.max_age < 86400:
        raise ConfigError("webhooks.max_age: must be at least 24h (receivers get a day to recover)")
    if config.storage.retention < config.webhooks.max_age:
        raise ConfigError(
            "storage.retention: must be at least webhooks.max_age (events still owed to a "
            "receiver must not be deleted)"
        )
    if not 60 <= config.auth.session_idle <= config.auth.session_absolute:
        raise ConfigError(
            "auth.session_idle: must be at least 1m and at most auth.session_absolute"
        )
    if config.reputation.interval < 60:
        raise ConfigError("reputation.interval: must be at least 1m (it reads the whole roll-up)")
    if config.bounces.rules_file:
        # Imported here: the bounce parser is not needed to read a config without rules.
        from gateway.bounces import rules as bounce_rules

        bounce_rules.load(config.bounces.rules_file)  # a bad file: ConfigError, exit 2
    url = config.storage.url
    if url and not url.startswith(("postgresql", "sqlite")):
        raise ConfigError(
            f"storage.url: unsupported database URL {url.split(':')[0]!r} "
            '(use "" for SQLite or postgresql+asyncpg://user@host/db)'
        )
    if url:
        _database_url(url)


def _database_url(url: str) -> None:
    """A storage.url SQLAlchemy can parse (the error never repeats it: it may hold a password)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except (ArgumentError, ValueError):
        raise ConfigError(
            "storage.url: not a valid database URL (postgresql+asyncpg://user:password@host:port/db)"
        ) from None


def server_tls_context(cert: str, key: str) -> ssl.SSLContext:
    """The listener's TLS context; a certificate that does not load is a ConfigError."""
    import ssl  # only `serve` with a certificate needs it

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as error:
        raise ConfigError(f"smtp.tls_cert/tls_key: cannot load the certificate: {error}") from None
    return context


def from_dict(raw: Mapping[str, Any], base: Path | None = None) -> Config:
    """Validate a parsed TOML document and build the Config; relative file paths (the
    default data_dir too) are taken from `base`, the config file's folder, when given."""
    unknown = sorted(set(raw) - set(_SECTIONS) - {"pools", "routes"})
    if unknown:
        raise ConfigError(f"unknown section [{unknown[0]}]")
    parts: dict[str, Any] = {}
    for name, (kind, keys) in _SECTIONS.items():
        if name in raw:
            parts[name] = _build(kind, raw[name], keys, name)
    if "pools" in raw:
        parts["pools"] = _pools(raw["pools"])
    if "routes" in raw:
        parts["routes"] = _routes(raw["routes"])
    config = Config(**parts)
    if base is not None:
        config = _beside(base, config)
    _check(config)
    return config


def _beside(base: Path, config: Config) -> Config:
    """The file paths of `config` taken relative to `base` (absolute ones stay)."""

    def path(value: str) -> str:
        return str(base / value) if value else value

    return replace(
        config,
        server=replace(config.server, data_dir=base / config.server.data_dir),
        smtp=replace(
            config.smtp, tls_cert=path(config.smtp.tls_cert), tls_key=path(config.smtp.tls_key)
        ),
        storage=replace(config.storage, url=_sqlite_beside(base, config.storage.url)),
        bounces=replace(config.bounces, rules_file=path(config.bounces.rules_file)),
    )


def _sqlite_beside(base: Path, url: str) -> str:
    """A storage.url naming a relative SQLite file, made absolute against `base`."""
    if not url.startswith("sqlite"):
        return url
    from sqlalchemy.engine import make_url  # only for the rare SQLite URL

    try:
        parsed = make_url(url)
    except Exception:  # malformed: left for the database to refuse with its own words
        return url
    name = parsed.database
    if not name or name == ":memory:" or name.startswith("file:") or Path(name).is_absolute():
        return url
    return parsed.set(database=str(base / name)).render_as_string(hide_password=False)


def load(path: str | os.PathLike[str] | None) -> Config:
    """Load the config from `path`, else $POSTERN_CONFIG, else the built-in defaults (whose
    data_dir, ./var, is then relative to the current folder)."""
    path = path or os.environ.get("POSTERN_CONFIG") or None
    if path is None:
        return from_dict({})
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"config file {path} is not valid UTF-8: {error.reason} at byte {error.start}"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    return from_dict(raw, Path(os.path.abspath(path)).parent)
