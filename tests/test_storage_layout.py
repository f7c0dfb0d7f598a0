"""How rows are laid out for the database's sake (README Performance): decision
ids that sort by time, an event's bundle stored deflated, and decisions and
deliveries found by person rather than through an index by event."""
from __future__ import annotations

import uuid
import zlib
from datetime import timedelta

import orjson
import pytest
from sqlalchemy import event, inspect, text

from hub.pipeline import process_inbound
from hub.streams import inbound_subject
from schemas.fhir import ordered_uuid
from tests.conftest import NOW, fit_note
from tests.test_fit_note_flow import record_consent

NS = uuid.UUID("5f1f2d0e-6c1a-4b8e-9a43-0c2b7d9f1e11")
OTHER = "9000000009"  # a valid NHS number with no consent on record


def test_ordered_ids_sort_by_time_and_are_the_same_for_the_same_name_and_instant():
    ids = [ordered_uuid(NOW + timedelta(milliseconds=ms), NS, f"event-{99 - ms}") for ms in range(100)]
    assert ids == sorted(ids)  # later instants sort later, whatever the name
    assert ordered_uuid(NOW, NS, "a") == ordered_uuid(NOW, NS, "a")
    assert ordered_uuid(NOW, NS, "a") != ordered_uuid(NOW, NS, "b")
    parsed = uuid.UUID(ordered_uuid(NOW, NS, "a"))
    assert parsed.version == 8 and parsed.variant == uuid.RFC_4122
    assert int.from_bytes(parsed.bytes[:6], "big") == int(NOW.timestamp() * 1000)
    with pytest.raises(ValueError):  # a naive time has no instant
        ordered_uuid(NOW.replace(tzinfo=None), NS, "a")


async def _two_events(hub, creds) -> tuple[str, str]:
    await record_consent(hub, creds)
    mine = await process_inbound(hub.deps, inbound_subject("fit-note", "B86001"), orjson.dumps(fit_note()))
    other = await process_inbound(hub.deps, inbound_subject("fit-note", "B86001"),
                                  orjson.dumps(fit_note(**{"fit_note.patient.nhs_number": OTHER})))
    assert mine.outcome == other.outcome == "accepted"
    return mine.event_id, other.event_id


async def test_an_events_bundle_is_stored_deflated_and_read_back_as_given(hub, creds):
    mine, _ = await _two_events(hub, creds)
    async with hub.deps.uow() as uow:
        stored = bytes((await uow.conn._conn.execute(
            text("SELECT bundle FROM events WHERE event_id = :e"), {"e": mine})).scalar_one())
        given = await uow.events.bundle(mine)
    assert stored[:1] == b"\x78" and zlib.decompress(stored) == given
    assert len(stored) * 3 < len(given)  # a fit note's bundle shrinks about fourfold
    bundle = orjson.loads(given)
    assert bundle["resourceType"] == "Bundle" and bundle["entry"][0]["resource"]["resourceType"] == "MessageHeader"

    # a bundle written before it was deflated (plain JSON) reads as it is
    async with hub.deps.uow() as uow:
        await uow.conn._conn.execute(text("UPDATE events SET bundle = :b WHERE event_id = :e"),
                                     {"b": given, "e": mine})
        await uow.commit()
    async with hub.deps.uow() as uow:
        assert await uow.events.bundle(mine) == given


async def test_an_events_decisions_and_deliveries_are_found_through_its_person(hub, creds):
    mine, other = await _two_events(hub, creds)
    async with hub.deps.uow() as uow:
        decisions = await uow.decisions.search(event_id=mine)
        deliveries = await uow.deliveries.search(event_id=mine)
        recipients = await uow.deliveries.recipients_of([mine, other])
        none = await uow.decisions.search(event_id="no-such-event")
        to_emp = await uow.decisions.search(event_id=mine, recipient_id="EMP-ACME")
        pending = await uow.deliveries.search(event_id=mine, state="pending")
        names = {ix["name"] for table in ("decisions", "deliveries")
                 for ix in await uow.conn._conn.run_sync(lambda c, tb=table: inspect(c).get_indexes(tb))}
    assert {d.event_id for d in decisions} == {mine} and len(decisions) == 8  # 2 recipients x 4 categories
    assert {d.recipient_id for d in deliveries} == {"EMP-ACME", "OHP-HEALTHWORKS"}
    assert {d.event_id for d in deliveries} == {mine}
    assert set(recipients) == {"EMP-ACME", "OHP-HEALTHWORKS"}  # the other person's were withheld
    assert none == []
    assert {(d.event_id, d.recipient_id) for d in to_emp} == {(mine, "EMP-ACME")} and len(to_emp) == 4
    assert {(d.event_id, d.state) for d in pending} == {(mine, "pending")} and len(pending) == 2
    assert not {"ix_decisions_event_id", "ix_deliveries_event_id"} & names
    assert {"ix_decisions_person_time", "ix_deliveries_nhs_number"} <= names


