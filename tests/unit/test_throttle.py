"""Rate strings, the [[pools]] limit keys, pools without limits costing nothing, and the
back-off gate (halve, floor, restore)."""

from __future__ import annotations

import asyncio

import pytest

from gateway import config as cfg
from gateway.delivery.backoff import Backoff, Slots, is_throttling
from gateway.delivery.throttle import Throttle
from gateway.delivery.upstream import PoolSettings
from gateway.message import DeliveryResult, Outcome
from gateway.rates import Rate, parse_rate


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("100/min", Rate(100, 60.0)),
        ("14/s", Rate(14, 1.0)),
        ("14/sec", Rate(14, 1.0)),
        ("1/second", Rate(1, 1.0)),
        ("60/m", Rate(60, 60.0)),
        ("60/minute", Rate(60, 60.0)),
        ("5/h", Rate(5, 3600.0)),
        ("5/hour", Rate(5, 3600.0)),
        ("5/hours", Rate(5, 3600.0)),
        ("20/10s", Rate(20, 10.0)),
        ("1000/24h", Rate(1000, 86400.0)),
        (" 100/MIN ", Rate(100, 60.0)),
    ],
)
def test_rates_parse(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate


def test_no_rate() -> None:
    assert parse_rate("") is None


@pytest.mark.parametrize(
    "text",
    ["100", "/min", "0/min", "-1/s", "1.5/s", "10/fortnight", "10/d", "abc", "10/0s", "1/25h",
     "10 per minute", "10/min/s", "1/ s"],
)  # fmt: skip
def test_bad_rates_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)


def test_per_second() -> None:
    assert Rate(60, 60.0).per_second == 1.0
    assert Rate(20, 10.0).per_second == 2.0


class _NoStorage:
    """Stands for the database and the writer: any use of it fails the test."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"a pool without limits used the storage ({name})")


async def test_a_pool_without_limits_costs_no_database_call() -> None:
    throttle = Throttle(_NoStorage(), _NoStorage(), lease=0.0)  # type: ignore[arg-type]
    pool = PoolSettings(id="smtp_free", name="free", host="127.0.0.1", port=25)
    for _ in range(3):
        assert await throttle.reserve(pool) is None
    await throttle.renew()  # nothing in flight: no write, even when a renewal is due
    assert throttle.in_flight == 0


def _pool(**extra: object) -> dict[str, object]:
    return {"name": "p", "host": "127.0.0.1", **extra}


def test_pool_limits_in_the_config() -> None:
    pool = cfg.from_dict({"pools": [_pool(rate="100/min", daily_limit=5000)]}).pools[0]
    assert (pool.rate, pool.daily_limit) == ("100/min", 5000)
    default = cfg.from_dict({"pools": [_pool()]}).pools[0]
    assert (default.rate, default.daily_limit) == ("", 0)


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"rate": "100"}, "rate"),
        ({"rate": "0/s"}, "rate"),
        ({"rate": 100}, "rate"),
        ({"daily_limit": -1}, "daily_limit"),
        ({"daily_limit": "5"}, "daily_limit"),
        ({"daily_limit": True}, "daily_limit"),
    ],
)
def test_bad_pool_limits_are_config_errors(extra: dict[str, object], key: str) -> None:
    with pytest.raises(cfg.ConfigError, match=f"pools\\[0\\].{key}"):
        cfg.from_dict({"pools": [_pool(**extra)]})


@pytest.mark.parametrize(
    ("code", "enhanced", "throttling"),
    [(421, None, True), (421, "4.4.2", True), (450, "4.7.1", True), (451, "4.7.0", True),
     (451, "4.3.0", False), (550, "5.7.1", False), (None, "4.4.1", False)],
)  # fmt: skip
def test_throttling_replies(code: int | None, enhanced: str | None, throttling: bool) -> None:
    result = DeliveryResult(Outcome.DEFERRED, code, enhanced, "x")
    assert is_throttling(result) is throttling


async def test_slots_shrink_without_interrupting_holders() -> None:
    slots = Slots(4)
    for _ in range(4):
        await slots.__aenter__()
    slots.resize(2)
    waiter = asyncio.create_task(slots.__aenter__())
    await asyncio.sleep(0)
    for _ in range(2):  # 4 -> 2 held: still no room under a cap of 2
        await slots.__aexit__(None, None, None)
    await asyncio.sleep(0)
    assert not waiter.done()
    await slots.__aexit__(None, None, None)  # 1 held: the waiter gets the second slot
    await asyncio.wait_for(waiter, 1)
    assert slots.used == 2


async def test_a_cancelled_waiter_gives_its_place_back() -> None:
    slots = Slots(1)
    await slots.__aenter__()
    waiter = asyncio.create_task(slots.__aenter__())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    await slots.__aexit__(None, None, None)
    assert slots.used == 0
    await asyncio.wait_for(slots.__aenter__(), 1)


async def test_backoff_halves_with_a_floor_then_restores() -> None:
    slots = Slots(5)
    backoff = Backoff(slots, full=5, cooldown=0.2, settle=0.0)
    assert backoff.trigger() and slots.size == 2
    assert backoff.trigger() and slots.size == 1
    backoff.trigger()
    assert slots.size == 1 and backoff.active  # never below one connection
    await asyncio.sleep(0.3)
    assert slots.size == 5 and not backoff.active


async def test_replies_arriving_together_halve_once() -> None:
    slots = Slots(8)
    backoff = Backoff(slots, full=8, cooldown=60, settle=5.0)
    assert backoff.trigger() is True
    assert backoff.trigger() is False
    assert slots.size == 4
    backoff.restore()
    assert slots.size == 8
