"""Break-glass, disclosures and explained decisions over the IG API."""
from __future__ import annotations

import csv
import io
from datetime import timedelta

import httpx
import orjson
import pytest

from tests.conftest import fit_note, receive
from tests.test_fit_note_flow import record_consent, settled
from tests.test_http_api import bearer

NHS = "9434765919"


@pytest.fixture
async def http(hub):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=hub.api), base_url="http://hub") as client:
        yield client


async def publish(http, gp, msg=None) -> str:
    r = await http.post("/api/v1/inbound/fit-note", headers=bearer(gp), content=orjson.dumps(msg or fit_note()))
    assert r.status_code == 202
    return r.json()["event_id"]


async def test_break_glass_lets_a_delivery_through_is_audited_and_reviewed(hub, http, creds):
    ig, gp, acme = await creds.issue("ig-auditor"), await creds.issue("publisher", "B86001"), \
        await creds.issue("recipient", "EMP-ACME")
    expires = hub.clock.now() + timedelta(hours=24)
    body = {"nhs_number": NHS, "recipient_id": "EMP-ACME", "purpose": "employment-support",
            "justification": "Forklift driver: fitness to operate machinery must reach the employer today",
            "expires_at": expires.isoformat()}
    r = await http.post("/api/v1/break-glass", headers=bearer(ig), content=orjson.dumps(body))
    assert r.status_code == 201
    bg_id = r.json()["break_glass_id"]
    event_id = await publish(http, gp)  # no consent on record at all
    await settled(hub, 1)
    (got,) = await receive(hub, acme, "EMP-ACME", expect=1)
    text = got.data.decode()
    assert "Lumbar back strain" not in text and NHS not in text  # the maxima still hold
    r = await http.get("/api/v1/decisions", headers=bearer(ig), params={"nhs_number": NHS, "recipient": "EMP-ACME"})
    by_cat = {d["category"]: d for d in r.json()["decisions"]}
    assert by_cat["identity"]["rule"] == "break-glass"
    assert by_cat["identity"]["reason"].startswith(f"Permitted by break-glass {bg_id} until ")
    assert "no consent on record" in by_cat["identity"]["reason"]
    assert by_cat["diagnosis"]["outcome"] == "deny"  # the issuer withheld it: break-glass cannot add it
    # the OH provider was not named by the break-glass: nothing for it
    async with hub.deps.uow() as uow:
        states = {d.recipient_id: d.state for d in await uow.deliveries.search(event_id=event_id)}
        assert await uow.audit.count(action="break-glass.used", ref=bg_id) == 1
    assert states == {"EMP-ACME": "delivered", "OHP-HEALTHWORKS": "withheld"}

    queue = (await http.get("/api/v1/break-glass", headers=bearer(ig), params={"reviewed": "false"})).json()
    (item,) = queue["break_glass"]
    assert item["break_glass_id"] == bg_id and item["uses"] == 1
    r = await http.post(f"/api/v1/break-glass/{bg_id}/review", headers=bearer(ig),
                        content=orjson.dumps({"note": "Justified: safety-critical role, confirmed with OH lead"}))
    assert r.status_code == 200 and r.json()["reviewed_by"] == ig["credential_id"]
    assert (await http.get("/api/v1/break-glass", headers=bearer(ig), params={"reviewed": "false"})
            ).json()["break_glass"] == []
    r = await http.post(f"/api/v1/break-glass/{bg_id}/review", headers=bearer(ig), content=b'{"note": "again"}')
    assert r.status_code == 409


async def test_break_glass_is_limited_to_72_hours_and_lapses(hub, http, creds, clock):
    ig, gp = await creds.issue("ig-auditor"), await creds.issue("publisher", "B86001")
    body = {"nhs_number": NHS, "recipient_id": "EMP-ACME", "purpose": "employment-support",
            "justification": "Safety-critical role: employer must know of the restriction",
            "expires_at": (clock.now() + timedelta(hours=73)).isoformat()}
    r = await http.post("/api/v1/break-glass", headers=bearer(ig), content=orjson.dumps(body))
    assert r.status_code == 422 and "72 hours" in r.text
    r = await http.post("/api/v1/break-glass", headers=bearer(ig), content=orjson.dumps(
        {**body, "expires_at": (clock.now() + timedelta(hours=2)).isoformat()}))
    assert r.status_code == 201
    gp_pub = await creds.issue("publisher", "B86001")
    assert gp_pub
    clock.advance(hours=3)
    event_id = await publish(http, gp)
    await settled(hub, 1)
    async with hub.deps.uow() as uow:
        (acme,) = [d for d in await uow.deliveries.search(event_id=event_id) if d.recipient_id == "EMP-ACME"]
    assert acme.state == "withheld"
    r = await http.post("/api/v1/break-glass", headers=bearer(gp), content=orjson.dumps(body))
    assert r.status_code == 403  # publishers cannot break the glass


async def test_disclosures_list_every_delivery_with_its_consent_and_download_as_csv(hub, http, creds):
    consent_id = await record_consent(hub, creds)
    ig, gp = await creds.issue("ig-auditor"), await creds.issue("publisher", "B86001")
    event_id = await publish(http, gp)
    await settled(hub, 1)
    r = await http.get("/api/v1/disclosures", headers=bearer(ig), params={"nhs_number": NHS})
    rows = r.json()["disclosures"]
    assert {(d["recipient_id"], tuple(d["categories"])) for d in rows} == {
        ("EMP-ACME", ("fitness-advice", "identity")),
        ("OHP-HEALTHWORKS", ("contact", "diagnosis", "fitness-advice", "identity")),
    }
    for d in rows:
        assert d["event_id"] == event_id and d["event_type"] == "fit-note-issued"
        assert d["consents"] == [consent_id] and d["delivered_at"] and d["decision_ids"]
    r = await http.get("/api/v1/disclosures.csv", headers=bearer(ig), params={"nhs_number": NHS})
    assert r.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert {t["recipient_name"] for t in table} == {"Acme Logistics Ltd", "HealthWorks Occupational Health"}
    assert all(t["consents"] == consent_id for t in table)
    # the explanation of one of the decisions names the consent version it used
    decision_id = rows[0]["decision_ids"][0]
    r = await http.get(f"/api/v1/decisions/{decision_id}", headers=bearer(ig))
    explained = r.json()
    assert explained["outcome"] == "permit" and explained["reason"].startswith(f"Permitted: consent {consent_id}")
    assert explained["consents"][0]["resource"]["id"] == consent_id
