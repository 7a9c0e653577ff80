"""A pool's figures on this node since it started, read from the Prometheus metrics as
`/metrics` exports them (gateway.metrics: with workers, every worker's summed), so the page
and a scrape never disagree: the upstream send latency histogram, its p50 and p95 estimated
from the buckets, and the recipients delivered, deferred and bounced. Drawn as SVG geometry
for the template (no script, colours from CSS classes: the CSP allows no `style=`).

Each node counts its own sends: with several nodes, each page shows its node's share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric

from gateway import metrics

WIDTH, HEIGHT = 300, 80  # the drawing area, in SVG units


@dataclass(frozen=True)
class Bucket:
    label: str  # its upper bound, said for people ("≤ 25 ms", "> 60 s")
    count: int  # sends in this bucket alone (not cumulative)
    x: float = 0.0
    y: float = 0.0
    width: float = 0.0
    height: float = 0.0


@dataclass
class Figures:
    sends: int = 0  # upstream transactions timed
    seconds: float = 0.0  # their total time
    p50: float | None = None
    p95: float | None = None
    buckets: list[Bucket] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)  # delivered, deferred, bounced
    top: int = 0  # the count at the top of the chart
    width: int = WIDTH
    height: int = HEIGHT


Samples = dict[str, list[tuple[dict[str, str], float]]]  # by pool: (labels, value)


def _samples(families: list[Metric], metric: MetricWrapperBase, suffix: str) -> Samples:
    """`metric`'s samples among `families` named ...`suffix`, by pool: one read for every
    pool (one per pool made a page of N pools cost N times all of them)."""
    names = {family.name for family in metric.describe()}
    found: Samples = {}
    for family in families:
        if family.name not in names:
            continue
        for sample in family.samples:
            pool = sample.labels.get("pool")
            if pool is not None and sample.name.endswith(suffix):
                found.setdefault(pool, []).append((sample.labels, sample.value))
    return found


def _label(bound: float) -> str:
    if math.isinf(bound):
        return "slower"
    return f"≤ {bound * 1000:g} ms" if bound < 1 else f"≤ {bound:g} s"


def quantile(q: float, cumulative: list[tuple[float, float]]) -> float | None:
    """As Prometheus's histogram_quantile: linear within the bucket holding rank q·count;
    the last finite bound when it falls in +Inf. None with no observation."""
    total = cumulative[-1][1] if cumulative else 0.0
    if not total:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank:
            if math.isinf(bound):
                return lower
            share = (rank - below) / (count - below) if count > below else 1.0
            return lower + (bound - lower) * share
        lower, below = bound, count
    return lower


def _bars(cumulative: list[tuple[float, float]]) -> tuple[list[Bucket], int]:
    counts, before = [], 0.0
    for bound, count in cumulative:
        counts.append((bound, int(count - before)))
        before = count
    top = max((count for _, count in counts), default=0)
    slot = WIDTH / max(len(counts), 1)
    bars = []
    for index, (bound, count) in enumerate(counts):
        height = round(count / top * HEIGHT, 1) if top else 0.0
        height = max(height, 1.0) if count else 0.0
        x, y = round(index * slot + 1, 1), round(HEIGHT - height, 1)
        bars.append(Bucket(_label(bound), count, x, y, round(slot - 2, 1), height))
    return bars, top


def figures(pool: str) -> Figures:
    """The pool's figures on this node since it started (its metrics' label is its name)."""
    return figures_of([pool])[pool]


def figures_of(pools: list[str]) -> dict[str, Figures]:
    """Each pool's figures, the metrics read once for all of them."""
    counted = {
        "delivered": metrics.MESSAGES_DELIVERED,
        "deferred": metrics.MESSAGES_DEFERRED,
        "bounced": metrics.MESSAGES_BOUNCED,
    }
    families = metrics.node_families(metrics.UPSTREAM_SEND_SECONDS, *counted.values())
    buckets = _samples(families, metrics.UPSTREAM_SEND_SECONDS, "_bucket")
    sums = _samples(families, metrics.UPSTREAM_SEND_SECONDS, "_sum")
    counters = {kind: _samples(families, counter, "_total") for kind, counter in counted.items()}
    found: dict[str, Figures] = {}
    for pool in pools:
        mine = buckets.get(pool, [])
        cumulative = sorted((float(labels["le"]), value) for labels, value in mine)
        shown = Figures()
        shown.buckets, shown.top = _bars(cumulative)
        shown.sends = int(cumulative[-1][1]) if cumulative else 0
        shown.seconds = sum(v for _, v in sums.get(pool, []))
        shown.p50, shown.p95 = quantile(0.5, cumulative), quantile(0.95, cumulative)
        for kind, samples in counters.items():
            shown.outcomes[kind] = int(sum(v for _, v in samples.get(pool, [])))
        found[pool] = shown
    return found
