"""Order you can rely on: the hub takes inbound messages in pull batches and
commits each batch at once, yet two events about the same person are never
reordered within a worker, and every delivery carries the person's sequence
number, assigned when the event was accepted, so a recipient can put what it
gets in order even after retries."""
from __future__ import annotations

import copy

import orjson
import pytest
from nats.errors import TimeoutError as NatsTimeout
from sqlalchemy import select

from hub import tables as t
from hub.bootstrap import TopUp
from hub.streams import inbound_subject
from schemas.fhir import event_id
from tests.conftest import connect_as, example, fit_note, receive
from tests.test_fit_note_flow import publish, record_consent, settled

PEOPLE = ["9434765919", "9434765870", "9434765803", "9434765811"]  # valid NHS numbers
NOTES_EACH = 10


def consent_for(nhs: str) -> dict:
    c = copy.deepcopy(example("consent"))
    c["patient"]["identifier"]["value"] = nhs
    return c


async def test_events_about_one_person_keep_their_order_under_concurrency(hub, creds):
    await publish_interleaved_and_check_order(hub, creds)


async def test_batches_checked_ahead_of_their_commit_still_commit_in_order(settings, clock, monkeypatch):
    """Full batches (a backlog): the worker checks the next batch while the one
    before it waits for the write lock or commits. Order and numbers still hold.
    Commits are held back until everything is published, so a backlog builds up
    behind them, and then each takes a little longer than a fetch, whatever the
    speed of the machine."""
    import hub.bootstrap as bootstrap
    from tests.conftest import Creds

    published = commits_wait_for_publishing(monkeypatch, pause=0.02)
    hub = bootstrap.Hub(settings.model_copy(update={"inbound_batch": 3}), clock=clock)
    await hub.start()
    try:
        await publish_interleaved_and_check_order(hub, Creds(hub), then=published.set)
        assert hub.largest_batch >= 3
        assert hub.checked_ahead > 0  # otherwise this test proves nothing
    finally:
        await hub.stop()


@pytest.mark.parametrize("where", ["batch", "alone"])
async def test_a_batch_the_database_failed_is_tried_again_before_anything_after_it(settings, clock, monkeypatch,
                                                                                  where):
    """The database fails the first transactions (locked past its wait, or gone):
    a whole batch's ("batch"), or, once a batch failed for a message's sake and
    its messages are tried one by one, the first message's ("alone"). They are
    tried again in place, not handed back to JetStream, which would redeliver
    them after the batches behind them had been accepted: a person's later
    note would have overtaken an earlier one, and taken its number."""
    import hub.bootstrap as bootstrap
    from sqlalchemy.exc import OperationalError

    from hub.streams import INBOUND_CONSUMER, INBOUND_STREAM
    from tests.conftest import Creds

    failed = []

    def failing(real, times: int):
        async def attempt(*args, **kw):
            if len(failed) < times:
                failed.append(args[-1] if where == "alone" else len(args[1]))
                raise OperationalError("BEGIN IMMEDIATE", {}, Exception("database is locked"))
            return await real(*args, **kw)
        return attempt

    if where == "batch":
        monkeypatch.setattr(bootstrap, "commit_batch", failing(bootstrap.commit_batch, 2))
    else:
        async def for_a_message(*args, **kw):
            raise ValueError("a message's fault")
        monkeypatch.setattr(bootstrap, "commit_batch", for_a_message)
        monkeypatch.setattr(bootstrap, "process_inbound", failing(bootstrap.process_inbound, 2))
    hub = bootstrap.Hub(settings.model_copy(update={"inbound_batch": 3}), clock=clock)
    await hub.start()
    try:
        await publish_interleaved_and_check_order(hub, Creds(hub), notes_each=3)
        assert len(failed) == 2  # otherwise this test proves nothing
        consumer = await hub.js.consumer_info(INBOUND_STREAM, INBOUND_CONSUMER)
        assert consumer.num_redelivered == 0  # tried again in place: nothing went back to JetStream
    finally:
        await hub.stop()


def commits_wait_for_publishing(monkeypatch, pause: float = 0.0):
    """Inbound commits wait until the event returned is set (everything published),
    then `pause` seconds more each, so a backlog builds up behind the first."""
    import asyncio

    import hub.bootstrap as bootstrap

    published, real = asyncio.Event(), bootstrap.commit_batch

    async def after_publishing(deps, checked, via="broker"):
        await published.wait()
        if pause:
            await asyncio.sleep(pause)
        return await real(deps, checked, via=via)

    monkeypatch.setattr(bootstrap, "commit_batch", after_publishing)
    return published


