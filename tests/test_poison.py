"""A poison message (one whose processing raises) is retried a bounded number
of times, then dead-lettered, and does not block the stream behind it."""
from __future__ import annotations

import orjson
import pytest

import hub.bootstrap as bootstrap
from hub.streams import inbound_subject
from tests.conftest import connect_as, fit_note
from tests.natsutil import wait_until
from tests.test_fit_note_flow import record_consent, settled


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"inbound_max_attempts": 3})


async def test_poison_message_is_dead_lettered_after_bounded_attempts_and_the_stream_flows(hub, creds, monkeypatch):
    real, real_batch = bootstrap.process_inbound, bootstrap.commit_batch
    calls = {"poison": 0}

    async def flaky(deps, subject, data, via="broker"):
        if b"POISON" in data:
            calls["poison"] += 1
            raise RuntimeError("a bug that this message triggers")
        return await real(deps, subject, data, via=via)

    async def flaky_batch(deps, checked, via="broker"):
        if any(b"POISON" in data for _, _, data, _ in checked):
            raise RuntimeError("a bug that this message triggers")  # the whole group commit fails...
        return await real_batch(deps, checked, via=via)

    # ...and then each of its messages is tried on its own: only the bad one fails there
    monkeypatch.setattr(bootstrap, "process_inbound", flaky)
    monkeypatch.setattr(bootstrap, "commit_batch", flaky_batch)
    await record_consent(hub, creds)
    gp = await creds.issue("publisher", "B86001")
    nc = await connect_as(hub, gp, "B86001")
    js = nc.jetstream()
    bad = fit_note(**{"fit_note.functional_effects": "POISON"})
    await js.publish(inbound_subject("fit-note", "B86001"), orjson.dumps(bad), stream="HUB_INBOUND")
    for _ in range(3):
        await js.publish(inbound_subject("fit-note", "B86001"), orjson.dumps(fit_note()), stream="HUB_INBOUND")
    await nc.close()
    await settled(hub, 3, timeout=15)  # the good ones went through while the bad one was retried

    async def parked() -> bool:
        async with hub.deps.uow() as uow:
            return len(await uow.dead_letters.search()) == 1
    await wait_until(parked, 20, "poison message dead-lettered")
    assert calls["poison"] == 3
    async with hub.deps.uow() as uow:
        (dl,) = await uow.dead_letters.search()
    assert dl.payload == orjson.dumps(bad) and dl.status == "open"
    assert dl.errors == [{"pointer": "", "message": "processing failed 3 times (RuntimeError); kept for an operator "
                                                   "to resubmit once the cause is fixed"}]
    info = await hub.js.consumer_info("HUB_INBOUND", "hub-inbound")
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_a_batch_whose_checking_fails_is_handled_message_by_message(hub, creds, monkeypatch):
    """A bug in validation or adaptation (check_batch raising) is treated as a
    failed batch: each message is then handled alone, in order, and acked."""
    def broken(deps, messages):
        raise RuntimeError("an adapter bug")

    monkeypatch.setattr(bootstrap, "check_batch", broken)
    await record_consent(hub, creds)
    gp = await creds.issue("publisher", "B86001")
    nc = await connect_as(hub, gp, "B86001")
    js = nc.jetstream()
    for _ in range(3):
        await js.publish(inbound_subject("fit-note", "B86001"), orjson.dumps(fit_note()), stream="HUB_INBOUND")
    await nc.close()
    await settled(hub, 3, timeout=15)
    info = await hub.js.consumer_info("HUB_INBOUND", "hub-inbound")
    assert info.num_ack_pending == 0 and info.num_pending == 0
