"""SQLite for the async engine without a thread hop per call.

SQLAlchemy's aiosqlite driver runs each SQLite call on a worker thread and hands
the result back to the event loop: four or five hops per statement, about
0.2 ms each on a small VM, which profiling (`make profile`) showed to be most
of the hub's time per event. A local SQLite file answers a statement in tens
of microseconds, so this adapter makes the calls in the event loop's own
thread instead, presenting the small part of aiosqlite's interface that
SQLAlchemy's aiosqlite dialect uses (see `hub.db.make_engine`).

The one call that could block for long, waiting for another process's write
lock, is never left to SQLite's busy handler (busy_timeout is 0 here): it is
retried with `asyncio.sleep` until the timeout, so the loop keeps serving
while it waits. PostgreSQL (asyncpg) needs none of this.
"""
from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

_RETRY_S = 0.002


def locked(exc: sqlite3.OperationalError) -> bool:
    """SQLite says another connection holds the lock."""
    text = str(exc).lower()
    return "database is locked" in text or "database is busy" in text


async def _patiently(timeout: float, fn: Any, *args: Any) -> Any:
    """Call fn; while SQLite says another connection holds the lock, wait (without
    blocking the event loop) and try again, up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    delay = _RETRY_S
    while True:
        try:
            return fn(*args)
        except sqlite3.OperationalError as exc:
            if not locked(exc) or time.monotonic() >= deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


class _Immediately:
    """Stands in for aiosqlite's request queue (`_tx`), which SQLAlchemy uses to
    set the isolation level: runs the function now and resolves its future."""

    def put_nowait(self, item: tuple[asyncio.Future, Any]) -> None:
        future, function = item
        try:
            future.set_result(function())
        except Exception as exc:  # noqa: BLE001 - handed back through the future
            future.set_exception(exc)


class Cursor:
    def __init__(self, cursor: sqlite3.Cursor, timeout: float) -> None:
        self._cursor = cursor
        self._timeout = timeout

    async def __aenter__(self) -> "Cursor":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    async def execute(self, sql: str, parameters: Any = ()) -> "Cursor":
        await _patiently(self._timeout, self._cursor.execute, sql, parameters)
        return self

    async def executemany(self, sql: str, seq_of_parameters: Any) -> "Cursor":
        await _patiently(self._timeout, self._cursor.executemany, sql, seq_of_parameters)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list:
        return self._cursor.fetchmany(size if size is not None else self._cursor.arraysize)

    async def fetchall(self) -> list:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()


class Connection:
    """What SQLAlchemy's aiosqlite adapter calls on an aiosqlite connection."""

    def __init__(self, conn: sqlite3.Connection, timeout: float) -> None:
        self._conn = conn
        self._connection = conn  # the adapter checks this to know the connection is open
        self._tx = _Immediately()
        self._timeout = timeout

    def __await__(self):  # `await_(connection)` in the adapter's connect()
        async def itself() -> "Connection":
            return self
        return itself().__await__()

    @property
    def raw(self) -> sqlite3.Connection:
        """The sqlite3 connection itself (`hub.store` runs prepared statements on it)."""
        return self._conn

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    @isolation_level.setter
    def isolation_level(self, value: str | None) -> None:
        self._conn.isolation_level = value

    def cursor(self) -> Cursor:
        return Cursor(self._conn.cursor(), self._timeout)

    async def begin_immediate(self) -> None:
        """BEGIN IMMEDIATE on the driver's connection (hub.store's units of work on
        SQLite), waiting without blocking the event loop while another holds the lock."""
        await _patiently(self._timeout, self._conn.execute, "BEGIN IMMEDIATE")

    async def commit(self) -> None:
        await _patiently(self._timeout, self._conn.commit)

    async def rollback(self) -> None:
        self._conn.rollback()

    async def close(self) -> None:
        self.stop()

    def stop(self) -> None:
        if self._connection is not None:
            self._conn.close()
            self._connection = None

    async def create_function(self, *args: Any, **kw: Any) -> None:
        self._conn.create_function(*args, **kw)


