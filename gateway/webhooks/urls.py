"""Webhook URLs: what may be one, and where a POST to one may go (SSRF).

A webhook URL is typed in over the API and Postern POSTs to it from inside the network, so
it gets a guard of its own (gateway.security.hostguard): http or https only, no credentials, and
a host that is, or resolves to, a denied network (cloud metadata, link-local, the
operator's `deny_networks`, and loopback and private networks unless `[webhooks]
allow_private`) is refused at create/PATCH and again before every POST. The POST
then goes to the address that was checked (`Pinned`), so a DNS answer that changes between
the check and the connection (rebinding) cannot point it elsewhere; TLS still verifies the
certificate against the URL's host name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx

from gateway.errors import InvalidInput
from gateway.security.hostguard import HostGuard

MAX_LENGTH = 2048


class BadUrl(InvalidInput, ValueError):
    """Not a URL a webhook may have; the message says why."""


def parse(url: str) -> httpx.URL:
    """The URL, or BadUrl: absolute http(s), a host, no user:password, no spaces."""
    if len(url) > MAX_LENGTH:
        raise BadUrl(f"longer than {MAX_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise BadUrl("contains spaces or control characters")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as error:
        raise BadUrl(f"not a valid URL ({error})") from None
    if parsed.scheme not in ("http", "https"):
        raise BadUrl("must start with http:// or https://")
    if not parsed.host:
        raise BadUrl("has no host")
    if parsed.userinfo:
        raise BadUrl("must not carry credentials (user:password@)")
    if parsed.fragment:
        raise BadUrl("must not have a #fragment")
    return parsed


def port_of(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


async def check(guard: HostGuard, url: str) -> None:
    """For create/PATCH: BadUrl, or HostRefused for a denied host (an unresolvable one
    passes: it cannot be reached either, and every POST checks again)."""
    parsed = parse(url)
    await guard.check(parsed.raw_host.decode("ascii"), port_of(parsed))


@dataclass(frozen=True)
class Pinned:
    """A POST target fixed to one checked address."""

    url: httpx.URL
    headers: dict[str, str] = field(default_factory=dict)
    extensions: dict[str, bytes] = field(default_factory=dict)


async def pin(guard: HostGuard, url: str) -> Pinned:
    """Resolve and check the host now; the URL to connect to with the Host header (and TLS
    server name) of the original. Raises BadUrl, HostRefused or HostUnresolved."""
    parsed = parse(url)
    host = parsed.raw_host.decode("ascii")  # IDNA-encoded
    addresses = await guard.resolve(host, port_of(parsed))
    host_header = f"[{host}]" if ":" in host else host
    if parsed.port is not None:
        host_header += f":{parsed.port}"
    extensions = {"sni_hostname": parsed.raw_host} if parsed.scheme == "https" else {}
    return Pinned(parsed.copy_with(host=addresses[0]), {"Host": host_header}, extensions)
