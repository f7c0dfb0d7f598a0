"""Prepared statements (hub.store._Plan): on SQLite the hot path's statements run
on the driver's connection, compiled once. They must read and write exactly what
SQLAlchemy's own execution of the same statement does, and fail the same way."""
from __future__ import annotations

import sqlite3
from datetime import timedelta

import orjson
import pytest
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import NoResultFound, OperationalError

from hub import store
from hub.pipeline import process_inbound
from hub.streams import inbound_subject
from tests.conftest import fit_note
from tests.test_fit_note_flow import record_consent

NHS = "9434765919"


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"relay_interval_s": 3600.0})  # the deliveries stay pending


async def test_prepared_reads_return_what_sqlalchemy_returns(hub, creds):
    await record_consent(hub, creds)
    out = await process_inbound(hub.deps, inbound_subject("fit-note", "B86001"), orjson.dumps(fit_note()))
    now = hub.clock.now()
    reads = [
        (store._KNOWN_HASHES, {"ids": [out.event_id, "no-such-event"]}),
        (store._CONSENTS, {"people": [NHS]}),
        (store._CONSENT_VERSIONS, {"people": [NHS, "9999999999"]}),
        (store._ACTIVE_BREAK_GLASS, {"people": [NHS], "now": now}),
        (store._NOTES, {"keys": ["no-such-note"]}),
        (store._HEAD, None),
        (store._DUE[False, False], {"now": now + timedelta(seconds=1), "channel": "broker", "limit": 10}),
        (store._DUE[True, False], {"now": now, "channel": "broker", "limit": 1, "recipient_id": "EMP-ACME"}),
    ]
    async with hub.deps.uow() as uow:
        for statement, params in reads:
            args = (params,) if params else ()
            fast = (await uow.conn.execute(statement, *args)).all()
            usual = (await uow.conn._conn.execute(statement, *args)).all()
            assert [tuple(r) for r in fast] == [tuple(r) for r in usual], statement
            assert [r._mapping for r in fast] == [dict(r._mapping) for r in usual]
        due = (await uow.conn.execute(store._DUE[False, False], reads[-2][1])).all()
    assert len(due) == 2 and {r.recipient_id for r in due} == {"EMP-ACME", "OHP-HEALTHWORKS"}
    assert due[0].created_at == now and due[0].categories  # times aware UTC, JSON decoded
    async with hub.deps.uow() as uow:  # SQLite took the fast path above; PostgreSQL SQLAlchemy's
        assert (uow.conn._sqlite is not None) == hub.settings.db_url.startswith("sqlite")


async def test_prepared_writes_take_effect_and_count_rows(hub, creds):
    await record_consent(hub, creds)
    out = await process_inbound(hub.deps, inbound_subject("fit-note", "B86001"), orjson.dumps(fit_note()))
    now = hub.clock.now()
    async with hub.deps.uow() as uow:
        ids = [d.delivery_id for d in await uow.deliveries.search(event_id=out.event_id)]
        assert await uow.person_seq.next([NHS, NHS]) == {NHS: 2}  # the event took 1
        res = await uow.conn.execute(store._MARK_DELIVERED, {"ids": ids + ["nobody"], "at": now})
        assert res.rowcount == 2
        await uow.commit()
    async with hub.deps.uow() as uow:
        rows = await uow.deliveries.search(event_id=out.event_id)
        assert {(r.state, r.delivered_at, r.attempts) for r in rows} == {("delivered", now, 1)}
        again = await uow.conn.execute(store._MARK_DELIVERED, {"ids": ids, "at": now})
        assert again.rowcount == 0  # only a delivery still due changes
        with pytest.raises(NoResultFound):
            (await uow.conn.execute(store._KNOWN_HASHES, {"ids": ["none"]})).one()


def test_a_failing_prepared_statement_raises_as_sqlalchemy_would():
    conn = sqlite3.connect(":memory:")  # no tables: the statement cannot run
    plan = store._Plan.of(store._HEAD, sqlite_dialect.dialect())
    with pytest.raises(OperationalError) as caught:
        plan.run(conn)
    assert "no such table: audit_head" in str(caught.value)
    assert isinstance(caught.value.orig, sqlite3.OperationalError)


def test_only_statements_built_once_are_prepared():
    from sqlalchemy import select

    from hub import tables as t

    dialect = sqlite_dialect.dialect()
    assert store._Plan.of(select(t.audit_head), dialect) is None  # built per call: SQLAlchemy runs it
    assert store._Plan.of(store._HEAD, dialect) is store._Plan.of(store._HEAD, dialect)


def test_a_plan_keeps_a_bounded_number_of_expanded_statements(monkeypatch):
    """A statement with a list (`IN (...)`) is expanded once per length and kept;
    past EXPANDED_KEPT lengths the rest are built each time, so a relay pass of
    any size cannot grow the cache without bound. Each still reads correctly."""
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE consents (consent_id, nhs_number, version)")
    conn.executemany("INSERT INTO consents VALUES (?, ?, 1)", [(f"c{i}", f"{i:010d}") for i in range(40)])
    plan = store._Plan(store._CONSENT_VERSIONS, sqlite_dialect.dialect())  # a plan of its own: nothing kept yet
    monkeypatch.setattr(store._Plan, "EXPANDED_KEPT", 5)
    for n in range(1, 41):
        rows = plan.run(conn, {"people": [f"{i:010d}" for i in range(n)]}).all()
        assert len(rows) == n
    assert sorted(plan._expanded) == [(1,), (2,), (3,), (4,), (5,)]
