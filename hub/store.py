"""Repositories and the unit of work: the only code that speaks SQL.

One `UnitOfWork` is one transaction. The pipeline writes an event, its
decisions, its delivery (outbox) rows and its audit rows in one unit of work
and commits before anything is published (exactly-once effect on top of
at-least-once delivery).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import sqlite3
from collections import namedtuple
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Any

from sqlalchemy import and_, bindparam, event, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, IntegrityError, MultipleResultsFound, NoResultFound
from sqlalchemy.sql.util import find_tables
from sqlalchemy.util import greenlet_spawn
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from hub import sqlite_inline, tables as t
from hub.audit_chain import GENESIS, chain_hash


# Inserts into these tables wait in memory (in this order, for the foreign keys)
# until a statement that could see them runs, or the unit of work commits: a
# batch of events is written with one multi-row INSERT per table. Statements on
# the INDEPENDENT tables never see them, so they do not end the wait.
BUFFERED = ("events", "decisions", "deliveries", "unroutable", "absence_notes", "audit")
INDEPENDENT = frozenset({"consents", "consent_versions", "break_glass", "absence_episodes",
                         "credentials", "dead_letters", "person_seq", "leases"})


class _Conn:
    """A unit of work's connection: the repositories' only way to the database.
    Read-your-writes holds: any statement that touches a table with rows still
    waiting to be inserted (or that cannot be shown not to) inserts them first."""

    def __init__(self, conn: AsyncConnection, sqlite: sqlite3.Connection | None = None) -> None:
        self._conn = conn
        self._sqlite = sqlite  # SQLite: the driver's connection, for prepared statements (see _Plan)
        self._pending: dict[str, list[dict]] = {name: [] for name in BUFFERED}
        self._waiting = False
        self._broken = False
        self._done = False  # committed on a shared connection (SQLite): no more statements

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def check_open(self) -> None:
        if self._done:
            raise RuntimeError("this unit of work has committed; its connection is another's now")

    def defer(self, table: str, rows: Sequence[dict]) -> None:
        if rows:
            self._pending[table].extend(rows)
            self._waiting = True

    def discard(self) -> None:
        self._pending = {name: [] for name in BUFFERED}
        self._waiting = False

    async def execute(self, statement: Any, *args: Any, **kw: Any) -> Any:
        self.check_open()
        if self._sqlite is not None and not kw and (not args or isinstance(args[0], dict)) \
                and self._sqlite.in_transaction:
            plan = _Plan.of(statement, self._conn.dialect)
            if plan is not None:
                if self._waiting and not plan.independent:
                    await self.flush()
                return plan.run(self._sqlite, *args)
        if self._waiting and not _independent(statement):
            await self.flush()
        return await self._conn.execute(statement, *args, **kw)

    async def executemany(self, sql: str, params: list[tuple]) -> None:
        """One compiled statement (this dialect's SQL) for many rows of parameters."""
        self.check_open()
        if self._sqlite is not None:
            _raw(self._sqlite.executemany, sql, params)
        else:
            await self._conn.exec_driver_sql(sql, params)

    async def flush(self) -> None:
        if not self._waiting and not self._broken:
            return
        if self._broken:
            raise RuntimeError("an earlier write of this unit of work failed; it cannot commit")
        self._waiting = False
        pending, self._pending = self._pending, {name: [] for name in BUFFERED}
        try:
            for name in BUFFERED[:-1]:
                if pending[name]:
                    await insert_many(self, t.metadata.tables[name], pending[name])
            if pending["audit"]:
                await _append_audit(self, pending["audit"])
        except BaseException:
            self._broken = True  # part of it may be written: this transaction must not commit
            raise


# (dialect, table, columns) -> (SQL, a row's values in order, (position, bind processor) of those to convert)
_INSERTS: dict[tuple[str, str, tuple[str, ...]], tuple[str, Any, list] | None] = {}


async def insert_many(conn: _Conn, table: Any, rows: Sequence[dict]) -> None:
    """INSERT plain dicts into `table`, the same as `conn.execute(insert(table), rows)`
    but with SQLAlchemy's per-row work (compiling, its parameter bookkeeping) done
    once per table and set of columns: the statement is compiled for the dialect
    once, and each row becomes a tuple through the columns' own bind processors.
    On the hot path that was a third of a batch's flush."""
    runs: list[tuple[tuple[str, ...], list[dict]]] = []  # consecutive rows with the same columns, in order
    for row in rows:
        columns = tuple(row)
        if runs and runs[-1][0] == columns:
            runs[-1][1].append(row)
        else:
            runs.append((columns, [row]))
    for columns, group in runs:
        key = (conn.dialect.name, table.name, columns)
        if key not in _INSERTS:
            compiled = insert(table).compile(dialect=conn.dialect, column_keys=list(columns))
            names = tuple(compiled.positiontup or ())
            # a column default SQLAlchemy would fill in (or a named paramstyle): its own way
            convert = [(i, p) for i, n in enumerate(names) if (p := _binder(table.c[n].type, conn.dialect))]
            values = itemgetter(*names) if len(names) > 1 else lambda row, n=names[0]: (row[n],)
            _INSERTS[key] = (compiled.string, values, convert) if sorted(names) == sorted(columns) else None
        plan = _INSERTS[key]
        if plan is None:
            await conn._conn.execute(insert(table), group)
            continue
        sql, values, convert = plan
        params = []
        for row in group:
            args = list(values(row))
            for i, process in convert:
                args[i] = process(args[i])
            params.append(tuple(args))
        await conn.executemany(sql, params)


def _binder(type_: Any, dialect: Any) -> Any:
    """A type's bind processor in this dialect's own form (None if values go as they
    are): SQLite's DATETIME writes the text SQLAlchemy reads and compares."""
    return type_.dialect_impl(dialect).bind_processor(dialect)


def _independent(statement: Any) -> bool:
    try:
        names = {tb.name for tb in find_tables(statement, include_crud=True)}
    except Exception:  # noqa: BLE001 - anything unusual: assume it may see the waiting rows
        return False
    return bool(names) and names <= INDEPENDENT  # text() and the like name no table: flush first


async def serialise_writers(conn: Any) -> None:
    """PostgreSQL: take the audit head's row lock now. Every transaction that writes
    the audit holds it until it commits; taking it before any per-person row
    (person_seq, absence episodes) gives all writers one lock order, so two
    workers never wait for each other in a circle. SQLite has one writer anyway."""
    if conn.dialect.name == "postgresql":
        await conn.execute(select(t.audit_head.c.id).where(t.audit_head.c.id == 1).with_for_update())


class _Rows:
    """A prepared statement's result: the part of SQLAlchemy's Result the repositories use."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list, rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def all(self) -> list:
        return self._rows

    def __iter__(self):
        return iter(self._rows)

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def one(self) -> Any:
        if len(self._rows) != 1:
            raise (NoResultFound if not self._rows else MultipleResultsFound)("expected exactly one row")
        return self._rows[0]

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalars(self) -> list:
        return [r[0] for r in self._rows]


def _raw(fn: Any, sql: str, params: Any) -> Any:
    try:
        return fn(sql, params)
    except sqlite3.Error as exc:
        raise _as_sqlalchemy_would(exc, sql) from exc


def _as_sqlalchemy_would(exc: sqlite3.Error, sql: str) -> DBAPIError:
    """A driver's error as SQLAlchemy would raise it: callers tell transient
    failures (a locked database) by its type."""
    return DBAPIError.instance(sql, None, exc, sqlite3.Error, hide_parameters=True)


class _Plan:
    """A statement built once (module level, `prepared`) as SQLite runs it: its SQL,
    its parameters in order with their types' bind processors, its columns' result
    processors. On SQLite a unit of work runs it on the driver's connection, which
    saves SQLAlchemy's per-call work (about 40 us of a 45 us statement, measured):
    the hot path runs a dozen of them per transaction. PostgreSQL runs them as any
    other statement."""

    _registered: dict[int, Any] = {}
    _plans: dict[tuple[int, Any], "_Plan"] = {}  # per statement and dialect (its JSON serialiser, ...)
    EXPANDED_KEPT = 256  # SQL strings kept per plan, one per length of its lists (the rest built each time)

    @classmethod
    def of(cls, statement: Any, dialect: Any) -> "_Plan | None":
        key = (id(statement), dialect)
        plan = cls._plans.get(key)
        if plan is None and cls._registered.get(id(statement)) is statement:
            plan = cls._plans[key] = cls(statement, dialect)
        return plan

    def __init__(self, statement: Any, dialect: Any) -> None:
        compiled = statement.compile(dialect=dialect)
        binds = compiled.binds
        self.sql = compiled.string
        self.names = tuple(compiled.positiontup or ())
        self.fixed = {n: binds[n].value for n in self.names if not binds[n].required}  # literals: id == 1
        self.expanding = tuple(dict.fromkeys(n for n in self.names if binds[n].expanding))
        self.binders = [_binder(binds[n].type, dialect) for n in self.names]
        columns = compiled._result_columns  # (key, name, objects, type) of each selected or returned column
        self.results = [rc[3].dialect_impl(dialect).result_processor(dialect, None) for rc in columns]
        self.row = _row_type(tuple(rc[0] for rc in columns))
        self.independent = _independent(statement)
        self._expanded: dict[tuple[int, ...], str] = {}

    def run(self, conn: sqlite3.Connection, params: dict | None = None) -> _Rows:
        values = {**self.fixed, **params} if params else self.fixed
        args: list = []
        for name, bind in zip(self.names, self.binders):
            value = values[name]
            if name in self.expanding:
                args.extend(value if bind is None else [bind(v) for v in value])
            else:
                args.append(value if bind is None else bind(value))
        sql = self.sql
        if self.expanding:
            lengths = tuple(len(values[n]) for n in self.expanding)
            sql = self._expanded.get(lengths)
            if sql is None:
                sql = self.sql
                for name, n in zip(self.expanding, lengths):
                    sql = sql.replace(f"__[POSTCOMPILE_{name}]", ", ".join("?" * n))
                if len(self._expanded) < self.EXPANDED_KEPT:
                    self._expanded[lengths] = sql
        cursor = _raw(conn.execute, sql, args)
        rows = cursor.fetchall() if cursor.description else []
        make, results = self.row._make, self.results
        if any(results):
            rows = [make([v if p is None else p(v) for v, p in zip(r, results)]) for r in rows]
        else:
            rows = [make(r) for r in rows]
        return _Rows(rows, cursor.rowcount)


def _row_type(keys: tuple[str, ...]) -> type:
    base = namedtuple("Row", keys)
    return type("Row", (base,), {"__slots__": (), "_mapping": property(lambda r: dict(zip(keys, r)))})


def prepared(statement: Any) -> Any:
    """Register a statement built once at import with bound parameters (see _Plan)."""
    _Plan._registered[id(statement)] = statement
    return statement


# Statements run for every batch, built once and prepared: SQLite runs them compiled
# (_Plan); PostgreSQL's SQLAlchemy reuses their compiled form and cache keys.
_HEAD = prepared(select(t.audit_head).where(t.audit_head.c.id == 1))
_HEAD_FOR_UPDATE = _HEAD.with_for_update()
_SET_HEAD = prepared(update(t.audit_head).where(t.audit_head.c.id == 1).values(seq=bindparam("new_seq"),
                                                                      hash=bindparam("new_hash")))
_KNOWN_HASHES = prepared(select(t.events.c.event_id, t.events.c.content_hash).where(
    t.events.c.event_id.in_(bindparam("ids", expanding=True))))
_ACTIVE_BREAK_GLASS = prepared(select(t.break_glass).where(
    t.break_glass.c.nhs_number.in_(bindparam("people", expanding=True)),
    t.break_glass.c.created_at <= bindparam("now"), t.break_glass.c.expires_at > bindparam("now")))
_CONSENTS = prepared(select(t.consents).where(t.consents.c.nhs_number.in_(bindparam("people", expanding=True)))
                     .order_by(t.consents.c.created_at))
_CONSENT_VERSIONS = prepared(select(t.consents.c.nhs_number, t.consents.c.consent_id, t.consents.c.version).where(
    t.consents.c.nhs_number.in_(bindparam("people", expanding=True))))


async def _append_audit(conn: _Conn, rows: Sequence[dict]) -> None:
    """Chain and insert audit rows. The head row is locked for the rest of the
    transaction (SQLite's write lock already serialises writers), so concurrent
    writers take turns and the chain never forks."""
    head = (await conn.execute(_HEAD if conn.dialect.name == "sqlite" else _HEAD_FOR_UPDATE)).one()
    seq, prev = head.seq, head.hash
    chained = []
    for row in rows:
        seq += 1
        full = {"seq": seq, **row}
        digest = chain_hash(prev, full)
        chained.append({**full, "hash": digest})
        prev = digest
    await insert_many(conn, t.audit, chained)
    await conn.execute(_SET_HEAD, {"new_seq": seq, "new_hash": prev})


class _Repo:
    def __init__(self, conn: "_Conn") -> None:
        self.conn = conn


def _matching(q, table, **equal: Any):
    """Add `column == value` for every filter that was given (None means "any").
    An event id on decisions or deliveries also names the event's person: those
    tables are indexed by person, not by event (see `of_events`)."""
    by_person = table in (t.decisions, t.deliveries) and equal.get("event_id") is not None
    for column, value in equal.items():
        if value is None:
            continue
        if by_person:
            q = q.where(of_events(table, [value]) if column == "event_id" else unindexed(table.c[column]) == value)
        else:
            q = q.where(table.c[column] == value)
    return q


def of_events(table: Any, event_ids: Sequence[str]) -> Any:
    """The condition "this row is about one of these events", for a table with
    `event_id` and `nhs_number` columns and an index by person but none by event:
    the events' people are looked up first, then their rows. Each index on those
    tables costs every event a page written at a random place in it (`python -m
    bench.pages`), and an event's rows are never wanted without knowing its person."""
    people = select(t.events.c.nhs_number).where(t.events.c.event_id.in_(list(event_ids)))
    return and_(table.c.nhs_number.in_(people), table.c.event_id.in_(list(event_ids)))


def unindexed(column: Any) -> Any:
    """`column || ''`: the same text, but no index can serve a condition on it. For
    the other filters of a query by event (`of_events`): SQLite keeps no statistics
    here, and with an index on recipient or state to choose from it would take
    that one and read each of the recipient's or state's rows, not the person's few."""
    return column.concat("")


class Events(_Repo):
    async def get(self, event_id: str) -> Any | None:
        res = await self.conn.execute(select(t.events).where(t.events.c.event_id == event_id))
        return res.first()

    async def content_hashes(self, event_ids: Sequence[str]) -> dict[str, str]:
        """event id -> content hash, for those of these events already recorded."""
        if not event_ids:
            return {}
        return dict((await self.conn.execute(_KNOWN_HASHES, {"ids": list(set(event_ids))})).all())

    async def content_hash(self, event_id: str) -> str | None:
        res = await self.conn.execute(
            select(t.events.c.content_hash).where(t.events.c.event_id == event_id)
        )
        return res.scalar_one_or_none()

    async def add(self, row: dict) -> None:
        self.conn.defer("events", [row])

    async def latest_fit_note(self, nhs_number: str) -> Any | None:
        """The person's most recently received fit-note event."""
        c = t.events.c
        q = (select(t.events).where(c.nhs_number == nhs_number, c.kind == "fit-note")
             .order_by(c.received_at.desc()).limit(1))
        return (await self.conn.execute(q)).first()

    async def heads(self, event_ids: Sequence[str]) -> dict[str, Any]:
        """Event rows without their bundles."""
        if not event_ids:
            return {}
        cols = [col for col in t.events.c if col.name != "bundle"]
        q = select(*cols).where(t.events.c.event_id.in_(list(set(event_ids))))
        return {r.event_id: r for r in (await self.conn.execute(q)).all()}

    async def bundle(self, event_id: str) -> bytes:
        q = select(t.events.c.bundle).where(t.events.c.event_id == event_id)
        return (await self.conn.execute(q)).scalar_one()

    async def by_document(self, kind: str, document_id: str, *, nhs_number: str,
                          source_org_id: str | None = None) -> list[Any]:
        """A document's events about this person (an id another person's document
        also has, or a mistaken reference, names nothing of theirs)."""
        c = t.events.c
        q = _matching(select(t.events).where(c.kind == kind, c.document_id == document_id), t.events,
                      nhs_number=nhs_number, source_org_id=source_org_id)
        return list((await self.conn.execute(q.order_by(c.received_at))).all())

    async def search(self, *, nhs_number: str | None = None, kind: str | None = None,
                     limit: int = 500) -> list[Any]:
        cols = [col for col in t.events.c if col.name != "bundle"]
        q = _matching(select(*cols), t.events, nhs_number=nhs_number, kind=kind)
        return list((await self.conn.execute(q.order_by(t.events.c.received_at).limit(limit))).all())


class PersonSeq(_Repo):
    async def next(self, nhs_numbers: Sequence[str]) -> dict[str, int]:
        """The next sequence number of each of these (distinct) people, taken now:
        one statement, rows locked to the end of the transaction on PostgreSQL, in
        a fixed order so that two workers never wait for each other in a circle."""
        people = sorted(set(nhs_numbers))
        if not people:
            return {}
        if self.conn.dialect.name != "postgresql":  # one writer: a prepared statement per person is cheapest
            return {n: (await self.conn.execute(_NEXT_SEQ, {"nhs_number": n})).scalar_one() for n in people}
        await serialise_writers(self.conn)
        stmt = pg_insert(t.person_seq).on_conflict_do_update(index_elements=["nhs_number"],
                                                             set_={"seq": t.person_seq.c.seq + 1})
        c = t.person_seq.c
        stmt = stmt.values([{"nhs_number": n, "seq": 1} for n in people]).returning(c.nhs_number, c.seq)
        return dict((await self.conn.execute(stmt)).all())


_NEXT_SEQ = prepared(sqlite_insert(t.person_seq).values(nhs_number=bindparam("nhs_number"), seq=1)
                     .on_conflict_do_update(index_elements=["nhs_number"], set_={"seq": t.person_seq.c.seq + 1})
                     .returning(t.person_seq.c.seq))


class Leases(_Repo):
    """Work one worker at a time may do, e.g. serving one webhook recipient in order."""

    async def take(self, name: str, holder: str, now: datetime, ttl: timedelta) -> bool:
        """Take or renew the lease; False if another holder has it and it has not expired."""
        c = t.leases.c
        until = now + ttl
        res = await self.conn.execute(update(t.leases).where(c.name == name, or_(c.holder == holder, c.expires_at <= now))
                                      .values(holder=holder, expires_at=until))
        if res.rowcount:
            return True
        insert_ = (pg_insert if self.conn.dialect.name == "postgresql" else sqlite_insert)(t.leases)
        res = await self.conn.execute(insert_.values(name=name, holder=holder, expires_at=until)
                                      .on_conflict_do_nothing(index_elements=["name"]))
        return bool(res.rowcount)

    async def release(self, name: str, holder: str) -> None:
        c = t.leases.c
        await self.conn.execute(t.leases.delete().where(c.name == name, c.holder == holder))


class Decisions(_Repo):
    async def add_many(self, rows: Sequence[dict]) -> None:
        self.conn.defer("decisions", rows)

    async def search(
        self,
        *,
        nhs_number: str | None = None,
        recipient_id: str | None = None,
        outcome: str | None = None,
        event_id: str | None = None,
        decision_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 500,
    ) -> list[Any]:
        c = t.decisions.c
        q = _matching(select(t.decisions), t.decisions, nhs_number=nhs_number, recipient_id=recipient_id,
                      outcome=outcome, event_id=event_id, decision_id=decision_id)
        if since:
            q = q.where(c.decided_at >= since)
        if until:
            q = q.where(c.decided_at < until)
        q = q.order_by(c.decided_at, c.recipient_id, c.category).limit(limit)
        return list((await self.conn.execute(q)).all())


def _due_rows(*, one_recipient: bool, lock: bool) -> Any:
    c = t.deliveries.c
    q = (select(c.seq, c.delivery_id, c.event_id, c.recipient_id, c.channel, c.address,
                c.payload, c.attempts, c.state, c.nhs_number, c.purpose, c.categories, c.decision_ids,
                c.created_at, c.person_seq, c.next_attempt_at, c.last_error)
         .where(c.channel == bindparam("channel")).order_by(c.seq).limit(bindparam("limit")))
    if one_recipient:  # its line, a back-off included (`Deliveries.due` cuts it there)
        q = q.where(c.recipient_id == bindparam("recipient_id"), Deliveries._due_state())
    else:
        q = q.where(Deliveries._due(bindparam("now")))
    return prepared(q.with_for_update(skip_locked=True) if lock else q)


class Deliveries(_Repo):
    async def add_many(self, rows: Sequence[dict]) -> None:
        self.conn.defer("deliveries", rows)

    @staticmethod
    def _due_state():
        """Only a delivery still waiting to go may change state this way: a relay
        never turns one another relay has delivered back into a retry."""
        return t.deliveries.c.state.in_(("pending", "retrying"))

    @staticmethod
    def _due(now: datetime):
        c = t.deliveries.c
        return or_(c.state == "pending", and_(c.state == "retrying", c.next_attempt_at <= now))

    async def due(self, now: datetime, *, channel: str, recipient_id: str | None = None,
                  limit: int = 200, claim: bool = False) -> list[Any]:
        """Deliveries to attempt now on one channel, oldest first (seq keeps per-recipient order).
        For one recipient, its line: its waiting deliveries oldest first, up to
        the first still waiting out a back-off, so none overtakes one that failed.
        With `claim`, the rows are locked for this transaction and rows another
        worker's relay holds are skipped (PostgreSQL; SQLite has one writer anyway)."""
        q = _DUE[bool(recipient_id), claim and self.conn.dialect.name == "postgresql"]
        params = {"now": now, "channel": channel, "limit": limit}
        if recipient_id:
            params["recipient_id"] = recipient_id
        rows = list((await self.conn.execute(q, params)).all())
        if recipient_id:
            for i, r in enumerate(rows):
                if r.state == "retrying" and r.next_attempt_at > now:
                    return rows[:i]
        return rows

    async def still_due(self, delivery_id: str, now: datetime) -> bool:
        c = t.deliveries.c
        q = select(c.delivery_id).where(c.delivery_id == delivery_id, self._due(now))
        return (await self.conn.execute(q)).first() is not None

    async def due_recipients(self, now: datetime, *, channel: str) -> list[str]:
        """Recipients on `channel` whose first waiting delivery is due (see `due`:
        one waiting out a back-off holds back those after it)."""
        c, w = t.deliveries.c, t.deliveries.alias("waiting").c
        # each recipient's first waiting row, grouped once (a correlated min(seq) per row
        # made PostgreSQL walk the primary key over every delivered row: 24 s for 2 000)
        first = (select(func.min(w.seq).label("seq"))
                 .where(w.channel == channel, w.state.in_(("pending", "retrying")))
                 .group_by(w.recipient_id).subquery())
        q = select(c.recipient_id).join_from(t.deliveries, first, c.seq == first.c.seq).where(self._due(now))
        return list((await self.conn.execute(q)).scalars())

    async def mark_delivered(self, delivery_ids: Iterable[str], at: datetime) -> None:
        ids = list(delivery_ids)
        if ids:
            await self.conn.execute(_MARK_DELIVERED, {"ids": ids, "at": at})

    async def mark_withheld(self, delivery_id: str, *, reason: str, decision_ids: Sequence[str],
                            tried: bool = False) -> None:
        """`decision_ids`: the decisions that withheld it. `tried`: an earlier attempt
        failed with its outcome unknown (a publish whose ack never came, a POST that
        timed out or was answered with an error), so the copy may have reached the
        recipient: the categories it carried and the decisions that allowed it are
        kept, and the person's disclosures list it as maybe delivered."""
        c = t.deliveries.c
        values: dict[str, Any] = {"state": "withheld", "reason": reason, "payload": None}
        if not tried:
            values.update(decision_ids=list(decision_ids), categories=[])
        await self.conn.execute(update(t.deliveries).where(c.delivery_id == delivery_id).values(**values))

    async def narrow(self, delivery_id: str, *, payload: bytes, categories: Sequence[str],
                     decision_ids: Sequence[str]) -> None:
        c = t.deliveries.c
        await self.conn.execute(update(t.deliveries).where(c.delivery_id == delivery_id).values(
            payload=payload, categories=list(categories), decision_ids=list(decision_ids)))

    async def mark_dead_lettered(self, delivery_id: str, *, attempts: int, error: str) -> bool:
        """True if it was still waiting to go (another worker may have delivered it
        meanwhile: a relay that stalled past its lease must not undo that)."""
        c = t.deliveries.c
        result = await self.conn.execute(update(t.deliveries).where(c.delivery_id == delivery_id, self._due_state())
                                         .values(state="dead-lettered", attempts=attempts, last_error=error,
                                                 next_attempt_at=None))
        return result.rowcount == 1

    async def requeue(self, delivery_id: str, *, payload: bytes, categories: Sequence[str], now: datetime) -> None:
        """Back to pending under its original id (a retry of a dead-lettered delivery, or a replay)."""
        c = t.deliveries.c
        await self.conn.execute(update(t.deliveries).where(c.delivery_id == delivery_id).values(
            state="pending", payload=payload, categories=list(categories), attempts=0, next_attempt_at=None,
            last_error=None, created_at=now))

    async def get(self, delivery_id: str) -> Any | None:
        return (await self.conn.execute(select(t.deliveries).where(t.deliveries.c.delivery_id == delivery_id))).first()

    async def for_replay(self, *, nhs_number: str | None, recipient_id: str | None, since: datetime) -> list[Any]:
        c = t.deliveries.c
        q = _matching(select(t.deliveries).where(c.state == "delivered", c.delivered_at >= since), t.deliveries,
                      nhs_number=nhs_number, recipient_id=recipient_id)
        return list((await self.conn.execute(q.order_by(c.seq))).all())

    async def counts(self) -> dict[tuple[str, str], int]:
        c = t.deliveries.c
        q = select(c.state, c.recipient_type, func.count()).group_by(c.state, c.recipient_type)
        return {(state, rtype): n for state, rtype, n in (await self.conn.execute(q)).all()}

    async def mark_retry(self, delivery_id: str, *, attempts: int, next_at: datetime, error: str) -> None:
        c = t.deliveries.c
        await self.conn.execute(
            update(t.deliveries)
            .where(c.delivery_id == delivery_id, self._due_state())
            .values(state="retrying", attempts=attempts, next_attempt_at=next_at, last_error=error)
        )

    async def recipients_of(self, event_ids: Sequence[str]) -> list[str]:
        """Who was given (or is being given) any of these events."""
        if not event_ids:
            return []
        c = t.deliveries.c
        q = (select(c.recipient_id).where(of_events(t.deliveries, event_ids),
                                          unindexed(c.state).in_(("pending", "retrying", "delivered")))
             .distinct())
        return list((await self.conn.execute(q)).scalars())

    async def search(self, *, nhs_number: str | None = None, recipient_id: str | None = None,
                     state: str | None = None, event_id: str | None = None, limit: int = 500) -> list[Any]:
        q = _matching(select(*[col for col in t.deliveries.c if col.name != "payload"]), t.deliveries,
                      nhs_number=nhs_number, recipient_id=recipient_id, state=state, event_id=event_id)
        return list((await self.conn.execute(q.order_by(t.deliveries.c.seq).limit(limit))).all())


_DUE = {(one, lock): _due_rows(one_recipient=one, lock=lock) for one in (False, True) for lock in (False, True)}
_MARK_DELIVERED = prepared(
    update(t.deliveries)
    .where(t.deliveries.c.delivery_id.in_(bindparam("ids", expanding=True)), Deliveries._due_state())
    .values(state="delivered", delivered_at=bindparam("at"), payload=None, last_error=None,
            attempts=t.deliveries.c.attempts + 1))


class Unroutable(_Repo):
    async def add_many(self, rows: Sequence[dict]) -> None:
        self.conn.defer("unroutable", rows)

    async def search(self, *, event_id: str | None = None, limit: int = 500) -> list[Any]:
        q = _matching(select(t.unroutable), t.unroutable, event_id=event_id)
        return list((await self.conn.execute(q.order_by(t.unroutable.c.recorded_at).limit(limit))).all())


class Signposting(_Repo):
    async def add(self, row: dict) -> None:
        await self.conn.execute(insert(t.signposting), [row])

    async def search(self, *, nhs_number: str | None = None, limit: int = 500) -> list[Any]:
        q = _matching(select(t.signposting), t.signposting, nhs_number=nhs_number)
        return list((await self.conn.execute(q.order_by(t.signposting.c.recorded_at).limit(limit))).all())


_NOTES = prepared(select(t.absence_notes).where(t.absence_notes.c.note_key.in_(bindparam("keys", expanding=True))))


class Absence(_Repo):
    """Current fit notes per person and the absence episodes chained from them."""

    async def note(self, note_key: str) -> Any | None:
        return (await self.conn.execute(select(t.absence_notes).where(t.absence_notes.c.note_key == note_key))).first()

    async def notes(self, note_keys: Sequence[str]) -> dict[str, Any]:
        if not note_keys:
            return {}
        return {r.note_key: r for r in (await self.conn.execute(_NOTES, {"keys": list(set(note_keys))})).all()}

    async def put_note(self, row: dict, *, new: bool | None = None) -> None:
        """Insert or replace a note (`new`: the caller already knows which)."""
        c = t.absence_notes.c
        if new if new is not None else await self.note(row["note_key"]) is None:
            self.conn.defer("absence_notes", [row])
        else:
            await self.conn.execute(update(t.absence_notes).where(c.note_key == row["note_key"]).values(**row))

    async def supersede(self, note_key: str, nhs_number: str) -> None:
        """Mark a note replaced, if it is about this person."""
        c = t.absence_notes.c
        await self.conn.execute(update(t.absence_notes).where(c.note_key == note_key, c.nhs_number == nhs_number)
                                .values(superseded=True))

    async def current_not_fit(self, nhs_number: str) -> list[Any]:
        c = t.absence_notes.c
        q = select(t.absence_notes).where(c.nhs_number == nhs_number, c.not_fit.is_(True), c.superseded.is_(False))
        return list((await self.conn.execute(q)).all())

    async def set_note_episodes(self, assignments: dict[str, str | None]) -> None:
        c = t.absence_notes.c
        for note_key, episode_id in assignments.items():
            await self.conn.execute(update(t.absence_notes).where(c.note_key == note_key)
                                    .values(episode_id=episode_id))

    async def episodes(self, nhs_number: str) -> list[Any]:
        q = select(t.absence_episodes).where(t.absence_episodes.c.nhs_number == nhs_number)
        return list((await self.conn.execute(q)).all())

    async def put_episode(self, row: dict) -> None:
        c = t.absence_episodes.c
        exists = (await self.conn.execute(select(c.episode_id).where(c.episode_id == row["episode_id"]))).first()
        if exists is None:
            await self.conn.execute(insert(t.absence_episodes), [row])
        else:
            values = {k: v for k, v in row.items() if k != "milestone_event_id"}
            await self.conn.execute(update(t.absence_episodes).where(c.episode_id == row["episode_id"]).values(**values))

    async def drop_episodes(self, episode_ids: Sequence[str]) -> None:
        """Episodes no current note belongs to any more (never ones that fired)."""
        c = t.absence_episodes.c
        if episode_ids:
            await self.conn.execute(t.absence_episodes.delete().where(
                c.episode_id.in_(list(episode_ids)), c.milestone_event_id.is_(None)))

    async def due(self, now: datetime, limit: int = 100, nhs_number: str | None = None) -> list[Any]:
        c = t.absence_episodes.c
        q = _matching(select(t.absence_episodes)
                      .where(c.milestone_due_at <= now, c.milestone_event_id.is_(None))
                      .order_by(c.milestone_due_at).limit(limit), t.absence_episodes, nhs_number=nhs_number)
        if self.conn.dialect.name == "postgresql":
            q = q.with_for_update(skip_locked=True)
        return list((await self.conn.execute(q)).all())

    async def mark_fired(self, episode_id: str, event_id: str) -> None:
        c = t.absence_episodes.c
        await self.conn.execute(update(t.absence_episodes).where(c.episode_id == episode_id)
                                .values(milestone_event_id=event_id))


class BreakGlass(_Repo):
    async def add(self, row: dict) -> None:
        await self.conn.execute(insert(t.break_glass), [row])

    async def get(self, break_glass_id: str) -> Any | None:
        q = select(t.break_glass).where(t.break_glass.c.break_glass_id == break_glass_id)
        return (await self.conn.execute(q)).first()

    async def active(self, nhs_number: str, now: datetime) -> list[Any]:
        return (await self.active_for([nhs_number], now))[nhs_number]

    async def active_for(self, nhs_numbers: Sequence[str], now: datetime) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {n: [] for n in nhs_numbers}
        if nhs_numbers:
            params = {"people": list(set(nhs_numbers)), "now": now}
            for r in (await self.conn.execute(_ACTIVE_BREAK_GLASS, params)).all():
                out[r.nhs_number].append(r)
        return out

    async def used(self, break_glass_id: str) -> None:
        c = t.break_glass.c
        await self.conn.execute(update(t.break_glass).where(c.break_glass_id == break_glass_id)
                                .values(uses=c.uses + 1))

    async def review(self, break_glass_id: str, *, by: str, at: datetime, note: str) -> None:
        c = t.break_glass.c
        await self.conn.execute(update(t.break_glass).where(c.break_glass_id == break_glass_id)
                                .values(reviewed_by=by, reviewed_at=at, review_note=note))

    async def search(self, *, reviewed: bool | None = None, nhs_number: str | None = None,
                     limit: int = 500) -> list[Any]:
        c = t.break_glass.c
        q = _matching(select(t.break_glass), t.break_glass, nhs_number=nhs_number)
        if reviewed is not None:
            q = q.where(c.reviewed_at.is_not(None) if reviewed else c.reviewed_at.is_(None))
        return list((await self.conn.execute(q.order_by(c.created_at).limit(limit))).all())


class DeadLetters(_Repo):
    async def add_if_absent(self, row: dict) -> bool:
        """Record a dead letter; False if this exact message was already dead-lettered
        (a redelivery). One that was resubmitted unchanged and failed again is reopened."""
        c = t.dead_letters.c
        existing = (await self.conn.execute(
            select(c.status).where(c.dead_letter_id == row["dead_letter_id"]))).first()
        if existing is None:
            await self.conn.execute(insert(t.dead_letters), [row])
            return True
        if existing.status == "resubmitted":
            await self.conn.execute(update(t.dead_letters).where(c.dead_letter_id == row["dead_letter_id"])
                                    .values(status="open", errors=row["errors"]))
            return True
        return False

    async def get(self, dead_letter_id: str) -> Any | None:
        res = await self.conn.execute(
            select(t.dead_letters).where(t.dead_letters.c.dead_letter_id == dead_letter_id)
        )
        return res.first()

    async def search(self, *, status: str | None = None, kind: str | None = None, limit: int = 500) -> list[Any]:
        q = _matching(select(t.dead_letters), t.dead_letters, status=status, kind=kind)
        return list((await self.conn.execute(q.order_by(t.dead_letters.c.received_at.desc()).limit(limit))).all())

    async def unpublished(self, limit: int = 200) -> list[Any]:
        c = t.dead_letters.c
        q = (select(c.dead_letter_id, c.kind, c.payload, c.errors)
             .where(c.published_at.is_(None)).order_by(c.received_at).limit(limit))
        return list((await self.conn.execute(q)).all())

    async def mark_published(self, dead_letter_id: str, at: datetime) -> None:
        await self.conn.execute(
            update(t.dead_letters).where(t.dead_letters.c.dead_letter_id == dead_letter_id)
            .values(published_at=at)
        )

    async def reopen(self, dead_letter_id: str) -> None:
        await self.conn.execute(
            update(t.dead_letters).where(t.dead_letters.c.dead_letter_id == dead_letter_id)
            .values(status="open", resubmitted_at=None)
        )

    async def mark_resubmitted(self, dead_letter_id: str, at: datetime) -> None:
        await self.conn.execute(
            update(t.dead_letters).where(t.dead_letters.c.dead_letter_id == dead_letter_id)
            .values(status="resubmitted", resubmitted_at=at)
        )


class Consents(_Repo):
    async def add(self, row: dict, *, recorded_by: str | None) -> None:
        await self.conn.execute(insert(t.consents), [row])
        await self._version(row, recorded_by)

    async def replace(self, row: dict, *, recorded_by: str | None) -> None:
        c = t.consents.c
        values = {k: v for k, v in row.items() if k not in ("consent_id", "created_at")}
        await self.conn.execute(update(t.consents).where(c.consent_id == row["consent_id"]).values(**values))
        await self._version(row, recorded_by)

    async def _version(self, row: dict, recorded_by: str | None) -> None:
        await self.conn.execute(insert(t.consent_versions), [{
            "consent_id": row["consent_id"], "version": row["version"], "resource": row["resource"],
            "recorded_at": row["updated_at"], "recorded_by": recorded_by,
        }])

    async def version(self, consent_id: str, version: int) -> Any | None:
        c = t.consent_versions.c
        q = select(t.consent_versions).where(c.consent_id == consent_id, c.version == version)
        return (await self.conn.execute(q)).first()

    async def get(self, consent_id: str, *, for_update: bool = False) -> Any | None:
        q = select(t.consents).where(t.consents.c.consent_id == consent_id)
        if for_update and self.conn.dialect.name != "sqlite":
            q = q.with_for_update()
        return (await self.conn.execute(q)).first()

    async def for_person(self, nhs_number: str) -> list[Any]:
        q = select(t.consents).where(t.consents.c.nhs_number == nhs_number).order_by(t.consents.c.created_at)
        return list((await self.conn.execute(q)).all())

    async def versions_for_persons(self, nhs_numbers: Sequence[str]) -> dict[str, list[tuple[str, int]]]:
        """(consent id, version) of every consent of each of these people, in any status."""
        out: dict[str, list[tuple[str, int]]] = {}
        if nhs_numbers:
            for nhs, consent_id, version in (await self.conn.execute(_CONSENT_VERSIONS,
                                                                     {"people": list(set(nhs_numbers))})).all():
                out.setdefault(nhs, []).append((consent_id, version))
        return out

    async def for_persons(self, nhs_numbers: Sequence[str]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {n: [] for n in nhs_numbers}
        if nhs_numbers:
            for r in (await self.conn.execute(_CONSENTS, {"people": list(set(nhs_numbers))})).all():
                out[r.nhs_number].append(r)
        return out


class Credentials(_Repo):
    async def add(self, row: dict) -> None:
        await self.conn.execute(insert(t.credentials), [row])

    async def by_token_hash(self, token_hash: str) -> Any | None:
        c = t.credentials.c
        q = select(t.credentials).where(c.token_hash == token_hash, c.revoked_at.is_(None))
        return (await self.conn.execute(q)).first()

    async def find(self, key: str) -> Any | None:
        c = t.credentials.c
        q = select(t.credentials).where(or_(c.credential_id == key, c.nats_user == key))
        return (await self.conn.execute(q)).first()

    async def revoke(self, credential_id: str, at: datetime) -> None:
        c = t.credentials.c
        await self.conn.execute(
            update(t.credentials).where(c.credential_id == credential_id, c.revoked_at.is_(None))
            .values(revoked_at=at)
        )

    async def active(self) -> list[Any]:
        q = select(t.credentials).where(t.credentials.c.revoked_at.is_(None)).order_by(t.credentials.c.created_at)
        return list((await self.conn.execute(q)).all())

    async def all(self) -> list[Any]:
        return list((await self.conn.execute(select(t.credentials).order_by(t.credentials.c.created_at))).all())


class Audit(_Repo):
    """The append-only, hash-chained audit trail (see hub.audit_chain)."""

    async def append_many(self, rows: Sequence[dict]) -> None:
        """Chained and inserted with the unit of work's other waiting rows (see _Conn)."""
        self.conn.defer("audit", list(rows))

    async def previous_hashes(self, seqs: Sequence[int]) -> dict[int, bytes]:
        """seq -> the hash of the row before it (the chain's genesis for the first row)."""
        wanted = {s - 1 for s in seqs if s > 1}
        out = {1: GENESIS} if 1 in seqs else {}
        if wanted:
            q = select(t.audit.c.seq, t.audit.c.hash).where(t.audit.c.seq.in_(sorted(wanted)))
            out.update({seq + 1: bytes(h) for seq, h in (await self.conn.execute(q)).all()})
        return out

    async def head(self) -> Any:
        return (await self.conn.execute(_HEAD)).one()

    async def count(self, **where: Any) -> int:
        q = _matching(select(func.count()).select_from(t.audit), t.audit, **where)
        return (await self.conn.execute(q)).scalar_one()

    async def after(self, seq: int, limit: int = 1000) -> list[Any]:
        q = select(t.audit).where(t.audit.c.seq > seq).order_by(t.audit.c.seq).limit(limit)
        return list((await self.conn.execute(q)).all())

    async def search(self, *, person: str | Sequence[str] | None = None, action: str | None = None,
                     event_id: str | None = None, actor: str | None = None, ref: str | None = None,
                     since: datetime | None = None, until: datetime | None = None,
                     action_prefix: str | None = None, limit: int = 1000) -> list[Any]:
        q = _matching(select(t.audit), t.audit, action=action, event_id=event_id, actor=actor, ref=ref)
        if person is not None:  # one person's rows, whichever form of the keyed hash they carry
            q = q.where(t.audit.c.person.in_(person if isinstance(person, (list, tuple)) else [person]))
        if action_prefix:
            q = q.where(t.audit.c.action.startswith(action_prefix, autoescape=True))
        if since:
            q = q.where(t.audit.c.at >= since)
        if until:
            q = q.where(t.audit.c.at < until)
        return list((await self.conn.execute(q.order_by(t.audit.c.seq).limit(limit))).all())


class UnitOfWork:
    """`async with uow_factory() as uow: ...; await uow.commit()` — one transaction.
    Leaving the block without commit rolls back."""

    def __init__(self, engine: AsyncEngine, writer: "_Writer | None" = None) -> None:
        self._engine = engine
        self._writer = writer
        self._holding = False
        self._driver: Any = None  # SQLite: the writer's driver connection (hub.sqlite_inline.Connection)
        self.conn: _Conn

    async def __aenter__(self) -> "UnitOfWork":
        if self._writer is not None:
            await self._writer.lock.acquire()
            self._holding = True
            try:
                self._raw, self._driver = await self._writer.connection()
                await _driver_call(self._driver.begin_immediate, "BEGIN IMMEDIATE")
            except BaseException as exc:
                if self._driver is not None and not _waited_out(exc):
                    await self._writer.drop()  # in an unknown state: the next unit of work opens another
                await self._release()
                raise
            sqlite = self._driver.raw
        else:
            self._raw, sqlite = await self._engine.connect(), None
            try:
                await self._raw.begin()
            except BaseException:
                await self._raw.close()  # give the connection back: a locked database must not leak it
                raise
        c = self.conn = _Conn(self._raw, sqlite)
        self.events = Events(c)
        self.person_seq = PersonSeq(c)
        self.leases = Leases(c)
        self.decisions = Decisions(c)
        self.deliveries = Deliveries(c)
        self.unroutable = Unroutable(c)
        self.dead_letters = DeadLetters(c)
        self.signposting = Signposting(c)
        self.absence = Absence(c)
        self.break_glass = BreakGlass(c)
        self.consents = Consents(c)
        self.credentials = Credentials(c)
        self.audit = Audit(c)
        return self

    async def serialise_writers(self) -> None:
        """See serialise_writers: for a transaction that will lock per-person rows."""
        await serialise_writers(self.conn)

    async def lock_persons(self, nhs_numbers: Sequence[str], *, exclusive: bool) -> None:
        """Serialise consent changes against deliveries for the same people.
        SQLite: every write transaction already holds the database's write lock
        (BEGIN IMMEDIATE). PostgreSQL: transaction-scoped advisory locks, shared
        for deliveries, exclusive for consent changes."""
        if self.conn.dialect.name != "postgresql":
            return
        fn = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        for n in sorted(set(nhs_numbers)):
            await self.conn.execute(select(getattr(func, fn)(func.hashtext(n))))

    async def commit(self) -> None:
        self.conn.check_open()
        await self.conn.flush()
        await self._end("commit")
        if self._driver is not None:
            self.conn._done = True  # the connection goes to the next unit of work with the lock
        # Done writing: let the next writer in now (on SQLite), not only when the block
        # ends, so that work after the commit (a publish) never holds the others up.
        await self._release()

    async def rollback(self) -> None:
        self.conn.check_open()
        self.conn.discard()  # what was waiting is dropped with the rest
        self.conn._broken = False
        await self._end("rollback")

    async def _end(self, how: str) -> None:
        """Commit or roll back. On SQLite the transaction was begun on the driver's
        connection; if a statement run through SQLAlchemy joined it, SQLAlchemy
        ends it (so that it knows it has ended; after a failed commit its
        transaction stays, inactive, until rolled back), and the driver ends
        what is left."""
        if self._driver is None:
            await getattr(self._raw, how)()
            return
        if self._raw.get_transaction() is not None:
            await getattr(self._raw, how)()
        if _in_transaction(self._driver):
            await _driver_call(getattr(self._driver, how), how.upper())

    async def __aexit__(self, *exc: object) -> None:
        if self._driver is None:
            try:
                if self._raw.in_transaction():
                    await self._raw.rollback()
            finally:
                await self._raw.close()
            return
        if not self._holding:
            return  # committed: the connection is the next unit of work's already
        try:
            await self._end("rollback")
            if self._raw.invalidated:
                await self._writer.drop()
        except BaseException:
            await self._writer.drop()  # in an unknown state: the next unit of work opens another
            raise
        finally:
            await self._release()

    async def _release(self) -> None:
        if self._holding:
            self._holding = False
            try:
                if self._writer.stale:  # its engine was disposed while this unit of work had it
                    await self._writer.drop()
            finally:
                self._writer.lock.release()


async def _driver_call(fn: Any, sql: str) -> None:
    """A transaction statement on the driver's connection."""
    try:
        await fn()
    except sqlite3.Error as exc:
        raise _as_sqlalchemy_would(exc, sql) from exc


def _in_transaction(driver: Any) -> bool:
    try:
        return driver.raw.in_transaction
    except sqlite3.ProgrammingError:  # closed (its engine was disposed): nothing to end
        return False


def _waited_out(exc: BaseException) -> bool:
    """BEGIN gave up waiting for the lock, or its wait was cancelled: the
    connection itself is as it was."""
    return isinstance(exc, asyncio.CancelledError) or (
        isinstance(exc, DBAPIError) and isinstance(exc.orig, sqlite3.OperationalError)
        and sqlite_inline.locked(exc.orig))


class _Writer:
    """SQLite, one event loop: the lock its units of work queue on, first come
    first served (rather than in SQLite's busy handler, which sleeps and polls),
    and the one connection they take turns on, kept open. A unit of work begins
    and ends its transaction on the driver's connection itself, without
    SQLAlchemy's pool checkout, begin and checkin: about 0.3 ms of CPU a
    transaction when events come one at a time (two transactions an event; README
    Performance). A statement run through SQLAlchemy joins the transaction (the
    engine's begin listener, hub.db, sees it open). The connection is closed
    when the engine is disposed, or by the unit of work that has it then."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.lock = asyncio.Lock()
        self.stale = False
        self._conn: AsyncConnection | None = None
        self._driver: Any = None

    async def connection(self) -> tuple[AsyncConnection, Any]:
        if self._conn is None:
            conn = await self.engine.connect()
            try:
                self._driver = (await conn.get_raw_connection()).driver_connection
            except BaseException:
                await conn.close()
                raise
            self._conn, self.stale = conn, False
        return self._conn, self._driver

    async def drop(self) -> None:
        await greenlet_spawn(self._close)

    def closed_with_engine(self) -> None:
        """From the engine's dispose (where SQLAlchemy can await the driver); a
        unit of work that has the connection now closes it when it lets go."""
        if self.lock.locked():
            self.stale = True
        else:
            self._close()

    def _close(self) -> None:
        conn, driver, self._conn, self._driver, self.stale = self._conn, self._driver, None, None, False
        if conn is not None:
            try:
                conn.sync_connection.invalidate()  # closes the driver's connection
                conn.sync_connection.close()
            except Exception:  # noqa: BLE001 - not where SQLAlchemy can await: close the driver's own
                driver.stop()


class UnitOfWorkFactory:
    """Makes units of work. On SQLite every transaction takes the database's one
    write lock (BEGIN IMMEDIATE), so within a process they take turns (`_Writer`).
    PostgreSQL needs no such queue: each unit of work has a pooled connection."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._serialise = engine.dialect.name == "sqlite"
        self._writers: dict[asyncio.AbstractEventLoop, _Writer] = {}
        if self._serialise:
            event.listen(engine.sync_engine, "engine_disposed", self._disposed)

    def __call__(self) -> UnitOfWork:
        writer = None
        if self._serialise:
            loop = asyncio.get_running_loop()
            writer = self._writers.get(loop)
            if writer is None:
                for old in self._writers.values():  # a new event loop (tests): the old loop's goes
                    old._close()
                self._writers.clear()
                writer = self._writers[loop] = _Writer(self.engine)
        return UnitOfWork(self.engine, writer)

    def _disposed(self, _engine: Any) -> None:
        for w in self._writers.values():
            w.closed_with_engine()


def person_ref(key: bytes, nhs_number: str) -> str:
    """A keyed hash of an NHS number: lets audit rows be searched by person
    without holding the number itself. HMAC-SHA-256 cut to 128 bits (32 hex
    characters): ample against collisions, and half the bytes in every audit
    row and in its index."""
    return legacy_person_ref(key, nhs_number)[:32]


def legacy_person_ref(key: bytes, nhs_number: str) -> str:
    """The full 64-character form, written by hubs before migration 0005."""
    return hmac.new(key, nhs_number.encode(), hashlib.sha256).hexdigest()


__all__ = ["UnitOfWork", "UnitOfWorkFactory", "IntegrityError", "person_ref"]
