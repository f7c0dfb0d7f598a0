"""Withdrawal bites (issue 4): consent is decided again at the moment of
delivery, so a withdrawal stops what is still queued or retrying, narrows what
relied on it only in part, and nothing relying on it is delivered after the
withdrawal call has returned, even under a steady stream."""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import httpx
import orjson
import pytest

from hub.bootstrap import Hub
from hub.clock import Clock
from hub.consents import withdraw
from hub.pipeline import process_inbound
from hub.streams import inbound_subject
from schemas.vocab import CATEGORY_SYSTEM, PURPOSE_SYSTEM
from tests.conftest import Creds, connect_as, example, fit_note, receive
from tests.test_fit_note_flow import record_consent, settled
from tests.natsutil import wait_until
from tests.test_http_api import bearer

NHS = "9434765919"


async def queue(hub, msg=None):
    """Run the pipeline without waking the relay: the deliveries wait in the outbox."""
    out = await process_inbound(hub.deps, inbound_subject("fit-note", "B86001"), orjson.dumps(msg or fit_note()))
    assert out.outcome == "accepted"
    return out.event_id


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"relay_interval_s": 3600.0})  # the relay runs only when a test says


async def test_a_queued_delivery_is_withheld_once_its_consent_is_withdrawn(hub, creds):
    consent_id = await record_consent(hub, creds)
    acme = await creds.issue("recipient", "EMP-ACME")
    event_id = await queue(hub)
    async with hub.deps.uow() as uow:
        assert {d.state for d in await uow.deliveries.search(event_id=event_id)} == {"pending"}
        await withdraw(uow, hub.audit, consent_id, now=hub.clock.now(), actor="test")
        await uow.commit()
    await hub.relay.drain_once()
    assert await receive(hub, acme, "EMP-ACME", expect=0) == []
    async with hub.deps.uow() as uow:
        rows = {d.recipient_id: d for d in await uow.deliveries.search(event_id=event_id)}
        assert await uow.audit.count(action="delivery.withheld") == 2
    assert {d.state for d in rows.values()} == {"withheld"}
    assert rows["EMP-ACME"].reason.startswith("Withheld at delivery: Denied: consent ")
    assert f"{consent_id} withdrawn on" in rows["EMP-ACME"].reason


async def test_a_delivery_that_relied_on_a_consent_in_part_is_narrowed(hub, creds):
    narrow = example("consent")  # occupational-health: identity and fitness advice only
    narrow["provision"]["provision"] = [{
        "type": "permit", "purpose": [{"system": PURPOSE_SYSTEM, "code": "occupational-health"}],
        "securityLabel": [{"system": CATEGORY_SYSTEM, "code": c} for c in ("identity", "fitness-advice")]}]
    await record_consent(hub, creds, narrow)
    broad_id = await record_consent(hub, creds)  # also contact and diagnosis for occupational health
    ohp = await creds.issue("recipient", "OHP-HEALTHWORKS")
    event_id = await queue(hub)
    async with hub.deps.uow() as uow:
        (row,) = [d for d in await uow.deliveries.search(event_id=event_id) if d.recipient_id == "OHP-HEALTHWORKS"]
        assert row.categories == ["contact", "diagnosis", "fitness-advice", "identity"]
        await withdraw(uow, hub.audit, broad_id, now=hub.clock.now(), actor="test")
        await uow.commit()
    await hub.relay.drain_once()
    (got,) = await receive(hub, ohp, "OHP-HEALTHWORKS", expect=1)
    text = got.data.decode()
    assert "Lumbar back strain" not in text and "LS1 4AP" not in text and "Smith" in text
    async with hub.deps.uow() as uow:
        (row,) = [d for d in await uow.deliveries.search(event_id=event_id) if d.recipient_id == "OHP-HEALTHWORKS"]
    assert row.state == "delivered" and row.categories == ["fitness-advice", "identity"]


async def handed(hub, msg=None):
    """As `queue`, and the deliveries handed to the relay as the inbound consumer hands
    them, but without waking it (so a change made next lands before it runs)."""
    out = await process_inbound(hub.deps, inbound_subject("fit-note", "B86001"), orjson.dumps(msg or fit_note()))
    assert out.outcome == "accepted" and len(out.ready) == 2
    hub.relay.hold(list(out.ready))  # held, not kicked: the relay sleeps until drain_once
    return out


