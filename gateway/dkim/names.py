"""DKIM names: signing domains and selectors in their one compared form, a fresh selector's
name, and the domain that signs a given message (its From header's)."""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Collection
from functools import lru_cache

from gateway.addresses import normalise
from gateway.dkim.errors import DkimError
from gateway.headers import MAX_FROM, header_block, header_fields, mailboxes

_SELECTOR = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*$")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def normalise_domain(domain: str) -> str:
    """Lower-case A-label form without a trailing dot; DkimError when not a domain."""
    name = normalise("x@" + domain.strip()).partition("@")[2]
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise DkimError(f"{domain!r} is not a valid domain name")
    return name


def normalise_selector(selector: str) -> str:
    """Selectors are DNS labels (dots allowed, RFC 6376 §3.1); compared lower-case."""
    name = selector.strip().lower()
    if not _SELECTOR.match(name) or len(name) > 200:
        raise DkimError(f"{selector!r} is not a valid selector (letters, digits, '-', '.')")
    return name


def default_selector(taken: Collection[str], today: _dt.date | None = None) -> str:
    """``pYYYYMMDD``, with ``-2``, ``-3``... when that name is taken (rotation-friendly)."""
    base = f"p{(today or _dt.datetime.now(_dt.UTC).date()):%Y%m%d}"
    used = {name.lower() for name in taken}
    if base not in used:
        return base
    n = 2
    while f"{base}-{n}" in used:
        n += 1
    return f"{base}-{n}"


def from_domain(message: bytes) -> str | None:
    """The domain of the From header's address(es), normalised; None when absent or mixed.

    Intake looks up the active key of this domain. A From listing addresses of several
    domains has no single signing domain and is left unsigned.
    """
    block = header_block(message)
    fields = [field.partition(b":") for field in header_fields(block)]
    values = [value for name, colon, value in fields if colon and name.strip().lower() == b"from"]
    if len(values) != 1 or len(values[0]) > MAX_FROM:  # not parsed, nor kept in the cache
        return None
    return _domain_of_from(values[0])


@lru_cache(maxsize=1024)
def _domain_of_from(value: bytes) -> str | None:
    """Cached: an application sends from a handful of From values, and the address parser
    is pure Python (~5 % of the event loop when signing, profiled)."""
    domains = {address.rpartition("@")[2] for address in mailboxes(value) or ()}
    if len(domains) != 1:
        return None
    try:
        return normalise_domain(domains.pop())
    except DkimError:
        return None
