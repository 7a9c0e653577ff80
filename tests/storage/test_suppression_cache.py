"""The in-memory suppression list follows storage, on both backends."""

from __future__ import annotations

import time

from sqlalchemy import Connection, select, text

from gateway.queue.suppressions import SuppressionCache
from storage.db import Database, create_schema
from storage.models import Suppression
from storage.suppressions import get_suppression, remove_suppression

S = Suppression


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


async def test_rows_an_older_node_stored_as_given_still_match(
    backend: Database, other_db: Database
) -> None:
    """A rolling upgrade on PostgreSQL: a node still on schema 4 stores the address as the
    client spelt it (case, quotes); this node's copy keys it, so every spelling matches."""
    await _insert(backend, "Gone@Example.COM")
    cache = SuppressionCache(backend)
    await cache.reload()
    assert cache.suppressed(["gone@example.com", "GONE@example.com"]) == {
        "gone@example.com",
        "GONE@example.com",
    }
    await _insert(other_db, '"Late"@Example.org')
    await cache.refresh()
    assert cache.suppressed(["late@example.org", "LATE@EXAMPLE.ORG"]) == {
        "late@example.org",
        "LATE@EXAMPLE.ORG",
    }


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


async def test_an_upgrade_rekeys_rows_stored_under_the_old_normalisation(
    backend: Database,
) -> None:
    """Schema 4 kept the local part as given: upgrading merges the spellings of a mailbox
    into one entry under its key (first created_at, the latest reason), so that
    GET/DELETE by any spelling and the in-memory copy find it."""
    old = [
        ("Bob@example.com", "bounced", 10.0),
        ('"bob"@example.com', "complaint", 20.0),
        ("carol@example.com", "manual", 30.0),
        ("Dave@example.com", "unsubscribed", 40.0),
        ("dave@example.com", "manual", 35.0),
    ]

    def downgrade(conn: Connection) -> None:
        for email, reason, created_at in old:
            conn.execute(S.insert().values(email=email, reason=reason, created_at=created_at))
        conn.execute(text("UPDATE postern_meta SET value = '4' WHERE key = 'schema_version'"))

    await backend.transaction(downgrade)
    await create_schema(backend)
    rows = await backend.read(lambda conn: list(conn.execute(select(S).order_by(S.c.email))))
    assert [(r.email, r.reason, r.created_at) for r in rows] == [
        ("bob@example.com", "complaint", 10.0),
        ("carol@example.com", "manual", 30.0),
        ("dave@example.com", "unsubscribed", 35.0),
    ]
    cache = SuppressionCache(backend)
    await cache.reload()
    assert cache.suppressed(["BOB@example.com", '"Dave"@example.com', "eve@example.com"]) == {
        "BOB@example.com",
        '"Dave"@example.com',
    }
    assert (await get_suppression(backend, "DAVE@example.com")) is not None
    assert await remove_suppression(backend, '"Bob"@Example.com')
