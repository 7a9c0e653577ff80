"""The `[dns] nameservers` grammar: "ip", "ip:port" or "[v6]:port".

Apart from gateway.dns so that reading the configuration (every `postern` command) checks
the entries without importing dnspython.
"""

from __future__ import annotations

import ipaddress

from gateway.errors import ConfigError

DEFAULT_PORT = 53


def parse_nameserver(entry: str) -> tuple[str, int]:
    """ "ip", "ip:port" or "[v6]:port" -> (ip, port); ConfigError otherwise."""
    where = f"dns.nameservers: {entry!r}"
    text = entry.strip()
    host, port = text, DEFAULT_PORT
    if text.startswith("["):
        inner, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ConfigError(f'{where} is not "ip", "ip:port" or "[ipv6]:port"')
        host = inner
        if rest:
            port = _port(rest[1:], where)
    elif text.count(":") == 1:
        host, _, number = text.partition(":")
        port = _port(number, where)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{where}: a nameserver must be an IP address") from None
    return str(address), port


def _port(text: str, where: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"{where}: bad port {text!r}")
    return int(text)
