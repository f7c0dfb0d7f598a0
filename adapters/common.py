"""What every adapter does once it has a bundle: hash the body, read the bundle's
categories, and assemble the `CanonicalEvent`. Pure functions."""
from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import orjson
from pydantic import BaseModel

from schemas.events import CanonicalEvent, Facts
from schemas.fhir import bundle_categories
from schemas.sources import Envelope
from schemas.vocab import Category, EventType

__all__ = ["content_hash", "event_categories", "canonical_event", "message_event"]


def content_hash(body: BaseModel | dict[str, Any]) -> str:
    """SHA-256 of the normalised body (sorted keys): a true resend hashes the same,
    a different document reusing an id and version does not."""
    data = body.model_dump(mode="json") if isinstance(body, BaseModel) else body
    return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()


def event_categories(bundle: dict[str, Any]) -> frozenset[Category]:
    """The categories the bundle holds: the union of its resources' labels."""
    return frozenset(Category(code) for code in bundle_categories(bundle))


def canonical_event(
    *,
    event_id: str,
    event_type: EventType,
    kind: str,
    source_org_id: str,
    message_id: str,
    sent_at: datetime,
    facts: Facts,
    bundle: dict[str, Any],
    body: BaseModel | dict[str, Any],
) -> CanonicalEvent:
    return CanonicalEvent(
        event_id=event_id,
        event_type=event_type,
        kind=kind,
        source_org_id=source_org_id,
        message_id=message_id,
        sent_at=sent_at,
        facts=facts,
        bundle=bundle,
        categories=event_categories(bundle),
        content_hash=content_hash(body),
    )


def message_event(
    msg: Envelope,
    body: BaseModel,
    *,
    kind: str,
    event_id: str,
    event_type: EventType,
    facts: Facts,
    bundle: dict[str, Any],
) -> CanonicalEvent:
    """The event of an inbound message whose body (the part under the kind's key) is `body`."""
    return canonical_event(
        event_id=event_id, event_type=event_type, kind=kind, source_org_id=msg.source.org_id,
        message_id=msg.message_id, sent_at=msg.sent_at, facts=facts, bundle=bundle, body=body,
    )
