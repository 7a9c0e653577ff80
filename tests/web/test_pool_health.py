"""Settings → SMTP Pools shows each pool's health and figures on this node, through a real
uvicorn with httpx: after a delivery, a latency histogram and a delivered count read from the
metrics /metrics exports; an upstream that refuses shows failures, the last error and, after
a few, the cool-down. The quantile estimate from buckets is checked on its own, and with
workers the figures are every worker's, as /metrics sums them (real multiprocess files
written by processes of their own)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.api import Api, payload
from tests.support.rows import wait_for_status
from tests.support.service import SINK_POOL, wait_until
from tests.support.sink import Sink
from tests.web.conftest import SignIn
from web.pool_figures import quantile

pytestmark = pytest.mark.timeout(60)


def _figure(html: str) -> str:
    """The figures section of the pool list."""
    found = re.search(r'<section class="card pool-figures".*?</section>', html, re.S)
    assert found, html
    return found.group(0)


async def test_a_delivery_shows_a_latency_histogram_and_the_delivered_count(
    api: Api, person: SignIn, sink: Sink
) -> None:
    owner = await person("ops@example.com")
    before = await owner.get("/settings/pools")
    assert before.status_code == 200 and "since it started" in before.text
    sent = await api.send(payload(subject="Figures"), key=await api.key())
    assert sent.status_code in (200, 202), sent.text
    await wait_for_status(api.svc, sent.json()["message_id"], {"delivered"})
    page = await owner.get("/settings/pools")
    figures = _figure(page.text)
    assert f"<strong>{SINK_POOL}</strong>" in figures
    delivered = re.search(r'class="throughput">(\d+) delivered<', figures)
    assert delivered and int(delivered.group(1)) >= 1  # the metrics are the process's
    assert '<svg class="chart histogram"' in figures and '<rect class="bar' in figures
    assert "p50 " in figures and "p95 " in figures
    assert '<table class="latency-buckets">' in figures
    assert "style=" not in page.text and "<script>" not in page.text
    assert ">healthy<" in page.text
    # Throughput per minute over the last hour, every node's: from the events in storage.
    hour = re.search(r"Last hour, every node: (\d+) delivered", figures)
    assert hour and int(hour.group(1)) == 1
    assert '<svg class="chart outcomes"' in figures and '<rect class="bar delivered"' in figures


async def test_pools_are_listed_fifty_a_page(api: Api, person: SignIn) -> None:
    owner = await person("ops@example.com")
    key = await api.key("pools")
    for n in range(55):
        body = {"name": f"p{n:02}", "host": "127.0.0.1", "port": 2525 + n, "encryption": "none"}
        made = await api.http.post(
            "/api/v1/smtp-pools", json=body, headers={"Authorization": f"Bearer {key}"}
        )
        assert made.status_code == 201, made.text
    first = await owner.get("/settings/pools")
    assert first.status_code == 200 and first.text.count('<tr id="pool-') == 50
    assert 'rel="next"' in first.text and "Page 1 of 2" in first.text
    second = await owner.get("/settings/pools?page=2")
    assert second.text.count('<tr id="pool-') == 56 - 50  # the sink's pool and 55 made
    assert 'rel="prev"' in second.text and 'rel="next"' not in second.text
    beyond = await owner.get("/settings/pools?page=9")
    assert beyond.status_code == 200 and "Page 2 of 2" in beyond.text
    for bad in ("0", "-1", "x", "9999999", "%C2%B2"):
        refused = await owner.get(f"/settings/pools?page={bad}")
        assert refused.status_code == 400 and "page: a whole number from 1" in refused.text


async def test_an_upstream_that_refuses_shows_the_last_error_and_the_cool_down(
    api: Api, person: SignIn, sink: Sink
) -> None:
    owner = await person("ops@example.com")
    sink.fail("mail", "421 4.7.0 go away for now")  # the pool's own fault: counted
    key = await api.key()
    for n in range(3):  # COOLDOWN_AFTER failures in a row
        sent = await api.send(payload(subject=f"refused {n}"), key=key)
        assert sent.status_code in (200, 202), sent.text
        await wait_for_status(api.svc, sent.json()["message_id"], {"deferred"})

    async def cooling() -> str | None:
        text = (await owner.get("/settings/pools")).text
        return text if "cooling down" in text else None

    text = await wait_until(cooling, timeout=10.0)
    assert "Last error" in text and "go away for now" in text
    assert re.search(r"\d+ failures in a row", text)


def test_quantiles_are_estimated_within_their_bucket() -> None:
    cumulative = [(0.01, 2.0), (0.1, 6.0), (1.0, 10.0), (math.inf, 10.0)]
    assert quantile(0.5, cumulative) == pytest.approx(0.01 + 0.09 * 0.75)
    assert quantile(0.95, cumulative) == pytest.approx(0.1 + 0.9 * 0.875)
    assert quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None
    assert quantile(0.99, [(0.1, 1.0), (math.inf, 4.0)]) == 0.1  # in +Inf: the last bound


_WORKER = """
from gateway import metrics
for _ in range({sends}):
    metrics.UPSTREAM_SEND_SECONDS.labels(pool="p").observe(0.02)
    metrics.MESSAGES_DELIVERED.labels(pool="p").inc()
metrics.MESSAGES_DEFERRED.labels(pool="p").inc({deferred})
"""

_PAGE = """
import json
from web.pool_figures import figures
shown = figures("p")
print(json.dumps({"sends": shown.sends, "outcomes": shown.outcomes}))
"""


def _python(code: str, metrics_dir: Path) -> str:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_with_workers_the_figures_are_every_workers_summed(tmp_path: Path) -> None:
    """Worker 0 serves the page: it once showed its own share of the node's sends."""
    _python(_WORKER.format(sends=3, deferred=1), tmp_path)
    _python(_WORKER.format(sends=4, deferred=0), tmp_path)
    shown = json.loads(_python(_PAGE, tmp_path))
    assert shown == {"sends": 7, "outcomes": {"delivered": 7, "deferred": 1, "bounced": 0}}
