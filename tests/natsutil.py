"""Helpers for tests that run the real nats-server (hub.nats_server)."""
from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import nats
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

from hub.nats_auth import inbox_prefix
from hub.streams import (
    DELIVER_STREAM,
    INBOUND_STREAM,
    deliver_subject,
    recipient_consumer,
)


def free_port() -> int:
    """A TCP port on loopback that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class ErrorLog:
    """Collects what nats-py reports through its error callback (permission
    violations arrive there, as lower-cased ``nats: permissions violation ...``)."""

    errors: list[Exception] = field(default_factory=list)

    async def callback(self, exc: Exception) -> None:
        """The ``error_cb`` to hand to ``nats.connect`` (it must be a coroutine function)."""
        self.errors.append(exc)

    def texts(self) -> list[str]:
        return [str(e).lower() for e in self.errors]

    def has(self, *parts: str) -> bool:
        return any(all(p.lower() in t for p in parts) for t in self.texts())

    async def wait_for(self, *parts: str, timeout: float = 2.0) -> None:
        """Wait until an error containing all ``parts`` has been reported."""
        await wait_until(lambda: self.has(*parts), timeout, f"error containing {parts}: {self.texts()}")


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 2.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def connect(
    url: str, user: str, password: str, *, org: str | None = None, errors: ErrorLog | None = None
) -> NatsClient:
    """A client connection as a broker user; with ``org``, using that org's
    inbox prefix (as publishers and recipients must). No reconnects, so that a
    connection the server closes stays closed."""
    options: dict = {
        "user": user,
        "password": password,
        "allow_reconnect": False,
        "connect_timeout": 2,
        "error_cb": (errors if errors is not None else ErrorLog()).callback,
    }
    if org is not None:
        options["inbox_prefix"] = inbox_prefix(org)
    return await nats.connect(url, **options)


async def create_hub_streams(hub: NatsClient, recipients: list[str]) -> None:
    """As the hub user: (re)create HUB_INBOUND (work queue), HUB_DELIVER and one
    durable explicit-ack pull consumer ``deliver-<org>`` per recipient."""
    js = hub.jetstream(timeout=2)
    for name in (INBOUND_STREAM, DELIVER_STREAM):
        try:
            await js.delete_stream(name)
        except nats.js.errors.NotFoundError:
            pass
    await _retry(lambda: js.add_stream(
        StreamConfig(name=INBOUND_STREAM, subjects=["hub.inbound.>"], retention=RetentionPolicy.WORK_QUEUE)
    ))
    await _retry(lambda: js.add_stream(StreamConfig(name=DELIVER_STREAM, subjects=["hub.deliver.>"])))
    for org in recipients:
        config = ConsumerConfig(
            durable_name=recipient_consumer(org),
            filter_subject=deliver_subject(org),
            ack_policy=AckPolicy.EXPLICIT,
        )
        await _retry(lambda config=config: js.add_consumer(DELIVER_STREAM, config))


async def _retry(make: Callable[[], Awaitable[object]], attempts: int = 20) -> None:
    """Retry a JetStream create that fails with a server error: right after a
    stream is deleted, nats-server now and then refuses to create one
    ("error creating store for stream", 10049: the store directory is still
    being removed)."""
    for attempt in range(attempts):
        try:
            await make()
            return
        except nats.js.errors.ServerError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.05)
