"""The node's periodic loops: a failing round is logged and the loop carries on."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.tasks import Loops


async def test_a_failing_round_is_logged_and_the_next_comes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rounds: list[int] = []

    async def work() -> None:
        rounds.append(len(rounds))
        if len(rounds) == 1:
            raise OSError("storage away")

    loops = Loops()
    with caplog.at_level(logging.WARNING, logger="postern"):
        loops.every(0.01, work, "looking")
        await asyncio.sleep(0.1)
        await loops.stop()
    assert len(rounds) >= 2
    assert "looking failed: storage away" in caplog.text
    count = len(rounds)
    await asyncio.sleep(0.05)
    assert len(rounds) == count  # stopped


async def test_at_once_runs_the_first_round_without_waiting() -> None:
    ran = asyncio.Event()

    async def work() -> None:
        ran.set()

    loops = Loops()
    loops.every(3600.0, work, "purging", at_once=True)
    await asyncio.wait_for(ran.wait(), 1.0)
    await loops.stop()
