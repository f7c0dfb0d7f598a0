"""Replay (issue 5): re-deliver a recipient's or a person's events from a time
onward, under the original delivery ids, with consent decided again at replay
time, and the replay audited."""
from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import orjson
import pytest

from hub.consents import withdraw
from tests.conftest import fit_note, receive
from tests.test_fit_note_flow import publish, record_consent, settled
from tests.test_http_api import bearer


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"dedupe_window_s": 1.0})  # the broker's duplicate window, shortened


async def test_replay_for_a_recipient_that_lost_its_data(hub, creds, clock):
    consent_id = await record_consent(hub, creds)
    gp, acme, ohp, ig = (await creds.issue("publisher", "B86001"), await creds.issue("recipient", "EMP-ACME"),
                         await creds.issue("recipient", "OHP-HEALTHWORKS"), await creds.issue("ig-auditor"))
    await publish(hub, gp, fit_note())
    await publish(hub, gp, fit_note())
    await settled(hub, 2)
    first = await receive(hub, acme, "EMP-ACME", expect=2)
    assert len(first) == 2 and len(await receive(hub, ohp, "OHP-HEALTHWORKS", expect=2)) == 2
    await asyncio.sleep(1.2)  # past the broker's duplicate window (two minutes by default)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=hub.api), base_url="http://hub") as http:
        r = await http.post("/api/v1/replay", headers=bearer(ig), content=orjson.dumps(
            {"recipient_id": "EMP-ACME", "since": (clock.now() - timedelta(hours=1)).isoformat()}))
        assert r.status_code == 202 and r.json()["replayed"] == 2
        await settled(hub, 2)
        again = await receive(hub, acme, "EMP-ACME", expect=2)
        assert sorted(m.headers["Nats-Msg-Id"] for m in again) == sorted(m.headers["Nats-Msg-Id"] for m in first)
        assert await receive(hub, ohp, "OHP-HEALTHWORKS", expect=0) == []  # only the recipient asked for
        async with hub.deps.uow() as uow:
            assert await uow.audit.count(action="delivery.replayed") == 2

        # a replay after the consent was withdrawn sends nothing: consent is decided again
        async with hub.deps.uow() as uow:
            await withdraw(uow, hub.audit, consent_id, now=hub.clock.now(), actor="test")
            await uow.commit()
        await asyncio.sleep(1.2)
        r = await http.post("/api/v1/replay", headers=bearer(ig), content=orjson.dumps(
            {"nhs_number": "9434765919", "since": (clock.now() - timedelta(hours=1)).isoformat()}))
        assert r.json()["replayed"] == 4
        await settled(hub, 2)
        assert await receive(hub, acme, "EMP-ACME", expect=0) == []
        assert await receive(hub, ohp, "OHP-HEALTHWORKS", expect=0) == []
        async with hub.deps.uow() as uow:
            states = {d.state for d in await uow.deliveries.search(nhs_number="9434765919")}
        assert states == {"withheld"}
        r = await http.post("/api/v1/replay", headers=bearer(ig), content=orjson.dumps({"since": "2026-01-01T00:00Z"}))
        assert r.status_code == 422
