"""The 28-day milestone timer. The schedule is data (absence_episodes.
milestone_due_at, committed with the note that made it due), so it survives a
restart: every worker polls for episodes whose day 28 has begun and fires each
in its own transaction (row-locked with SKIP LOCKED on PostgreSQL, so two
workers never fire the same one; the event id, derived from the episode, makes
a second firing a no-op anyway)."""
from __future__ import annotations

import logging
from collections.abc import Callable

from hub.pipeline import Deps, fire_milestone
from hub.wake import Wake

log = logging.getLogger(__name__)


async def fire_due(deps: Deps, limit: int = 100) -> int:
    """Fire every milestone due now; returns how many fired."""
    fired = 0
    while True:
        async with deps.uow() as uow:
            await uow.serialise_writers()  # before the episode's row lock: one lock order for all writers
            due = await uow.absence.due(deps.clock.now(), limit=1)
            if not due:
                return fired
            out = await fire_milestone(uow, deps, due[0], deps.clock.now())
            if out is None:  # no fit note to build it from: leave it marked so it is not retried forever
                await uow.absence.mark_fired(due[0].episode_id, "")
            await uow.commit()
        fired += 1
        if fired >= limit:
            return fired


class MilestoneTimer:
    def __init__(self, deps: Deps, *, interval: float, on_fired: Callable[[], None]) -> None:
        self.deps = deps
        self.interval = interval
        self.on_fired = on_fired
        self._stopping = Wake()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                if await fire_due(self.deps):
                    self.on_fired()
            except Exception:  # noqa: BLE001 - a database hiccup must not stop the timer
                log.exception("milestone timer pass failed; retrying")
            await self._stopping.wait(self.interval)

    def stop(self) -> None:
        self._stopping.set()