async def publish_interleaved_and_check_order(hub, creds, then=lambda: None, notes_each: int = NOTES_EACH) -> None:
    from hub.consents import create

    async with hub.deps.uow() as uow:
        for nhs in PEOPLE:
            await create(uow, hub.audit, consent_for(nhs), now=hub.clock.now(), actor="test")
        await uow.commit()
    gp = await creds.issue("publisher", "B86001")
    acme = await creds.issue("recipient", "EMP-ACME")

    # interleaved: person 0 note 0, person 1 note 0, ..., person 0 note 1, ... published
    # back to back, so the hub fetches them in batches and processes each batch at once
    order: dict[str, tuple[str, int]] = {}  # event id -> (person, its index among that person's notes)
    nc = await connect_as(hub, gp, "B86001")
    js = nc.jetstream()
    for i in range(notes_each):
        for nhs in PEOPLE:
            msg = fit_note(**{"fit_note.patient.nhs_number": nhs})
            order[event_id("fit-note", "B86001", msg["fit_note"]["id"], 1)] = (nhs, i)
            await js.publish(inbound_subject("fit-note", "B86001"), orjson.dumps(msg), stream="HUB_INBOUND")
    await nc.close()
    then()
    total = len(PEOPLE) * notes_each
    await settled(hub, total, timeout=30)

    # the hub really did take several messages per transaction (otherwise this test proves nothing)
    assert hub.largest_batch > 1

    got = await receive(hub, acme, "EMP-ACME", expect=total, timeout=15)
    assert len(got) == total
    seen: dict[str, list[tuple[int, int]]] = {nhs: [] for nhs in PEOPLE}
    for m in got:
        eid = m.headers["Nats-Msg-Id"].rpartition(":")[0]
        nhs, index = order[eid]
        seen[nhs].append((index, int(m.headers["Hub-Person-Seq"])))
    for nhs, arrivals in seen.items():
        # delivered in the order published, numbered 1..n in that same order
        assert arrivals == [(i, i + 1) for i in range(notes_each)], nhs

    # the number is the event's, kept on its delivery rows (a retry sends the same one)
    async with hub.deps.uow() as uow:
        rows = (await uow.conn.execute(select(t.events.c.event_id, t.events.c.person_seq))).all()
        delivered = (await uow.conn.execute(select(t.deliveries.c.event_id, t.deliveries.c.person_seq))).all()
    assert {eid: seq for eid, seq in rows} == {eid: order[eid][1] + 1 for eid in order}
    assert all(seq == order[eid][1] + 1 for eid, seq in delivered)


async def test_a_redelivered_message_takes_no_new_number(hub, creds):
    """A duplicate (a resend under a new message id) is recognised before a
    number is taken, so the person's numbers stay 1, 2, ... with no gaps from it."""
    await record_consent(hub, creds, consent_for(PEOPLE[0]))
    gp = await creds.issue("publisher", "B86001")
    first, second = fit_note(), fit_note()
    nc = await connect_as(hub, gp, "B86001")
    js = nc.jetstream()
    for msg in (first, {**first, "message_id": "resent"}, second):
        await js.publish(inbound_subject("fit-note", "B86001"), orjson.dumps(msg), stream="HUB_INBOUND")
    await nc.close()
    await settled(hub, 2)
    async with hub.deps.uow() as uow:
        seqs = (await uow.conn.execute(select(t.events.c.document_id, t.events.c.person_seq))).all()
    assert dict(seqs) == {first["fit_note"]["id"]: 1, second["fit_note"]["id"]: 2}


