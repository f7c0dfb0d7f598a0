"""The 28-day absence milestone on the real broker and database, with a clock
the test controls: one event on day 28, never twice, none for a broken chain,
fired after a restart, at once for a late note, and OH from then on."""
from __future__ import annotations

from datetime import date, datetime, timedelta

import orjson
import pytest

from hub.bootstrap import Hub
from hub.clock import FixedClock
from hub.milestones import fire_due
from hub.pipeline import process_inbound
from hub.streams import inbound_subject
from schemas.ukdate import day_start
from tests.conftest import fit_note, receive
from tests.natsutil import wait_until
from tests.test_fit_note_flow import record_consent

DAY0 = date(2026, 11, 2)
NHS = "9434765919"


def at(day: int, hour: int = 9) -> datetime:
    return day_start(DAY0 + timedelta(days=day)) + timedelta(hours=hour)


def not_fit(start: int, end: int, issued: int | None = None, **changes) -> bytes:
    msg = fit_note(**{"fit_note.assessment": "not-fit", **changes})
    msg["fit_note"].pop("may_be_fit_advice", None)
    issued_on = (DAY0 + timedelta(days=start if issued is None else issued)).isoformat()
    msg["fit_note"]["issued_on"] = msg["fit_note"]["assessed_on"] = issued_on
    msg["fit_note"]["period"] = {"start": (DAY0 + timedelta(days=start)).isoformat(),
                                 "end": (DAY0 + timedelta(days=end)).isoformat()}
    return orjson.dumps(msg)


async def milestones(hub) -> list:
    async with hub.deps.uow() as uow:
        return await uow.events.search(kind="absence-milestone")


async def inbound(hub, data: bytes):
    out = await process_inbound(hub.deps, inbound_subject("fit-note", "B86001"), data)
    assert out.outcome == "accepted", out.errors
    return out


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(at(0))


async def test_one_milestone_on_day_28_and_never_twice(hub, creds, clock):
    await record_consent(hub, creds)
    await inbound(hub, not_fit(0, 13))
    clock.set(at(13))
    await inbound(hub, not_fit(14, 40, issued=13))  # consecutive: one episode
    clock.set(day_start(DAY0 + timedelta(days=27)) - timedelta(seconds=1))  # the last instant of day 27
    assert await fire_due(hub.deps) == 0 and await milestones(hub) == []
    clock.set(day_start(DAY0 + timedelta(days=27)))  # day 28 begins
    assert await fire_due(hub.deps) == 1
    (event,) = await milestones(hub)
    assert event.event_type == "absence-milestone" and event.source_org_id == "HUB"
    clock.advance(days=5)
    assert await fire_due(hub.deps) == 0
    assert len(await milestones(hub)) == 1
    async with hub.deps.uow() as uow:
        (delivery,) = await uow.deliveries.search(event_id=event.event_id)
    # routed as an OH referral from the hub: Acme's OH provider, with consent for occupational health
    assert delivery.recipient_id == "OHP-HEALTHWORKS" and delivery.state in ("pending", "delivered")
    assert "referral" in delivery.categories


async def test_no_milestone_for_an_episode_broken_by_a_gap(hub, creds, clock):
    await inbound(hub, not_fit(0, 13))
    clock.set(at(16))
    await inbound(hub, not_fit(16, 40))  # two uncovered days (14, 15): a new episode from day 16
    clock.set(at(42))  # day 28 of the first chain has passed but it ended on day 13
    assert await fire_due(hub.deps) == 0
    assert await milestones(hub) == []
    async with hub.deps.uow() as uow:
        episodes = await uow.absence.episodes(NHS)
    assert sorted((e.start_on, e.end_on) for e in episodes) == [
        (DAY0, DAY0 + timedelta(days=13)), (DAY0 + timedelta(days=16), DAY0 + timedelta(days=40))]


async def test_a_may_be_fit_note_does_not_extend_the_absence(hub, clock):
    await inbound(hub, not_fit(0, 20))
    msg = orjson.loads(not_fit(21, 40))
    msg["fit_note"]["assessment"] = "may-be-fit"
    msg["fit_note"]["may_be_fit_advice"] = {"phased_return": True}
    clock.set(at(21))
    await inbound(hub, orjson.dumps(msg))
    clock.set(at(30))
    assert await fire_due(hub.deps) == 0


async def test_milestone_fires_at_once_for_a_note_that_already_covers_day_28(hub, creds, clock):
    await record_consent(hub, creds)
    clock.set(at(35))
    out = await inbound(hub, not_fit(0, 40, issued=35))  # a backdated note
    (event,) = await milestones(hub)
    assert event.event_type == "absence-milestone"
    # and from then on the episode's fit notes also go to the employer's OH provider
    async with hub.deps.uow() as uow:
        recipients = {d.recipient_id for d in await uow.deliveries.search(event_id=out.event_id)}
    assert recipients == {"EMP-ACME", "OHP-HEALTHWORKS"}


async def test_milestone_still_fires_after_a_restart_between_the_note_and_day_28(settings):
    clock = FixedClock(at(0))
    settings = settings.model_copy(update={"milestone_poll_s": 0.2})
    first = Hub(settings, clock=clock)
    await first.start()
    try:
        await record_consent(first, None)
        await inbound(first, not_fit(0, 35))
        assert await milestones(first) == []
    finally:
        await first.stop()

    clock.set(at(27, hour=1))  # early on day 28: the hub was down when it began
    second = Hub(settings, clock=clock)
    await second.start()
    try:
        async def fired() -> bool:
            return len(await milestones(second)) == 1
        await wait_until(fired, 10, "milestone fired by the restarted hub's timer")
        from tests.conftest import Creds
        ohp = await Creds(second).issue("recipient", "OHP-HEALTHWORKS")
        got = await receive(second, ohp, "OHP-HEALTHWORKS", expect=1)
        kinds = {orjson.loads(m.data)["entry"][0]["resource"]["eventCoding"]["code"] for m in got}
        assert kinds == {"absence-milestone"}
    finally:
        await second.stop()


async def test_superseding_note_reaches_everyone_who_had_the_old_one(hub, creds, clock):
    await record_consent(hub, creds)
    clock.set(at(1))
    first = fit_note()  # may-be-fit: employer and its OH provider
    first["fit_note"]["issued_on"] = first["fit_note"]["assessed_on"] = DAY0.isoformat()
    a = await inbound(hub, orjson.dumps(first))
    replacement = orjson.loads(not_fit(0, 20, issued=1))  # not-fit: normally the employer only
    replacement["fit_note"]["replaces"] = first["fit_note"]["id"]
    b = await inbound(hub, orjson.dumps(replacement))
    async with hub.deps.uow() as uow:
        event = await uow.events.get(b.event_id)
        recipients = {d.recipient_id: d.state for d in await uow.deliveries.search(event_id=b.event_id)}
    assert event.event_type == "fit-note-superseded" and event.replaces == first["fit_note"]["id"]
    assert set(recipients) == {"EMP-ACME", "OHP-HEALTHWORKS"}
    bundle = orjson.loads(event.bundle)
    assert first["fit_note"]["id"] in orjson.dumps(bundle).decode()  # the event names what it replaces
    assert a.event_id != b.event_id
