"""The `absence-milestone` event (§3, §8): made by the hub itself, not from an
inbound message, when a person's continuous fit-note-certified absence reaches
28 days - the point from which an OH referral is expected.

`milestone_event()` is a pure function: the caller (the milestone timer) has
found the episode and the person's latest fit note event, and passes what it
knows. The event is "an OH referral from the hub itself", so its bundle is a
referral's, built by `adapters.oh_referral`'s functions:

==================  ===================  ========================================
resource            data category        refers to
==================  ===================  ========================================
MessageHeader       referral (core)      focus -> ServiceRequest, Task
Patient             the given Patient's  - (identity, + contact if it has any)
Observation         referral             Patient (work context: employment,
                                         employer, absence start)
ServiceRequest      referral             Patient, Observation
Task                referral             ServiceRequest, Patient
==================  ===================  ========================================

* ServiceRequest: `intent` **proposal** (the hub suggests an OH referral, it
  cannot order one), priority routine, `reasonCode` "continuous fit-note-certified
  absence reached 28 days; an OH referral is expected" (hub code
  `absence-28-days`), `authoredOn` day 28, `requester` the hub (a reference by
  identifier to `Organization` HUB), the referrer-type extension
  `absence-milestone` (the hub's own referrer type, beside the seven a referral
  message may name). Its identifier is the episode id (system
  `ABSENCE_EPISODE_ID_SYSTEM`, assigned by HUB).
* Task: status requested, intent proposal, `focus` the ServiceRequest.
* Patient: the Patient of the latest fit note event, under this event's entry id,
  relabelled from the elements it holds (it may already be a projected copy).

The event id is `event_id("absence-milestone", "HUB", episode_id, 1)`: one per
episode, whatever fires it and however often. The content hash covers what
makes the milestone (person, episode, its start and day 28), not the Patient
copied into it, so firing again for the same episode is recognised as the same.
"""
from __future__ import annotations

import copy
from datetime import date, datetime
from typing import Any

from adapters.common import canonical_event
from adapters.oh_referral import (
    OH_REFERRAL_CODE_SYSTEM,
    ROLES,
    referral_request,
    referral_task,
    work_context,
)
from schemas.events import CanonicalEvent, Facts
from schemas.fhir import (
    ABSENCE_EPISODE_ID_SYSTEM,
    HUB_NAME,
    HUB_ORG_ID,
    Entries,
    concept,
    event_id,
    logical_ref,
    message_bundle,
    message_header,
    org_identifier,
    patient_categories,
    security_labels,
)
from schemas.vocab import NHS_NUMBER_SYSTEM, ORG_ID_SYSTEM, EventType

KIND = "absence-milestone"
REASON = "continuous fit-note-certified absence reached 28 days; an OH referral is expected"

__all__ = ["KIND", "REASON", "milestone_event", "milestone_bundle"]


def _patient(patient: dict[str, Any], *, nhs_number: str, resource_id: str) -> dict[str, Any]:
    """A copy of the fit note's Patient under this bundle's id, relabelled by its elements."""
    if not isinstance(patient, dict) or patient.get("resourceType") != "Patient":
        raise ValueError("patient must be a FHIR Patient resource")
    numbers = {i.get("value") for i in patient.get("identifier") or () if i.get("system") == NHS_NUMBER_SYSTEM}
    if numbers != {nhs_number}:
        raise ValueError("the Patient's NHS number is not the milestone's")
    out = copy.deepcopy(patient)
    out["id"] = resource_id
    meta = {k: v for k, v in (out.get("meta") or {}).items() if k != "security"}
    meta["security"] = security_labels(*patient_categories(out))
    # keep the skeleton order: resourceType, id, meta, then the data elements
    return {"resourceType": "Patient", "id": resource_id, "meta": meta,
            **{k: v for k, v in out.items() if k not in ("resourceType", "id", "meta")}}


def milestone_bundle(
    *, event: str, nhs_number: str, episode_id: str, episode_start: date, day_28: date,
    patient: dict[str, Any], employer_id: str | None, employment_status: str | None, now: datetime,
) -> dict[str, Any]:
    entries = Entries(event, ROLES)
    hub = logical_ref(ORG_ID_SYSTEM, HUB_ORG_ID, resource_type="Organization", display=HUB_NAME)
    return message_bundle(event, entries, (
        ("message-header", message_header(
            entries, event_type=EventType.ABSENCE_MILESTONE, sender_org_id=HUB_ORG_ID,
            source_name=HUB_NAME, focus=("service-request", "task"))),
        ("patient", _patient(patient, nhs_number=nhs_number, resource_id=entries.ids["patient"])),
        ("work-context", work_context(
            entries, effective=day_28, employment_status=employment_status, employer_id=employer_id,
            absence_started_on=episode_start)),
        ("service-request", referral_request(
            entries,
            identifier={"system": ABSENCE_EPISODE_ID_SYSTEM, "value": episode_id,
                        "assigner": {"identifier": org_identifier(HUB_ORG_ID)}},
            intent="proposal",
            priority="routine",
            authored_on=day_28,
            requester=hub,
            referrer_type=KIND,
            reason={**concept(OH_REFERRAL_CODE_SYSTEM, "absence-28-days",
                              "Fit-note-certified absence reached 28 days"), "text": REASON},
            supporting=(entries.ref("work-context"),),
        )),
        ("task", referral_task(
            entries, intent="proposal", priority="routine", authored_on=day_28, requester=hub,
            description=REASON,
        )),
    ), now=now)


def milestone_event(
    *,
    nhs_number: str,
    episode_id: str,
    episode_start: date,
    day_28: date,
    patient: dict[str, Any],
    employer_id: str | None,
    employment_status: str | None,
    postcode_area: str | None,
    gp_practice_id: str | None,
    now: datetime,
) -> CanonicalEvent:
    """The one absence-milestone event of an absence episode (see module docstring).

    `patient` is the FHIR Patient of the person's latest fit note event (it must
    carry `nhs_number`); `now` (timezone-aware) is the bundle timestamp and sent_at."""
    eid = event_id(KIND, HUB_ORG_ID, episode_id, 1)
    bundle = milestone_bundle(
        event=eid, nhs_number=nhs_number, episode_id=episode_id, episode_start=episode_start,
        day_28=day_28, patient=patient, employer_id=employer_id, employment_status=employment_status,
        now=now,
    )
    facts = Facts(
        nhs_number=nhs_number,
        postcode_area=postcode_area,
        employment_status=employment_status,
        employer_id=employer_id,
        gp_practice_id=gp_practice_id,
        referrer_type=KIND,
        episode_id=episode_id,
        absence_started_on=episode_start,
        milestone_on=day_28,
        document_id=episode_id,
        version=1,
    )
    body = {"nhs_number": nhs_number, "episode_id": episode_id,
            "episode_start": episode_start.isoformat(), "day_28": day_28.isoformat()}
    return canonical_event(
        event_id=eid, event_type=EventType.ABSENCE_MILESTONE, kind=KIND, source_org_id=HUB_ORG_ID,
        message_id=f"{KIND}:{episode_id}", sent_at=now, facts=facts, bundle=bundle, body=body,
    )
