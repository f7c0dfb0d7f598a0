"""The fit-note path end to end on a real nats-server and a real SQLite file:
publish as the GP on the broker, read as each recipient from its own consumer."""
from __future__ import annotations

import asyncio
import json

import nats
import orjson
import pytest
from sqlalchemy import func, select

from hub import tables as t
from hub.streams import DLQ_STREAM, inbound_subject
from schemas.fhir import bundle_categories
from schemas.vocab import CATEGORY_SYSTEM
from tests.conftest import connect_as, example, fit_note, receive
from tests.natsutil import wait_until

NHS = "9434765919"


def categories(bundle: dict) -> set[str]:
    return set(bundle_categories(bundle))


async def record_consent(hub, creds, consent: dict | None = None) -> str:
    from hub.consents import create

    async with hub.deps.uow() as uow:
        resource = await create(uow, hub.audit, consent or example("consent"), now=hub.clock.now(), actor="test")
        await uow.commit()
    return resource["id"]


async def publish(hub, cred, msg: dict | bytes, org: str = "B86001", kind: str = "fit-note") -> None:
    nc = await connect_as(hub, cred, org)
    try:
        data = msg if isinstance(msg, bytes) else orjson.dumps(msg)
        await nc.jetstream().publish(inbound_subject(kind, org), data, stream="HUB_INBOUND")
    finally:
        await nc.close()


async def settled(hub, n_events: int, timeout: float = 10.0) -> None:
    """Wait until n events are committed and none of their deliveries is still pending."""
    async def done() -> bool:
        async with hub.deps.uow() as uow:
            events = (await uow.conn.execute(select(func.count()).select_from(t.events))).scalar_one()
            pending = (await uow.conn.execute(
                select(func.count()).select_from(t.deliveries).where(t.deliveries.c.state == "pending"))).scalar_one()
        return events >= n_events and pending == 0
    await wait_until(done, timeout, f"{n_events} events settled")


async def count(hub, table) -> int:
    async with hub.deps.uow() as uow:
        return (await uow.conn.execute(select(func.count()).select_from(table))).scalar_one()


@pytest.fixture
async def gp(creds):
    return await creds.issue("publisher", "B86001")


@pytest.fixture
async def acme(creds):
    return await creds.issue("recipient", "EMP-ACME")


@pytest.fixture
async def ohp(creds):
    return await creds.issue("recipient", "OHP-HEALTHWORKS")


@pytest.fixture
async def jcp(creds):
    return await creds.issue("recipient", "JCP-LEEDS")


async def test_may_be_fit_note_reaches_employer_and_its_oh_provider_cut_down(hub, creds, gp, acme, ohp):
    await record_consent(hub, creds)
    msg = fit_note()
    await publish(hub, gp, msg)
    await settled(hub, 1)

    got_acme = await receive(hub, acme, "EMP-ACME", expect=1)
    got_ohp = await receive(hub, ohp, "OHP-HEALTHWORKS", expect=1)
    assert len(got_acme) == 1 and len(got_ohp) == 1

    employer = orjson.loads(got_acme[0].data)
    event_id = employer["identifier"]["value"]
    assert got_acme[0].headers["Nats-Msg-Id"] == f"{event_id}:EMP-ACME"
    assert got_ohp[0].headers["Nats-Msg-Id"] == f"{event_id}:OHP-HEALTHWORKS"
    assert employer["entry"][0]["resource"]["resourceType"] == "MessageHeader"
    assert employer["entry"][0]["resource"]["destination"][0]["receiver"]["identifier"]["value"] == "EMP-ACME"
    # consent gives Acme identity, fitness-advice, adjustments; the issuer withheld the diagnosis
    assert categories(employer) == {"identity", "fitness-advice"}
    text = got_acme[0].data.decode()
    for secret in (NHS, "1984-03-02", "LS1 4AP", "Lumbar back strain", "209565008"):
        assert secret not in text
    assert "Smith" in text

    provider = orjson.loads(got_ohp[0].data)
    assert categories(provider) == {"identity", "contact", "fitness-advice", "diagnosis"}
    assert NHS in got_ohp[0].data.decode() and "Lumbar back strain" in got_ohp[0].data.decode()


async def test_redelivered_or_resent_message_changes_nothing(hub, creds, gp, acme):
    await record_consent(hub, creds)
    msg = fit_note()
    await publish(hub, gp, msg)
    await settled(hub, 1)
    before = {tb.name: await count(hub, tb) for tb in (t.events, t.decisions, t.deliveries, t.audit)}
    # the same note again under a new message id (past the stream's own dedupe), and the very same bytes
    await publish(hub, gp, {**msg, "message_id": "resend-1"})
    await publish(hub, gp, msg)
    await asyncio.sleep(1.0)
    after = {tb.name: await count(hub, tb) for tb in (t.events, t.decisions, t.deliveries, t.audit)}
    assert after == before
    assert len(await receive(hub, acme, "EMP-ACME", expect=1)) == 1


