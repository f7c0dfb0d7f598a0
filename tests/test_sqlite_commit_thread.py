"""hub.sqlite_inline: a large transaction commits on the SQLite thread, with the
event loop free meanwhile; a small one commits on the loop; a caller cancelled
during a commit on the thread gets control back only once the commit is done."""
from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

from hub import sqlite_inline


class _Recording(sqlite3.Connection):
    """A sqlite3 connection that notes on which thread each commit ran, and can be slowed."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.commits: list[tuple[str, bool]] = []  # (thread name, finished)
        self.delay = 0.0

    def commit(self) -> None:
        time.sleep(self.delay)
        super().commit()
        self.commits.append((threading.current_thread().name, True))


def _connect(path) -> sqlite_inline.Connection:
    raw = sqlite3.connect(path, timeout=0, check_same_thread=False, isolation_level=None, factory=_Recording)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT)")
    return sqlite_inline.Connection(raw, timeout=5.0)


async def _write(conn: sqlite_inline.Connection, rows: int, start: int = 0) -> None:
    cur = conn.cursor()
    await cur.execute("BEGIN IMMEDIATE")
    await cur.executemany("INSERT INTO t VALUES (?, ?)", [(start + i, "x") for i in range(rows)])


def _count(path) -> int:
    with sqlite3.connect(path) as other:
        return other.execute("SELECT count(*) FROM t").fetchone()[0]


async def test_a_large_transaction_commits_on_the_sqlite_thread_and_a_small_one_on_the_loop(tmp_path):
    path = tmp_path / "c.db"
    conn = _connect(path)
    await _write(conn, sqlite_inline.OFF_LOOP_CHANGES)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    conn.raw.delay = 0.05
    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    await conn.commit()
    during = ticks - before
    task.cancel()
    assert conn.raw.commits[-1][0].startswith("sqlite-commit")
    assert during > 10  # the loop ran other work while SQLite committed
    assert _count(path) == sqlite_inline.OFF_LOOP_CHANGES

    conn.raw.delay = 0.0
    await _write(conn, sqlite_inline.OFF_LOOP_CHANGES - 1, start=10_000)
    await conn.commit()
    assert conn.raw.commits[-1][0] == threading.current_thread().name
    assert _count(path) == 2 * sqlite_inline.OFF_LOOP_CHANGES - 1

    await _write(conn, 5, start=20_000)  # rolled back: it does not count towards the next
    await conn.rollback()
    await _write(conn, sqlite_inline.OFF_LOOP_CHANGES - 1, start=30_000)
    await conn.commit()
    assert conn.raw.commits[-1][0] == threading.current_thread().name
    conn.stop()


async def test_a_caller_cancelled_during_a_commit_on_the_thread_returns_once_it_is_done(tmp_path):
    path = tmp_path / "c.db"
    conn = _connect(path)
    await _write(conn, sqlite_inline.OFF_LOOP_CHANGES + 50)
    conn.raw.delay = 0.3
    task = asyncio.create_task(conn.commit())
    await asyncio.sleep(0.05)  # the commit is under way on the thread
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    else:  # pragma: no cover - the cancellation must reach the caller
        raise AssertionError("the commit was not cancelled")
    # control came back only after the commit: the connection is free and the rows are in
    assert conn.raw.commits and conn.raw.commits[-1][1]
    assert not conn.raw.in_transaction
    assert _count(path) == sqlite_inline.OFF_LOOP_CHANGES + 50
    conn.stop()
