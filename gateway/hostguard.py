"""SSRF guard for operator-supplied upstream hosts (pool create/PATCH and connection test).

A pool's host is typed in over the API, and the connection test reports what the far end
said: pointed at a cloud metadata service it would be a request forgery from inside the
network. So every address a host resolves to is checked, and a host with any address in a
denied network is refused:

- link-local 169.254.0.0/16 and fe80::/10 (AWS, GCP, Azure, OpenStack metadata live there);
- the other metadata addresses: fd00:ec2::254 (AWS IPv6), 100.100.100.200 (Alibaba),
  168.63.129.16 (Azure wire server);
- the same addresses in IPv4-mapped (::ffff:a.b.c.d) and NAT64 (64:ff9b::/96) form;
- whatever `[security] deny_networks` adds.

Loopback and private networks stay allowed: a local relay (Postfix on 127.0.0.1, a smarthost
on the LAN) is the common case. The name is resolved with the system resolver, as the
connection itself will be, and the connection test connects to an address that was checked
(no second lookup a DNS rebinding could answer differently).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_DENIED = (
    "169.254.0.0/16",
    "fe80::/10",
    "fd00:ec2::254/128",
    "100.100.100.200/32",
    "168.63.129.16/32",
)
METADATA_NAMES = frozenset(
    {"metadata", "metadata.google.internal", "metadata.goog", "instance-data",
     "instance-data.ec2.internal", "metadata.azure.internal"}
)  # fmt: skip
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
RESOLVE_TIMEOUT = 5.0


class HostRefused(Exception):
    """The host is, or resolves to, a denied address; the message says which."""


class HostUnresolved(Exception):
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


class HostGuard:
    def __init__(self, extra: Sequence[str] = ()) -> None:
        self.networks = parse_networks(DEFAULT_DENIED) + parse_networks(extra)

    def denied(self, address: str) -> IPNetwork | None:
        """The denied network `address` falls in, or None."""
        try:
            ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return None
        forms: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is not None:
                forms.append(ip.ipv4_mapped)
            if ip in _NAT64:
                forms.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        for form in forms:
            for network in self.networks:
                if form.version == network.version and form in network:
                    return network
        return None

    def check_name(self, host: str) -> None:
        """Refuse well-known metadata names and denied literals without resolving."""
        name = host.strip().rstrip(".").lower()
        if name in METADATA_NAMES:
            raise HostRefused(f"{host} is a cloud metadata service")
        network = self.denied(name.strip("[]"))
        if network is not None:
            raise HostRefused(f"{host} is in a denied network ({network})")

    async def resolve(self, host: str, port: int) -> list[str]:
        """Every address of `host`, checked; HostRefused if any is denied, HostUnresolved
        if there are none."""
        self.check_name(host)
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM),
                RESOLVE_TIMEOUT,
            )
        except (OSError, TimeoutError, UnicodeError) as error:
            raise HostUnresolved(f"{host} does not resolve: {_reason(error)}") from None
        addresses: list[str] = []
        for info in infos:
            address = str(info[4][0])
            if address not in addresses:
                addresses.append(address)
        for address in addresses:
            network = self.denied(address)
            if network is not None:
                raise HostRefused(f"{host} resolves to {address}, in a denied network ({network})")
        if not addresses:
            raise HostUnresolved(f"{host} does not resolve")
        return addresses

    async def check(self, host: str, port: int) -> None:
        """For create/PATCH: refuse a denied host; one that does not resolve (yet) passes,
        as it cannot be reached either (the connection test checks again)."""
        try:
            await self.resolve(host, port)
        except HostUnresolved:
            return


def _reason(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "lookup timed out"
    if isinstance(error, socket.gaierror):
        return error.strerror or str(error)
    return str(error) or error.__class__.__name__
