"""Token buckets by name, in memory (one process): the per-API-key rate limit that the HTTP
API and the SMTP listener share (`[http] rate_limit`: a key's requests and SMTP messages draw
on one bucket), and the dashboard's login budgets (gateway.people.login_throttle). The
budgets of failed SMTP AUTH attempts are kept in storage instead (storage.auth_failures):
every worker takes SMTP connections. `client_of` is the unit of both kinds of budget.

A full bucket is the same as none, so memory stays bounded by dropping full buckets first
(then the fullest) when there are too many names.
"""

from __future__ import annotations

import ipaddress
import time
from typing import TypeVar

from gateway.rates import parse_rate

MAX_NAMES = 50_000
K = TypeVar("K")  # what a bucket is known by: a name, or a shared table's digest of one


class RateLimiter:
    """Token buckets, one per name: `count` of burst, refilled over `period`."""

    def __init__(self, rate: str, max_names: int = MAX_NAMES) -> None:
        parsed = parse_rate(rate)  # the one grammar, as for pools
        if parsed is None:
            raise ValueError("a rate limit cannot be empty")
        self.capacity = float(parsed.count)
        self.per_second = parsed.per_second
        self._max_names = max_names
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, at)

    def take(self, name: str) -> float:
        """0.0 when one more may go ahead (a token is taken), else the seconds until it could."""
        now = time.monotonic()
        tokens = self._tokens(name, now)
        if tokens >= 1.0:
            self._store(name, tokens - 1.0, now)
            return 0.0
        self._store(name, tokens, now)
        return (1.0 - tokens) / self.per_second

    def give_back(self, name: str) -> None:
        """Return a token taken for something that turned out not to count."""
        now = time.monotonic()
        self._store(name, min(self.capacity, self._tokens(name, now) + 1.0), now)

    def _tokens(self, name: str, now: float) -> float:
        tokens, at = self._buckets.get(name, (self.capacity, now))
        return min(self.capacity, tokens + (now - at) * self.per_second)

    def _store(self, name: str, tokens: float, now: float) -> None:
        if name not in self._buckets and len(self._buckets) >= self._max_names:
            self._shrink(now)
        self._buckets[name] = (tokens, now)

    def _shrink(self, now: float) -> None:
        levels = {name: self._tokens(name, now) for name in self._buckets}
        kept = worth_keeping(levels, self.capacity, self._max_names)
        self._buckets = {name: (level, now) for name, level in kept.items()}


def worth_keeping(levels: dict[K, float], capacity: float, most: int) -> dict[K, float]:
    """The buckets to keep when there are `most` or more: not the full ones (a full bucket
    is the same as none); if that is not enough, the emptiest half (those in use: a spray
    of one-off names must not reset the bucket of a busy one)."""
    kept = {name: level for name, level in levels.items() if level < capacity}
    if len(kept) >= most:
        kept = dict(sorted(kept.items(), key=lambda item: item[1])[: most // 2])
    return kept


def client_of(host: str) -> str:
    """The unit of login and AUTH throttling: an IPv4 address, or an IPv6 /64 (one subscriber's
    network: a client could otherwise take a fresh address for every guess)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if not isinstance(address, ipaddress.IPv6Address):
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))
