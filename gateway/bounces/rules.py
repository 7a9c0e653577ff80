"""Classification of each recipient of a report by an ordered rules table.

The table is TOML: an array of `[[rule]]` tables, tried in order; the first rule whose every
condition holds decides. A user's own file (to be read from `[bounces] rules_file`) is put
before the shipped `rules.toml`, so its rules win.

    [[rule]]
    name = "bad-mailbox"            # unique in its file; every classification names it
    status = ["5.1.1", "5.1.10"]    # enhanced codes: exact ("5.1.1") or a prefix ("5.1.", "5.")
    text = "user unknown|no such user"  # a regular expression searched in the diagnostic,
                                    # case-insensitive
    action = ["failed"]             # DSN actions: failed, delayed, delivered, relayed, expanded
    class = "hard"                  # hard | soft | policy | complaint | auto_reply | ignore
    reason = "the mailbox does not exist"

`name`, `class`, `reason` and at least one of `status`, `text`, `action` are required;
`status` and `action` take a string or a list. Complaints (RFC 5965) and auto-replies
(RFC 3834) are classified before the table: a complaint is `complaint` (but `not-spam` is
`ignore` and `auth-failure` is `policy`), an auto-reply is always `auto_reply`.
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from gateway.bounces.model import ACTIONS, Entry, Report
from gateway.errors import ConfigError

CLASSES = ("hard", "soft", "policy", "complaint", "auto_reply", "ignore")
SHIPPED = "shipped"
_KEYS = {"name", "status", "text", "action", "class", "reason"}
_STATUS = re.compile(r"[245]\.(?:\d{1,3}\.\d{1,3}|\d{1,3}\.|)")  # 5.1.1, 5.1. or 5.
_RULE_HEADER = re.compile(r"^[ \t]*\[\[[ \t]*rule[ \t]*\]\]", re.MULTILINE)


@dataclass(frozen=True)
class Classification:
    cls: str  # one of CLASSES
    rule: str  # the name of the rule that decided
    reason: str
    origin: str = SHIPPED  # the file the rule came from, or "shipped" or "built-in"


@dataclass(frozen=True)
class Rule:
    name: str
    cls: str
    reason: str
    status: tuple[str, ...] = ()
    text: re.Pattern[str] | None = None
    action: tuple[str, ...] = ()
    origin: str = SHIPPED

    def matches(self, entry: Entry) -> bool:
        if self.action and entry.action not in self.action:
            return False
        if self.status and not any(_status_matches(s, entry.status) for s in self.status):
            return False
        return self.text is None or bool(self.text.search(entry.diagnostic))


def _status_matches(pattern: str, status: str) -> bool:
    return status.startswith(pattern) if pattern.endswith(".") else status == pattern


NO_RULE = Classification("ignore", "no-rule", "no rule matched", "built-in")


@dataclass(frozen=True)
class Rules:
    rules: tuple[Rule, ...]

    def classify(self, entry: Entry) -> Classification:
        """Which class `entry` is in, and which rule said so."""
        if entry.kind == "complaint":
            return _complaint(entry.feedback_type)
        if entry.kind == "auto_reply":
            return Classification("auto_reply", "auto-reply", "an RFC 3834 auto-reply", "built-in")
        for rule in self.rules:
            if rule.matches(entry):
                return Classification(rule.cls, rule.name, rule.reason, rule.origin)
        return NO_RULE

    def classify_report(self, report: Report) -> tuple[tuple[Entry, Classification], ...]:
        return tuple((entry, self.classify(entry)) for entry in report.entries)


def _complaint(feedback_type: str) -> Classification:
    if feedback_type == "not-spam":
        return Classification("ignore", "arf-not-spam", "the user said: not spam", "built-in")
    if feedback_type == "auth-failure":
        reason = "an authentication failure report (RFC 6591)"
        return Classification("policy", "arf-auth-failure", reason, "built-in")
    name = f"complaint-{feedback_type}" if feedback_type else "complaint"
    return Classification("complaint", name, "the recipient reported the message", "built-in")


@functools.cache
def shipped() -> Rules:
    """The rules shipped in the package (gateway/bounces/rules.toml)."""
    text = resources.files("gateway.bounces").joinpath("rules.toml").read_text("utf-8")
    return Rules(parse_rules(text, SHIPPED))


def load(user_file: str | Path | None = None) -> Rules:
    """The user's rules, if a file is named, before the shipped ones. A file that cannot
    be read or is wrong raises ConfigError naming the file, the rule and the problem."""
    if not user_file:
        return shipped()
    try:
        text = Path(user_file).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"bounce rules file {user_file}: cannot be read: {error}") from None
    return Rules(parse_rules(text, str(user_file)) + shipped().rules)


def classify(entry: Entry, rules: Rules | None = None) -> Classification:
    """`entry`'s class under `rules` (the shipped rules when None)."""
    return (rules or shipped()).classify(entry)


