"""Database engine and migrations. SQLite (WAL, one writer at a time) by default,
PostgreSQL (asyncpg) in production; the same Alembic migrations serve both."""
from __future__ import annotations

from pathlib import Path

import orjson

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from hub import sqlite_inline

MIGRATIONS = Path(__file__).with_name("migrations")


def make_engine(url: str, *, background_checkpoint: bool = False) -> AsyncEngine:
    """The engine for `url`. `background_checkpoint` (SQLite files only): the
    caller runs a `sqlite_inline.Checkpointer` (see `checkpointer`), so commits
    never checkpoint the write-ahead log themselves."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # SQLite calls made in the event loop's thread (hub.sqlite_inline): no thread hop per call.
        engine = create_async_engine(url, async_creator=lambda: sqlite_inline.connect(path or ":memory:",
                                                                                      timeout=30.0), **_JSON)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - exercised by every test
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=0")  # lock waits are sqlite_inline's, off the event loop
            # A transaction dirties a few thousand pages (random keys in the indexes): with
            # SQLite's 2 MB default cache it spills them to the log mid-transaction and
            # writes some twice. 64 MB holds a batch's working set.
            cur.execute("PRAGMA cache_size=-65536")
            cur.execute("PRAGMA journal_size_limit=67108864")
            if background_checkpoint:
                cur.execute("PRAGMA wal_autocheckpoint=0")
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _begin_immediate(conn):  # pragma: no cover
            # Take the write lock at BEGIN: two writers never deadlock upgrading a read lock.
            # A unit of work begins on the driver's connection itself (hub.store._Writer):
            # a statement run through SQLAlchemy then joins that transaction.
            if not conn.connection.driver_connection.raw.in_transaction:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True, **_JSON)


def checkpointer(url: str) -> sqlite_inline.Checkpointer | None:
    """The log checkpointer for an engine made with background_checkpoint=True
    (None unless `url` is an SQLite file)."""
    if not url.startswith("sqlite"):
        return None
    path = url.split(":///", 1)[-1]
    return sqlite_inline.Checkpointer(path) if path and path != ":memory:" else None


# JSON columns through orjson: several times faster than the standard library both ways.
# hide_parameters: an error message never carries the values bound to a statement
# (NHS numbers, payloads): only the statement itself is logged.
_JSON = {"json_serializer": lambda value: orjson.dumps(value).decode(), "json_deserializer": orjson.loads,
         "hide_parameters": True}


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to head (idempotent; safe to run at every start)."""

    await _alembic(engine, command.upgrade, "head")


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Take the schema back to `revision`, for the release that expects it (a rollback)."""
    await _alembic(engine, command.downgrade, revision)


async def _alembic(engine: AsyncEngine, step, revision: str) -> None:
    def run(sync_conn):
        cfg = alembic_config(str(engine.url))
        cfg.attributes["connection"] = sync_conn
        step(cfg, revision)

    async with engine.begin() as conn:
        await conn.run_sync(run)
