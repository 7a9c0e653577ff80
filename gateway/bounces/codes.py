"""Status codes found in text: enhanced codes (RFC 3463, `5.1.1`) and basic SMTP codes."""

from __future__ import annotations

import re

# Not inside a dotted number: "10.4.5.6" holds no "4.5.6". "550-5.1.1" and "#5.1.1" do.
_ENHANCED = re.compile(r"(?<![\w.])([245])\.(\d{1,3})\.(\d{1,3})(?![\w-]|\.\d)")
_BASIC = re.compile(r"(?<![\w.#])([245][0-5]\d)(?=[\s:-]|$)")


def enhanced(text: str) -> str:
    """The first enhanced status code in `text`, or ""."""
    found = _ENHANCED.search(text)
    return ".".join(found.groups()) if found else ""


def basic(text: str) -> str:
    """The first basic SMTP reply code (`550`) in `text`, or ""."""
    found = _BASIC.search(text)
    return found.group(1) if found else ""


def status_of(text: str) -> tuple[str, str]:
    """(status, basic code) read from a diagnostic: the enhanced code when there is one,
    else the class of the basic code (`554` -> `5.0.0`)."""
    code = basic(text)
    status = enhanced(text)
    if not status and code:
        status = f"{code[0]}.0.0"
    return status, code


def refine(status: str, diagnostic: str) -> str:
    """A DSN's generic `Status: 5.0.0` made precise by the diagnostic's own code of the
    same class (`550 5.1.1 ...` -> `5.1.1`); any other status stands as given."""
    if not status.endswith(".0.0"):
        return status
    found = enhanced(diagnostic)
    return found if found and found[0] == status[0] else status
