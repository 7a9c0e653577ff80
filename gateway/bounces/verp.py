"""The VERP token of a report: the `TOKEN` of `bounces+TOKEN@bounce.example`.

What a token holds and how it is signed is decided by whoever makes it; this only finds it.
Mail systems may fold the case of an address (some lower-case whole addresses), so a token
should survive that: choose an alphabet without case (base32, lower-case hex).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.bounces.model import Report
from gateway.bounces.report import parse


@dataclass(frozen=True)
class Verp:
    """`prefix` + `separator` + token @ `domain`; an empty `domain` takes any domain."""

    prefix: str = "bounces"
    separator: str = "+"
    domain: str = ""


DEFAULT_VERP = Verp()


def token(address: str, verp: Verp = DEFAULT_VERP) -> str | None:
    """The token in `address` (`<bounces+t1@b.example>` -> `t1`), or None when the address
    is not a VERP address of this shape. The prefix and domain match in any case; the token
    is returned as written."""
    local, at, domain = address.strip().strip("<>").rpartition("@")
    if not at or not local:
        return None
    head, separator, found = local.partition(verp.separator)
    if not separator or not found or head.lower() != verp.prefix.lower():
        return None
    if verp.domain and domain.lower().rstrip(".") != verp.domain.lower().rstrip("."):
        return None
    return found


def token_for(
    report: Report | bytes, envelope_recipient: str = "", verp: Verp = DEFAULT_VERP
) -> str | None:
    """The report's token: from the envelope recipient it was delivered to (the bounce
    listener knows it), else from the addresses its headers say it was delivered to
    (Delivered-To, X-Original-To, Envelope-To, To: all an IMAP inbox has), else from the
    returned message's Return-Path. None when none of them is a VERP address. `report`
    may be the raw bytes, parsed here."""
    if isinstance(report, bytes):
        report = parse(report)
    candidates = [envelope_recipient, *report.addressed_to]
    if report.returned is not None:
        candidates.append(report.returned.return_path)
    for address in candidates:
        found = token(address, verp) if address else None
        if found:
            return found
    return None
