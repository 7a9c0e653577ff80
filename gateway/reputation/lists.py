"""The DNS blocklists Postern knows, as data: each a zone, the kind of subject it lists, what
its answer codes mean, the codes that are errors, and its test entries (RFC 5782 §5).

A list is queried as `<subject>.<zone>`: an IPv4 address with its octets reversed, an IPv6
address as 32 reversed nibbles, a domain as it is. An A answer in 127.0.0.0/8 is a listing,
unless the list documents that code as an error; NXDOMAIN is "not listed". Spamhaus answers
127.255.255.252 (a typo in the zone), .254 (queried through a public resolver) and .255 (over
the free use limit) instead of refusing, and reserves the whole of 127.255.255.0/24 for such
error answers: any answer there is an error, never a listing. With a DQS key
(`[blocklists] spamhaus_dqs_key`), Spamhaus lists are asked at `<key>.<dqs_zone>` instead.

Sources: spamhaus.org/faqs/dnsbl-usage ("Return codes"), spamcop.net/fom-serve/cache/291.html,
barracudacentral.org/rbl/how-to-use. Barracuda answers only resolvers registered with it
(free): an unregistered one fails verification, and the list is left out of the verdicts
(logged and reported by the round) until it passes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

Kind = Literal["ip", "domain"]

SPAMHAUS_ERROR_NET = "127.255.255.0/24"  # every answer in it is an error, never a listing
_SPAMHAUS_ERRORS = MappingProxyType(
    {
        "127.255.255.252": "typing error in the DNSBL name",
        "127.255.255.254": "queried through a public or open resolver (Spamhaus refuses those)",
        "127.255.255.255": "excessive number of queries (over the free use limit)",
    }
)


@dataclass(frozen=True)
class Blocklist:
    name: str  # how config and reports name it
    zone: str
    kind: Kind
    codes: MappingProxyType[str, str]  # answer -> meaning
    errors: MappingProxyType[str, str] = field(default_factory=lambda: MappingProxyType({}))
    test_listed: str = "127.0.0.2"  # must be listed (RFC 5782 §5: 127.0.0.2, or TEST)
    test_clean: str = "127.0.0.1"  # must not be (RFC 5782 §5: 127.0.0.1, or INVALID)
    ipv6: bool = False  # whether IPv6 addresses are asked (else skipped: not an error)
    dqs_zone: str = ""  # Spamhaus DQS: asked at <key>.<dqs_zone> when a key is set
    error_net: str = ""  # a network of answers that are all errors (Spamhaus: 127.255.255/24)

    def meaning(self, code: str) -> str:
        return self.codes.get(code, "listed (a code this list's table does not name)")

    def error(self, code: str) -> str | None:
        """Why `code` is an error answer (None: it is not one): a code the list names as an
        error, or any code in its reserved error network."""
        if code in self.errors:
            return self.errors[code]
        if self.error_net and _within(code, self.error_net):
            return f"an error code (the list reserves {self.error_net} for error answers)"
        return None


def _within(code: str, network: str) -> bool:
    try:
        return ipaddress.ip_address(code) in ipaddress.ip_network(network)
    except ValueError:
        return False


SPAMHAUS_ZEN = Blocklist(
    name="spamhaus-zen",
    zone="zen.spamhaus.org",
    kind="ip",
    codes=MappingProxyType(
        {
            "127.0.0.2": "SBL: Spamhaus SBL data (direct spam sources)",
            "127.0.0.3": "SBL CSS: snowshoe spam sources",
            "127.0.0.4": "XBL: exploited host (CBL: malware, proxies, bots)",
            "127.0.0.5": "XBL: exploited host",
            "127.0.0.6": "XBL: exploited host",
            "127.0.0.7": "XBL: exploited host",
            "127.0.0.9": "SBL DROP/EDROP: hijacked or criminal network",
            "127.0.0.10": "PBL: ISP-maintained (end-user range, should not send direct-to-MX)",
            "127.0.0.11": "PBL: Spamhaus-maintained (end-user range, should not send direct-to-MX)",
        }
    ),
    errors=_SPAMHAUS_ERRORS,
    ipv6=True,
    dqs_zone="zen.dq.spamhaus.net",
    error_net=SPAMHAUS_ERROR_NET,
)

SPAMHAUS_DBL = Blocklist(
    name="spamhaus-dbl",
    zone="dbl.spamhaus.org",
    kind="domain",
    codes=MappingProxyType(
        {
            "127.0.1.2": "spam domain",
            "127.0.1.4": "phishing domain",
            "127.0.1.5": "malware domain",
            "127.0.1.6": "botnet command and control domain",
            "127.0.1.102": "abused legit domain (spam)",
            "127.0.1.103": "abused legit spammed redirector domain",
            "127.0.1.104": "abused legit phishing domain",
            "127.0.1.105": "abused legit malware domain",
            "127.0.1.106": "abused legit botnet command and control domain",
        }
    ),
    errors=MappingProxyType(
        dict(_SPAMHAUS_ERRORS) | {"127.0.1.255": "IP queries prohibited (the DBL lists domains)"}
    ),
    test_listed="dbltest.com",
    test_clean="invalid",
    dqs_zone="dbl.dq.spamhaus.net",
    error_net=SPAMHAUS_ERROR_NET,
)

SPAMCOP = Blocklist(
    name="spamcop",
    zone="bl.spamcop.net",
    kind="ip",
    codes=MappingProxyType({"127.0.0.2": "SpamCop: reported as a spam source"}),
)

BARRACUDA = Blocklist(
    name="barracuda",
    zone="b.barracudacentral.org",
    kind="ip",
    codes=MappingProxyType({"127.0.0.2": "Barracuda Reputation Block List: poor reputation"}),
)

LISTS: dict[str, Blocklist] = {
    blocklist.name: blocklist for blocklist in (SPAMHAUS_ZEN, SPAMHAUS_DBL, SPAMCOP, BARRACUDA)
}
DEFAULT_LISTS: tuple[str, ...] = tuple(LISTS)
