"""The audit trail: append-only, hash-chained, verifiable, and readable as FHIR
AuditEvents. Rows hold references and hashes, never personal data."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from sqlalchemy.exc import DBAPIError

from hub.audit_chain import chain_hash

from hub.ig import verify_audit
from tests.conftest import fit_note
from tests.test_fit_note_flow import record_consent, settled
from tests.test_http_api import bearer

NHS = "9434765919"


async def activity(hub, creds) -> None:
    await record_consent(hub, creds)
    gp = await creds.issue("publisher", "B86001")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=hub.api), base_url="http://hub") as http:
        for _ in range(3):
            r = await http.post("/api/v1/inbound/fit-note", headers=bearer(gp), content=orjson.dumps(fit_note()))
            assert r.status_code == 202
    await settled(hub, 3)


async def sql(hub, *statements: str) -> list:
    """Run statements straight against the database, as someone holding its files
    or its superuser would; returns the last one's rows."""
    rows: list = []
    async with hub.engine.connect() as conn:
        for statement in statements:
            result = await conn.exec_driver_sql(statement)
            rows = list(result.all()) if result.returns_rows else []
        await conn.commit()
    return rows


def bypass_guard(hub, operation: str) -> str:
    """The statement that removes the append-only guard for UPDATE or DELETE."""
    if hub.engine.dialect.name == "sqlite":
        return f"DROP TRIGGER audit_no_{operation}"
    return "ALTER TABLE audit DISABLE TRIGGER audit_no_change"


async def test_chain_verifies_and_the_database_refuses_edits(hub, creds):
    await activity(hub, creds)
    async with hub.deps.uow() as uow:
        result = await verify_audit(uow)
        actions = {r.action for r in await uow.audit.search()}
    assert result.ok and result.rows >= 8
    assert {"event.accepted", "delivery.delivered", "consent.created",
            "credential.issued"} <= actions
    with pytest.raises(DBAPIError, match="append-only"):
        await sql(hub, "UPDATE audit SET actor = 'someone' WHERE seq = 3")
    with pytest.raises(DBAPIError, match="append-only"):
        await sql(hub, "DELETE FROM audit WHERE seq = 3")


async def test_an_edited_row_breaks_the_chain_at_that_row(hub, creds):
    await activity(hub, creds)
    # someone with the database's files or superuser bypasses the guard
    await sql(hub, bypass_guard(hub, "update"), """UPDATE audit SET detail = '{"recipient": "EMP-OTHER"}' WHERE seq = 7""")
    async with hub.deps.uow() as uow:
        result = await verify_audit(uow)
    assert not result.ok and result.broken.seq == 7 and "altered" in result.broken.problem
    assert result.rows == 6


