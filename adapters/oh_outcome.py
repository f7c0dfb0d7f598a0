"""Adapter for inbound kind `oh-outcome` (§2): a validated `OhOutcomeMessage` ->
`CanonicalEvent` of type `oh-outcome-reported`.

The bundle
----------
==================  ===================  ======================================
resource            data category        refers to
==================  ===================  ======================================
MessageHeader       adjustments (core)   focus -> CarePlan, Observation
Patient             identity (+contact)  -
Organization        adjustments          - (the OH provider)
Observation         fitness-advice       Patient, Organization
CarePlan            adjustments          Patient, Organization
DocumentReference   clinical-notes       Patient, Organization (only with notes)
==================  ===================  ======================================

Why this shape. An OH outcome holds three things that go to different readers
(§5, DOMAIN.md): the opinion on fitness for work (employer, GP, OH), the
recommended adjustments and return-to-work plan (employer, GP, Access to Work,
OH), and the clinician's notes (the GP only; never the employer, whatever any
consent says). Projection withholds whole resources by label, so each of the
three is its own resource:

* the opinion is an `Observation` like the fit note's (a clinician's assessment
  at a point in time with a coded result): `code` "fitness-for-work" in the hub
  code system `oh-outcome`, `valueCodeableConcept` the fitness (hub code system
  `oh-fitness`: fit | fit-with-adjustments | fit-with-restrictions | not-fit),
  `effectiveDateTime` the assessment date, `issued` the send time, `performer` the
  provider, `basedOn` the referral it answers (a reference by identifier,
  `OH_REFERRAL_ID_SYSTEM`);
* the adjustments are a `CarePlan` (status active, intent plan), the FHIR resource
  for "what should be done for this person": one `activity` per recommended
  adjustment, one for the return-to-work plan, and one "refer to Access to Work"
  when the provider recommends it (DOMAIN.md: outcomes flow to Access to Work when
  support is needed); `identifier` is the outcome id (`OH_OUTCOME_ID_SYSTEM`), the
  identifier an Access to Work application's `oh_outcome_ref` points at;
* the notes are a `DocumentReference` with the text inline (`text/plain`, base64
  as FHIR attachments require): clinical notes are a document the clinician
  wrote, and a GP system files documents, not observations.

Nothing points at the DocumentReference - not the MessageHeader's focus, not the
CarePlan, not the Observation - so dropping it (for everyone but a GP) leaves no
dangling reference, and nothing an employer keeps mentions it. The provider
`Organization` is labelled with the core category (adjustments), which every
delivery of this event holds, so every resource may point at it; the opinion
and the plan do not point at each other, because a recipient may be given one
without the other.
"""
from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from adapters.common import message_event
from schemas.events import CanonicalEvent, Facts
from schemas.fhir import (
    OH_OUTCOME_ID_SYSTEM,
    OH_REFERRAL_ID_SYSTEM,
    Entries,
    concept,
    event_id,
    instant,
    logical_ref,
    message_bundle,
    message_header,
    org_identifier,
    patient_resource,
)
from schemas.sources import OhOutcomeMessage
from schemas.vocab import HUB, Category, EventType

KIND = "oh-outcome"

__all__ = [
    "KIND",
    "adapt_oh_outcome",
    "outcome_bundle",
    "OH_OUTCOME_CODE_SYSTEM",
    "OH_FITNESS_SYSTEM",
]

OH_OUTCOME_CODE_SYSTEM = f"{HUB}/CodeSystem/oh-outcome"
OH_FITNESS_SYSTEM = f"{HUB}/CodeSystem/oh-fitness"

FITNESS_DISPLAY: dict[str, str] = {
    "fit": "Fit for work",
    "fit-with-adjustments": "Fit for work with adjustments",
    "fit-with-restrictions": "Fit for work with restrictions",
    "not-fit": "Not fit for work",
}
_ROLES = ("message-header", "patient", "provider", "fitness", "plan", "clinical-notes")


def _activity(code: str, display: str, description: str) -> dict[str, Any]:
    return {"detail": {"code": concept(OH_OUTCOME_CODE_SYSTEM, code, display),
                       "status": "not-started", "description": description}}


