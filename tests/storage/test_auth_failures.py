"""storage.auth_failures on SQLite and PostgreSQL: SMTP AUTH failure budgets counted in the
database (a rolling window per client address, one for everyone), taken before a guess is
checked and given back when it was right; two nodes racing for one address's last guesses
(PostgreSQL: the advisory lock per subject); rows of addresses that stopped guessing pruned
by later guesses. gateway.smtpd.auth.AuthThrottle on top: one subject per IPv4 address or
IPv6 /64, the 535 delay doubling with the address's failures in storage."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import Connection, func, insert, select

from gateway.smtpd import auth as smtp_auth
from storage import auth_failures as sql
from storage.auth_failures import EVERYONE, Admitted, AuthFailures, Budget, Spent
from storage.db import Database

AF = sql.AF


async def _rows(db: Database, subject: str | None = None) -> int:
    def count(conn: Connection) -> int:
        query = select(func.count()).select_from(AF)
        if subject is not None:
            query = query.where(AF.c.subject == subject)
        return int(conn.execute(query).scalar() or 0)

    return await db.read(count)


async def test_a_budget_admits_count_guesses_in_its_window_then_says_until_when(
    backend: Database,
) -> None:
    failures = AuthFailures(backend)
    budget = [Budget("a:192.0.2.1", 3, 3600.0)]
    now = time.time()
    taken = [await failures.take(budget, now + n) for n in range(3)]
    assert [t.used for t in taken if isinstance(t, Admitted)] == [0, 1, 2]
    spent = await failures.take(budget, now + 10)
    assert spent == Spent("a:192.0.2.1", now + 3600.0)  # when the first leaves the window
    assert isinstance(await failures.take([Budget("a:192.0.2.2", 3, 3600.0)], now), Admitted)
    # A right guess gives its row back: the budget has room again.
    first = taken[0]
    assert isinstance(first, Admitted)
    await failures.give_back(first.rows)
    assert isinstance(await failures.take(budget, now + 11), Admitted)
    # Past the window, only what is still in it counts (now+11).
    later = await failures.take(budget, now + 3602)
    assert isinstance(later, Admitted) and later.used == 1


async def test_everyones_budget_spent_takes_nothing_from_the_address(backend: Database) -> None:
    failures = AuthFailures(backend)
    everyone = Budget(EVERYONE, 2, 60.0)
    now = time.time()
    for n in range(2):
        assert isinstance(
            await failures.take([Budget(f"a:10.0.0.{n}", 5, 3600), everyone], now), Admitted
        )
    verdict = await failures.take([Budget("a:10.0.0.9", 5, 3600), everyone], now)
    assert isinstance(verdict, Spent) and verdict.subject == EVERYONE
    assert await _rows(backend, "a:10.0.0.9") == 0


async def test_two_nodes_racing_never_overdraw_a_budget(
    backend: Database, other_db: Database
) -> None:
    nodes = [AuthFailures(backend), AuthFailures(other_db)]
    budget = [Budget("a:198.51.100.7", 10, 3600.0)]
    now = time.time()
    results = await asyncio.gather(*(node.take(budget, now) for _ in range(20) for node in nodes))
    admitted = [r for r in results if isinstance(r, Admitted)]
    assert len(admitted) == 10
    assert sorted(r.used for r in admitted) == list(range(10))
    assert await _rows(backend) == 10


async def test_guesses_prune_the_rows_of_addresses_that_stopped(backend: Database) -> None:
    now = time.time()
    old = [{"subject": f"a:203.0.113.{n}", "at": now - 7200 - n} for n in range(6)]
    await backend.transaction(lambda conn: conn.execute(insert(AF), old))
    failures = AuthFailures(backend)
    for n in range(3):  # the first guess of a process prunes (up to 32 expired rows)
        assert isinstance(await failures.take([Budget(f"a:192.0.2.{n}", 5, 3600.0)], now), Admitted)
    assert await _rows(backend) == 3


async def test_the_throttle_counts_an_ipv6_64_as_one_client_and_doubles_its_delay(
    backend: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(smtp_auth, "BASE_DELAY", 1.0)
    throttle = smtp_auth.AuthThrottle(AuthFailures(backend), "4/h")
    delays = []
    for host in ("2001:db8:1:2::1", "2001:db8:1:2::ffff", "2001:db8:1:3::1"):
        guess = await throttle.admit(host)
        assert guess is not None
        delays.append(guess.delay)
    assert delays == [1.0, 2.0, 1.0]  # the same /64 doubles; another /64 does not
    mapped = await throttle.admit("::ffff:192.0.2.7")
    plain = await throttle.admit("192.0.2.7")
    assert mapped is not None and plain is not None and plain.delay == 2 * mapped.delay
    # A right guess costs nothing: its row is given back behind the answer.
    throttle.passed(plain)
    for _ in range(50):
        if await _rows(backend, "a:192.0.2.7") == 1:
            break
        await asyncio.sleep(0.02)
    assert await _rows(backend, "a:192.0.2.7") == 1
    for _ in range(2):
        assert await throttle.admit("2001:db8:1:2::42") is not None
    assert await throttle.admit("2001:db8:1:2::43") is None  # four in the /64's budget
    assert await throttle.admit("2001:db8:1:3::43") is not None


async def test_a_throttle_without_storage_admits_nobody() -> None:
    assert await smtp_auth.AuthThrottle(None).admit("127.0.0.1") is None


async def test_the_write_connection_is_durable_again_after_a_count(backend: Database) -> None:
    """Counted without an fsync (SQLite: synchronous=NORMAL for that commit alone); the
    next transaction on the one write connection, a message's, is FULL again."""
    if not backend.is_sqlite:
        pytest.skip("SQLite's PRAGMA; PostgreSQL's setting is SET LOCAL")
    await AuthFailures(backend).take([Budget("a:192.0.2.1", 3, 60.0)], time.time())
    level = await backend.transaction(
        lambda conn: conn.exec_driver_sql("PRAGMA synchronous").scalar()
    )
    assert level == 2  # FULL
