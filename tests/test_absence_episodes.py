"""Chaining not-fit notes into absence episodes (pure)."""
from __future__ import annotations

from datetime import date, timedelta

from hub.absence import Note, chain, new_episode_id

D = date(2026, 10, 1)
NHS = "9434765919"


def note(key: str, start: int, end: int, arrived: int = 0, episode_id: str | None = None) -> Note:
    return Note(key, D + timedelta(days=start), D + timedelta(days=end), arrived, episode_id)


def test_consecutive_and_one_day_gap_join_two_days_gap_breaks():
    eps = chain(NHS, [note("a", 0, 9, 1), note("b", 10, 19, 2), note("c", 21, 30, 3), note("d", 33, 40, 4)])
    assert [(e.start, e.end, e.note_keys) for e in eps] == [
        (D, D + timedelta(days=30), ("a", "b", "c")),  # b follows a; c after a one-day gap
        (D + timedelta(days=33), D + timedelta(days=40), ("d",)),  # two uncovered days break the chain
    ]


def test_day_28_and_when_the_milestone_is_due():
    (ep,) = chain(NHS, [note("a", 0, 26)])
    assert ep.day_28 == D + timedelta(days=27) and not ep.covers_day_28 and ep.milestone_due_at is None
    (ep,) = chain(NHS, [note("a", 0, 27)])
    assert ep.covers_day_28
    assert ep.milestone_due_at.isoformat() == "2026-10-28T00:00:00+00:00"  # midnight UK (GMT since 25 Oct)
    (summer,) = chain(NHS, [Note("s", date(2026, 6, 1), date(2026, 6, 30), 0)])
    assert summer.milestone_due_at.isoformat() == "2026-06-27T23:00:00+00:00"  # midnight BST on 28 Jun


def test_episode_id_is_stable_and_a_merge_keeps_the_one_that_fired():
    (first,) = chain(NHS, [note("a", 0, 9, 1)])
    assert first.episode_id == new_episode_id(NHS, "a")
    later = chain(NHS, [note("a", 0, 9, 1, first.episode_id), note("b", 10, 19, 2)])
    assert [e.episode_id for e in later] == [first.episode_id]
    # two episodes bridged by a new note: the one whose milestone fired survives
    a, b = note("a", 0, 30, 1, "E1"), note("b", 40, 80, 2, "E2")
    merged = chain(NHS, [a, b, note("bridge", 31, 39, 3)], fired=["E2"])
    assert [e.episode_id for e in merged] == ["E2"]
    merged = chain(NHS, [a, b, note("bridge", 31, 39, 3)])
    assert [e.episode_id for e in merged] == ["E1"]


def test_no_notes_no_episodes():
    assert chain(NHS, []) == []