def connect(path: str, *, timeout: float = 30.0) -> Connection:
    """A connection for `create_async_engine(..., async_creator=...)`. SQLite's
    own busy handler is off (busy_timeout 0): lock waits happen in `_patiently`."""
    conn = sqlite3.connect(path, timeout=0, check_same_thread=False, isolation_level=None)
    return Connection(conn, timeout)


class Checkpointer:
    """Copies the write-ahead log back into the database file on a thread of its
    own, so no commit on the event loop pays for it.

    SQLite's default is for the commit that takes the log past 1000 pages to do
    the copy and the fsync itself: a stall of tens of milliseconds on whichever
    batch happens to commit then, which `make profile` showed as about 40% of the
    hub's commit time. With a checkpointer the hub's connections turn that off
    (`wal_autocheckpoint=0`, see `hub.db.make_engine`) and this thread runs a
    PASSIVE checkpoint every `interval` seconds: it never blocks a writer or a
    reader, and sqlite3 releases the GIL while it works. The log restarts from
    its beginning once everything in it has been copied; `journal_size_limit`
    trims the file after a burst.

    Under a steady stream of commits that restart never comes: a writer restarts
    the log only if, when it begins, a checkpoint has copied every frame, and a
    PASSIVE round copies what was there when it started while the hub appends
    more. Over a 12 000-event backlog the log grew to 185 MB, and every frame
    written to new file space cost the kernel block allocation and zeroing
    (perf: 5-7% of the hub's CPU). So once the log holds more than
    `restart_frames` frames (as the PASSIVE round counts them: what the log holds
    since it last restarted, not the file's size, which stays as large as the
    last burst made it, up to `journal_size_limit`) a round also runs a RESTART
    checkpoint: it waits (up to RESTART_WAIT_S) for the writer to finish its
    transaction, holds the write lock while it copies the few frames the PASSIVE
    round left, and the next writer starts the log from its beginning, over file
    space already allocated. At a trickle the log restarts by itself and no
    round needs it."""

    RESTART_WAIT_S = 0.2

    def __init__(self, path: str, interval: float = 0.25, restart_frames: int = 8192) -> None:
        self.path = path
        self.interval = interval
        self.restart_frames = restart_frames  # 32 MB of 4 KB pages
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=0, check_same_thread=False, isolation_level=None)
        try:
            while not self._stop.wait(self.interval):
                self.round(conn)
            self._checkpoint(conn, "TRUNCATE")
        finally:
            conn.close()

    def round(self, conn: sqlite3.Connection) -> None:
        """One round on the checkpointer's own connection (busy timeout 0). A
        RESTART only follows a PASSIVE round that copied every frame it found: one
        that could not (a reader in another process still on an older snapshot)
        means the RESTART would hold the write lock waiting for that reader."""
        frames, copied = self._checkpoint(conn, "PASSIVE")
        if frames > self.restart_frames and copied == frames:
            conn.execute(f"PRAGMA busy_timeout={int(1000 * self.RESTART_WAIT_S)}")
            try:
                self._checkpoint(conn, "RESTART")
            finally:
                conn.execute("PRAGMA busy_timeout=0")

    @staticmethod
    def _checkpoint(conn: sqlite3.Connection, mode: str) -> tuple[int, int]:
        """Run one checkpoint: (frames in the log as it found them, frames copied);
        (0, 0) if it could not run."""
        try:
            _busy, frames, copied = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            return frames, copied
        except sqlite3.OperationalError as exc:  # busy: the next round does it
            log.debug("checkpoint %s skipped: %s", mode, exc)
        except Exception:  # noqa: BLE001 - the thread must outlive one bad round, or the log grows unchecked
            log.exception("checkpoint %s failed; trying again next round", mode)
        return 0, 0

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            if not self._thread.is_alive():
                self._thread = None
