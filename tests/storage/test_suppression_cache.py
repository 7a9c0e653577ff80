"""The in-memory suppression list follows storage, on both backends."""

from __future__ import annotations

import time

from gateway.suppressions import SuppressionCache
from storage.db import Database
from storage.models import Suppression

S = Suppression.__table__  # type: ignore[attr-defined]


async def _insert(db: Database, email: str, created_at: float | None = None) -> None:
    row = {"email": email, "reason": "manual", "created_at": created_at or time.time()}
    await db.transaction(lambda conn: conn.execute(S.insert().values(**row)))


async def test_reload_reads_every_stored_suppression(backend: Database) -> None:
    await _insert(backend, "gone@example.com")
    cache = SuppressionCache(backend)
    await cache.reload()
    assert cache.suppressed(["gone@EXAMPLE.com", "here@example.com"]) == {"gone@EXAMPLE.com"}


async def test_refresh_adds_what_another_node_suppressed(
    backend: Database, other_db: Database
) -> None:
    cache = SuppressionCache(backend)
    await cache.reload()
    await _insert(other_db, "late@example.com")
    assert not cache.suppressed(["late@example.com"])
    await cache.refresh()
    assert cache.suppressed(["late@example.com"]) == {"late@example.com"}


async def test_removal_elsewhere_shows_after_a_full_reload(backend: Database) -> None:
    await _insert(backend, "back@example.com")
    cache = SuppressionCache(backend)
    await cache.reload()
    await backend.transaction(lambda conn: conn.execute(S.delete()))
    await cache.refresh()
    assert cache.suppressed(["back@example.com"])  # refresh only adds
    await cache.reload()
    assert not cache.suppressed(["back@example.com"])


async def test_local_changes_apply_at_once(backend: Database) -> None:
    cache = SuppressionCache(backend)
    cache.add(["x@Example.COM"])
    assert cache.suppressed(["x@example.com"]) == {"x@example.com"}
    cache.discard("x@EXAMPLE.com")
    assert not cache.suppressed(["x@example.com"])
