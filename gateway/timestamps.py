"""The points in time the API and the CLI take (the `since` / `until` of searches, bulk
operations and webhook replays), in one grammar that /openapi.json states as `PATTERN`:

    UNIX seconds            "1769860800", "1769860800.25"   (at most 11 digits)
    an ISO 8601 date        "2026-01-31"                    (midnight UTC)
    an ISO 8601 date-time   "2026-01-31T12:00:00Z", "2026-01-31 12:00", "...+02:00"
                            (no zone: UTC; seconds and fractions optional)

from 1970 on, with real calendar dates only (no February 30th, February 29th in leap
years). A JSON number is UNIX seconds from 0 up to the year 10000.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import cache

MAX_SECONDS = 253_402_300_800  # 10000-01-01T00:00:00Z, excluded

_SECONDS = r"[0-9]{1,11}(?:\.[0-9]{1,9})?"
_YEAR = r"(?:19[7-9][0-9]|[2-9][0-9]{3})"
_LEAP_YEAR = (
    r"(?:19(?:7[26]|8[048]|9[26])|[2-9][0-9](?:0[48]|[2468][048]|[13579][26])"
    r"|(?:[2468][048]|[3579][26])00)"
)
_MONTH_DAY = (
    r"(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
    r"|02-(?:0[1-9]|1[0-9]|2[0-8]))"
)
_DATE = f"(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29)"
_ZONE = r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
_TIME = rf"[Tt ](?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]{{1,6}})?)?{_ZONE}?"
PATTERN = f"^(?:{_SECONDS}|{_DATE}(?:{_TIME})?)$"


@cache
def _grammar() -> re.Pattern[str]:
    """Compiled at the first time parsed (~3 ms): not by every command that imports this."""
    return re.compile(PATTERN[1:-1], re.ASCII)


def parse(value: object) -> float:
    """A time in the grammar above -> UNIX seconds; ValueError for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("a time is ISO 8601 or UNIX seconds")
    if not isinstance(value, str):
        if not 0 <= value < MAX_SECONDS:  # NaN too
            raise ValueError("out of range")
        return float(value)
    if not _grammar().fullmatch(value):
        raise ValueError("a time is ISO 8601 (from 1970) or UNIX seconds")
    if value[:1].isdigit() and "-" not in value:
        return float(value)
    moment = datetime.fromisoformat(value.upper())  # "t" and "z" as "T" and "Z"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
