"""One grammar for every rate Postern reads: `[http] rate_limit` (requests per API key) and a
pool's `rate` (sends per rolling window), in the config file and over the API alike.

    "100/min", "14/s", "50/sec", "1000/hour", "20/10s" (20 per 10 seconds)

Units s, sec, second, m, min, minute, h, hour (plurals too, any case); the count is 1 to
1,000,000 and the window 1 second to 24 hours (storage.limits: no older sends are kept);
spaces or tabs around it are ignored. `PATTERN` is the same grammar, bounds included, as
/openapi.json states it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from storage.limits import MAX_WINDOW

_UNITS = {
    **dict.fromkeys(("s", "sec", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hour", "hours"), 3600),
}
_RATE = re.compile(r"([0-9]+)/([0-9]*)([a-z]+)", re.ASCII | re.IGNORECASE)
_BLANK = " \t"
_BLANKS = r"[ \t]*"
MAX_COUNT = 1_000_000


@dataclass(frozen=True)
class Rate:
    count: int  # events allowed ...
    window: float  # ... in any window of this many seconds

    @property
    def per_second(self) -> float:
        return self.count / self.window


def parse_rate(text: str) -> Rate | None:
    """'' (or blanks) -> None; "100/min" -> Rate(100, 60.0); else ValueError saying why."""
    rate = text.strip(_BLANK)
    if not rate:
        return None
    match = _RATE.fullmatch(rate)
    unit = match.group(3).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(
            f'expected a rate like "100/min", "14/s" or "20/10s" (units s, min, hour), got {text!r}'
        )
    count = int(match.group(1))
    multiple = int(match.group(2) or 1)
    window = multiple * _UNITS[unit]
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"the count of a rate must be between 1 and {MAX_COUNT}, got {count}")
    if multiple < 1 or window > MAX_WINDOW:
        raise ValueError(f"the window of a rate must be between 1 second and 24 hours: {text!r}")
    return Rate(count, float(window))


def _up_to(most: int) -> str:
    """A regex for the decimal numbers 1..most (leading zeros allowed, as int() reads them)."""
    digits = str(most)
    shorter = [f"[1-9][0-9]{{0,{len(digits) - 2}}}"] if len(digits) > 1 else []
    same = []
    for i, digit in enumerate(digits):
        low = "1" if i == 0 else "0"
        below = int(digit) - 1
        if below >= int(low):
            rest = len(digits) - i - 1
            span = low if below == int(low) else f"[{low}-{below}]"
            same.append(digits[:i] + span + (f"[0-9]{{{rest}}}" if rest else ""))
    return f"0*(?:{'|'.join([*shorter, *same, digits])})"


def _any_case(word: str) -> str:
    return "".join(f"[{c}{c.upper()}]" for c in word)


def _windows() -> str:
    """Every unit, with the multiples that keep the window within MAX_WINDOW."""
    choices = []
    for seconds in sorted(set(_UNITS.values())):
        words = sorted((w for w, s in _UNITS.items() if s == seconds), key=len, reverse=True)
        units = "|".join(_any_case(word) for word in words)
        choices.append(f"(?:{_up_to(int(MAX_WINDOW) // seconds)})?(?:{units})")
    return "|".join(choices)


_GRAMMAR = f"{_up_to(MAX_COUNT)}/(?:{_windows()})"
PATTERN = f"^{_BLANKS}(?:{_GRAMMAR}{_BLANKS})?$"  # "" and blanks: no rate