def parse_rules(text: str, origin: str) -> tuple[Rule, ...]:
    """The rules of one file's text, in order; ConfigError on any mistake."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"bounce rules file {origin}: not valid TOML: {error}") from None
    unknown = sorted(set(raw) - {"rule"})
    if unknown:
        raise ConfigError(f"bounce rules file {origin}: unknown key {unknown[0]!r} (use [[rule]])")
    tables = raw.get("rule", [])
    if not isinstance(tables, list):
        raise ConfigError(f"bounce rules file {origin}: 'rule' must be an array of [[rule]] tables")
    lines = [text.count("\n", 0, m.start()) + 1 for m in _RULE_HEADER.finditer(text)]
    rules = tuple(_rule(t, _Where(origin, i, lines)) for i, t in enumerate(tables))
    _unique(rules, origin)
    return rules


@dataclass(frozen=True)
class _Where:
    """A rule's place, for error messages: file, line of its [[rule]] header, number, name."""

    origin: str
    index: int
    lines: list[int]

    def error(self, problem: str, name: object = None) -> ConfigError:
        line = f" line {self.lines[self.index]}," if self.index < len(self.lines) else ""
        named = f" ({name})" if isinstance(name, str) and name else ""
        rule = f"rule {self.index + 1}{named}"
        return ConfigError(f"bounce rules file {self.origin}:{line} {rule}: {problem}")


def _rule(table: object, where: _Where) -> Rule:
    if not isinstance(table, dict):
        raise where.error("expected a table")
    name = table.get("name")
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise where.error(f"unknown key {unknown[0]!r}", name)
    if not isinstance(name, str) or not re.fullmatch(r"[\w.:-]{1,64}", name):
        raise where.error("'name' must be 1 to 64 letters, digits, '-', '_', '.', ':'", name)
    cls = _string(table, "class", where, name)
    if cls not in CLASSES:
        raise where.error(f"'class' must be one of {', '.join(CLASSES)}; got {cls!r}", name)
    reason = _string(table, "reason", where, name)
    status = _strings(table, "status", where, name)
    for item in status:
        if not _STATUS.fullmatch(item):
            problem = f"status {item!r} is neither a code like 5.1.1 nor a prefix like 5.1."
            raise where.error(problem, name)
    action = _strings(table, "action", where, name)
    for item in action:
        if item not in ACTIONS:
            raise where.error(f"action {item!r} is not one of {', '.join(ACTIONS)}", name)
    text = _regex(table.get("text"), where, name)
    if not (status or action or text):
        raise where.error("needs at least one of 'status', 'text', 'action'", name)
    return Rule(name, cls, reason, status, text, action, where.origin)


def _string(table: dict[str, Any], key: str, where: _Where, name: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value.strip():
        raise where.error(f"{key!r} must be a non-empty string", name)
    return value.strip()


def _strings(table: dict[str, Any], key: str, where: _Where, name: str) -> tuple[str, ...]:
    value = table.get(key, [])
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise where.error(f"{key!r} must be a string or a list of strings", name)
    return tuple(v.strip().lower() for v in value)


def _regex(value: object, where: _Where, name: str) -> re.Pattern[str] | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise where.error("'text' must be a non-empty regular expression", name)
    try:
        return re.compile(value, re.IGNORECASE)
    except re.error as error:
        raise where.error(f"'text' is not a valid regular expression: {error}", name) from None


def _unique(rules: tuple[Rule, ...], origin: str) -> None:
    seen: set[str] = set()
    for rule in rules:
        if rule.name in seen:
            raise ConfigError(
                f"bounce rules file {origin}: the rule name {rule.name!r} is used twice"
            )
        seen.add(rule.name)
