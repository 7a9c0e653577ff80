"""The search keys intake writes beside a message and the queue search looks up: the
client's address, in a text form whose order is the addresses' numeric order (so that a
CIDR block is one range of ix_message_client), and the words of the Subject (the
message_subject_word side table). One module, so that both sides make them alike.

An address is kept as 32 lower-case hex digits, the 128 bits of its IPv6 form (an IPv4
address as IPv4-mapped, ::ffff:a.b.c.d): every address has the same width, so the text
order of two keys is their numeric order on SQLite and PostgreSQL alike, and a block
a.b.c.d/n is the keys from its first address to its last.
"""

from __future__ import annotations

import ipaddress
import re

MAX_WORDS = 32  # distinct words of a Subject indexed (the first ones)
MAX_WORD = 64  # characters of a word kept (the rest of a longer one is cut, on both sides)
MAX_QUERY_WORDS = 8  # words a search may name
ADDRESS_KEY_LENGTH = 32
_WORD = re.compile(r"\w+")
_MAPPED = int(ipaddress.IPv6Address("::ffff:0:0"))
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def subject_words(subject: str, limit: int = MAX_WORDS) -> list[str]:
    """The distinct words of `subject`, in order, case-folded (`Invoice` and `INVOICE` are
    one word), split on anything that is not a letter, digit or underscore, each cut to
    MAX_WORD characters; at most `limit` of them."""
    found: list[str] = []
    for match in _WORD.finditer(subject.casefold()):
        word = match.group()[:MAX_WORD]
        if word not in found:
            found.append(word)
            if len(found) >= limit:
                break
    return found


def _key(address: Address) -> str:
    number = int(address) | _MAPPED if address.version == 4 else int(address)
    return f"{number:032x}"


def address_key(address: str) -> str | None:
    """The key of an IP address (`192.0.2.7`, `2001:db8::1`, `[::1]`; a zone is ignored),
    None when `address` is none (a Unix socket, a name a proxy passed on)."""
    try:
        return _key(ipaddress.ip_address(address.strip("[]").split("%", 1)[0]))
    except ValueError:
        return None


def address_of(key: str) -> str:
    """The address a key stands for, as people write it (IPv4-mapped shown as IPv4)."""
    address = ipaddress.IPv6Address(int(key, 16))
    return str(address.ipv4_mapped or address)


def address_range(value: str) -> tuple[str, str]:
    """The first and last key of an address (both the same) or of a CIDR block such as
    `192.0.2.0/24` or `2001:db8::/32` (host bits are ignored); ValueError for anything
    else."""
    if "/" not in value:
        key = address_key(value)
        if key is None:
            raise ValueError(value)
        return key, key
    block = ipaddress.ip_network(value, strict=False)
    return _key(block.network_address), _key(block.broadcast_address)
