"""The webhook channel (§4): POST of the bundle with X-Request-ID, retried with
back-off on connection errors, timeouts, 5xx and 429 (Retry-After honoured),
not on other 4xx; a per-recipient retry budget after which the delivery is
dead-lettered; a slow webhook never delays others; an HMAC signature."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
from datetime import timedelta

import httpx
import orjson
import pytest
import yaml

from hub.bootstrap import Hub
from hub.directory import DEMO_DIRECTORY, parse_directory
from hub.pipeline import process_inbound
from hub.streams import inbound_subject
from schemas.vocab import CATEGORY_SYSTEM, PURPOSE_SYSTEM
from tests.conftest import example, fit_note, receive
from tests.natsutil import wait_until
from tests.test_fit_note_flow import record_consent
from tests.test_http_api import bearer
from tests.webhook_server import Reply, WebhookServer

CAFE = "EMP-CORNER-CAFE"
NHS = "9434765919"  # the example note's person


@pytest.fixture
async def webhook():
    server = WebhookServer()
    async with server.running():
        yield server


@pytest.fixture
async def hub(settings, clock, webhook, monkeypatch):
    monkeypatch.setenv("HUB_CAFE_WEBHOOK_SECRET", "s3cret-shared-with-the-cafe")
    data = yaml.safe_load(DEMO_DIRECTORY.read_text())
    for org in data["organisations"]:
        if org["id"] == CAFE:
            org["delivery"] = {"channel": "webhook", "url": webhook.url, "secret_env": "HUB_CAFE_WEBHOOK_SECRET",
                               "retry_budget_hours": 1}
    h = Hub(settings, clock=clock, directory=parse_directory(data))
    await h.start()
    try:
        yield h
    finally:
        await h.stop()


async def consent_for_both(hub) -> None:
    consent = example("consent")
    consent["provision"]["provision"].append({
        "type": "permit", "purpose": [{"system": PURPOSE_SYSTEM, "code": "employment-support"}],
        "securityLabel": [{"system": CATEGORY_SYSTEM, "code": c} for c in ("identity", "fitness-advice")]})
    await record_consent(hub, None, consent)


async def cafe_note(hub) -> str:
    msg = fit_note(**{"fit_note.employment.employer_id": CAFE, "fit_note.assessment": "not-fit"})
    msg["fit_note"].pop("may_be_fit_advice")
    out = await process_inbound(hub.deps, inbound_subject("fit-note", "B86001"), orjson.dumps(msg))
    hub.relay.kick()
    return out.event_id


async def delivery(hub, delivery_id: str):
    async with hub.deps.uow() as uow:
        return await uow.deliveries.get(delivery_id)


async def state_is(hub, delivery_id: str, state: str, timeout: float = 10) -> None:
    async def check() -> bool:
        return (await delivery(hub, delivery_id)).state == state
    await wait_until(check, timeout, f"{delivery_id} {state}")


async def test_retried_on_5xx_until_accepted_once_with_request_id_and_signature(hub, webhook, clock):
    await consent_for_both(hub)
    webhook.script.extend([Reply(503), Reply(502)])
    event_id = await cafe_note(hub)
    delivery_id = f"{event_id}:{CAFE}"
    for attempt in (1, 2):
        async def attempted(n=attempt) -> bool:
            row = await delivery(hub, delivery_id)
            return row.state == "retrying" and row.attempts == n
        await wait_until(attempted, 10, f"attempt {attempt} failed and rescheduled")
        row = await delivery(hub, delivery_id)
        assert row.attempts == attempt and row.last_error == f"webhook answered {503 if attempt == 1 else 502}"
        assert row.next_attempt_at > clock.now()
        clock.set(row.next_attempt_at)
        hub.relay.kick()
    await state_is(hub, delivery_id, "delivered")
    assert len(webhook.seen) == 3 and len(webhook.accepted) == 1
    request = webhook.accepted[0]
    assert request["headers"]["x-request-id"] == delivery_id
    assert request["headers"]["content-type"] == "application/fhir+json"
    expected = hmac.new(b"s3cret-shared-with-the-cafe", request["body"], hashlib.sha256).hexdigest()
    assert request["headers"]["x-hub-signature-256"] == f"sha256={expected}"
    assert orjson.loads(request["body"])["identifier"]["value"] == event_id


async def test_a_delivery_waiting_out_a_back_off_is_not_overtaken(hub, webhook, clock):
    """A recipient's deliveries go in order: while the first waits to be tried
    again, a later one waits behind it (and the recipient is not sent a request
    for each new delivery meanwhile); once the first goes, the later follows."""
    await consent_for_both(hub)
    webhook.script.append(Reply(503))
    first = f"{await cafe_note(hub)}:{CAFE}"
    await state_is(hub, first, "retrying")
    second = f"{await cafe_note(hub)}:{CAFE}"
    for _ in range(5):  # several relay passes (webhook work is looked at every 100 ms)
        await asyncio.sleep(0.15)
        hub.relay.kick()
    assert (await delivery(hub, second)).state == "pending"
    assert len(webhook.seen) == 1
    clock.set((await delivery(hub, first)).next_attempt_at)
    hub.relay.kick()
    await state_is(hub, second, "delivered")
    assert [r["headers"]["x-request-id"] for r in webhook.accepted] == [first, second]


async def test_a_delivery_made_is_never_marked_dead_lettered_afterwards(hub, webhook):
    """A relay that stalled past its lease while its POST failed must not undo a
    delivery another worker made meanwhile."""
    await consent_for_both(hub)
    made = f"{await cafe_note(hub)}:{CAFE}"
    await state_is(hub, made, "delivered")
    async with hub.deps.uow() as uow:
        assert await uow.deliveries.mark_dead_lettered(made, attempts=1, error="webhook answered 400") is False
        await uow.commit()
    row = await delivery(hub, made)
    assert (row.state, row.last_error) == ("delivered", None)


async def test_a_delivery_withheld_after_a_failed_attempt_is_disclosed_as_maybe_delivered(hub, webhook, clock):
    """An attempt answered 503 may still have reached the recipient. The person
    then withdraws: the retry is withheld, and the record says what may have
    happened instead of "not disclosed": its reason, the audit, and the person's
    disclosures (with the categories the copy carried)."""
    from hub.consents import withdraw
    from hub.ig import disclosures

    await consent_for_both(hub)
    webhook.script.append(Reply(503))
    tried = f"{await cafe_note(hub)}:{CAFE}"
    await state_is(hub, tried, "retrying")
    async with hub.deps.uow() as uow:
        for consent in (await uow.consents.for_persons([NHS]))[NHS]:
            await withdraw(uow, hub.audit, consent.consent_id, now=clock.now(), actor="test")
        await uow.commit()
    clock.set((await delivery(hub, tried)).next_attempt_at)
    hub.relay.kick()
    await state_is(hub, tried, "withheld")
    row = await delivery(hub, tried)
    assert row.reason.endswith("1 attempt(s) failed with an unknown outcome (last: webhook answered 503), "
                               "so a copy may have reached the recipient")
    assert len(webhook.seen) == 1  # nothing sent after the withdrawal
    async with hub.deps.uow() as uow:
        (listed,) = await disclosures(uow, hub.directory, NHS)
        (audit,) = await uow.audit.search(action="delivery.withheld", ref=tried)
    assert (listed["delivery_id"], listed["outcome"], listed["delivered_at"]) == (tried, "maybe-delivered", None)
    assert listed["categories"] == ["fitness-advice", "identity"] and listed["consents"]
    assert audit.detail["earlier_attempts"] == 1


async def test_a_dead_lettered_delivery_is_disclosed_as_maybe_delivered(hub, webhook):
    """A POST answered 400 is not retried, but the recipient's server had the copy."""
    from hub.ig import disclosures

    await consent_for_both(hub)
    webhook.script.append(Reply(400))
    refused = f"{await cafe_note(hub)}:{CAFE}"
    await state_is(hub, refused, "dead-lettered")
    async with hub.deps.uow() as uow:
        (listed,) = await disclosures(uow, hub.directory, NHS)
    assert (listed["delivery_id"], listed["outcome"]) == (refused, "maybe-delivered")