def outcome_bundle(msg: OhOutcomeMessage, *, event_id: str, now: datetime) -> dict[str, Any]:
    """The canonical bundle of one validated OH outcome (see module docstring)."""
    out = msg.outcome
    entries = Entries(event_id, _ROLES)
    ref = entries.ref
    outcome_id = {"system": OH_OUTCOME_ID_SYSTEM, "value": out.id,
                  "assigner": {"identifier": org_identifier(out.provider_id)}}
    referral = (
        [logical_ref(OH_REFERRAL_ID_SYSTEM, out.referral_id, resource_type="ServiceRequest",
                     display="OH referral")]
        if out.referral_id else None
    )

    provider = entries.skeleton("Organization", "provider", Category.ADJUSTMENTS)
    provider["identifier"] = [org_identifier(out.provider_id)]

    fitness = entries.skeleton("Observation", "fitness", Category.FITNESS_ADVICE)
    fitness["identifier"] = [outcome_id]
    if referral:
        fitness["basedOn"] = referral
    fitness.update({
        "status": "final",
        "code": concept(OH_OUTCOME_CODE_SYSTEM, "fitness-for-work",
                        "Occupational health opinion on fitness for work"),
        "subject": ref("patient"),
        "effectiveDateTime": out.assessed_on.isoformat(),
        "issued": instant(msg.sent_at),
        "performer": [ref("provider")],
        "valueCodeableConcept": concept(OH_FITNESS_SYSTEM, out.fitness, FITNESS_DISPLAY[out.fitness]),
    })

    activities = [
        _activity("workplace-adjustment", "Recommended workplace adjustment", text)
        for text in out.recommended_adjustments or ()
    ]
    if out.return_to_work_plan:
        activities.append(_activity("return-to-work-plan", "Return-to-work plan", out.return_to_work_plan))
    if out.refer_to_access_to_work:
        activities.append(_activity("refer-to-access-to-work", "Refer to Access to Work",
                                    "Apply to Access to Work for support beyond reasonable adjustments"))
    plan = entries.skeleton("CarePlan", "plan", Category.ADJUSTMENTS)
    plan.update({
        "identifier": [outcome_id],
        "status": "active",
        "intent": "plan",
        "category": [concept(OH_OUTCOME_CODE_SYSTEM, "workplace-adjustments",
                             "Workplace adjustments and return to work")],
        "title": "Recommended workplace adjustments and return-to-work plan",
    })
    if not out.recommended_adjustments:
        plan["description"] = "No workplace adjustments recommended"
    plan.update({"subject": ref("patient"), "created": out.assessed_on.isoformat(), "author": ref("provider")})
    if activities:
        plan["activity"] = activities

    resources: list[tuple[str, dict[str, Any]]] = [
        ("message-header", message_header(
            entries, event_type=EventType.OH_OUTCOME_REPORTED, sender_org_id=msg.source.org_id,
            source_name=msg.source.system, focus=("plan", "fitness"))),
        ("patient", patient_resource(out.patient, resource_id=entries.ids["patient"])),
        ("provider", provider),
        ("fitness", fitness),
        ("plan", plan),
    ]
    if out.clinical_notes:
        notes = entries.skeleton("DocumentReference", "clinical-notes", Category.CLINICAL_NOTES)
        notes.update({
            "status": "current",
            "docStatus": "final",
            "type": concept(OH_OUTCOME_CODE_SYSTEM, "clinical-notes", "Occupational health clinician's notes"),
            "subject": ref("patient"),
            "date": instant(msg.sent_at),
            "author": [ref("provider")],
            "content": [{"attachment": {
                "contentType": "text/plain; charset=utf-8",
                "data": base64.b64encode(out.clinical_notes.encode()).decode("ascii"),
                "title": "OH clinician's notes",
            }}],
        })
        if referral:
            notes["context"] = {"related": referral}
        resources.append(("clinical-notes", notes))
    return message_bundle(event_id, entries, resources, now=now)


def adapt_oh_outcome(msg: OhOutcomeMessage, *, now: datetime) -> CanonicalEvent:
    """The canonical event of an OH outcome that has passed every field rule (the
    provider is the publisher); event id (kind, provider, outcome id, version 1)."""
    out = msg.outcome
    eid = event_id(KIND, msg.source.org_id, out.id, 1)
    facts = Facts(
        nhs_number=out.patient.nhs_number,
        postcode_area=out.patient.postcode_area,
        provider_id=out.provider_id,
        referral_id=out.referral_id,
        fitness=out.fitness,
        refer_to_access_to_work=out.refer_to_access_to_work,
        document_id=out.id,
        version=1,
    )
    return message_event(msg, out, kind=KIND, event_id=eid, event_type=EventType.OH_OUTCOME_REPORTED,
                         facts=facts, bundle=outcome_bundle(msg, event_id=eid, now=now))
