"""What comes back after a message left: bounces (RFC 3464 and the common plain-text
forms), complaints (RFC 5965) and auto-replies (RFC 3834), read and classified.

Pure functions over bytes: no storage, no network. The parts that fetch reports (IMAP
sync, the bounce listener) and match them to messages are built on this API:

    report = parse(raw, ref_headers=("X-Postern-Ref",))
    token = token_for(report, envelope_recipient, Verp(prefix="bounces", domain=...))
    rules = load(user_rules_file)              # ConfigError on a bad file
    for entry, verdict in rules.classify_report(report): ...
"""

from gateway.bounces.model import (
    DEFAULT_LIMITS,
    Entry,
    Feedback,
    Limits,
    Report,
    Returned,
    Stats,
)
from gateway.bounces.report import REF_HEADERS, parse
from gateway.bounces.rules import Classification, Rule, Rules, classify, load, shipped
from gateway.bounces.verp import Verp, token, token_for

__all__ = [
    "DEFAULT_LIMITS",
    "REF_HEADERS",
    "Classification",
    "Entry",
    "Feedback",
    "Limits",
    "Report",
    "Returned",
    "Rule",
    "Rules",
    "Stats",
    "Verp",
    "classify",
    "load",
    "parse",
    "shipped",
    "token",
    "token_for",
]