async def test_429_honours_retry_after(hub, webhook, clock):
    await consent_for_both(hub)
    webhook.script.append(Reply(429, headers={"Retry-After": "600"}))
    event_id = await cafe_note(hub)
    await state_is(hub, f"{event_id}:{CAFE}", "retrying")
    row = await delivery(hub, f"{event_id}:{CAFE}")
    assert row.next_attempt_at >= clock.now() + timedelta(seconds=600)


async def test_other_4xx_is_dead_lettered_at_once_and_can_be_retried(hub, webhook, clock, creds):
    await consent_for_both(hub)
    webhook.script.append(Reply(400))
    event_id = await cafe_note(hub)
    delivery_id = f"{event_id}:{CAFE}"
    await state_is(hub, delivery_id, "dead-lettered")
    assert len(webhook.seen) == 1
    row = await delivery(hub, delivery_id)
    # the copy is not kept (a retry cuts it again from the event)
    assert row.last_error == "webhook answered 400" and row.payload is None
    ig = await creds.issue("ig-auditor")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=hub.api), base_url="http://hub") as http:
        listed = (await http.get("/api/v1/deliveries", headers=bearer(ig), params={"state": "dead-lettered"})).json()
        assert [d["delivery_id"] for d in listed["deliveries"]] == [delivery_id]
        r = await http.post(f"/api/v1/deliveries/{delivery_id}/retry", headers=bearer(ig))
        assert r.status_code == 202
        await state_is(hub, delivery_id, "delivered")
        r = await http.post(f"/api/v1/deliveries/{delivery_id}/retry", headers=bearer(ig))
        assert r.status_code == 409
    assert len(webhook.accepted) == 1 and webhook.accepted[0]["headers"]["x-request-id"] == delivery_id
    async with hub.deps.uow() as uow:
        assert await uow.audit.count(action="delivery.dead-lettered", ref=delivery_id) == 1
        assert await uow.audit.count(action="delivery.retried", ref=delivery_id) == 1


