"""Envelope address checks, done by Postern itself before any library sees the address.

aiosmtpd lets control characters through inside addresses and aiosmtplib silently rewrites
some malformed ones (both measured; tests/unit/test_addresses.py holds the cases), so what
is not plainly `local@domain` is refused.
"""

from __future__ import annotations

import ipaddress
import re
from functools import cache, lru_cache

# A mailbox's one form lives in storage, which keys its rows by it; the gateway takes it here.
from storage.mailboxes import mailbox_key as mailbox_key
from storage.mailboxes import normalise as normalise

CONTROL = r"\x00-\x1f\x7f-\x9f"  # C0, DEL and C1: the body of a character class
_CONTROL = re.compile(f"[{CONTROL}]")
_COMMAND_BREAKING = re.compile(r"[\x00-\x1f\x7f]")  # CONTROL but C1: ends or splits a line
NO_CONTROL_PATTERN = f"^[^{CONTROL}]*$"  # text without them, as /openapi.json states it
# Compiled at first use (`_compiled`): a class with a range past U+00FF costs re a loop
# over 65,536 code points in Python, ~4 ms each, which every `postern` command paid.
_DOMAIN_LABEL = r"^(?!-)[A-Za-z0-9\-\u0080-\U0010ffff]{1,63}(?<!-)$"
_LOCAL_ATOM = r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-\u0080-\U0010ffff]+$"


@cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def has_control(text: str) -> bool:
    return bool(_CONTROL.search(text))


def breaks_a_command(text: str) -> bool:
    """Whether `text` written into an SMTP command could end or split it: the last check
    before an address reaches an upstream (the doors refused all control characters)."""
    return bool(_COMMAND_BREAKING.search(text))


_LOG_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_for_log(text: str) -> str:
    """`text` as one log line: control and other non-printable characters (CR, LF, ESC, C1,
    U+2028, bidi overrides, lone surrogates) become backslash escapes, and so does the
    backslash itself, so that no input can forge a line or pass for an escape; printable
    non-ASCII stays readable."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(_escape_char(char) for char in text)


def _escape_char(char: str) -> str:
    if char in _LOG_ESCAPES:
        return _LOG_ESCAPES[char]
    if char.isprintable():
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def envelope_problem(address: str) -> str | None:
    """Why `address` is not an acceptable envelope address, or None when it is.

    Cached: a sender's address comes with each of its messages, and the checks (a regex
    per domain label, three encodings) cost more than the lookup. Only what may be an
    address is kept (at most 254 bytes: 4096 keys of at most 1 KiB), never a long value."""
    if len(address) > _MAX_ADDRESS:
        return _envelope_problem(address)
    return _cached_problem(address)


_MAX_ADDRESS = 254


def _envelope_problem(address: str) -> str | None:
    if has_control(address):
        return "control character in address"
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:
        return "address is not valid UTF-8"
    if len(address.encode("utf-8", "surrogateescape")) > _MAX_ADDRESS:
        return "address too long"
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return "address must be local@domain"
    if len(local.encode("utf-8", "surrogateescape")) > 64:
        return "local part too long"
    if not _valid_local(local):
        return "malformed local part"
    if not _valid_domain(domain):
        return "malformed domain"
    return None


_cached_problem = lru_cache(maxsize=4096)(_envelope_problem)


def _valid_local(local: str) -> bool:
    if local.startswith('"') and local.endswith('"') and len(local) >= 2:
        inner = local[1:-1].replace('\\"', "").replace("\\\\", "")
        return '"' not in inner and "\\" not in inner
    if local.startswith(".") or local.endswith(".") or ".." in local:
        return False
    return bool(_compiled(_LOCAL_ATOM).match(local))


def _valid_domain(domain: str) -> bool:
    if domain.startswith("[") and domain.endswith("]"):
        return _valid_literal(domain[1:-1])
    labels = domain.split(".")  # a trailing dot would leave an empty label: refused
    return len(domain) <= 253 and all(map(_compiled(_DOMAIN_LABEL).match, labels))


def _valid_literal(literal: str) -> bool:
    try:
        if literal[:5].lower() == "ipv6:":
            ipaddress.IPv6Address(literal[5:])
        else:
            ipaddress.IPv4Address(literal)
    except ValueError:
        return False
    return True
