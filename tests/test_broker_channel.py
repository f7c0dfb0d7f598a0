"""The broker channel publishes a relay pass's deliveries together and matches
the stream's acks to them as they arrive (hub.delivery.BrokerChannel), on the
hub's real nats-server: what the stream stored, and the failure each delivery
that was not stored gets."""
from __future__ import annotations

import asyncio

from hub.delivery import BrokerChannel, DeliveryFailed
from hub.streams import DELIVER_STREAM, DLQ_STREAM


async def stored(hub) -> dict[str, object]:
    """What HUB_DELIVER holds, by Nats-Msg-Id."""
    info = await hub.js.stream_info(DELIVER_STREAM)
    out = {}
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await hub.js.get_msg(DELIVER_STREAM, seq)
        out[msg.headers["Nats-Msg-Id"]] = msg
    return out


async def test_a_pass_is_stored_whole_with_its_headers_and_each_gets_its_ack(hub):
    channel = BrokerChannel(hub.js)
    items = [(f"ev-{i}:EMP-ACME", "hub.deliver.EMP-ACME", f"payload {i}".encode(), 10 + i) for i in range(300)]
    items.append(("ev-x:OHP-HEALTHWORKS", "hub.deliver.OHP-HEALTHWORKS", b"other", None))

    assert await channel.send_many(items) == [None] * len(items)

    held = await stored(hub)
    assert set(held) == {i[0] for i in items}
    first, other = held["ev-0:EMP-ACME"], held["ev-x:OHP-HEALTHWORKS"]
    assert (first.subject, first.data) == ("hub.deliver.EMP-ACME", b"payload 0")
    assert first.headers["Hub-Person-Seq"] == "10" and first.headers["Content-Type"] == "application/fhir+json"
    assert "Hub-Person-Seq" not in other.headers  # no sequence number, no header
    assert held["ev-299:EMP-ACME"].headers["Hub-Person-Seq"] == "309"


async def test_a_re_sent_delivery_is_acked_and_the_stream_keeps_one_copy(hub):
    channel = BrokerChannel(hub.js)
    item = ("ev-1:EMP-ACME", "hub.deliver.EMP-ACME", b"once", 1)
    assert await channel.send_many([item]) == [None]
    assert await channel.send_many([item, item]) == [None, None]  # the duplicate window drops both
    assert list(await stored(hub)) == ["ev-1:EMP-ACME"]


async def test_each_delivery_not_stored_fails_on_its_own_and_says_why(hub):
    """No stream for the subject, a subject of another stream (the expected-stream
    check refuses it), and a subject someone listens on without ever acking: only
    those fail, the rest of the pass is stored."""
    listener = await hub.broker.config.connection_state.connection.subscribe("hub.nowhere.silent")
    channel = BrokerChannel(hub.js, timeout=0.5)
    try:
        results = await channel.send_many([
            ("a:EMP-ACME", "hub.deliver.EMP-ACME", b"fine", 1),
            ("b:X", "hub.nowhere.x", b"no stream", 2),
            ("c:X", "hub.dlq.fit-note", b"wrong stream", 3),
            ("d:X", "hub.nowhere.silent", b"never acked", 4),
            ("e:EMP-ACME", "hub.deliver.EMP-ACME", b"fine too", 5),
        ])
    finally:
        await listener.unsubscribe()
    assert results[0] is None and results[4] is None
    assert [(type(r), r.error, r.retryable) for r in results[1:4]] == [
        (DeliveryFailed, "broker publish failed: NoStreamResponseError", True),
        (DeliveryFailed, "broker publish failed: BadRequestError", True),  # as nats-py's js.publish names it
        (DeliveryFailed, "broker publish failed: TimeoutError", True),
    ]
    assert set(await stored(hub)) == {"a:EMP-ACME", "e:EMP-ACME"}
    assert (await hub.js.stream_info(DLQ_STREAM)).state.messages == 0


async def test_passes_running_at_once_get_their_own_acks(hub):
    """Two passes (the relay's broker pass and a redelivery, say) share the one
    reply subscription without taking each other's acks."""
    channel = BrokerChannel(hub.js)
    one = [(f"p1-{i}:EMP-ACME", "hub.deliver.EMP-ACME", b"1", i) for i in range(50)]
    two = [(f"p2-{i}:EMP-ACME", "hub.deliver.EMP-ACME", b"2", i) for i in range(50)] + \
        [("p2-bad:X", "hub.nowhere.x", b"2", None)]
    r1, r2 = await asyncio.gather(channel.send_many(one), channel.send_many(two))
    assert r1 == [None] * 50
    assert r2[:50] == [None] * 50 and r2[50].error == "broker publish failed: NoStreamResponseError"
    assert channel._waiting == {}  # nothing left behind to match a late ack to


async def test_a_closed_connection_fails_every_delivery_without_waiting(hub):
    import nats

    nc = await nats.connect(hub.settings.broker_url, user=hub.identity.user, password=hub.identity.password)
    channel = BrokerChannel(nc.jetstream(), timeout=30)
    assert await channel.send_many([("a:EMP-ACME", "hub.deliver.EMP-ACME", b"x", 1)]) == [None]
    await nc.close()
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = await channel.send_many([("b:EMP-ACME", "hub.deliver.EMP-ACME", b"x", 1)] * 2)
    assert [r.error for r in results] == ["broker publish failed: ConnectionClosedError"] * 2
    assert loop.time() - started < 5  # not the 30 s ack timeout


async def test_a_channel_first_used_on_a_closed_connection_fails_every_delivery(hub):
    import nats

    nc = await nats.connect(hub.settings.broker_url, user=hub.identity.user, password=hub.identity.password)
    channel = BrokerChannel(nc.jetstream())
    await nc.close()
    results = await channel.send_many([("a:EMP-ACME", "hub.deliver.EMP-ACME", b"x", 1)] * 2)
    assert [r.error for r in results] == ["broker publish failed: ConnectionClosedError"] * 2
