"""A sender's reputation score, a pure function over recorded counts (issue 21, seed 004).

    score(Inputs, Thresholds, at_risk_below) -> Score(score, status, components)

The inputs are what Postern recorded for one account, pool or sending domain: per window
(7 and 30 days), the recipients delivered, hard-bounced and deferred or throttled, and the
complaints; the blocklists that list it; its domain's SPF, DKIM and DMARC records. The
thresholds are data (`thresholds.toml`, beside this module, each step with its source: Gmail's
bulk-sender rules, SES's review and pause levels). A score starts at 100 and each signal costs
the points of the highest step its value reached; the worst window counts. A window with fewer
than `min_delivered` deliveries is not scored: with no window scored, the score is None and the
status "collecting", never a number made up from a handful of messages.

No I/O, no clock: the same counts give the same score and the same `components`, which say
for each signal its value, the window it came from and the points it cost (the rule reached).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from itertools import pairwise
from typing import Any

from gateway.errors import ConfigError

COLLECTING = "collecting"
OK = "ok"
AT_RISK = "at_risk"
STATUSES = (COLLECTING, OK, AT_RISK)

HARD_BOUNCE_RATE = "hard_bounce_rate"
COMPLAINT_RATE = "complaint_rate"
DEFERRAL_RATE = "deferral_rate"
BLOCKLIST_LISTINGS = "blocklist_listings"
SPF_MISSING = "spf_missing"
DKIM_MISSING = "dkim_missing"
DMARC_MISSING = "dmarc_missing"
RATE_SIGNALS = (HARD_BOUNCE_RATE, COMPLAINT_RATE, DEFERRAL_RATE)
SIGNALS = (*RATE_SIGNALS, BLOCKLIST_LISTINGS, SPF_MISSING, DKIM_MISSING, DMARC_MISSING)


@dataclass(frozen=True)
class Counts:
    """What happened to the mail of one subject within one window."""

    delivered: int = 0  # recipients an upstream accepted
    hard_bounces: int = 0  # refused permanently: at once (5xx) or by a report later
    complaints: int = 0  # feedback reports (spam complaints)
    deferrals: int = 0  # deferred (4xx) recipients and throttled attempts

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.delivered + other.delivered,
            self.hard_bounces + other.hard_bounces,
            self.complaints + other.complaints,
            self.deferrals + other.deferrals,
        )


@dataclass(frozen=True)
class Window:
    days: int
    counts: Counts


@dataclass(frozen=True)
class DomainSetup:
    """The domain's records as last checked; None: not checked (or not Postern's to check)."""

    spf: bool | None = None
    dkim: bool | None = None
    dmarc: bool | None = None  # a DMARC record published, DKIM aligned with it


@dataclass(frozen=True)
class Inputs:
    windows: tuple[Window, ...]
    listings: int | None = None  # blocklists listing it; None: never checked or unknown
    setup: DomainSetup | None = None  # None: no domain of its own (a pool)


@dataclass(frozen=True)
class Step:
    at: float  # the value from which (inclusive) this step's points are due
    points: int
    source: str


@dataclass(frozen=True)
class Thresholds:
    min_delivered: int
    windows: tuple[int, ...]  # days
    signals: Mapping[str, tuple[Step, ...]]


@dataclass(frozen=True)
class Component:
    """One signal: its value, the window it was measured over (rates only), the points it
    cost and the rule it reached ("" when it cost nothing)."""

    signal: str
    value: float | int | bool | None
    points: int
    window_days: int | None = None
    rule: str = ""

    def as_json(self) -> dict[str, Any]:
        value = round(self.value, 6) if isinstance(self.value, float) else self.value
        return {
            "signal": self.signal,
            "value": value,
            "points": self.points,
            "window_days": self.window_days,
            "rule": self.rule or None,
        }


@dataclass(frozen=True)
class Score:
    score: int | None  # 0-100; None while collecting
    status: str  # collecting | ok | at_risk
    components: tuple[Component, ...]
    window_days: int | None = None  # the window that counted (the worst scored one)


def rates(counts: Counts) -> dict[str, float | None]:
    """Each rate signal's value (None: nothing to divide by)."""
    sent = counts.delivered + counts.hard_bounces
    tried = sent + counts.deferrals
    return {
        HARD_BOUNCE_RATE: counts.hard_bounces / sent if sent else None,
        COMPLAINT_RATE: counts.complaints / counts.delivered if counts.delivered else None,
        DEFERRAL_RATE: counts.deferrals / tried if tried else None,
    }


