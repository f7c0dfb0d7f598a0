"""The notice a referrer gets when its referral had nowhere to go (§8): a FHIR
message answering the referral (MessageHeader.response) with an
OperationOutcome saying why and where the person can be pointed instead. It
holds no personal data: the referrer already has the referral it sent. It is
not one of the contract's six events (§3), so its code and its identifier are
in systems of the hub's own notices, not the event-type and event-id systems."""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from schemas.vocab import NOTICE_ID_SYSTEM, NOTICE_TYPE_SYSTEM, ORG_ID_SYSTEM

SIGNPOSTED = "oh-referral-signposted"
ADVICE = ("The person can be pointed to: their GP; NHS talking therapies or MSK self-referral where "
          "relevant; Access to Work (GOV.UK) for support beyond reasonable adjustments; and, if unemployed, "
          "their Jobcentre work coach.")


def notice_bundle(*, referral_event_id: str, referral_id: str | None, referrer_id: str, referrer_name: str,
                  endpoint: str, reason: str, now: datetime) -> dict[str, Any]:
    ns = uuid.UUID(referral_event_id) if _is_uuid(referral_event_id) else uuid.NAMESPACE_URL
    header_url = f"urn:uuid:{uuid.uuid5(ns, 'signpost-header')}"
    outcome_url = f"urn:uuid:{uuid.uuid5(ns, 'signpost-outcome')}"
    stamp = now.isoformat().replace("+00:00", "Z")
    text = f"Referral {referral_id or ''} could not be routed: {reason}. {ADVICE}".replace("  ", " ")
    return {
        "resourceType": "Bundle",
        "identifier": {"system": NOTICE_ID_SYSTEM, "value": f"{referral_event_id}:signposted"},
        "type": "message",
        "timestamp": stamp,
        "entry": [
            {"fullUrl": header_url, "resource": {
                "resourceType": "MessageHeader",
                "eventCoding": {"system": NOTICE_TYPE_SYSTEM, "code": SIGNPOSTED,
                                "display": "OH referral signposted"},
                "destination": [{"name": referrer_name, "endpoint": endpoint, "receiver": {
                    "identifier": {"system": ORG_ID_SYSTEM, "value": referrer_id}, "display": referrer_name}}],
                "source": {"name": "Health and work integration hub", "endpoint": "urn:hub"},
                "response": {"identifier": referral_event_id, "code": "ok",
                             "details": {"reference": outcome_url}},
                "focus": [{"reference": outcome_url}],
            }},
            {"fullUrl": outcome_url, "resource": {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "information", "code": "not-found", "diagnostics": text}],
            }},
        ],
    }


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
        return True
    except ValueError:
        return False
