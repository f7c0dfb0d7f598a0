"""The HTTP API (contract §9) against the real app, broker and database."""
from __future__ import annotations

import httpx
import orjson
import pytest

from tests.conftest import example, fit_note, receive
from tests.natsutil import wait_until
from tests.test_fit_note_flow import settled

NHS = "9434765919"


@pytest.fixture
async def http(hub):
    transport = httpx.ASGITransport(app=hub.api)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        yield client


def bearer(cred: dict) -> dict:
    return {"Authorization": f"Bearer {cred['http_token']}"}


async def test_health_needs_no_credential_and_everything_else_does(http):
    assert (await http.get("/health")).json() == {"status": "ok"}
    for method, path in [("GET", "/api/v1/decisions"), ("GET", "/fhir/Consent/C-1"),
                         ("POST", "/api/v1/inbound/fit-note"), ("GET", "/api/v1/dead-letters")]:
        r = await http.request(method, path)
        assert r.status_code == 401, path
    r = await http.get("/api/v1/decisions", headers={"Authorization": "Bearer hub_not-a-real-token"})
    assert r.status_code == 401


async def test_roles_are_enforced(http, creds):
    gp = await creds.issue("publisher", "B86001")
    r = await http.get("/api/v1/decisions", headers=bearer(gp))
    assert r.status_code == 403
    ig = await creds.issue("ig-auditor")
    r = await http.post("/api/v1/inbound/fit-note", headers=bearer(ig), content=orjson.dumps(fit_note()))
    assert r.status_code == 403


async def test_inbound_over_http_is_held_then_delivered(hub, http, creds):
    gp = await creds.issue("publisher", "B86001")
    acme = await creds.issue("recipient", "EMP-ACME")
    cc = await creds.issue("consent-client")
    r = await http.post("/fhir/Consent", headers=bearer(cc), content=orjson.dumps(example("consent")))
    assert r.status_code == 201
    msg = fit_note()
    r = await http.post("/api/v1/inbound/fit-note", headers=bearer(gp), content=orjson.dumps(msg))
    assert r.status_code == 202
    event_id = r.json()["event_id"]
    await settled(hub, 1)
    (got,) = await receive(hub, acme, "EMP-ACME", expect=1)
    assert got.headers["Nats-Msg-Id"] == f"{event_id}:EMP-ACME"
    # the same message again: same event id, nothing new
    r = await http.post("/api/v1/inbound/fit-note", headers=bearer(gp), content=orjson.dumps(msg))
    assert r.status_code == 202 and r.json()["event_id"] == event_id


async def test_inbound_over_http_refuses_bad_input_with_pointers_and_keeps_it(http, creds):
    gp = await creds.issue("publisher", "B86001")
    ig = await creds.issue("ig-auditor")
    bad = fit_note(**{"fit_note.assessment": "maybe", "fit_note.patient.postcode": "NOT A POSTCODE"})
    r = await http.post("/api/v1/inbound/fit-note", headers=bearer(gp), content=orjson.dumps(bad))
    assert r.status_code == 422
    body = r.json()
    pointers = sorted(e["pointer"] for e in body["errors"])
    assert pointers == ["/fit_note/assessment", "/fit_note/patient/postcode"]
    assert "NOT A POSTCODE" not in r.text and "maybe" not in r.text
    r = await http.get("/api/v1/dead-letters", headers=bearer(ig))
    (dl,) = r.json()["dead_letters"]
    assert dl["dead_letter_id"] == body["dead_letter_id"] and dl["via"] == "http" and dl["status"] == "open"
    assert sorted(e["pointer"] for e in dl["errors"]) == pointers


async def test_inbound_for_another_org_is_forbidden(http, creds):
    gp = await creds.issue("publisher", "B86001")
    msg = fit_note(**{"source.org_id": "EMP-ACME"})
    r = await http.post("/api/v1/inbound/fit-note", headers=bearer(gp), content=orjson.dumps(msg))
    assert r.status_code == 403
    assert r.json() == {"errors": [{"pointer": "/source/org_id",
                                    "message": "does not match the credential's organisation"}]}


