"""Prometheus metrics (GET /metrics). Counters and histograms are updated as
the hub works; the gauges (deliveries by state, retry queue depth, consumer
lag) are read from the database and the broker when the endpoint is scraped."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry()
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

EVENTS_IN = Counter("hub_events_in_total", "Inbound messages by kind and outcome (accepted, duplicate, "
                    "dead-lettered)", ["kind", "outcome"], registry=REGISTRY)
DELIVERIES_MADE = Counter("hub_deliveries_made_total", "Deliveries made, by recipient type and channel",
                          ["recipient_type", "channel"], registry=REGISTRY)
DECISIONS = Counter("hub_decisions_total", "Consent decisions by outcome and rule", ["outcome", "rule"],
                    registry=REGISTRY)
DEAD_LETTERS = Counter("hub_dead_letters_total", "Dead letters: refused or poison input by kind, and "
                       "deliveries that could not be made", ["source", "kind"], registry=REGISTRY)
PIPELINE_SECONDS = Histogram("hub_pipeline_seconds", "Handling of one inbound pull batch (one transaction), from receipt to commit",
                             buckets=LATENCY_BUCKETS, registry=REGISTRY)
END_TO_END_SECONDS = Histogram("hub_end_to_end_seconds", "From an event's acceptance to its delivery being made",
                               buckets=LATENCY_BUCKETS, registry=REGISTRY)
DELIVERIES = Gauge("hub_deliveries", "Deliveries by state and recipient type", ["state", "recipient_type"],
                   registry=REGISTRY)
RETRY_QUEUE = Gauge("hub_retry_queue_depth", "Deliveries waiting for their next attempt", registry=REGISTRY)
CONSUMER_LAG = Gauge("hub_consumer_lag", "Messages a JetStream consumer has not yet had (pending) or not yet "
                     "acked", ["consumer", "kind"], registry=REGISTRY)


async def refresh(hub) -> None:
    """Read the gauges' current values."""
    from hub.streams import DELIVER_STREAM, INBOUND_CONSUMER, INBOUND_STREAM, recipient_consumer

    async with hub.deps.uow() as uow:
        counts = await uow.deliveries.counts()
    DELIVERIES.clear()
    for (state, rtype), n in counts.items():
        DELIVERIES.labels(state, rtype).set(n)
    RETRY_QUEUE.set(sum(n for (state, _), n in counts.items() if state == "retrying"))
    consumers = [(INBOUND_STREAM, INBOUND_CONSUMER)] + [
        (DELIVER_STREAM, recipient_consumer(o.id)) for o in hub.directory.recipients("broker")]
    for stream, name in consumers:
        try:
            info = await hub.js.consumer_info(stream, name, timeout=2)
        except Exception:  # noqa: BLE001 - a consumer the broker does not know right now
            continue
        CONSUMER_LAG.labels(name, "pending").set(info.num_pending or 0)
        CONSUMER_LAG.labels(name, "unacked").set(info.num_ack_pending or 0)


def exposition() -> bytes:
    return generate_latest(REGISTRY)
