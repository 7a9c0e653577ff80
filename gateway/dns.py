"""DNS lookups for delivery and domain checks: typed answers, never exceptions.

A thin layer over dnspython's asyncio resolver (never the blocking one, never the system's
getaddrinfo) that honours `[dns] nameservers` ("127.0.0.1:5353", "[::1]:53", "9.9.9.9")
and turns every outcome into a value the caller matches on:

    mx(domain)        MxHosts | NullMx | NoMx | NoSuchDomain | Temporary
    addresses(host)   Addresses | NoRecords | NoSuchDomain | Temporary
    a(name)           Addresses | NoRecords | NoSuchDomain | Temporary  (IPv4 only: DNSBLs)
    txt(name)         TxtRecords | NoRecords | NoSuchDomain | Temporary

`Temporary` (SERVFAIL, REFUSED, timeout, no usable server) is the only outcome a caller
should retry; NXDOMAIN and "no records of this type" are answers. Answers, including
negative ones (NXDOMAIN, NODATA, for the SOA minimum the server sent), are cached for their
TTL in dnspython's bounded LRU cache; failures are never cached. MX hosts come sorted by
preference, shuffled among equal preferences on every call (RFC 5321 §5.1), so load spreads
even when the answer comes from the cache.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from gateway.errors import ConfigError
from gateway.nameservers import parse_nameserver


@dataclass(frozen=True)
class MxHost:
    host: str  # lower case, no trailing dot
    preference: int


@dataclass(frozen=True)
class MxHosts:
    """The MX hosts to try, in order: preference ascending, equals in random order."""

    hosts: tuple[MxHost, ...]


@dataclass(frozen=True)
class NullMx:
    """RFC 7505: the domain accepts no mail (a single MX of "."). Bounce at once."""


@dataclass(frozen=True)
class NoMx:
    """The domain exists without MX records: deliver to the domain itself (RFC 5321 §5.1)."""


@dataclass(frozen=True)
class NoSuchDomain:
    """NXDOMAIN: the name does not exist."""


@dataclass(frozen=True)
class NoRecords:
    """The name exists but has no records of the asked type (NODATA)."""


@dataclass(frozen=True)
class Temporary:
    """No answer now (SERVFAIL, REFUSED, timeout): try again later."""

    reason: str


@dataclass(frozen=True)
class Addresses:
    """IP addresses of a host, IPv4 first, each family in the order the server gave."""

    addresses: tuple[str, ...]


@dataclass(frozen=True)
class TxtRecords:
    """TXT records, each one's character-strings joined (as DKIM, SPF and DMARC read them)."""

    values: tuple[str, ...]


MxResult = MxHosts | NullMx | NoMx | NoSuchDomain | Temporary
AddressResult = Addresses | NoRecords | NoSuchDomain | Temporary
TxtResult = TxtRecords | NoRecords | NoSuchDomain | Temporary


class Resolver:
    """Async lookups against the configured nameservers (else the system's resolv.conf)."""

    def __init__(
        self,
        nameservers: Sequence[str] = (),
        *,
        timeout: float = 2.0,
        lifetime: float = 5.0,
        cache_size: int = 10_000,
        rng: random.Random | None = None,
    ) -> None:
        """`timeout` bounds one query to one server, `lifetime` a whole lookup."""
        if nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(host, port)
                for host, port in map(parse_nameserver, nameservers)
            ]
        else:
            try:
                resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                raise ConfigError(
                    "dns: no system resolver is configured (/etc/resolv.conf); "
                    "set [dns] nameservers"
                ) from None
        resolver.timeout = timeout
        resolver.lifetime = lifetime
        # cache_size=0: no cache (domain checks must see a record published a minute ago).
        resolver.cache = dns.resolver.LRUCache(cache_size) if cache_size > 0 else None
        self._resolver = resolver
        self._lifetime = lifetime
        self._rng = rng or random.Random()

    async def mx(self, domain: str) -> MxResult:
        answer = await self._query(domain, "MX")
        if not isinstance(answer, dns.resolver.Answer):
            return NoMx() if isinstance(answer, NoRecords) else answer
        records = list(answer)
        if len(records) == 1 and records[0].exchange == dns.name.root:
            return NullMx()
        # "." mixed with real hosts is a misconfiguration (RFC 7505 §3): skip the ".".
        usable = [rdata for rdata in records if rdata.exchange != dns.name.root]
        if not usable:
            return NullMx()
        self._rng.shuffle(usable)
        usable.sort(key=lambda rdata: rdata.preference)  # stable: shuffled among equals
        return MxHosts(
            tuple(MxHost(_text(rdata.exchange), int(rdata.preference)) for rdata in usable)
        )

    async def addresses(self, host: str) -> AddressResult:
        """A and AAAA, asked together."""
        v4, v6 = await asyncio.gather(self._query(host, "A"), self._query(host, "AAAA"))
        found = [
            rdata.address
            for answer in (v4, v6)
            if isinstance(answer, dns.resolver.Answer)
            for rdata in answer
        ]
        if found:
            return Addresses(tuple(found))
        for answer in (v4, v6):
            if isinstance(answer, Temporary):
                return answer
        if isinstance(v4, NoSuchDomain) and isinstance(v6, NoSuchDomain):
            return NoSuchDomain()
        return NoRecords()

    async def a(self, name: str) -> AddressResult:
        """A records only, in the order the server gave (a DNSBL's answer codes)."""
        answer = await self._query(name, "A")
        if not isinstance(answer, dns.resolver.Answer):
            return answer
        return Addresses(tuple(rdata.address for rdata in answer))

    async def txt(self, name: str) -> TxtResult:
        answer = await self._query(name, "TXT")
        if not isinstance(answer, dns.resolver.Answer):
            return answer
        values = tuple(b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer)
        return TxtRecords(values)

    async def _query(
        self, name: str, rdtype: str
    ) -> dns.resolver.Answer | NoRecords | NoSuchDomain | Temporary:
        try:
            qname = dns.name.from_text(name.strip().rstrip(".") + ".")
        except dns.exception.DNSException:
            return NoSuchDomain()  # a name that cannot exist in DNS
        try:
            answer = await self._resolver.resolve(
                qname,
                dns.rdatatype.from_text(rdtype),
                search=False,
                raise_on_no_answer=False,
                lifetime=self._lifetime,
            )
        except dns.resolver.NXDOMAIN:
            return NoSuchDomain()
        except dns.resolver.NoNameservers as error:
            return Temporary(f"{rdtype} {_text(qname)}: no server answered ({_first(error)})")
        except dns.exception.Timeout:
            return Temporary(f"{rdtype} {_text(qname)}: timed out")
        except dns.exception.DNSException as error:
            return Temporary(f"{rdtype} {_text(qname)}: {error.__class__.__name__}: {error}")
        if answer.rrset is None:
            return NoRecords()
        return answer


def _text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


def _first(error: dns.resolver.NoNameservers) -> str:
    """The first server's complaint (e.g. SERVFAIL), short enough for a log line."""
    errors = error.kwargs.get("errors") or []
    if errors:
        detail = errors[0][3]
        return str(detail) if detail else "error"
    return "no usable nameserver"
