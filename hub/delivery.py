"""Delivery channels (contract §4): how one committed delivery row reaches its
recipient. Broker: a JetStream publish to hub.deliver.<org_id> with
Nats-Msg-Id = delivery id (the stream drops a re-publish). Webhook: an HTTP
POST of the bundle with X-Request-ID = delivery id."""
from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

import httpx
from nats.js import JetStreamContext

from hub.directory import Directory
from hub.streams import DELIVER_STREAM

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
    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def send(self, delivery_id: str, address: str, payload: bytes, person_seq: int | None = None) -> None:
        try:
            await self.js.publish(
                address, payload, stream=DELIVER_STREAM, timeout=5,
                headers={"Nats-Msg-Id": delivery_id, "Content-Type": FHIR_JSON, **sequence_header(person_seq)},
            )
        except Exception as exc:  # noqa: BLE001 - every broker failure is retried
            raise DeliveryFailed(f"broker publish failed: {type(exc).__name__}") from exc


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