async def test_a_handed_over_delivery_is_withheld_once_its_consent_is_withdrawn(hub, creds):
    consent_id = await record_consent(hub, creds)
    acme = await creds.issue("recipient", "EMP-ACME")
    out = await handed(hub)
    async with hub.deps.uow() as uow:
        await withdraw(uow, hub.audit, consent_id, now=hub.clock.now(), actor="test")
        await uow.commit()
    await hub.relay.drain_once()
    assert await receive(hub, acme, "EMP-ACME", expect=0) == []
    async with hub.deps.uow() as uow:
        rows = await uow.deliveries.search(event_id=out.event_id)
    assert {d.state for d in rows} == {"withheld"}
    assert all(f"{consent_id} withdrawn on" in d.reason for d in rows)


async def test_a_new_consent_version_sends_a_handed_over_delivery_the_long_way(hub, creds):
    """Any change to the person's consents (here a new version that still permits)
    means the delivery is decided again and cut from the stored event."""
    consent_id = await record_consent(hub, creds)
    acme = await creds.issue("recipient", "EMP-ACME")
    out = await handed(hub)
    cc = await creds.issue("consent-client")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=hub.api), base_url="http://hub") as http:
        r = await http.put(f"/fhir/Consent/{consent_id}", headers=bearer(cc), json=example("consent"))
        assert r.status_code == 200, r.text
    hub.relay._ready.clear()  # and the cut copy forgotten, as after a restart
    await hub.relay.drain_once()
    (got,) = await receive(hub, acme, "EMP-ACME", expect=1)
    (ready,) = [r for r in out.ready if r.delivery_id.endswith(":EMP-ACME")]
    assert got.data == ready.payload  # the copy cut again from the event is the one cut at acceptance


async def test_a_delivery_not_handed_over_is_sent_byte_for_byte_as_cut_at_acceptance(hub, creds):
    await record_consent(hub, creds)
    acme, ohp = await creds.issue("recipient", "EMP-ACME"), await creds.issue("recipient", "OHP-HEALTHWORKS")
    out = await process_inbound(hub.deps, inbound_subject("fit-note", "B86001"), orjson.dumps(fit_note()))
    async with hub.deps.uow() as uow:
        stored = [await uow.deliveries.get(r.delivery_id) for r in out.ready]
    assert [d.payload for d in stored] == [None, None]  # the copies are not stored
    await hub.relay.drain_once()
    (to_acme,) = await receive(hub, acme, "EMP-ACME", expect=1)
    (to_ohp,) = await receive(hub, ohp, "OHP-HEALTHWORKS", expect=1)
    cut = {r.delivery_id.rsplit(":", 1)[1]: r.payload for r in out.ready}
    assert to_acme.data == cut["EMP-ACME"] and to_ohp.data == cut["OHP-HEALTHWORKS"]


def test_a_consent_state_holds_until_a_period_in_it_starts_or_ends():
    from datetime import timedelta

    from consent.model import ConsentRecord, Provision
    from hub.ig import Override
    from hub.pipeline import consent_key, consent_state

    now = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)
    ends = now + timedelta(days=3)
    starts = now + timedelta(days=1)
    record = ConsentRecord("c1", 2, "active", NHS, None, Provision(
        "permit", period_end=ends, children=(Provision("deny", period_start=starts, path="1"),)))
    bg = Override("BG-1", "EMP-ACME", "employment-support", now + timedelta(hours=5), "x" * 20)
    state = consent_state([record], [bg], now)
    key = consent_key([("c1", 2)], [("BG-1", bg.expires_at)])
    assert state.until == bg.expires_at  # the earliest edge ahead
    assert state.holds(key, now + timedelta(hours=4))
    assert not state.holds(key, bg.expires_at)
    assert not state.holds(consent_key([("c1", 3)], [("BG-1", bg.expires_at)]), now)  # a new version
    assert not state.holds(consent_key([("c1", 2)], []), now)  # the break-glass gone
    assert consent_state([record], [], now).until == starts
    assert consent_state([record], [], starts + timedelta(microseconds=1)).until == ends  # an edge passed
    assert consent_state([record], [], ends + timedelta(seconds=1)).until is None
    # decided at the very instant a period ends (still covered): deciding a moment later differs
    assert consent_state([record], [], ends).until == ends and not consent_state([record], [], ends).holds(
        consent_key([("c1", 2)], []), ends + timedelta(microseconds=1))


