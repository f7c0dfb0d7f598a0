"""hub.wake.Wake: the relay's wait for work and for a pass's acks, and the
milestone timer's wait to stop."""
from __future__ import annotations

import asyncio
import time

import pytest

from hub.wake import Wake


async def test_a_wait_ends_when_set_or_at_its_timeout():
    wake = Wake()
    started = time.monotonic()
    assert await wake.wait(0.05) is False  # nobody set it
    assert time.monotonic() - started >= 0.05
    wake.set()
    assert await wake.wait(10) is True  # already set: at once
    wake.clear()
    asyncio.get_running_loop().call_later(0.01, wake.set)
    started = time.monotonic()
    assert await wake.wait(10) is True
    assert time.monotonic() - started < 5


async def test_a_cancelled_wait_leaves_it_usable():
    wake = Wake()
    waiting = asyncio.create_task(wake.wait(10))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    wake.set()  # no waiter left behind to trip over
    assert await wake.wait(0) is True


async def test_a_set_reaches_its_waiter_in_one_turn_of_the_event_loop(monkeypatch):
    """asyncio.wait_for(event.wait(), timeout) takes three (Python 3.11):
    at 200 events/s the relay waits like this twice an event."""
    loop = asyncio.get_running_loop()
    turns = 0
    run_once = type(loop)._run_once

    def counting(self):
        nonlocal turns
        turns += 1
        return run_once(self)

    wake = Wake()
    resumed_after = []

    async def waiter():
        await wake.wait(10)
        resumed_after.append(turns)

    task = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the waiter is parked on its future
    monkeypatch.setattr(type(loop), "_run_once", counting)
    wake.set()
    await task
    assert resumed_after == [1]
