"""The one form of a mailbox, for storing and looking up addresses (suppressions, aliases,
senders, searches): storage keys rows by it, and gateway.addresses hands it to the rest.
"""

from __future__ import annotations

import contextlib
import re


def normalise(address: str) -> str:
    """The address with its domain in one form (RFC 5321 §2.4), local part as given.

    The domain is lower-cased, loses its trailing dots, and IDNs take their A-label form, so
    that one mailbox has one key (a suppression cannot be dodged by spelling).
    """
    local, at, domain = address.rpartition("@")
    if not at:
        return address.lower()
    domain = domain.lower().rstrip(".")
    if not domain.isascii():
        import idna  # its tables cost every start; only an IDN needs them

        with contextlib.suppress(idna.IDNAError):
            domain = idna.encode(domain, uts46=True).decode("ascii")
    return f"{local}@{domain}"


_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)


def mailbox_key(address: str) -> str:
    """The one key of a mailbox, for every policy lookup (suppressions, aliases, senders).

    A quoted local part is unquoted (`"bob"@x` is `bob@x`, RFC 5321 §4.1.2), the domain
    takes its `normalise` form, and the whole address is lower-cased: RFC 5321 lets a
    local part be case-sensitive, but no mail system in use treats it so, and a suppression
    must not be dodged by spelling `GONE@` for `gone@`. A key is its own key: quotes are
    taken off until none are left (`"\\"a\\""@x` is `a@x` too), as a key stored by one
    node may be keyed again by another.
    """
    local, at, domain = normalise(address).rpartition("@")
    if not at:
        return address.lower()
    while len(local) >= 2 and local.startswith('"') and local.endswith('"'):
        local = _QUOTED_PAIR.sub(r"\1", local[1:-1])
    return f"{local}@{domain}".lower()
