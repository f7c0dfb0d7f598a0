"""JetStream streams and consumers (contract §2, §4, §6), declared by the hub
at start-up with a stable configuration, so restarts and extra workers find
the same names."""
from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from hub.directory import Directory
from hub.settings import Settings

log = logging.getLogger(__name__)

INBOUND_STREAM = "HUB_INBOUND"
DELIVER_STREAM = "HUB_DELIVER"
DLQ_STREAM = "HUB_DLQ"
INBOUND_CONSUMER = "hub-inbound"

DAY = 86400.0


def inbound_subject(kind: str, org_id: str) -> str:
    return f"hub.inbound.{kind}.{org_id}"


def deliver_subject(org_id: str) -> str:
    return f"hub.deliver.{org_id}"


def dlq_subject(kind: str) -> str:
    return f"hub.dlq.{kind}"


def recipient_consumer(org_id: str) -> str:
    return f"deliver-{org_id}"


def stream_configs(settings: Settings) -> list[StreamConfig]:
    r = settings.stream_replicas
    return [
        # Inbound: a work queue. A message leaves the stream once the hub has
        # committed its outcome and acked it; the database then holds it.
        StreamConfig(
            name=INBOUND_STREAM, subjects=["hub.inbound.>"], retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE, num_replicas=r, duplicate_window=120.0,
            max_msg_size=1024 * 1024,
        ),
        # Deliveries wait here for their recipient's consumer. The duplicate
        # window makes a re-published delivery (same Nats-Msg-Id) a no-op.
        StreamConfig(
            name=DELIVER_STREAM, subjects=["hub.deliver.>"], retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE, num_replicas=r, duplicate_window=settings.dedupe_window_s,
            max_age=settings.deliver_max_age_days * DAY,
        ),
        StreamConfig(
            name=DLQ_STREAM, subjects=["hub.dlq.>"], retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE, num_replicas=r, max_age=30 * DAY, duplicate_window=DAY,
        ),
    ]


async def ensure_streams(js: JetStreamContext, settings: Settings) -> None:
    for cfg in stream_configs(settings):
        try:
            await js.stream_info(cfg.name)
            await js.update_stream(cfg)
        except NotFoundError:
            await js.add_stream(cfg)


def inbound_consumer_config() -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=INBOUND_CONSUMER,
        ack_policy=AckPolicy.EXPLICIT,
        # A message a crashed worker had fetched comes back after this long; handling is
        # idempotent on the event id, so an early redelivery costs only a duplicate check.
        ack_wait=20.0,
        max_ack_pending=5000,
        deliver_policy=DeliverPolicy.ALL,
    )


async def ensure_recipient_consumers(js: JetStreamContext, directory: Directory) -> None:
    """One durable pull consumer per broker-channel recipient: deliver-<org_id>."""
    for org in directory.recipients("broker"):
        name = recipient_consumer(org.id)
        cfg = ConsumerConfig(
            durable_name=name,
            filter_subject=deliver_subject(org.id),
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30.0,
            deliver_policy=DeliverPolicy.ALL,
            max_ack_pending=1000,
        )
        try:
            await js.consumer_info(DELIVER_STREAM, name)
        except NotFoundError:
            await js.add_consumer(DELIVER_STREAM, cfg)
            log.info("created consumer %s", name)
