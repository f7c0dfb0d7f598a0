"""Time as a dependency, so tests (and the 28-day milestone) can control it."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

from schemas.ukdate import uk_date


class Clock:
    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def today_uk(self) -> date:
        return uk_date(self.now())


class FixedClock(Clock):
    """A clock that moves only when told (tests)."""

    def __init__(self, at: datetime) -> None:
        if at.tzinfo is None:
            raise ValueError("FixedClock needs an aware datetime")
        self._at = at

    def now(self) -> datetime:
        return self._at

    def advance(self, **delta: float) -> None:
        self._at += timedelta(**delta)

    def set(self, at: datetime) -> None:
        self._at = at