async def test_unemployed_person_goes_to_jobcentre_only_with_consent(hub, creds, gp, jcp):
    await record_consent(hub, creds)  # permits employment-support and occupational-health, not benefit-claim
    msg = fit_note(**{"fit_note.employment": {"status": "unemployed"}, "fit_note.assessment": "not-fit",
                      "fit_note.may_be_fit_advice": None})
    msg["fit_note"].pop("may_be_fit_advice")
    await publish(hub, gp, msg)
    await settled(hub, 1)
    assert await receive(hub, jcp, "JCP-LEEDS", expect=0) == []
    async with hub.deps.uow() as uow:
        (delivery,) = await uow.deliveries.search(nhs_number=NHS)
        decisions = await uow.decisions.search(nhs_number=NHS, recipient_id="JCP-LEEDS")
    assert delivery.recipient_id == "JCP-LEEDS" and delivery.state == "withheld"
    reasons = {d.category: d.reason for d in decisions}
    (consent_id,) = {b["consent_id"] for d in decisions for b in d.basis}
    assert reasons["identity"] == (
        f"Denied: consent {consent_id} does not allow benefit-claim / identity (its default is deny)")
    assert {d.category: d.rule for d in decisions} == {
        "identity": "default-deny", "fitness-advice": "default-deny", "diagnosis": "default-deny",
        "contact": "recipient-maximum",  # a Jobcentre never receives contact details (§5)
    }
    assert all(d.outcome == "deny" for d in decisions)

    # a consent for benefit-claim lets the next note through
    consent = example("consent")
    consent["provision"]["provision"].append({
        "type": "permit",
        "purpose": [{"system": "https://hub.example.org/fhir/CodeSystem/purpose", "code": "benefit-claim"}],
        "securityLabel": [{"system": CATEGORY_SYSTEM, "code": c} for c in ("identity", "fitness-advice")],
    })
    await record_consent(hub, creds, consent)
    msg2 = fit_note(**{"fit_note.employment": {"status": "unemployed"}, "fit_note.assessment": "not-fit"})
    msg2["fit_note"].pop("may_be_fit_advice")
    await publish(hub, gp, msg2)
    await settled(hub, 2)
    (got,) = await receive(hub, jcp, "JCP-LEEDS", expect=1)
    # the jobcentre may see a diagnosis at most, but this consent does not allow it
    assert categories(orjson.loads(got.data)) == {"identity", "fitness-advice"}


async def test_employer_gets_diagnosis_only_if_issuer_allows_and_consent_permits(hub, creds, gp, acme):
    consent = example("consent")
    consent["provision"]["provision"][0]["securityLabel"].append(
        {"system": CATEGORY_SYSTEM, "code": "diagnosis"})
    await record_consent(hub, creds, consent)
    withheld = fit_note()  # share_with_employer: false
    allowed = fit_note(**{"fit_note.condition.share_with_employer": True})
    await publish(hub, gp, withheld)
    await publish(hub, gp, allowed)
    await settled(hub, 2)
    got = await receive(hub, acme, "EMP-ACME", expect=2)
    by_note = {}
    for m in got:
        b = orjson.loads(m.data)
        by_note[m.data.count(b"Lumbar back strain")] = categories(b)
    assert by_note == {0: {"identity", "fitness-advice"}, 1: {"identity", "fitness-advice", "diagnosis"}}
    for m in got:
        for secret in (NHS.encode(), b"1984-03-02", b"LS1 4AP"):
            assert secret not in m.data


async def test_no_consent_means_nothing_is_delivered_and_each_refusal_is_explained(hub, gp, acme, ohp):
    await publish(hub, gp, fit_note())
    await settled(hub, 1)
    assert await receive(hub, acme, "EMP-ACME", expect=0) == []
    assert await receive(hub, ohp, "OHP-HEALTHWORKS", expect=0) == []
    async with hub.deps.uow() as uow:
        rows = await uow.deliveries.search(nhs_number=NHS)
        decisions = await uow.decisions.search(nhs_number=NHS)
    assert {(r.recipient_id, r.state) for r in rows} == {("EMP-ACME", "withheld"), ("OHP-HEALTHWORKS", "withheld")}
    employer_diag = next(d for d in decisions if d.recipient_id == "EMP-ACME" and d.category == "diagnosis")
    assert employer_diag.rule == "issuer-withheld"
    assert all(d.outcome == "deny" for d in decisions)


async def test_withdrawn_consent_stops_later_deliveries(hub, creds, gp, acme):
    from hub.consents import withdraw

    consent_id = await record_consent(hub, creds)
    await publish(hub, gp, fit_note())
    await settled(hub, 1)
    assert len(await receive(hub, acme, "EMP-ACME", expect=1)) == 1
    async with hub.deps.uow() as uow:
        await withdraw(uow, hub.audit, consent_id, now=hub.clock.now(), actor="test")
        await uow.commit()
    await publish(hub, gp, fit_note())
    await settled(hub, 2)
    assert await receive(hub, acme, "EMP-ACME", expect=0) == []
    async with hub.deps.uow() as uow:
        decisions = await uow.decisions.search(nhs_number=NHS, recipient_id="EMP-ACME", outcome="deny")
    assert any(d.rule == "consent-withdrawn" and consent_id in d.reason for d in decisions)


