"""How rows are laid out for the database's sake (README Performance): decision
ids that sort by time, an event's bundle stored deflated, and decisions and
deliveries found by person rather than through an index by event."""
from __future__ import annotations

import uuid
import zlib
from datetime import timedelta

import orjson
from sqlalchemy import inspect, text

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
        names = {ix["name"] for table in ("decisions", "deliveries")
                 for ix in await uow.conn._conn.run_sync(lambda c, tb=table: inspect(c).get_indexes(tb))}
        plan = None
        if uow.conn.dialect.name == "sqlite":
            sql = ("SELECT * FROM decisions WHERE nhs_number IN (SELECT nhs_number FROM events WHERE event_id = :e) "
                   "AND event_id = :e")
            plan = " ".join(str(r[-1]) for r in (await uow.conn._conn.execute(
                text("EXPLAIN QUERY PLAN " + sql), {"e": mine})).all())
    assert {d.event_id for d in decisions} == {mine} and len(decisions) == 8  # 2 recipients x 4 categories
    assert {d.recipient_id for d in deliveries} == {"EMP-ACME", "OHP-HEALTHWORKS"}
    assert {d.event_id for d in deliveries} == {mine}
    assert set(recipients) == {"EMP-ACME", "OHP-HEALTHWORKS"}  # the other person's were withheld
    assert none == []
    assert not {"ix_decisions_event_id", "ix_deliveries_event_id"} & names
    assert {"ix_decisions_person_time", "ix_deliveries_nhs_number"} <= names
    if plan is not None:  # through the person index, not a scan of every decision
        assert "ix_decisions_person_time" in plan and "SCAN decisions" not in plan