async def test_an_inbound_batch_reaches_the_hub_without_a_worker_thread(hub, creds, monkeypatch):
    """FastStream hands the subscriber the pull batch's messages as they came: no
    dependency injection, which resolved the batch on a worker thread (a hand-off
    that waits for the GIL while the event loop is busy), no decoding of bodies
    the pipeline parses itself, and no batch left referring to itself (FastStream
    keeps the decoder's result on the batch), which only the collector would free."""
    import gc

    import anyio.to_thread
    from faststream.nats.message import NatsBatchMessage

    real, hops = anyio.to_thread.run_sync, []

    async def counted(func, *args, **kwargs):
        hops.append(getattr(func, "__qualname__", repr(func)))
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    await record_consent(hub, creds, consent_for(PEOPLE[0]))
    gp = await creds.issue("publisher", "B86001")
    gc.collect()
    gc.disable()  # whatever the batches leave for the collector stays until the end
    try:
        for _ in range(3):
            await publish(hub, gp, fit_note())
        await settled(hub, 3)
        gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds unreachable goes to gc.garbage
        gc.collect()
        cycles = [o for o in gc.garbage if isinstance(o, NatsBatchMessage)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert hops == []
    assert cycles == []


def test_a_batch_waits_for_more_messages_at_most_its_fill_in_all():
    """FastStream fetches again until its batch is full or a fetch times out; the
    top-up's wait is bounded from the batch's first message, not per fetch, so a
    steady trickle cannot keep a batch (and its first message) waiting."""
    now = [0.0]
    top = TopUp(0.005, 200, clock=lambda: now[0])
    assert top.request(200, 1.0) == (1, 1.0)  # idle: one long pull of one message
    top.got(1)
    now[0] = 0.002
    assert top.request(199, 0.998) == (199, pytest.approx(0.003))
    top.got(1)  # the trickle brought one more
    now[0] = 0.0045
    assert top.request(198, 0.995) == (198, pytest.approx(0.0005))
    top.got(1)
    now[0] = 0.0051
    with pytest.raises(NatsTimeout):  # FastStream hands the batch of three over now
        top.request(197, 0.99)
    assert top.request(200, 1.0) == (1, 1.0)  # the next batch starts with a long pull again

    now[0] = 0.01
    top.got(1)
    now[0] = 0.012
    assert top.request(199, 0.999) == (199, pytest.approx(0.003))
    top.got(199)  # a backlog: the batch filled
    now[0] = 0.5  # (its handling took a while)
    assert top.request(200, 1.0) == (200, 0.005)  # the next is fetched whole, at once
    top.got(200)
    assert top.request(200, 1.0) == (200, 0.005)
    top.timed_out()  # nothing more came
    assert top.request(200, 1.0) == (1, 1.0)


def test_messages_already_waiting_are_fetched_even_after_the_fill_ran_out():
    """The event loop can be busy elsewhere (committing the batch before) for longer
    than the fill between a batch's first message and its top-up. Messages JetStream
    says are waiting are still taken into the batch, or a backlog would go on in
    batches of one (each after the first starting with a pull of one)."""
    now = [0.0]
    top = TopUp(0.001, 200, clock=lambda: now[0])
    assert top.request(200, 1.0) == (1, 1.0)
    top.got(1, waiting=37)
    now[0] = 0.015  # 15 ms later: the fill ran out long ago
    assert top.request(199, 0.999) == (37, 0.001)  # all 37, with a pull that expires after one fill
    top.got(37, waiting=0)
    with pytest.raises(NatsTimeout):  # nothing more waits: handed over
        top.request(162, 0.99)

    assert top.request(200, 1.0) == (1, 1.0)
    now[0] = 0.02
    top.got(1, waiting=0)  # on its own, with nothing behind it
    now[0] = 0.03
    with pytest.raises(NatsTimeout):  # the fill still bounds the wait for stragglers
        top.request(199, 0.999)

    assert top.request(200, 1.0) == (1, 1.0)
    top.got(1, waiting=5)
    now[0] = 0.05
    assert top.request(199, 0.95) == (5, 0.001)
    top.timed_out()  # another worker had taken them: the pull expired after its one fill
    assert top.request(200, 1.0) == (1, 1.0)  # the next batch starts with a long pull of one again
    top.got(1, waiting=5)
    with pytest.raises(NatsTimeout):  # FastStream's own deadline for the batch about up: handed over,
        top.request(199, 0.0001)      # never a pull so short nats-py would ask for one that never expires


def test_messages_already_waiting_are_fetched_without_waiting_for_more():
    """Messages that piled up while the hub was busy (JetStream says how many wait
    after each message) are fetched at once, exactly that many, so the pull ends
    as they arrive; then the batch is handed over without the top-up's wait."""
    now = [0.0]
    top = TopUp(0.005, 200, clock=lambda: now[0])
    assert top.request(200, 1.0) == (1, 1.0)
    top.got(1, waiting=3)  # three more were already waiting behind it
    now[0] = 0.0001
    assert top.request(199, 0.999) == (3, pytest.approx(0.0049))
    top.got(3, waiting=0)  # and nothing behind them
    now[0] = 0.0003
    with pytest.raises(NatsTimeout):  # handed over now, not at 5 ms
        top.request(196, 0.99)

    assert top.request(200, 1.0) == (1, 1.0)  # idle again: a long pull of one
    now[0] = 0.01
    top.got(1, waiting=0)  # a message on its own: the top-up waits for stragglers as before
    now[0] = 0.011
    assert top.request(199, 0.999) == (199, pytest.approx(0.004))
    top.got(1, waiting=2)  # a straggler, with two more behind it
    assert top.request(198, 0.998) == (2, pytest.approx(0.004))
    top.got(2, waiting=0)
    with pytest.raises(NatsTimeout):
        top.request(196, 0.99)

    now[0] = 0.02
    assert top.request(200, 1.0) == (1, 1.0)
    top.got(1, waiting=500)  # a backlog: the rest of the batch at once, then whole batches
    assert top.request(199, 0.999) == (199, pytest.approx(0.005))
    top.got(199, waiting=301)
    assert top.request(200, 1.0) == (200, 0.005)
    top.got(120, waiting=0)  # the backlog ran out mid-batch: what came is handed over as before,
    now[0] = 0.021  # after the rest of the fill (this batch took no pile of its own)
    assert top.request(80, 0.9) == (80, pytest.approx(0.004))
