"""SSRF guard: the one place that decides where an outbound connection may go.

Every connection Postern opens to a host someone else named passes here: upstream pools at
delivery time and in their connection test, direct MX targets, webhook URLs, connected
accounts' IMAP and SMTP servers (their check and their sync). The guard
resolves the name once, refuses it if any of its addresses is in a denied network, and the
caller connects to an address it checked (`connect`, or the address `resolve` returned),
never to the name again: a DNS answer that changes between the check and the connection
(rebinding) cannot send it anywhere else. TLS still verifies the certificate against the
name (the caller passes it as server_hostname / SNI).

Always denied:
- unspecified addresses: 0.0.0.0/8 and :: (a connection to them reaches this host, so they
  are loopback under another name, never a relay);
- link-local 169.254.0.0/16 and fe80::/10 (AWS, GCP, Azure, OpenStack metadata live there);
- the other metadata addresses: fd00:ec2::254 (AWS IPv6), 100.100.100.200 (Alibaba),
  168.63.129.16 (Azure wire server);
- whatever `[security] deny_networks` adds.
With `allow_private=False` (direct MX delivery, unless `[delivery] mx_allow_private`) every
address that is not globally routable is denied too: loopback, private, CGNAT, reserved,
documentation, multicast, ULA. An IPv6 address is also checked as each IPv4 address it
embeds (IPv4-mapped, IPv4-compatible, 6to4, Teredo, NAT64, ISATAP), so `::ffff:127.0.0.1`
is loopback wherever 127.0.0.1 is.

Names resolve through `[dns] nameservers` when set (names those servers do not know, such as
/etc/hosts entries, through the system's resolver), else through the system's resolver.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence

from gateway.dns import Addresses, NoRecords, NoSuchDomain, Resolver
from gateway.errors import DeliveryError, Refused

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_DENIED = (
    "0.0.0.0/8",
    "::/128",
    "169.254.0.0/16",
    "fe80::/10",
    "fd00:ec2::254/128",
    "100.100.100.200/32",
    "168.63.129.16/32",
)
# Not globally routable (IANA special-purpose registries): denied where private is not allowed.
NOT_PUBLIC = (
    "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "172.16.0.0/12", "192.0.0.0/24",
    "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "::1/128", "::ffff:0:0/96", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32",
    "3fff::/20", "5f00::/16", "fc00::/7", "fec0::/10", "ff00::/8",
)  # fmt: skip
METADATA_NAMES = frozenset(
    {"metadata", "metadata.google.internal", "metadata.goog", "instance-data",
     "instance-data.ec2.internal", "metadata.azure.internal"}
)  # fmt: skip
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_ISATAP = (0x00005EFE, 0x02005EFE)  # interface identifier ::[02]00:5efe:a.b.c.d (RFC 5214)
RESOLVE_TIMEOUT = 5.0


class HostRefused(Refused):
    """The host is, or resolves to, a denied address; the message says which."""


class HostUnresolved(DeliveryError):
    """The host does not resolve (now): nothing to connect to."""


def parse_networks(entries: Sequence[str]) -> tuple[IPNetwork, ...]:
    """CIDR strings -> networks; ValueError naming the bad entry."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f'{entry!r} is not an IP network (e.g. "10.20.0.0/16")') from None
    return tuple(networks)


def forms(ip: IPAddress) -> list[IPAddress]:
    """Every IPv4 address an IPv6 address embeds (the ways it can lead to one), then the
    address itself: the embedded address names the network a refusal reports."""
    if isinstance(ip, ipaddress.IPv4Address):
        return [ip]
    found: list[IPAddress] = []
    value = int(ip)
    low = ipaddress.IPv4Address(value & 0xFFFFFFFF)
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if 1 < value <= 0xFFFFFFFF:  # IPv4-compatible ::a.b.c.d (:: and ::1 are themselves)
        found.append(low)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)  # (server, client)
    if any(ip in prefix for prefix in _NAT64) or (value >> 32) & 0xFFFFFFFF in _ISATAP:
        found.append(low)
    return [*found, ip]