async def test_dead_lettered_when_the_recipients_retry_budget_is_spent(hub, webhook, clock):
    await consent_for_both(hub)
    webhook.default = Reply(500)
    event_id = await cafe_note(hub)
    delivery_id = f"{event_id}:{CAFE}"
    for _ in range(30):  # the Corner Cafe's budget is one hour
        row = await delivery(hub, delivery_id)
        if row.state == "dead-lettered":
            break
        if row.state == "retrying":
            clock.set(row.next_attempt_at)
            hub.relay.kick()
        await wait_until(lambda: _changed(hub, delivery_id, row.attempts), 5, "next attempt")
    row = await delivery(hub, delivery_id)
    assert row.state == "dead-lettered" and row.last_error.startswith("retry budget spent")
    assert webhook.accepted == [] and len(webhook.seen) == row.attempts


async def _changed(hub, delivery_id, attempts) -> bool:
    row = await delivery(hub, delivery_id)
    return row.attempts != attempts or row.state == "dead-lettered"


async def test_a_slow_webhook_never_delays_deliveries_to_others(hub, webhook, creds):
    await consent_for_both(hub)
    webhook.default = Reply(200, delay=4.0)
    acme = await creds.issue("recipient", "EMP-ACME")
    cafe_event = await cafe_note(hub)
    out = await process_inbound(hub.deps, inbound_subject("fit-note", "B86001"), orjson.dumps(fit_note()))
    hub.relay.kick()
    got = await receive(hub, acme, "EMP-ACME", expect=1, timeout=2.0)
    assert len(got) == 1 and orjson.loads(got[0].data)["identifier"]["value"] == out.event_id
    assert (await delivery(hub, f"{cafe_event}:{CAFE}")).state == "pending"  # still waiting on the slow one
    await state_is(hub, f"{cafe_event}:{CAFE}", "delivered", timeout=10)


async def test_the_console_shows_a_dead_lettered_delivery_and_retries_it(hub, webhook, creds):
    from hub.console import session_csrf
    from tests.test_console_views import sign_in

    await consent_for_both(hub)
    webhook.script.append(Reply(404))
    event_id = await cafe_note(hub)
    delivery_id = f"{event_id}:{CAFE}"
    await state_is(hub, delivery_id, "dead-lettered")
    ig = await creds.issue("ig-auditor")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=hub.api), base_url="http://hub") as http:
        assert (await sign_in(http, ig["http_token"])).status_code == 303
        page = await http.get("/console/dead-letters")
        assert delivery_id in page.text and "webhook answered 404" in page.text
        r = await http.post(f"/console/deliveries/{delivery_id}/retry",
                            data={"csrf": session_csrf(ig["http_token"])})
        assert r.status_code == 303
    await state_is(hub, delivery_id, "delivered")
    assert len(webhook.accepted) == 1