async def test_sqlite_finds_an_events_rows_through_the_persons_index_whatever_else_is_asked(hub, creds):
    """The statements the repositories run, as SQLite plans them (it keeps no
    statistics): with a recipient or a state asked as well, still the person's
    index, never a walk of every row with that recipient or state."""
    if not hub.settings.db_url.startswith("sqlite"):
        pytest.skip("SQLite's planner; PostgreSQL plans from its statistics")
    mine, _ = await _two_events(hub, creds)
    ran: list[tuple[str, tuple]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if "FROM decisions" in statement or "FROM deliveries" in statement:
            ran.append((statement, tuple(parameters)))

    event.listen(hub.engine.sync_engine, "before_cursor_execute", capture)
    try:
        async with hub.deps.uow() as uow:
            await uow.deliveries.recipients_of([mine])
            await uow.deliveries.search(event_id=mine, state="pending", recipient_id="EMP-ACME")
            await uow.decisions.search(event_id=mine, recipient_id="EMP-ACME", outcome="permit")
            await uow.decisions.search(event_id=mine)
            plans = [" | ".join(str(r[-1]) for r in uow.conn._sqlite.execute("EXPLAIN QUERY PLAN " + sql, params))
                     for sql, params in ran]
    finally:
        event.remove(hub.engine.sync_engine, "before_cursor_execute", capture)
    assert len(plans) == 4
    for plan in plans:
        assert "ix_decisions_person_time" in plan or "ix_deliveries_nhs_number" in plan, plan
        for other in ("ix_decisions_recipient_time", "ix_deliveries_recipient_state", "ix_deliveries_state_seq",
                      "SCAN decisions", "SCAN deliveries"):
            assert other not in plan, plan


async def test_the_downgrade_gives_the_release_before_its_plain_bundles_and_indexes_back(hub, creds):
    from hub.db import downgrade, migrate

    mine, other = await _two_events(hub, creds)
    async with hub.deps.uow() as uow:
        given = {e: await uow.events.bundle(e) for e in (mine, other)}

    await downgrade(hub.engine, "0005")  # what `hub migrate --down-to 0005` does
    async with hub.engine.connect() as conn:
        stored = dict((await conn.execute(text("SELECT event_id, bundle FROM events"))).all())
        names = {ix["name"] for table in ("decisions", "deliveries")
                 for ix in await conn.run_sync(lambda c, tb=table: inspect(c).get_indexes(tb))}
    assert {e: bytes(b) for e, b in stored.items()} == given  # plain JSON, as the release before reads it
    assert {"ix_decisions_event_id", "ix_deliveries_event_id"} <= names

    await migrate(hub.engine)  # and up again: the old rows read as they are, new ones are deflated
    async with hub.deps.uow() as uow:
        assert await uow.events.bundle(mine) == given[mine]


async def test_hub_migrate_takes_the_schema_back_for_a_rollback_and_up_again(settings):
    from hub.db import make_engine
    from tests.test_cli_operations import cli

    async def version() -> str:
        engine = make_engine(settings.db_url)
        try:
            async with engine.connect() as conn:
                return (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
        finally:
            await engine.dispose()

    up = await cli(settings, "migrate")
    assert up.returncode == 0 and "database at head" in up.stdout, up.stderr
    head = await version()
    down = await cli(settings, "migrate", "--down-to", "0005")
    assert down.returncode == 0 and "database at 0005" in down.stdout, down.stderr
    assert await version() == "0005"
    again = await cli(settings, "migrate")
    assert again.returncode == 0 and await version() == head
