"""Units of work on SQLite (hub.store._Writer): they take turns on one connection
kept open, beginning and ending each transaction on the driver's connection, and
a statement SQLAlchemy runs inside one joins it."""
from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
import warnings

import pytest
from sqlalchemy import event, select

from hub import tables as t
from hub.db import make_engine, migrate
from hub.store import UnitOfWorkFactory

NHS = "9434765919"


@pytest.fixture
def sqlite_only(settings):
    if not settings.db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL: each unit of work has a pooled connection of its own")


async def _seq(uow, nhs: str = NHS):
    """The person's sequence number as SQLAlchemy's own execution reads it (not a prepared statement)."""
    return (await uow.conn.execute(
        select(t.person_seq.c.seq).where(t.person_seq.c.nhs_number == nhs))).scalar_one_or_none()


async def test_units_of_work_take_turns_on_one_connection_kept_open(hub, sqlite_only):
    checkouts = []
    event.listen(hub.engine.sync_engine, "checkout", lambda *a: checkouts.append(1))
    drivers = set()
    for _ in range(5):
        async with hub.deps.uow() as uow:
            drivers.add(id(uow.conn._sqlite))
            await uow.person_seq.next([NHS])
            await uow.commit()
    assert len(drivers) == 1 and checkouts == []  # opened once, before; never checked out again
    async with hub.deps.uow() as uow:
        assert await _seq(uow) == 5


async def test_a_statement_through_sqlalchemy_joins_the_transaction(hub, sqlite_only):
    async with hub.deps.uow() as uow:
        assert uow.conn._sqlite.in_transaction and not uow.conn._conn.in_transaction()
        await uow.person_seq.next([NHS])  # prepared, on the driver's connection
        assert await _seq(uow) == 1  # SQLAlchemy's execution sees it: the same transaction
        assert uow.conn._conn.in_transaction()
        # left without commit: both roll back, and SQLAlchemy knows its transaction ended
    async with hub.deps.uow() as uow:
        assert not uow.conn._conn.in_transaction()
        assert await _seq(uow) is None
        await uow.person_seq.next([NHS])
        await uow.commit()
    async with hub.deps.uow() as uow:
        assert not uow.conn._conn.in_transaction()  # ended by the commit through SQLAlchemy
        assert uow.conn._sqlite.in_transaction
        assert await _seq(uow) == 1


async def test_a_committed_unit_of_work_takes_no_more_statements(hub, sqlite_only):
    """Its connection is the next unit of work's once it commits (the lock is let go
    then, not at the end of the block): a statement after that would run in another's
    transaction, so it is refused."""
    async with hub.deps.uow() as uow:
        await uow.person_seq.next([NHS])
        await uow.commit()
        with pytest.raises(RuntimeError, match="has committed"):
            await uow.person_seq.next([NHS])
        with pytest.raises(RuntimeError, match="has committed"):
            await _seq(uow)
        with pytest.raises(RuntimeError, match="has committed"):
            await uow.commit()  # it would have ended whichever transaction the connection is in now
    async with hub.deps.uow() as uow:
        assert await _seq(uow) == 1


