"""The outbox relay's broker pass keeps up with the inbound batches committed
between its passes: it claims everything it was handed since its last pass
began, and `batch` rows more for any older ones waiting."""
from __future__ import annotations

from collections import Counter

import pytest

from tests.conftest import receive
from tests.test_fit_note_flow import record_consent
from tests.test_withdrawal_bites import handed, queue


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"relay_interval_s": 3600.0})  # the relay runs only when a test says


async def states(hub) -> Counter:
    async with hub.deps.uow() as uow:
        return Counter(r.state for r in await uow.deliveries.search())


async def test_a_pass_sends_all_it_was_handed_though_that_is_more_than_its_batch(hub, creds):
    await record_consent(hub, creds)
    acme = await creds.issue("recipient", "EMP-ACME")
    hub.relay.batch = 2
    for _ in range(3):  # an inbound batch of three notes: six deliveries handed over
        await handed(hub)
    assert await hub.relay.drain_once() is False  # not full: nothing more is waiting
    assert await states(hub) == {"delivered": 6}
    assert len(await receive(hub, acme, "EMP-ACME", expect=3)) == 3


async def test_deliveries_not_handed_over_are_taken_a_batch_a_pass(hub, creds):
    await record_consent(hub, creds)
    hub.relay.batch = 2
    for _ in range(2):  # committed, but not handed over (another worker's, or before a restart)
        await queue(hub)
    assert await hub.relay.drain_once() is True  # full: more may be waiting
    assert await states(hub) == {"delivered": 2, "pending": 2}
    await handed(hub)  # two more handed over: this pass takes those two and two of the older ones
    assert await hub.relay.drain_once() is True
    assert await states(hub) == {"delivered": 6}
    assert await hub.relay.drain_once() is False
