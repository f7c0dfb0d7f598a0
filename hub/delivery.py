"""Delivery channels (contract §4): how one committed delivery row reaches its
recipient. Broker: a JetStream publish to hub.deliver.<org_id> with
Nats-Msg-Id = delivery id (the stream drops a re-publish). Webhook: an HTTP
POST of the bundle with X-Request-ID = delivery id."""
from __future__ import annotations

import hashlib
import hmac
import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
import orjson
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import APIError

from hub.directory import Directory
from hub.streams import DELIVER_STREAM
from hub.wake import Wake

FHIR_JSON = "application/fhir+json"


@dataclass
class DeliveryFailed(Exception):
    error: str  # never holds payload content
    retryable: bool = True
    retry_after: float | None = None


SEQUENCE_HEADER = "Hub-Person-Seq"


def sequence_header(person_seq: int | None, prefix: str = "") -> dict[str, str]:
    """The person's sequence number of the event a delivery carries (broker:
    Hub-Person-Seq, webhook: X-Hub-Person-Seq): increasing per person in the order
    the hub accepted their events, the same on every retry, so a recipient can
    put what it gets about one person in order. Numbers of events it was not
    sent are missing, so gaps are normal."""
    return {prefix + SEQUENCE_HEADER: str(person_seq)} if person_seq is not None else {}


class BrokerChannel:
    """Publishes a relay pass's deliveries to JetStream together and waits for
    the stream's acks to all of them at once.

    nats-py's `js.publish` is a request per message (a reply subscription entry,
    a future and a timer each, then a JSON parse): about 55 us of the hub's CPU a
    message, and the relay holds the database's write lock while it waits
    (`make bench` showed a pass of 400 taking 60 ms). Here every message gets
    its own reply subject under one inbox the channel subscribes to once, and the
    acks are matched to their deliveries as they arrive: about 16 us a message,
    and the pass waits for the slowest ack rather than for each in turn.
    (nats-py's own `js.publish_async` matches acks the same way but still makes
    a future, a semaphore wait and a JSON parse per message: measured, 39-44 us.) A
    delivery whose ack does not come within `timeout` failed (it is retried
    under the same Nats-Msg-Id, so a late ack only means a duplicate the stream
    drops)."""

    def __init__(self, js: JetStreamContext, timeout: float = 5.0) -> None:
        self.nc = js._nc  # nats-py's JetStreamContext does not expose its connection otherwise
        self.timeout = timeout
        self._inbox: str | None = None  # "<inbox>." once subscribed
        self._tokens = itertools.count()
        self._waiting: dict[str, tuple[_Acks, int]] = {}  # reply token -> (its pass, index in the pass)

    async def send_many(self, items: Sequence[tuple[str, str, bytes, int | None]]) -> list[DeliveryFailed | None]:
        """Publish (delivery id, address, payload, person seq) each; per item None
        once the stream stored it, else why it failed."""
        if not items:
            return []
        if self._inbox is None:
            inbox = self.nc.new_inbox()
            try:
                await self.nc.subscribe(inbox + ".*", cb=self._on_ack)
            except Exception as exc:  # noqa: BLE001 - closed or draining: every delivery is retried
                return [DeliveryFailed(f"broker publish failed: {type(exc).__name__}")] * len(items)
            self._inbox = inbox + "."
        acks = _Acks(len(items))
        tokens = []
        try:
            for i, (delivery_id, address, payload, person_seq) in enumerate(items):
                token = str(next(self._tokens))
                tokens.append(token)
                self._waiting[token] = (acks, i)
                try:
                    await self.nc.publish(address, payload, reply=self._inbox + token, headers={
                        "Nats-Msg-Id": delivery_id, "Nats-Expected-Stream": DELIVER_STREAM,
                        "Content-Type": FHIR_JSON, **sequence_header(person_seq)})
                except Exception as exc:  # noqa: BLE001 - every broker failure is retried
                    self._waiting.pop(token, None)
                    acks.settle(i, type(exc).__name__)
            await acks.wait(self.timeout)
        finally:
            for token in tokens:
                self._waiting.pop(token, None)
        return [None if why is None else DeliveryFailed(f"broker publish failed: {why}") for why in acks.results()]

    async def _on_ack(self, msg: Msg) -> None:
        entry = self._waiting.pop(msg.subject[len(self._inbox or ""):], None)
        if entry is not None:  # else a late ack for a pass that gave up on it
            entry[0].settle(entry[1], _ack_error(msg))


def _ack_error(msg: Msg) -> str | None:
    """None for a stream's PubAck (a duplicate included); else the failure's name,
    as nats-py's js.publish would raise it."""
    if msg.headers and msg.headers.get("Status") == "503":
        return "NoStreamResponseError"  # no stream takes the subject
    try:
        reply = orjson.loads(msg.data)
    except orjson.JSONDecodeError:
        return "InvalidAck"
    if isinstance(reply, dict) and isinstance(reply.get("error"), dict):
        try:
            APIError.from_error(reply["error"])  # raises BadRequestError, ServiceUnavailableError, ...
        except APIError as exc:
            return type(exc).__name__
        except Exception:  # noqa: BLE001 - a malformed error reply
            pass
        return "APIError"
    if not isinstance(reply, dict) or "stream" not in reply:
        return "APIError"
    return None


class _Acks:
    """The outcome of each message of one pass, and a wake-up once all are in."""

    _PENDING = object()

    def __init__(self, n: int) -> None:
        self._why: list[object] = [self._PENDING] * n
        self._left = n
        self._done = Wake()

    def settle(self, i: int, why: str | None) -> None:
        if self._why[i] is self._PENDING:
            self._why[i] = why
            self._left -= 1
            if self._left == 0:
                self._done.set()

    async def wait(self, timeout: float) -> None:
        if self._left:
            await self._done.wait(timeout)

    def results(self) -> list[str | None]:
        """Per message None (stored) or why not; no ack in time is a TimeoutError."""
        return ["TimeoutError" if why is self._PENDING else why for why in self._why]  # type: ignore[misc]


class WebhookChannel:
    def __init__(self, client: httpx.AsyncClient, directory: Directory) -> None:
        self.client = client
        self.directory = directory

    def _signature(self, recipient_id: str, payload: bytes) -> dict[str, str]:
        org = self.directory.get(recipient_id)
        secret = os.environ.get(org.delivery.secret_env) if org and org.delivery and org.delivery.secret_env else None
        if not secret:
            return {}
        digest = hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()
        return {"X-Hub-Signature-256": f"sha256={digest}"}

    async def send(self, delivery_id: str, recipient_id: str, url: str, payload: bytes,
                   person_seq: int | None = None) -> None:
        headers = {"Content-Type": FHIR_JSON, "X-Request-ID": delivery_id,
                   **self._signature(recipient_id, payload), **sequence_header(person_seq, "X-")}
        try:
            resp = await self.client.post(url, content=payload, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"webhook unreachable: {type(exc).__name__}") from exc
        if 200 <= resp.status_code < 300:
            return
        retryable = resp.status_code >= 500 or resp.status_code == 429
        retry_after = None
        if resp.status_code == 429 and resp.headers.get("Retry-After", "").isdigit():
            retry_after = float(resp.headers["Retry-After"])
        raise DeliveryFailed(f"webhook answered {resp.status_code}", retryable, retry_after)