async def test_inbound_size_is_capped(http, creds):
    gp = await creds.issue("publisher", "B86001")
    r = await http.post("/api/v1/inbound/fit-note", headers=bearer(gp), content=b"{" + b" " * 300_000 + b"}")
    assert r.status_code == 413


async def test_consent_create_read_search_withdraw(http, creds):
    cc = await creds.issue("consent-client")
    h = bearer(cc)
    r = await http.post("/fhir/Consent", headers=h, content=orjson.dumps(example("consent")))
    assert r.status_code == 201
    created = r.json()
    cid = created["id"]
    assert created["meta"]["versionId"] == "1" and r.headers["location"].startswith(f"/fhir/Consent/{cid}")
    assert (await http.get(f"/fhir/Consent/{cid}", headers=h)).json()["status"] == "active"
    for param in ("patient:identifier", "patient.identifier"):
        r = await http.get("/fhir/Consent", headers=h,
                           params={param: f"https://fhir.nhs.uk/Id/nhs-number|{NHS}"})
        assert r.status_code == 200 and r.json()["total"] == 1 and r.json()["entry"][0]["resource"]["id"] == cid
    r = await http.post(f"/fhir/Consent/{cid}/$withdraw", headers=h)
    assert r.status_code == 200 and r.json()["status"] == "inactive" and r.json()["meta"]["versionId"] == "2"
    # PUT with status inactive is the other way to withdraw; a second withdrawal changes nothing
    r = await http.post(f"/fhir/Consent/{cid}/$withdraw", headers=h)
    assert r.json()["meta"]["versionId"] == "2"
    assert (await http.get("/fhir/Consent/C-missing", headers=h)).status_code == 404


async def test_consent_put_inactive_withdraws(hub, http, creds):
    cc = await creds.issue("consent-client")
    h = bearer(cc)
    cid = (await http.post("/fhir/Consent", headers=h, content=orjson.dumps(example("consent")))).json()["id"]
    body = {**example("consent"), "id": cid, "status": "inactive"}
    r = await http.put(f"/fhir/Consent/{cid}", headers=h, content=orjson.dumps(body))
    assert r.status_code == 200 and r.json()["status"] == "inactive"
    async with hub.deps.uow() as uow:
        row = await uow.consents.get(cid)
    assert row.withdrawn_at is not None and row.version == 2


async def test_invalid_consent_gets_operation_outcome_with_pointers(http, creds):
    cc = await creds.issue("consent-client")
    bad = example("consent")
    bad["provision"]["provision"][0]["purpose"][0]["code"] = "marketing"
    bad["patient"]["identifier"]["value"] = "1234567890"
    r = await http.post("/fhir/Consent", headers=bearer(cc), content=orjson.dumps(bad))
    assert r.status_code == 422
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    locations = sorted(i["location"][0] for i in outcome["issue"])
    assert locations == ["/patient/identifier/value", "/provision/provision/0/purpose/0/code"]
    assert "1234567890" not in r.text and "marketing" not in r.text


async def test_decisions_endpoint_explains_each_refusal(hub, http, creds):
    gp = await creds.issue("publisher", "B86001")
    ig = await creds.issue("ig-auditor")
    await http.post("/api/v1/inbound/fit-note", headers=bearer(gp), content=orjson.dumps(fit_note()))
    await settled(hub, 1)
    r = await http.get("/api/v1/decisions", headers=bearer(ig), params={"nhs_number": "943 476 5919",
                                                                        "recipient": "EMP-ACME", "outcome": "deny"})
    assert r.status_code == 200
    decisions = r.json()["decisions"]
    assert {d["category"] for d in decisions} == {"identity", "contact", "fitness-advice", "diagnosis"}
    by_cat = {d["category"]: d for d in decisions}
    assert by_cat["identity"]["reason"] == "Denied: no consent on record for employment-support / identity"
    assert by_cat["identity"]["purpose"] == "employment-support" and by_cat["identity"]["basis"] == []
    assert r.json()["truncated"] is False
    # fewer than match: the answer says so, and the rest follow from where it stopped
    r = await http.get("/api/v1/decisions", headers=bearer(ig), params={"nhs_number": "943 476 5919",
                                                                        "recipient": "EMP-ACME", "limit": 3})
    assert len(r.json()["decisions"]) == 3 and r.json()["truncated"] is True
    r = await http.get("/api/v1/decisions", headers=bearer(ig), params={"nhs_number": "123"})
    assert r.status_code == 422


