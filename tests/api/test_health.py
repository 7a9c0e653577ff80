"""GET /healthz (liveness) and GET /readyz (readiness: storage writes commit), both in
/openapi.json; postern_storage_write_failures_total exported before the first failure; the
commits counted as they happen, the lock waits exported.

A failing or full database is tested through the real doors in
tests/integration/test_storage_faults.py and test_full_disk.py.
"""

from __future__ import annotations

import re

import pytest

from tests.support.api import Api
from tests.support.service import metric

pytestmark = pytest.mark.timeout(30)


async def test_ready_when_writes_commit(api: Api) -> None:
    assert (await api.http.get("/healthz")).json() == {"status": "ok"}
    ready = await api.http.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


async def test_not_ready_once_the_writer_stopped_yet_alive(api: Api) -> None:
    await api.svc.writer.stop()
    ready = await api.http.get("/readyz")
    assert ready.status_code == 503, ready.text
    assert ready.json()["status"] == "unavailable"
    assert ready.json()["reason"] == "writer_stopped"
    assert ready.headers["Retry-After"].isdigit()
    assert (await api.http.get("/healthz")).status_code == 200


async def test_health_and_readiness_are_documented(api: Api) -> None:
    paths = (await api.http.get("/openapi.json")).json()["paths"]
    assert set(paths["/healthz"]["get"]["responses"]) == {"200", "503"}
    assert set(paths["/readyz"]["get"]["responses"]) == {"200", "503"}
    assert "507" in paths["/v1/send"]["post"]["responses"]


async def test_write_failures_are_exported_from_the_start(api: Api) -> None:
    text = (await api.http.get("/metrics")).text
    for reason in ("full", "error"):
        assert f'postern_storage_write_failures_total{{reason="{reason}"}}' in text


async def test_commits_are_exported_with_their_jobs_and_the_lock_waits(api: Api) -> None:
    """What every acceptance waits on, for an operator: the group commits' time, the writes
    that shared them, and (SQLite) the waits for another process's write lock and the time
    the write lock was held."""
    counted: tuple[str, ...] = (
        "postern_storage_commit_seconds_count",
        "postern_storage_commit_jobs_total",
    )
    if api.svc.db.is_sqlite:  # the write lock's holds (a no-op on PostgreSQL)
        counted += ("postern_storage_lock_held_seconds_total",)
    before = [metric(name) for name in counted]
    response = await api.send(key=await api.key())
    assert response.status_code == 200, response.text
    assert all(metric(name) > was for name, was in zip(counted, before, strict=True))
    exported = (await api.http.get("/metrics")).text
    assert "postern_storage_commit_seconds_bucket" in exported
    locks = ("postern_storage_lock_wait_seconds_total", "postern_storage_lock_held_seconds_total")
    for name in (*counted, *locks):
        assert re.search(rf"^{name} \S+$", exported, re.MULTILINE), f"no {name} sample"
    if api.svc.db.is_sqlite:  # wired to the writer's lock (a no-op on PostgreSQL)
        lock = api.svc.db._write_lock
        assert lock.on_wait is not None and lock.on_held is not None