def cost(steps: Sequence[Step], value: float | None) -> tuple[int, str]:
    """The points of the highest step `value` reached, and that step's source."""
    reached = [step for step in steps if value is not None and value >= step.at]
    if not reached:
        return 0, ""
    step = reached[-1]
    return step.points, step.source


def _window_components(window: Window, thresholds: Thresholds) -> tuple[Component, ...]:
    values = rates(window.counts)
    found = []
    for signal in RATE_SIGNALS:
        points, rule = cost(thresholds.signals.get(signal, ()), values[signal])
        found.append(Component(signal, values[signal], points, window.days, rule))
    return tuple(found)


def _other_components(inputs: Inputs, thresholds: Thresholds) -> tuple[Component, ...]:
    found = []
    points, rule = cost(thresholds.signals.get(BLOCKLIST_LISTINGS, ()), inputs.listings)
    found.append(Component(BLOCKLIST_LISTINGS, inputs.listings, points, None, rule))
    if inputs.setup is not None:
        for signal, present in (
            (SPF_MISSING, inputs.setup.spf),
            (DKIM_MISSING, inputs.setup.dkim),
            (DMARC_MISSING, inputs.setup.dmarc),
        ):
            missing = None if present is None else not present
            points, rule = cost(thresholds.signals.get(signal, ()), 1 if missing else 0)
            found.append(Component(signal, missing, points, None, rule))
    return tuple(found)


def score(inputs: Inputs, thresholds: Thresholds, at_risk_below: int = 70) -> Score:
    """The score of one subject (see the module's docstring)."""
    others = _other_components(inputs, thresholds)
    scored = [w for w in inputs.windows if w.counts.delivered >= thresholds.min_delivered]
    if not scored:
        # Still say what is known: the rates over the longest window, as they would cost.
        longest = max(inputs.windows, key=lambda w: w.days, default=None)
        shown = _window_components(longest, thresholds) if longest is not None else ()
        return Score(None, COLLECTING, shown + others, None)
    # The worst window: the most points; of equal ones, the shorter (the more recent).
    per_window = [(w, _window_components(w, thresholds)) for w in scored]
    window, components = max(
        per_window, key=lambda pair: (sum(c.points for c in pair[1]), -pair[0].days)
    )
    total = sum(c.points for c in components + others)
    value = max(0, 100 - total)
    status = AT_RISK if value < at_risk_below else OK
    return Score(value, status, components + others, window.days)


# --- thresholds as data -------------------------------------------------------------------


@cache
def shipped_thresholds() -> Thresholds:
    """The shipped `thresholds.toml`, read once."""
    return load_thresholds()


def load_thresholds(text: str | None = None, where: str = "thresholds.toml") -> Thresholds:
    """The thresholds from TOML text (default: the shipped `thresholds.toml`); ConfigError
    naming what is wrong."""
    if text is None:
        text = resources.files("gateway.reputation").joinpath("thresholds.toml").read_text("utf-8")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{where}: {error}") from None
    minimum = raw.get("min_delivered")
    if not isinstance(minimum, int) or isinstance(minimum, bool) or minimum < 1:
        raise ConfigError(f"{where}: min_delivered must be a positive integer")
    windows = raw.get("windows")
    if (
        not isinstance(windows, list)
        or not windows
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in windows)
    ):
        raise ConfigError(f"{where}: windows must be a list of positive day counts")
    signals: dict[str, tuple[Step, ...]] = {}
    for entry in raw.get("signal", []):
        name = entry.get("name") if isinstance(entry, dict) else None
        if name not in SIGNALS:
            raise ConfigError(f"{where}: unknown signal {name!r} (known: {', '.join(SIGNALS)})")
        if name in signals:
            raise ConfigError(f"{where}: signal {name!r} given twice")
        signals[name] = _steps(entry.get("steps"), f"{where}: signal {name!r}")
    return Thresholds(minimum, tuple(sorted(set(windows))), signals)


def _steps(raw: Any, where: str) -> tuple[Step, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: steps must be a non-empty list")
    steps = []
    for item in raw:
        item = item if isinstance(item, dict) else {}
        at, points = item.get("at"), item.get("points")
        if not isinstance(at, int | float) or isinstance(at, bool) or at < 0:
            raise ConfigError(f"{where}: each step needs at >= 0")
        if not isinstance(points, int) or isinstance(points, bool) or not 0 <= points <= 100:
            raise ConfigError(f"{where}: each step needs points from 0 to 100")
        steps.append(Step(float(at), points, str(item.get("source", ""))))
    ordered = all(a.at < b.at and a.points <= b.points for a, b in pairwise(steps))
    if not ordered:
        raise ConfigError(f"{where}: steps must rise (at and points ascending)")
    return tuple(steps)