async def test_dead_letter_fixed_and_resubmitted_is_processed_as_new_input(hub, http, creds):
    gp = await creds.issue("publisher", "B86001")
    ig = await creds.issue("ig-auditor")
    bad = fit_note(**{"fit_note.issuer.profession": "dentist"})
    r = await http.post("/api/v1/inbound/fit-note", headers=bearer(gp), content=orjson.dumps(bad))
    assert r.status_code == 422
    dl_id = r.json()["dead_letter_id"]
    r = await http.get(f"/api/v1/dead-letters/{dl_id}", headers=bearer(ig))
    assert orjson.loads(r.json()["payload"]) == bad
    fixed = {**bad, "fit_note": {**bad["fit_note"], "issuer": {**bad["fit_note"]["issuer"], "profession": "gp"}}}
    r = await http.post(f"/api/v1/dead-letters/{dl_id}/resubmit", headers=bearer(ig), content=orjson.dumps(fixed))
    assert r.status_code == 202
    await settled(hub, 1)
    async with hub.deps.uow() as uow:
        assert (await uow.dead_letters.get(dl_id)).status == "resubmitted"
        assert len(await uow.deliveries.search(nhs_number=NHS)) == 2
        assert await uow.audit.count(action="dead-letter.resubmitted") == 1
    r = await http.post("/api/v1/dead-letters/nope/resubmit", headers=bearer(ig))
    assert r.status_code == 404


async def test_dead_letter_resubmitted_unchanged_fails_again_and_reopens(hub, http, creds):
    gp = await creds.issue("publisher", "B86001")
    ig = await creds.issue("ig-auditor")
    bad = fit_note(**{"fit_note.period.end": "2026-11-01"})  # before its start
    dl_id = (await http.post("/api/v1/inbound/fit-note", headers=bearer(gp), content=orjson.dumps(bad))
             ).json()["dead_letter_id"]
    assert (await http.post(f"/api/v1/dead-letters/{dl_id}/resubmit", headers=bearer(ig))).status_code == 202

    async def reopened() -> bool:
        async with hub.deps.uow() as uow:
            return (await uow.dead_letters.get(dl_id)).status == "open"
    await wait_until(reopened, 5, "dead letter reopened after a failed resubmission")
    async with hub.deps.uow() as uow:
        assert len(await uow.dead_letters.search()) == 1
        assert await uow.deliveries.search(nhs_number=NHS) == []


async def test_ig_sees_the_chain_of_a_fit_note_and_its_replacement(hub, http, creds):
    gp = await creds.issue("publisher", "B86001")
    ig = await creds.issue("ig-auditor")
    first = fit_note()
    second = fit_note(**{"fit_note.replaces": first["fit_note"]["id"]})
    corrected = {**first, "message_id": "v2", "fit_note": {**first["fit_note"], "version": 2}}
    for msg in (first, second, corrected):
        assert (await http.post("/api/v1/inbound/fit-note", headers=bearer(gp), content=orjson.dumps(msg))
                ).status_code == 202
    await settled(hub, 3)
    r = await http.get("/api/v1/events", headers=bearer(ig), params={"nhs_number": NHS})
    chain = [(e["event_type"], e["document_id"], e["version"], e["replaces"]) for e in r.json()["events"]]
    assert sorted(chain, key=str) == sorted([
        ("fit-note-issued", first["fit_note"]["id"], 1, None),
        ("fit-note-superseded", second["fit_note"]["id"], 1, first["fit_note"]["id"]),
        ("fit-note-superseded", first["fit_note"]["id"], 2, None),
    ], key=str)
    assert "bundle" not in r.text and "Lumbar" not in r.text
