"""/metrics in Prometheus format, and structured JSON logs without personal data."""
from __future__ import annotations

import json
import logging

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from hub.logs import JsonFormatter
from tests.conftest import fit_note
from tests.natsutil import wait_until
from tests.test_fit_note_flow import publish, record_consent, settled
from tests.test_http_api import bearer


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def dead_lettered(hub, n: int = 1) -> None:
    async def check() -> bool:
        async with hub.deps.uow() as uow:
            return len(await uow.dead_letters.search()) >= n
    await wait_until(check, 10, f"{n} dead letters")


async def scrape(http, cred) -> dict:
    r = await http.get("/metrics", headers=bearer(cred))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return samples(r.text)


async def test_metrics_count_what_the_hub_did(hub, creds):
    await record_consent(hub, creds)
    admin, gp = await creds.issue("admin"), await creds.issue("publisher", "B86001")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=hub.api), base_url="http://hub") as http:
        assert (await http.get("/metrics")).status_code == 401
        assert (await http.get("/metrics", headers=bearer(gp))).status_code == 403
        before = await scrape(http, admin)
        await publish(hub, gp, fit_note())
        await publish(hub, gp, fit_note(**{"fit_note.patient.nhs_number": "123"}))
        await settled(hub, 1)
        await dead_lettered(hub)
        after = await scrape(http, admin)

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("hub_events_in_total", kind="fit-note", outcome="accepted") == 1
    assert delta("hub_events_in_total", kind="fit-note", outcome="dead-lettered") == 1
    assert delta("hub_dead_letters_total", source="input", kind="fit-note") == 1
    assert delta("hub_deliveries_made_total", recipient_type="employer", channel="broker") == 1
    assert delta("hub_deliveries_made_total", recipient_type="oh-provider", channel="broker") == 1
    assert delta("hub_decisions_total", outcome="deny", rule="issuer-withheld") == 1
    assert delta("hub_decisions_total", outcome="permit", rule="consent-permit") == 6
    assert delta("hub_pipeline_seconds_count") == 2
    assert delta("hub_end_to_end_seconds_count") == 2
    assert after[("hub_deliveries", (("recipient_type", "employer"), ("state", "delivered")))] == 1
    assert after[("hub_retry_queue_depth", ())] == 0
    assert ("hub_consumer_lag", (("consumer", "hub-inbound"), ("kind", "pending"))) in after
    assert ("hub_consumer_lag", (("consumer", "deliver-EMP-ACME"), ("kind", "pending"))) in after
    assert after[("hub_consumer_lag", (("consumer", "deliver-EMP-ACME"), ("kind", "pending")))] == 1


def test_library_debug_logs_are_held_back_whatever_the_level():
    from hub.logs import configure

    configure("DEBUG", "json")
    try:
        for library in ("aiosqlite", "sqlalchemy", "nats", "httpx"):
            assert logging.getLogger(library).getEffectiveLevel() == logging.WARNING
        assert logging.getLogger("hub.pipeline").getEffectiveLevel() == logging.DEBUG
    finally:
        logging.getLogger().handlers.clear()
        logging.getLogger().setLevel(logging.WARNING)


def test_json_logs_carry_ids_as_fields():
    record = logging.makeLogRecord({"name": "hub.x", "levelname": "INFO", "msg": "delivery %s made",
                                    "args": ("abc",), "event_id": "e-1", "delivery_id": "e-1:EMP-ACME"})
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "delivery abc made" and line["event_id"] == "e-1"
    assert line["delivery_id"] == "e-1:EMP-ACME" and line["level"] == "info" and line["ts"].endswith("Z")


async def test_logs_of_a_run_never_hold_personal_data(hub, creds, caplog):
    caplog.set_level(logging.DEBUG, logger="hub")
    await record_consent(hub, creds)
    gp = await creds.issue("publisher", "B86001")
    await publish(hub, gp, fit_note())
    bad = fit_note(**{"fit_note.patient.nhs_number": "9434765918", "fit_note.patient.postcode": "XX"})
    await publish(hub, gp, orjson.dumps(bad))
    await settled(hub, 1)
    await dead_lettered(hub)
    text = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    assert "dead-lettered" in text
    for personal in ("9434765919", "9434765918", "943 476 5919", "Smith", "1984-03-02", "LS1 4AP", "Lumbar"):
        assert personal not in text


async def test_a_subjects_unknown_kind_is_named_unknown_in_metrics_logs_and_audit(hub, creds, caplog):
    """The kind token is the publisher's own text: one the contract does not know
    (here, personal data) reaches no metric label, log line or audit row."""
    caplog.set_level(logging.DEBUG, logger="hub")
    admin, gp = await creds.issue("admin"), await creds.issue("publisher", "B86001")
    token = "jane-smith-9434765919"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=hub.api), base_url="http://hub") as http:
        before = await scrape(http, admin)
        await publish(hub, gp, fit_note(), kind=token)
        await dead_lettered(hub)
        after = await scrape(http, admin)
    assert after.get(("hub_events_in_total", (("kind", "unknown"), ("outcome", "dead-lettered")))) == \
        before.get(("hub_events_in_total", (("kind", "unknown"), ("outcome", "dead-lettered"))), 0) + 1
    assert not any(token in str(labels) for _name, labels in after)
    async with hub.deps.uow() as uow:
        (letter,) = await uow.dead_letters.search()
        audit = await uow.audit.search(action="inbound.dead-lettered")
    assert letter.kind == "unknown" and [r.detail["kind"] for r in audit] == ["unknown"]
    assert token not in "\n".join(JsonFormatter().format(r) for r in caplog.records)
