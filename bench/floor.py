"""The floor: the least any hub on this stack could do per message. A FastStream
pull subscriber on the same broker that consumes one inbound message and
publishes one delivery (JetStream publish, awaiting the stream's ack), then acks.
No validation, consent or database. Same batch size as the hub's subscriber, and
the same way of being handed its message: as it came (`apply_types=False`, a
decoder that returns the nats message), not by FastStream's dependency injection, which
resolves the message on a worker thread, a hand-off per message that held this
floor to ~55% of what it can do (bench/HISTORY.md, "The floor was set too low").

With a third argument, `deliveries`, it publishes that many per message (the
bench's fan-out floor: 2, as many as the hub makes of each benchmark fit note).

    python -m bench.floor <nats url> <batch> [deliveries]
"""
from __future__ import annotations

import asyncio
import sys

from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub
from nats.aio.msg import Msg

IN_STREAM, OUT_STREAM = "BENCH_FLOOR_IN", "BENCH_FLOOR_OUT"
CONSUMER = "floor"  # its durable pull consumer on IN_STREAM


def delivery_msg_id(msg_id: str, k: int) -> str:
    """The Nats-Msg-Id of a message's k-th delivery (the first keeps the message's own)."""
    return f"{msg_id}:{k}" if k else msg_id


async def _as_it_came(msg: NatsMessage) -> Msg:
    return msg.raw_message


def build(url: str, batch: int, deliveries: int = 1) -> NatsBroker:
    broker = NatsBroker(url, logger=None, apply_types=False)  # the hub logs nothing per message either

    @broker.subscriber("bench.floor.in.>", stream=JStream(IN_STREAM, declare=False), durable=CONSUMER,
                       pull_sub=PullSub(batch_size=batch, timeout=1.0), ack_policy=AckPolicy.MANUAL,
                       decoder=_as_it_came)
    async def relay(raw: Msg) -> None:
        msg_id = raw.headers.get("Nats-Msg-Id", "") if raw.headers else ""
        for k in range(deliveries):
            await broker.publish(raw.data, f"bench.floor.out.{k}", stream=OUT_STREAM,
                                 headers={"Nats-Msg-Id": delivery_msg_id(msg_id, k)})
        await raw.ack()

    return broker


async def main(url: str, batch: int, deliveries: int = 1) -> None:
    broker = build(url, batch, deliveries)
    await broker.start()
    print("floor ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await broker.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 1))