async def test_a_database_locked_too_long_fails_as_sqlalchemy_would(hub, sqlite_only, tmp_path):
    """Transient for the inbound handler (it naks the batch rather than trying each
    message alone), and the connection is kept for the next unit of work."""
    from sqlalchemy.exc import OperationalError
    from hub.bootstrap import _transient

    async with hub.deps.uow() as uow:
        driver = hub.deps.uow._writers[asyncio.get_running_loop()]._driver
        await uow.commit()
    other = sqlite3.connect(hub.settings.db_url.split(":///", 1)[-1], isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    driver._timeout = 0.2
    try:
        with pytest.raises(OperationalError, match="locked") as caught:
            async with hub.deps.uow():
                pass
        assert _transient(caught.value)
    finally:
        other.execute("ROLLBACK")
        other.close()
    async with hub.deps.uow() as uow:
        assert uow.conn._sqlite is driver.raw
        await uow.person_seq.next([NHS])
        await uow.commit()


async def test_a_failed_commit_through_sqlalchemy_leaves_the_connection_usable(hub, sqlite_only, monkeypatch):
    """SQLAlchemy keeps a transaction whose commit failed, inactive, until it is
    rolled back; the unit of work rolls it back, so the next one's statements run."""
    from sqlalchemy.exc import OperationalError
    from hub import sqlite_inline

    real = sqlite_inline.Connection.commit
    failing = [True]

    async def commit_once_failing(self):
        if failing.pop() if failing else False:
            raise sqlite3.OperationalError("disk I/O error")
        await real(self)

    monkeypatch.setattr(sqlite_inline.Connection, "commit", commit_once_failing)
    with pytest.raises(OperationalError, match="disk I/O error"):
        async with hub.deps.uow() as uow:
            await uow.person_seq.next([NHS])
            assert await _seq(uow) == 1  # through SQLAlchemy: it ends the transaction
            await uow.commit()
    async with hub.deps.uow() as uow:
        assert await _seq(uow) is None  # rolled back, and SQLAlchemy's statements run again
        await uow.person_seq.next([NHS])
        await uow.commit()
    async with hub.deps.uow() as uow:
        assert await _seq(uow) == 1


async def test_an_engine_disposed_mid_transaction_lets_it_finish(hub, sqlite_only):
    """The unit of work that has the connection keeps it to the end and closes it;
    the next opens another and still queues on the same lock."""
    writer = None
    async with hub.deps.uow() as uow:
        writer = hub.deps.uow._writers[asyncio.get_running_loop()]
        first = uow.conn._sqlite
        await hub.engine.dispose()
        await uow.person_seq.next([NHS])
        assert await _seq(uow) == 1
        await uow.commit()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        first.execute("SELECT 1")
    async with hub.deps.uow() as uow:
        assert hub.deps.uow._writers[asyncio.get_running_loop()] is writer
        assert uow.conn._sqlite is not first
        assert await _seq(uow) == 1


async def test_a_failed_unit_of_work_rolls_back_and_lets_the_next_in(hub):
    with pytest.raises(ValueError):
        async with hub.deps.uow() as uow:
            await uow.person_seq.next([NHS])
            raise ValueError("boom")

    async def other():
        async with hub.deps.uow() as uow:
            await uow.person_seq.next([NHS])
            await uow.commit()
    await asyncio.wait_for(other(), 5)
    async with hub.deps.uow() as uow:
        assert await _seq(uow) == 1


def test_the_kept_connection_closes_with_the_engine_and_each_event_loop(tmp_path):
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}")
    factory = UnitOfWorkFactory(engine)
    drivers: list[sqlite3.Connection] = []

    async def one_transaction(dispose: bool) -> None:
        await migrate(engine)
        async with factory() as uow:
            drivers.append(uow.conn._sqlite)
            await uow.person_seq.next([NHS])
            await uow.commit()
        if dispose:
            await engine.dispose()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        asyncio.run(one_transaction(dispose=False))
        asyncio.run(one_transaction(dispose=True))  # a new event loop: the first loop's connection closes
    assert len(drivers) == 2 and drivers[0] is not drivers[1]
    for driver in drivers:
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            driver.execute("SELECT 1")


@pytest.mark.parametrize("restarts", [True, False])
def test_the_checkpointer_restarts_a_log_that_a_steady_writer_keeps_growing(tmp_path, restarts):
    """A writer restarts the write-ahead log (writes it again from its start) only
    if, when it begins, a checkpoint has copied every frame; under a steady
    stream of commits a PASSIVE round never leaves it so, and the log grows
    without end. Past `restart_frames` a round also runs a RESTART checkpoint, which
    waits for the writer's transaction to end: the next transaction then reuses
    the log's space. (False: the same without it, the premise.)"""
    from hub.sqlite_inline import Checkpointer

    path = str(tmp_path / "hub.db")
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("CREATE TABLE t (b BLOB)")

    def write(kb: int) -> None:
        writer.executemany("INSERT INTO t VALUES (?)", [(bytes(1024),)] * kb)

    writer.execute("BEGIN IMMEDIATE")
    write(2048)
    writer.execute("COMMIT")
    modes: list[str] = []

    class Counted(Checkpointer):
        def _checkpoint(self, conn, mode):
            modes.append(mode)
            return Checkpointer._checkpoint(conn, mode)

    checkpointer = Counted(path, restart_frames=256 if restarts else 2**62)  # 256: 1 MB of 4 KB pages
    own = sqlite3.connect(path, timeout=0, check_same_thread=False, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # a writer mid-transaction while the round runs
    write(100)
    round_ = threading.Thread(target=checkpointer.round, args=(own,))
    round_.start()
    time.sleep(0.05)
    writer.execute("COMMIT")  # the RESTART, waiting for the write lock, goes on now
    round_.join(5)
    size = os.path.getsize(path + "-wal")
    writer.execute("BEGIN IMMEDIATE")
    write(100)
    writer.execute("COMMIT")
    grown = os.path.getsize(path + "-wal") - size
    assert (grown == 0) if restarts else (grown > 100 * 1024), grown
    assert modes == (["PASSIVE", "RESTART"] if restarts else ["PASSIVE"])
    # the log restarted holds a few frames, though its file is as large as before: no RESTART
    modes.clear()
    checkpointer.round(own)
    assert modes == ["PASSIVE"]
    own.close()
    writer.close()
