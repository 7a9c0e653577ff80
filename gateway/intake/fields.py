"""The fields both doors carry, one check each: what `POST /v1/send` takes as JSON and SMTP
as `X-Postern-*` headers. The same value is accepted or refused whichever door it came in
by; /openapi.json states these rules (api.schemas builds its field types from here).

    alias_id          X-Postern-Alias-Id          1 to 128 characters of header-safe text
    idempotency_key   X-Postern-Idempotency-Key   1 to 128 characters of header-safe text
    tags              X-Postern-Tags (a,b,c)      at most 10, each 1 to 64 of header-safe text
    sandbox           X-Postern-Sandbox           "true" or "false" (any case, blanks around)

Header-safe text (`text_problem`, which the other text fields pass too, from a sender's
name to a webhook's description): valid UTF-8, no control character but TAB, no line
separator (U+2028, U+2029), no RFC 2047 encoded-word. These values end up in logs, events
and webhooks; an encoded-word or a line separator would be read differently by the next
program that decodes them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# C0 controls but TAB, DEL, C1, and the characters str.splitlines() breaks lines at.
_UNSAFE = r"\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029"
_HEADER_UNSAFE = re.compile(f"[{_UNSAFE}]")
# RFC 2047 syntax; spelled without \s (Python's and ECMA-262's differ) to read the same in
# /openapi.json, where these two are the patterns of header-bound text.
ENCODED_WORD = r"=\?[^? \t\r\n]*\?[bBqQ]\?[^? \t\r\n]*\?="
HEADER_SAFE = f"^[^{_UNSAFE}]*$"
_ENCODED_WORD = re.compile(ENCODED_WORD)

MAX_ALIAS_ID = 128
MAX_IDEMPOTENCY_KEY = 128
MAX_TAGS = 10
MAX_TAG = 64
SANDBOX_VALUES = ("true", "false")


def text_problem(value: str, *, header: bool) -> str | None:
    """Why `value` may not be used (in a header, when `header`), or None."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid UTF-8"
    if "\x00" in value:
        return "NUL character"
    if header and _HEADER_UNSAFE.search(value):
        return "control character or line break"
    if header and _ENCODED_WORD.search(value):
        return "RFC 2047 encoded-word syntax (send the decoded text)"
    return None


@dataclass(frozen=True)
class FieldProblem:
    field: str  # as the HTTP API names it: "tags[2]"
    message: str


def _text(field: str, value: str, most: int) -> FieldProblem | None:
    if not value:
        return FieldProblem(field, "may not be empty")
    if len(value) > most:
        return FieldProblem(field, f"longer than {most} characters")
    problem = text_problem(value, header=True)
    return FieldProblem(field, problem) if problem else None


def alias_id_problem(value: str) -> FieldProblem | None:
    return _text("alias_id", value, MAX_ALIAS_ID)


def idempotency_key_problem(value: str) -> FieldProblem | None:
    return _text("idempotency_key", value, MAX_IDEMPOTENCY_KEY)


def tags_problems(tags: Sequence[str]) -> list[FieldProblem]:
    if len(tags) > MAX_TAGS:
        return [FieldProblem("tags", f"at most {MAX_TAGS} tags")]
    found = (_text(f"tags[{i}]", tag, MAX_TAG) for i, tag in enumerate(tags))
    return [problem for problem in found if problem is not None]


def control_problems(
    alias_id: str | None, idempotency_key: str | None, tags: Sequence[str]
) -> list[FieldProblem]:
    """Every problem of the fields both doors carry (None: not given)."""
    found = [
        alias_id_problem(alias_id) if alias_id is not None else None,
        idempotency_key_problem(idempotency_key) if idempotency_key is not None else None,
    ]
    return [problem for problem in found if problem is not None] + tags_problems(tags)


def sandbox_flag(values: Iterable[str]) -> bool:
    """Whether the sandbox header(s) ask for a sandbox send; ValueError unless each is
    "true" or "false" (a typo must not send for real what was meant as a test)."""
    flags = {value.strip(" \t").lower() for value in values}
    if flags - set(SANDBOX_VALUES):
        raise ValueError("must be 'true' or 'false'")
    return "true" in flags
