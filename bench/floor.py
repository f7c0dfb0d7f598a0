"""The floor: the least any hub on this stack could do per message. A FastStream
pull subscriber on the same broker that consumes one inbound message and
publishes one delivery (JetStream publish, awaiting the stream's ack), then acks.
No validation, consent or database. Same batch size as the hub's subscriber, and
the same way of being handed its message: as it came (`apply_types=False`, a
decoder that returns the nats message), not by FastStream's dependency injection, which
resolves the message on a worker thread, a hand-off per message that held this
floor to ~55% of what it can do (README Performance).

    python -m bench.floor <nats url> <batch>
"""
from __future__ import annotations

import asyncio
import sys

from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub
from nats.aio.msg import Msg

IN_STREAM, OUT_STREAM = "BENCH_FLOOR_IN", "BENCH_FLOOR_OUT"


async def _as_it_came(msg: NatsMessage) -> Msg:
    return msg.raw_message


def build(url: str, batch: int) -> NatsBroker:
    broker = NatsBroker(url, logger=None, apply_types=False)  # the hub logs nothing per message either

    @broker.subscriber("bench.floor.in.>", stream=JStream(IN_STREAM, declare=False), durable="floor",
                       pull_sub=PullSub(batch_size=batch, timeout=1.0), ack_policy=AckPolicy.MANUAL,
                       decoder=_as_it_came)
    async def relay(raw: Msg) -> None:
        await broker.publish(raw.data, "bench.floor.out.x", stream=OUT_STREAM,
                             headers={"Nats-Msg-Id": raw.headers.get("Nats-Msg-Id", "") if raw.headers else ""})
        await raw.ack()

    return broker


async def main(url: str, batch: int) -> None:
    broker = build(url, batch)
    await broker.start()
    print("floor ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await broker.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
