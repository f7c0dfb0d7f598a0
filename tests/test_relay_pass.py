"""The outbox relay's broker pass keeps up with the inbound batches committed
between its passes: it claims, oldest first, as many rows as it holds copies
for (handed over and not yet claimed), and up to `batch` more for any older
ones waiting."""
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
        counts = await uow.deliveries.counts()  # by state and recipient type
    by_state: Counter = Counter()
    for (state, _), n in counts.items():
        by_state[state] += n
    return by_state


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


async def test_over_a_backlog_the_relay_holds_no_more_than_a_few_batches(settings, clock, monkeypatch):
    """A running hub over a backlog (inbound batches of about 5 notes, 10
    deliveries, and a relay batch of 2): the copies waiting to be sent never
    pile up beyond a few inbound batches' worth. With a fixed pass of 2 they grew
    by about 8 a batch, to most of the 200 (142-144 in two runs; 12-24 with the
    pass sized by what was handed)."""
    import hub.bootstrap as bootstrap
    from hub.outbox import OutboxRelay
    from tests.conftest import Creds
    from tests.test_ordering import commits_wait_for_publishing, publish_interleaved_and_check_order

    real_hold, peak = OutboxRelay.hold, 0

    def hold(self, ready):
        nonlocal peak
        real_hold(self, ready)
        peak = max(peak, len(self._ready))

    published = commits_wait_for_publishing(monkeypatch)
    monkeypatch.setattr(OutboxRelay, "hold", hold)
    hub = bootstrap.Hub(settings.model_copy(update={"inbound_batch": 5}), clock=clock)
    await hub.start()
    try:
        hub.relay.batch = 2
        # 100 notes about four people, each delivered in order, numbered
        await publish_interleaved_and_check_order(hub, Creds(hub), then=published.set, notes_each=25)
        assert await states(hub) == {"delivered": 200}
        assert hub.largest_batch >= 5
        assert peak <= 80
    finally:
        await hub.stop()
