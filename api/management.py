"""What the management routes (pools, aliases, domains) need from the running service.

Handed to ApiContext once at start-up (`ApiContext.manage`); the routes read nothing else
of the service. The live pools are reached through `LivePools` only: after a change the
routes say so (`changed`), and the process makes delivery follow storage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from gateway.accounts.accounts import Settings as AccountSettings
from gateway.config import Config
from gateway.delivery.upstream import PoolHealth, PoolSettings
from gateway.dns import Resolver
from gateway.intake.identities import Identities
from gateway.security.hostguard import HostGuard
from storage.dkim_keys import Cipher

TOKEN_TTL = 48 * 3600.0  # seconds an alias verification link stays valid


class LivePools(Protocol):
    """The pools this node delivers through, as the routes see them."""

    async def changed(self) -> None:
        """Storage's pools changed: the live ones follow before this returns."""
        ...

    def live(self, pool_id: str) -> PoolSettings | None:
        """The pool as delivery uses it (password included), or None when not loaded."""
        ...

    def health(self, pool_id: str) -> PoolHealth | None:
        """The pool's failures and cool-down on this node, or None when not loaded."""
        ...


class LiveWarmups(Protocol):
    """This node's warmup gate (gateway.delivery.warmup.WarmupGate), as the routes see it."""

    async def changed(self, kind: str, subject_id: str) -> None:
        """A warmup changed through this node: delivery follows before this returns."""
        ...

    def now(self) -> float:
        """The warmups' time (their days and hours): the wall clock but in tests."""
        ...


class LiveAccounts(Protocol):
    """The connected accounts this node sends through (each its own SMTP server)."""

    async def changed(self) -> None:
        """Storage's accounts changed: the live upstreams follow before this returns."""
        ...


@dataclass
class Management:
    box: Cipher  # pool passwords (and DKIM keys) at rest
    identities: Identities  # verified domains and aliases, as intake sees them
    pools: LivePools  # the live pools (decrypted passwords: the connection test)
    guard: HostGuard  # SSRF: pool hosts (the one delivery uses)
    webhook_guard: HostGuard  # SSRF: webhook URLs (public only, unless [webhooks] allow_private)
    resolver: Resolver  # domain checks: [dns] nameservers, no cache
    hostname: str  # EHLO name of the connection test; SPF record
    probe_timeout: float  # per step of the connection test
    public_url: str  # base of the links in verification mail
    accounts: AccountSettings = field(default_factory=AccountSettings)  # connected accounts
    account_routes: LiveAccounts | None = None  # their live upstreams (None: not sending)
    warmup: LiveWarmups | None = None  # delivery's warmup gate (None: not sending)
    warmup_timezone: str = "UTC"  # [warmup] timezone: a new warmup's, unless given
    warmup_hours: int = 24  # [warmup] active_hours and burst: the hourly cap shown
    warmup_burst: float = 0.2

    @classmethod
    def build(
        cls,
        config: Config,
        box: Cipher,
        identities: Identities,
        pools: LivePools,
        guard: HostGuard | None = None,
        webhook_guard: HostGuard | None = None,
        account_routes: LiveAccounts | None = None,
        warmup: LiveWarmups | None = None,
    ) -> Management:
        host, port = config.http.listen
        shown = f"[{host}]" if ":" in host else host
        return cls(
            box=box,
            identities=identities,
            pools=pools,
            guard=guard or HostGuard(config.security.deny_networks),
            webhook_guard=webhook_guard
            or HostGuard(
                config.security.deny_networks, allow_private=config.webhooks.allow_private
            ),
            resolver=Resolver(config.dns.nameservers, cache_size=0),
            hostname=config.server.hostname,
            probe_timeout=min(config.delivery.connect_timeout, 15.0),
            public_url=config.http.public_url or f"http://{shown}:{port}",
            accounts=AccountSettings(
                max_per_user=config.accounts.max_per_user,
                timeout=config.accounts.timeout,
                hostname=config.server.hostname,
            ),
            account_routes=account_routes,
            warmup=warmup,
            warmup_timezone=config.warmup.timezone,
            warmup_hours=config.warmup.active_hours,
            warmup_burst=config.warmup.burst,
        )
