"""The audit trail as FHIR R4B AuditEvents (GET /fhir/AuditEvent). Each audit
row becomes one AuditEvent: what happened (type/subtype), when, who did it,
which hub record it concerns, the person's keyed hash (never the NHS number),
and the row's place in the hash chain."""
from __future__ import annotations

from typing import Any

import orjson

from schemas.vocab import HUB, ORG_ID_SYSTEM

ACTION_SYSTEM = f"{HUB}/CodeSystem/audit-action"
PERSON_REF_SYSTEM = f"{HUB}/Id/person-ref"
RECORD_SYSTEM = f"{HUB}/Id/record"
EVENT_ID_SYSTEM = f"{HUB}/Id/event"

_CRUDE = {"created": "C", "recorded": "C", "issued": "C", "accepted": "C", "queued": "C", "updated": "U",
          "withdrawn": "U", "revoked": "U", "reviewed": "U", "resubmitted": "E", "delivered": "E", "used": "E",
          "withheld": "E", "dead-lettered": "C", "unroutable": "C", "signposted": "C"}


def audit_event(row: Any, prev_hash: bytes | None = None) -> dict[str, Any]:
    """`prev_hash`: the hash of the row before (seq - 1), so that an auditor holding
    only this AuditEvent can recompute its hash (hub.audit_chain.chain_hash)."""
    kind, _, verb = row.action.partition(".")
    entity = [{"what": {"identifier": {"system": RECORD_SYSTEM, "value": row.ref}}, "name": kind}] if row.ref else []
    if row.action == "delivery.delivered" and row.event_id:  # one row per event: each delivery it names
        entity.extend({"what": {"identifier": {"system": RECORD_SYSTEM, "value": f"{row.event_id}:{to}"}},
                       "name": "delivery"} for to in (row.detail or {}).get("to", []))
    if row.event_id:
        entity.append({"what": {"identifier": {"system": EVENT_ID_SYSTEM, "value": row.event_id}}, "name": "event"})
    if row.person:
        entity.append({"what": {"identifier": {"system": PERSON_REF_SYSTEM, "value": row.person}},
                       "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1",
                                "display": "Person"}, "name": "person"})
    hashes = ([{"type": "prev_hash", "valueString": bytes(prev_hash).hex()}] if prev_hash is not None else []) + [
        {"type": "hash", "valueString": bytes(row.hash).hex()}]
    detail = [{"type": k, "valueString": v if isinstance(v, str) else orjson.dumps(v).decode()}
              for k, v in sorted((row.detail or {}).items())]
    entity.append({"what": {"identifier": {"system": f"{HUB}/Id/audit-row", "value": str(row.seq)}},
                   "name": "audit-row", "detail": hashes + detail})
    return {
        "resourceType": "AuditEvent",
        "id": f"audit-{row.seq}",
        "type": {"system": ACTION_SYSTEM, "code": kind},
        "subtype": [{"system": ACTION_SYSTEM, "code": row.action}],
        "action": _CRUDE.get(verb, "E"),
        "recorded": row.at.isoformat().replace("+00:00", "Z"),
        "outcome": "0",
        "agent": [{"who": {"identifier": {"system": ORG_ID_SYSTEM, "value": row.actor}}, "requestor": True}],
        "source": {"observer": {"display": "Health and work integration hub"}},
        "entity": entity,
    }