async def test_unknown_employer_is_recorded_as_unroutable_not_an_error(hub, creds, gp):
    await record_consent(hub, creds)
    await publish(hub, gp, fit_note(**{"fit_note.employment.employer_id": "EMP-NOT-CONNECTED"}))
    await settled(hub, 1)
    async with hub.deps.uow() as uow:
        (row,) = await uow.unroutable.search()
        assert await uow.dead_letters.search() == []
    assert row.org_id == "EMP-NOT-CONNECTED" and row.role == "employer"
    assert "not in the directory" in row.reason


async def test_bad_message_is_dead_lettered_with_pointers_and_the_next_one_flows(hub, creds, gp, acme):
    await record_consent(hub, creds)
    nc = await connect_as(hub, gp, "B86001")
    # a hub-side subscriber to the DLQ stream, as an operator would have
    hub_nc = await nats.connect(hub.settings.broker_url, user=hub.identity.user, password=hub.identity.password)
    try:
        bad = fit_note(**{"fit_note.patient.nhs_number": "9434765918"})
        good = fit_note()
        js = nc.jetstream()
        await js.publish(inbound_subject("fit-note", "B86001"), orjson.dumps(bad), stream="HUB_INBOUND")
        await js.publish(inbound_subject("fit-note", "B86001"), orjson.dumps(good), stream="HUB_INBOUND")
        await settled(hub, 1)
        assert len(await receive(hub, acme, "EMP-ACME", expect=1)) == 1

        async def dead_letter_published() -> bool:
            info = await hub_nc.jetstream().stream_info(DLQ_STREAM)
            return info.state.messages == 1
        await wait_until(dead_letter_published, 5, "dead letter on hub.dlq.fit-note")
        sub = await hub_nc.jetstream().pull_subscribe("hub.dlq.>", durable=None, stream=DLQ_STREAM)
        (dl,) = await sub.fetch(1, timeout=2)
        assert dl.subject == "hub.dlq.fit-note"
        assert dl.data == orjson.dumps(bad)  # unchanged
        errors = json.loads(dl.headers["Hub-Errors"])
        assert errors == [{"pointer": "/fit_note/patient/nhs_number",
                           "message": "is not a valid NHS number: the check digit does not match"}]
        async with hub.deps.uow() as uow:
            (row,) = await uow.dead_letters.search()
        assert row.errors == errors and row.status == "open" and row.payload == orjson.dumps(bad)
    finally:
        await nc.close()
        await hub_nc.close()


async def test_message_whose_subject_names_another_org_is_refused(hub, creds, gp):
    """The subject org and source.org_id must agree (the broker stops a
    publisher using another org's subject; this is the hub's own check)."""
    from hub.pipeline import process_inbound

    msg = fit_note(**{"source.org_id": "EMP-ACME"})
    out = await process_inbound(hub.deps, inbound_subject("fit-note", "B86001"), orjson.dumps(msg))
    assert out.outcome == "dead-lettered"
    assert [e.pointer for e in out.errors] == ["/source/org_id"]


async def test_what_a_recipient_receives_is_valid_fhir_r4b(hub, creds, gp, acme, ohp):
    from fhir.resources.R4B.bundle import Bundle

    await record_consent(hub, creds)
    await publish(hub, gp, fit_note())
    await settled(hub, 1)
    for cred, org in ((acme, "EMP-ACME"), (ohp, "OHP-HEALTHWORKS")):
        (msg,) = await receive(hub, cred, org, expect=1)
        bundle = Bundle.model_validate_json(msg.data)
        assert bundle.type == "message" and bundle.entry[0].resource.get_resource_type() == "MessageHeader"


async def test_same_note_id_and_version_with_different_content_is_refused_not_merged(hub, creds, gp):
    from hub.pipeline import process_inbound

    msg = fit_note()
    first = await process_inbound(hub.deps, inbound_subject("fit-note", "B86001"), orjson.dumps(msg))
    altered = {**msg, "message_id": "another", "fit_note": {**msg["fit_note"], "assessment": "not-fit"}}
    altered["fit_note"].pop("may_be_fit_advice")
    second = await process_inbound(hub.deps, inbound_subject("fit-note", "B86001"), orjson.dumps(altered))
    assert first.outcome == "accepted"
    assert second.outcome == "dead-lettered"
    assert [e.as_dict() for e in second.errors] == [{
        "pointer": "/fit_note/id",
        "message": "an earlier message with this id and version had different content; "
                   "send a new version to correct it"}]
    # a correction as version 2 is an event of its own: fit-note-superseded
    corrected = {**altered, "message_id": "v2", "fit_note": {**altered["fit_note"], "version": 2}}
    third = await process_inbound(hub.deps, inbound_subject("fit-note", "B86001"), orjson.dumps(corrected))
    assert third.outcome == "accepted" and third.event_id != first.event_id
    async with hub.deps.uow() as uow:
        assert (await uow.events.get(third.event_id)).event_type == "fit-note-superseded"