class HostGuard:
    def __init__(
        self,
        extra: Sequence[str] = (),
        *,
        allow_private: bool = True,
        resolver: Resolver | None = None,
    ) -> None:
        """`extra`: `[security] deny_networks`; `resolver`: the `[dns] nameservers` one (None:
        the system's resolver)."""
        denied = DEFAULT_DENIED if allow_private else DEFAULT_DENIED + NOT_PUBLIC
        self.networks = parse_networks(denied) + parse_networks(extra)
        self._resolver = resolver

    def denied(self, address: str) -> IPNetwork | None:
        """The denied network `address` (or an IPv4 address it embeds) falls in, or None."""
        match = self._match(address)
        return None if match is None else match[1]

    def _match(self, address: str) -> tuple[IPAddress, IPNetwork] | None:
        try:
            ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return None
        for form in forms(ip):
            for network in self.networks:
                if form.version == network.version and form in network:
                    return form, network
        return None

    def refusal(self, host: str, address: str) -> HostRefused | None:
        """HostRefused saying why `address` (what `host` stands for) is denied, or None."""
        match = self._match(address)
        if match is None:
            return None
        form, network = match
        embedded = "" if form == ipaddress.ip_address(address.split("%", 1)[0]) else f" ({form})"
        if host.strip().strip("[]").lower() == address.lower():
            return HostRefused(f"{host}{embedded} is in a denied network ({network})")
        return HostRefused(
            f"{host} resolves to {address}{embedded}, in a denied network ({network})"
        )

    def check_name(self, host: str) -> None:
        """Refuse well-known metadata names and denied literals without resolving."""
        name = host.strip().rstrip(".").lower()
        if name in METADATA_NAMES:
            raise HostRefused(f"{host} is a cloud metadata service")
        refused = self.refusal(host, name.strip("[]"))
        if refused is not None:
            raise refused

    async def resolve(self, host: str, port: int) -> list[str]:
        """Every address of `host`, checked; HostRefused if any is denied, HostUnresolved
        if there are none. Connect only to these (never to the name)."""
        self.check_name(host)
        name = host.strip().strip("[]")
        try:
            addresses = [str(ipaddress.ip_address(name))]  # a literal: nothing to look up
        except ValueError:
            addresses = await self._lookup(name, port)
        for address in addresses:
            refused = self.refusal(host, address)
            if refused is not None:
                raise refused
        if not addresses:
            raise HostUnresolved(f"{host} does not resolve")
        return addresses

    async def _lookup(self, name: str, port: int) -> list[str]:
        if self._resolver is not None:
            answer = await self._resolver.addresses(name)
            if isinstance(answer, Addresses):
                return list(dict.fromkeys(answer.addresses))
            if not isinstance(answer, NoSuchDomain | NoRecords):
                raise HostUnresolved(f"{name} does not resolve: {answer.reason}")
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(name, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT
            )
        except (OSError, TimeoutError, UnicodeError) as error:
            raise HostUnresolved(f"{name} does not resolve: {_reason(error)}") from None
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    async def check(self, host: str, port: int) -> None:
        """For create/PATCH: refuse a denied host; one that does not resolve (yet) passes,
        as it cannot be reached either (every connection checks again)."""
        try:
            await self.resolve(host, port)
        except HostUnresolved:
            return

    async def connect(self, host: str, port: int, timeout: float) -> socket.socket:
        """A socket connected to a checked address of `host` (the first that answers).
        Raises HostRefused, HostUnresolved, or OSError (TimeoutError) naming the address."""
        addresses = await self.resolve(host, port)
        return await connect_first(addresses, port, timeout)


async def connect_first(addresses: Sequence[str], port: int, timeout: float) -> socket.socket:
    """A non-blocking socket connected to the first of `addresses` that accepts within
    `timeout`; else the last failure (TimeoutError if that was a timeout)."""
    loop = asyncio.get_running_loop()
    problem: OSError = OSError("no address to connect to")
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (address, port)), timeout)
            return sock
        except TimeoutError:
            sock.close()
            problem = TimeoutError(f"connect {address}:{port}: timed out")
        except OSError as error:
            sock.close()
            problem = OSError(f"connect {address}:{port}: {error.strerror or error}")
        except BaseException:
            sock.close()
            raise
    raise problem


def _reason(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "lookup timed out"
    if isinstance(error, socket.gaierror):
        return error.strerror or str(error)
    return str(error) or error.__class__.__name__
