"""A flag a task waits on, with a timeout, for one turn of the event loop.

`asyncio.wait_for(event.wait(), timeout)` (Python 3.11) runs the wait as a task
of its own and hands its end back through callbacks: counted at 200 events/s,
the relay's wait for work and its wait for a pass's acks took three turns of
the event loop each from the wake-up to the waiter, every event, where a future
and a timer take one.
"""
from __future__ import annotations

import asyncio


class Wake:
    """Like asyncio.Event, for one waiter at a time, with `wait(timeout)`."""

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self, timeout: float | None = None) -> bool:
        """Until set or `timeout` seconds have passed; whether it is set."""
        if self._set:
            return True
        assert self._waiter is None, "one waiter at a time"
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _expire, waiter) if timeout is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
        return self._set


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)