async def test_a_removed_row_breaks_the_chain_and_the_cli_says_where(hub, creds, settings):
    await activity(hub, creds)
    await sql(hub, bypass_guard(hub, "delete"), "DELETE FROM audit WHERE seq = 5")
    env = {**os.environ, "HUB_DATA_DIR": str(settings.data_dir)}
    if settings.database_url:
        env["HUB_DATABASE_URL"] = settings.database_url
    out = subprocess.run([str(Path(sys.executable).parent / "hub"), "audit", "verify"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "audit row 5: missing" in out.stderr


async def test_audit_rows_hold_no_personal_data(hub, creds):
    await activity(hub, creds)
    dump = "\n".join(str(row) for row in await sql(hub, "SELECT * FROM audit"))
    for personal in (NHS, "943 476 5919", "Smith", "Jane", "1984-03-02", "LS1 4AP", "Lumbar"):
        assert personal not in dump


async def test_audit_events_as_fhir_searchable_by_patient_agent_type_and_date(hub, creds):
    await activity(hub, creds)
    ig = await creds.issue("ig-auditor")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=hub.api), base_url="http://hub") as http:
        r = await http.get("/fhir/AuditEvent", headers=bearer(ig), params={"patient": NHS})
        assert r.status_code == 200
        bundle = r.json()
        assert bundle["total"] >= 3 + 3  # three events, each accepted and delivered (to two recipients)
        for entry in bundle["entry"]:
            AuditEvent.model_validate(entry["resource"])
        assert NHS not in r.text
        r = await http.get("/fhir/AuditEvent", headers=bearer(ig),
                           params={"patient": f"https://fhir.nhs.uk/Id/nhs-number|{NHS}", "type": "delivery.delivered"})
        delivered = r.json()["entry"]
        assert {e["resource"]["subtype"][0]["code"] for e in delivered} == {"delivery.delivered"}
        deliveries = [ent["what"]["identifier"]["value"] for e in delivered for ent in e["resource"]["entity"]
                      if ent["name"] == "delivery"]
        assert len(deliveries) == len(set(deliveries)) == 6  # three events, two recipients each
        r = await http.get("/fhir/AuditEvent", headers=bearer(ig), params={"type": "credential", "agent": "cli"})
        assert {e["resource"]["subtype"][0]["code"] for e in r.json()["entry"]} == {"credential.issued"}
        r = await http.get("/fhir/AuditEvent", headers=bearer(ig), params={"date": "ge2030-01-01"})
        assert r.json()["total"] == 0
        r = await http.get("/fhir/AuditEvent", headers=bearer(ig),
                           params={"date": ["ge2026-11-21", "lt2026-11-22"], "type": "event"})
        assert r.json()["total"] == 3


async def test_each_audit_event_carries_what_recomputes_its_hash(hub, creds):
    """An auditor given one person's AuditEvents (not the whole trail) can still
    check each: it carries the hash of the row before it, and the row's own hash."""
    await activity(hub, creds)
    ig = await creds.issue("ig-auditor")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=hub.api), base_url="http://hub") as http:
        r = await http.get("/fhir/AuditEvent", headers=bearer(ig), params={"patient": NHS})
    hashes = {}
    for e in r.json()["entry"]:
        (row,) = [ent for ent in e["resource"]["entity"] if ent["name"] == "audit-row"]
        d = {x["type"]: x["valueString"] for x in row["detail"]}
        hashes[int(row["what"]["identifier"]["value"])] = (bytes.fromhex(d["prev_hash"]), bytes.fromhex(d["hash"]))
    async with hub.deps.uow() as uow:
        stored = {x.seq: x for x in await uow.audit.search(limit=5000)}
    for seq, (prev, digest) in hashes.items():
        assert chain_hash(prev, dict(stored[seq]._mapping)) == digest == bytes(stored[seq].hash)
    assert len(hashes) >= 6


async def test_rows_inserted_in_bulk_hold_times_as_every_other_statement_writes_them(hub, creds):
    """store.insert_many binds through each column type's dialect form: on SQLite a
    whole-second time is written with its microseconds, as SQLAlchemy writes it
    elsewhere, so `>=` and `<` on the stored text compare as times."""
    from sqlalchemy import select

    from hub import tables as t
    from hub.pipeline import process_inbound
    from hub.streams import inbound_subject
    from tests.conftest import fit_note
    from tests.test_fit_note_flow import record_consent

    await record_consent(hub, creds)
    out = await process_inbound(hub.deps, inbound_subject("fit-note", "B86001"), orjson.dumps(fit_note()))
    now = hub.clock.now()
    assert now.microsecond == 0  # the test clock is on a whole second
    async with hub.deps.uow() as uow:
        assert len(await uow.decisions.search(event_id=out.event_id, since=now)) == 8  # `>=` its own instant
        assert await uow.decisions.search(event_id=out.event_id, until=now) == []
        assert await uow.audit.search(action_prefix="event.accepted", since=now)
        if uow.conn.dialect.name == "sqlite":
            (text,) = (await uow.conn.execute(select(t.events.c.received_at.cast(t.String)).where(
                t.events.c.event_id == out.event_id))).one()
            assert text == now.strftime("%Y-%m-%d %H:%M:%S.%f")
