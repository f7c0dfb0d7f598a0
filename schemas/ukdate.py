"""UK calendar dates. Fit notes, consents and the "nothing issued in the future"
rule all speak in UK dates (Europe/London); the hub keeps instants in UTC."""
from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

UK = ZoneInfo("Europe/London")

_ONE_MICROSECOND = timedelta(microseconds=1)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def uk_date(instant: datetime) -> date:
    """The calendar date of an aware `instant` in UK time."""
    if instant.tzinfo is None:
        raise ValueError("instant must be timezone-aware")
    return instant.astimezone(UK).date()


def uk_today(now: datetime | None = None) -> date:
    """The UK calendar date at `now` (default: the current time)."""
    return uk_date(now) if now is not None else datetime.now(UK).date()


def day_start(day: date) -> datetime:
    """The first instant of `day` in UK time, in UTC."""
    return datetime.combine(day, time(0), tzinfo=UK).astimezone(UTC)


def day_end(day: date) -> datetime:
    """The last instant of `day` in UK time (inclusive end of a date period), in UTC."""
    next_day = datetime.combine(day + timedelta(days=1), time(0), tzinfo=UK)
    return (next_day - _ONE_MICROSECOND).astimezone(UTC)


def format_day(instant: datetime) -> str:
    """`instant`'s UK date written for people: "3 Dec 2026" (no leading zero)."""
    d = uk_date(instant)
    return f"{d.day} {_MONTHS[d.month - 1]} {d.year}"