@pytest.fixture
def clock():
    return Clock()  # the real one: the proof compares the broker's own timestamps with wall time


async def test_nothing_relying_on_a_consent_is_delivered_after_withdrawal_returns(tmp_path, clock):
    from hub.settings import Settings
    from tests.natsutil import free_port

    settings = Settings(data_dir=tmp_path / "var", nats_port=free_port(), http_port=free_port(),
                        relay_interval_s=0.5)
    hub = Hub(settings, clock=clock)
    await hub.start()
    # Deliveries wait in the outbox for the relay's next pass (up to half a second),
    # as they do behind a backlog or a retry: the withdrawal lands while some are queued.
    hub.relay.kick = lambda: None
    try:
        consent_id = await record_consent(hub, None)
        creds = Creds(hub)
        gp, acme, cc = (await creds.issue("publisher", "B86001"), await creds.issue("recipient", "EMP-ACME"),
                        await creds.issue("consent-client"))
        today = clock.today_uk().isoformat()
        nc = await connect_as(hub, gp, "B86001")
        js = nc.jetstream()
        stop = asyncio.Event()
        sent = 0

        async def stream() -> None:
            nonlocal sent
            while not stop.is_set():
                msg = fit_note(**{"fit_note.issued_on": today, "fit_note.assessed_on": today,
                                  "fit_note.period.start": today})
                await js.publish(inbound_subject("fit-note", "B86001"), orjson.dumps(msg), stream="HUB_INBOUND")
                sent += 1
                await asyncio.sleep(0.01)

        publisher = asyncio.create_task(stream())
        await asyncio.sleep(1.0)

        async def queued() -> bool:  # withdraw while deliveries decided under the consent wait in the outbox
            async with hub.deps.uow() as uow:
                return bool(await uow.deliveries.search(recipient_id="EMP-ACME", state="pending", limit=1))
        await wait_until(queued, 10, "deliveries waiting in the outbox")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=hub.api), base_url="http://hub") as http:
            r = await http.post(f"/fhir/Consent/{consent_id}/$withdraw", headers=bearer(cc))
        returned = datetime.now(timezone.utc)
        assert r.status_code == 200
        await asyncio.sleep(1.5)
        stop.set()
        await publisher
        await nc.close()
        await settled(hub, sent, timeout=30)

        await hub.relay.drain_once()
        got = await receive(hub, acme, "EMP-ACME", expect=sent, timeout=5)
        stored = sorted(m.metadata.timestamp for m in got)
        assert len(got) > 10, "the stream delivered before the withdrawal"
        assert stored[-1] <= returned, (
            f"{sum(t > returned for t in stored)} deliveries stored after the withdrawal returned")
        async with hub.deps.uow() as uow:
            rows = await uow.deliveries.search(recipient_id="EMP-ACME", limit=10_000)
        assert len(rows) == sent
        late = [r for r in rows if r.state == "delivered" and r.delivered_at > returned]
        assert late == []
        assert sum(r.state == "withheld" for r in rows) == sent - len(got) > 10
        # some were decided before the withdrawal and stopped only at delivery
        assert any(r.reason and r.reason.startswith("Withheld at delivery") for r in rows), \
            sorted({(r.state, (r.reason or "")[:60]) for r in rows})
    finally:
        await hub.stop()


def test_the_relay_forgets_the_oldest_copies_beyond_its_bound(monkeypatch):
    from hub import outbox
    from hub.outbox import OutboxRelay
    from hub.pipeline import ConsentState, Ready
    from hub.wake import Wake

    monkeypatch.setattr(outbox, "READY_MAX_BYTES", 30)
    relay = OutboxRelay.__new__(OutboxRelay)  # only its memory of copies is exercised
    relay._ready, relay._ready_bytes, relay._wake = {}, 0, Wake()
    state = ConsentState(((), ()), None)
    relay.hold([Ready(f"e{i}:EMP-ACME", b"0123456789", state) for i in range(5)])
    assert list(relay._ready) == ["e2:EMP-ACME", "e3:EMP-ACME", "e4:EMP-ACME"]
    relay.hold([Ready("e3:EMP-ACME", b"0123456789", state)])  # handed again: counted once
    assert relay._ready_bytes == 30
    relay._forget([Ready("e2:EMP-ACME", b"", state)])
    assert list(relay._ready) == ["e4:EMP-ACME", "e3:EMP-ACME"] and relay._ready_bytes == 20

