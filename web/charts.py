"""The Live page's charts as plain geometry for an SVG the template draws: no chart library,
no script (they are there without JavaScript). Colours come from CSS classes (the CSP
allows no `style=` attribute)."""

from __future__ import annotations

from dataclasses import dataclass, field

from storage.event_stream import MinuteStats

WIDTH, HEIGHT = 600, 160  # the drawing area, in SVG units; labels sit outside it
MINUTES = 60
KINDS = ("delivered", "deferred", "bounced")  # bottom to top in a stacked bar


@dataclass(frozen=True)
class Bar:
    kind: str  # the CSS class: its colour
    x: float
    y: float
    width: float
    height: float
    title: str  # shown on hover


@dataclass
class Chart:
    bars: list[Bar] = field(default_factory=list)
    lines: dict[str, str] = field(default_factory=dict)  # CSS class -> polyline points
    dots: list[tuple[float, float, str]] = field(default_factory=list)  # x, y, title
    top: float = 0.0  # the value at the top of the area
    totals: dict[str, float] = field(default_factory=dict)  # the summary said in words
    width: int = WIDTH
    height: int = HEIGHT


def _scale(value: float, top: float) -> float:
    return round(value / top * HEIGHT, 1) if top else 0.0


def _nice(value: float) -> float:
    """A round number at or above `value`, for the top of an axis."""
    step = 1.0
    while step * 10 <= value:
        step *= 10
    for multiple in (1, 2, 5, 10):
        if value <= multiple * step:
            return multiple * step
    return 10 * step


def outcomes(stats: list[MinuteStats]) -> Chart:
    """Delivered, deferred and bounced per minute, stacked."""
    slot = WIDTH / MINUTES
    top = _nice(max((s.delivered + s.deferred + s.bounced for s in stats), default=0))
    chart = Chart(top=top, totals={k: sum(getattr(s, k) for s in stats) for k in KINDS})
    for stat in stats:
        base = float(HEIGHT)
        for kind in KINDS:
            count = getattr(stat, kind)
            if not count:
                continue
            height = max(_scale(count, top), 1.0)
            base -= height
            title = f"{count} {kind}, {MINUTES - stat.minute} min ago"
            chart.bars.append(Bar(kind, round(stat.minute * slot + 1, 1), round(base, 1),
                                  round(slot - 2, 1), height, title))  # fmt: skip
    return chart


def latency(stats: list[MinuteStats]) -> Chart:
    """Seconds of the upstream's SMTP transaction per minute (MAIL to the reply after the
    final dot, as the pools page's histogram): mean and worst."""
    delivered = [s for s in stats if s.latency_mean is not None]
    top = _nice(max((s.latency_max or 0.0 for s in delivered), default=0.0))
    chart = Chart(top=top)
    slot = WIDTH / MINUTES
    for kind in ("latency_mean", "latency_max"):
        points = [(round((s.minute + 0.5) * slot, 1), getattr(s, kind)) for s in delivered]
        chart.lines[kind] = " ".join(f"{x},{round(HEIGHT - _scale(y, top), 1)}" for x, y in points)
    for s in delivered:  # a lone minute draws no line: a dot says it
        x, y = (
            round((s.minute + 0.5) * slot, 1),
            round(HEIGHT - _scale(s.latency_mean or 0, top), 1),
        )
        chart.dots.append((x, y, f"{s.latency_mean:.3f} s mean, {MINUTES - s.minute} min ago"))
    if delivered:
        chart.totals = {
            "mean": round(sum(s.latency_mean or 0.0 for s in delivered) / len(delivered), 3),
            "max": round(max(s.latency_max or 0.0 for s in delivered), 3),
        }
    return chart
