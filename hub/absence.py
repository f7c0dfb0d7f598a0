"""Absence episodes and the 28-day milestone (issue 3, contract §3, §8).

Plain functions over plain values. A person's current *not-fit* notes chain
into an episode when each starts at most one day after the chain so far ends
(a gap of one uncovered day still joins; two break it). A note that replaces
another, or a later version of a note, supersedes it rather than extending the
chain, so the caller passes only current notes. When an episode's notes cover
its 28th day the milestone is due at the start of that day (UK time); it fires
once per episode, even if later notes change the chain.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from schemas.fhir import uuid5
from schemas.ukdate import day_start

MAX_GAP_DAYS = 1
MILESTONE_DAY = 28
_EPISODE_NS = uuid.UUID("0b7e3c52-2f6e-4c3a-9a8e-4c1f6d2b7a90")


def plus_days(day: date, days: int) -> date:
    """`day` + `days`, saturating at the calendar's end instead of overflowing
    (a note may, absurdly but validly, run to 9999-12-31)."""
    try:
        return day + timedelta(days=days)
    except OverflowError:
        return date.max


@dataclass(frozen=True, slots=True)
class Note:
    key: str  # "<source org>|<fit note id>"
    start: date
    end: date
    arrived: int  # arrival order (lower = earlier); decides which episode id survives a merge
    episode_id: str | None = None  # the episode it belonged to, if any


@dataclass(frozen=True, slots=True)
class Episode:
    episode_id: str
    start: date
    end: date
    note_keys: tuple[str, ...]

    @property
    def day_28(self) -> date:
        return plus_days(self.start, MILESTONE_DAY - 1)

    @property
    def covers_day_28(self) -> bool:
        return self.end >= self.day_28

    @property
    def milestone_due_at(self) -> datetime | None:
        """The start (UK time) of day 28, when the notes cover it; else None."""
        if not self.covers_day_28 or self.day_28 == date.max:
            return None
        return day_start(self.day_28)


def new_episode_id(nhs_number: str, first_note_key: str) -> str:
    return uuid5(_EPISODE_NS, f"{nhs_number}|{first_note_key}")


def chain(nhs_number: str, notes: Iterable[Note], *, fired: Sequence[str] = ()) -> list[Episode]:
    """Episodes from a person's current not-fit notes.

    An episode keeps the id it had: of the ids its notes carried, one whose
    milestone already fired wins (so merging never fires twice), else the
    earliest-arrived note's. A chain none of whose notes had an episode gets a
    new id derived from its earliest-arrived note."""
    ordered = sorted(notes, key=lambda n: (n.start, n.end, n.arrived))
    groups: list[list[Note]] = []
    end: date | None = None
    for note in ordered:
        if groups and end is not None and note.start <= plus_days(end, MAX_GAP_DAYS + 1):
            groups[-1].append(note)
            end = max(end, note.end)
        else:
            groups.append([note])
            end = note.end
    fired_ids = set(fired)
    used: set[str] = set()
    episodes = []
    for group in groups:
        by_arrival = sorted(group, key=lambda n: n.arrived)
        known = [n.episode_id for n in by_arrival if n.episode_id and n.episode_id not in used]
        episode_id = next((e for e in known if e in fired_ids), None) or (known[0] if known else None)
        if episode_id is None:
            episode_id = new_episode_id(nhs_number, by_arrival[0].key)
        used.add(episode_id)
        episodes.append(Episode(
            episode_id=episode_id,
            start=min(n.start for n in group),
            end=max(n.end for n in group),
            note_keys=tuple(n.key for n in by_arrival),
        ))
    return episodes
