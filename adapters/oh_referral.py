"""Adapter for inbound kind `oh-referral` (§2): a validated `OhReferralMessage` ->
`CanonicalEvent` of type `oh-referral-requested`.

The bundle
----------
==================  ===================  ============================================
resource            data category        refers to
==================  ===================  ============================================
MessageHeader       referral (core)      focus -> ServiceRequest, Task
Patient             identity (+contact)  -
Organization        referral             - (the referrer; absent for a self-referral)
Observation         referral             Patient (work and absence context)
ServiceRequest      referral             Patient, Organization or Patient, Observation
Task                referral             ServiceRequest, Patient, Organization or Patient
==================  ===================  ============================================

* `ServiceRequest` is the referral itself, as FHIR and UK Core model referrals:
  `code` an occupational-health assessment (hub code system `oh-referral`),
  `reasonCode.text` the reason, one `note` per question the referrer asks,
  `priority` the urgency (`routine` | `urgent` are FHIR's own request-priority
  codes, so the source value is used as is), `authoredOn` the referral date,
  `requester` the referring organisation (with the referrer's name as display) or
  the Patient for a self-referral; the referrer type is the extension
  `EXT_REFERRER_TYPE`. The preferred provider is `performer` (FHIR: "desired
  performer"), a reference by identifier; the related fit note is a
  `supportingInfo` reference by identifier (system `FIT_NOTE_ID_SYSTEM`).
* `Task` is the recipient's work item: `status` requested, `intent` order, `code`
  `fulfill`, `focus` and `basedOn` the ServiceRequest, `for` the Patient. An OH
  case-management system takes the Task, accepts or rejects it, and keeps the
  ServiceRequest as the clinical request.
* The person's work - employment status, employer, occupation, whether the role
  is safety-critical, when the absence started - is what an OH clinician reads
  before the reason. It is an `Observation` ("work and absence context", category
  social-history, the pattern of HL7's Occupational Data for Health) that the
  ServiceRequest cites in `supportingInfo`. It is labelled `referral`, not
  `fitness-advice`, so it goes exactly where the referral goes (an employer never
  receives a referral).

Every reference points at the Patient or at another `referral` resource, and a
delivery of this event always holds identity and referral (§5), so no kept
resource can point at a dropped one.

The absence milestone (`adapters.milestone`) is "an OH referral from the hub
itself" and builds its ServiceRequest, Task and context Observation with the
same functions (`referral_request`, `referral_task`, `work_context`).
"""
from __future__ import annotations

from datetime import date, datetime
from typing import Any

from adapters.common import message_event
from schemas.events import CanonicalEvent, Facts
from schemas.fhir import (
    FIT_NOTE_ID_SYSTEM,
    OH_REFERRAL_ID_SYSTEM,
    Entries,
    concept,
    employment_components,
    event_id,
    logical_ref,
    message_bundle,
    message_header,
    org_identifier,
    patient_resource,
)
from schemas.sources import OhReferralMessage
from schemas.vocab import HUB, ORG_ID_SYSTEM, Category, EventType

KIND = "oh-referral"

__all__ = [
    "KIND",
    "adapt_oh_referral",
    "referral_bundle",
    "referral_request",
    "referral_task",
    "work_context",
    "OH_REFERRAL_CODE_SYSTEM",
    "REFERRER_TYPE_SYSTEM",
    "WORK_CONTEXT_SYSTEM",
    "TASK_CODE_SYSTEM",
    "OBSERVATION_CATEGORY_SYSTEM",
    "EXT_REFERRER_TYPE",
    "EXT_EMPLOYER",
]

OH_REFERRAL_CODE_SYSTEM = f"{HUB}/CodeSystem/oh-referral"
REFERRER_TYPE_SYSTEM = f"{HUB}/CodeSystem/referrer-type"
WORK_CONTEXT_SYSTEM = f"{HUB}/CodeSystem/work-context"
TASK_CODE_SYSTEM = "http://hl7.org/fhir/CodeSystem/task-code"
OBSERVATION_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
EXT_REFERRER_TYPE = f"{HUB}/StructureDefinition/referrer-type"
EXT_EMPLOYER = f"{HUB}/StructureDefinition/employer"

_REFERRER_DISPLAY: dict[str, str] = {
    "gp": "GP",
    "employer": "Employer",
    "self": "Self-referral",
    "work-coach": "Jobcentre work coach",
    "hospital": "Hospital (discharge team)",
    "msk-service": "Musculoskeletal (MSK) service",
    "mental-health-service": "Mental health service",
    "absence-milestone": "The hub: 28-day absence milestone",  # adapters.milestone only
}
_OH_ASSESSMENT = ("occupational-health-assessment", "Occupational health assessment")
_REFERRAL = Category.REFERRAL.value

# The entries a referral-shaped bundle may hold (the milestone uses the same roles).
ROLES = ("message-header", "patient", "referrer", "work-context", "service-request", "task")


def work_context(
    entries: Entries,
    *,
    effective: date,
    employment_status: str | None,
    employer_id: str | None = None,
    occupation: str | None = None,
    safety_critical_role: bool | None = None,
    absence_started_on: date | None = None,
) -> dict[str, Any]:
    """The work and absence context Observation (role ``work-context``), labelled referral."""
    obs = entries.skeleton("Observation", "work-context", _REFERRAL)
    if employer_id:
        obs["extension"] = [{"url": EXT_EMPLOYER, "valueIdentifier": org_identifier(employer_id)}]
    obs["status"] = "final"
    obs["category"] = [concept(OBSERVATION_CATEGORY_SYSTEM, "social-history", "Social History")]
    obs["code"] = concept(WORK_CONTEXT_SYSTEM, "work-context", "Work and absence context")
    obs["subject"] = entries.ref("patient")
    obs["effectiveDateTime"] = effective.isoformat()
    components: list[dict[str, Any]] = []
    if employment_status:
        components.extend(employment_components(WORK_CONTEXT_SYSTEM, employment_status, occupation))
    if safety_critical_role is not None:
        components.append({"code": concept(WORK_CONTEXT_SYSTEM, "safety-critical-role", "Safety-critical role"),
                           "valueBoolean": safety_critical_role})
    if absence_started_on is not None:
        components.append({"code": concept(WORK_CONTEXT_SYSTEM, "absence-started-on",
                                           "Sickness absence started on"),
                           "valueDateTime": absence_started_on.isoformat()})
    if components:
        obs["component"] = components
    return obs


def referral_request(
    entries: Entries,
    *,
    identifier: dict[str, Any],
    intent: str,
    priority: str,
    authored_on: date,
    requester: dict[str, Any],
    referrer_type: str,
    reason: dict[str, Any],
    notes: tuple[str, ...] = (),
    performer: str | None = None,
    supporting: tuple[dict[str, Any], ...] = (),
) -> dict[str, Any]:
    """The referral as a ServiceRequest (role ``service-request``), labelled referral."""
    sr = entries.skeleton("ServiceRequest", "service-request", _REFERRAL)
    sr["extension"] = [{"url": EXT_REFERRER_TYPE, "valueCodeableConcept": concept(
        REFERRER_TYPE_SYSTEM, referrer_type, _REFERRER_DISPLAY[referrer_type])}]
    sr["identifier"] = [identifier]
    sr["status"] = "active"
    sr["intent"] = intent
    sr["code"] = concept(OH_REFERRAL_CODE_SYSTEM, *_OH_ASSESSMENT)
    sr["priority"] = priority
    sr["subject"] = entries.ref("patient")
    sr["authoredOn"] = authored_on.isoformat()
    sr["requester"] = requester
    if performer:
        sr["performer"] = [logical_ref(ORG_ID_SYSTEM, performer, resource_type="Organization")]
    sr["reasonCode"] = [reason]
    if supporting:
        sr["supportingInfo"] = list(supporting)
    if notes:
        sr["note"] = [{"text": text} for text in notes]
    return sr


def referral_task(
    entries: Entries, *, intent: str, priority: str, authored_on: date, requester: dict[str, Any],
    description: str,
) -> dict[str, Any]:
    """The recipient's work item (role ``task``): fulfil the ServiceRequest."""
    task = entries.skeleton("Task", "task", _REFERRAL)
    task["basedOn"] = [entries.ref("service-request")]
    task["status"] = "requested"
    task["intent"] = intent
    task["priority"] = priority
    task["code"] = concept(TASK_CODE_SYSTEM, "fulfill", "Fulfill the focal request")
    task["description"] = description
    task["focus"] = entries.ref("service-request")
    task["for"] = entries.ref("patient")
    task["authoredOn"] = authored_on.isoformat()
    task["requester"] = requester
    return task


def referral_bundle(msg: OhReferralMessage, *, event_id: str, now: datetime) -> dict[str, Any]:
    """The canonical bundle of one validated OH referral (see module docstring)."""
    r = msg.referral
    source = msg.source.org_id
    entries = Entries(event_id, ROLES)
    resources: list[tuple[str, dict[str, Any]]] = [
        ("message-header", message_header(
            entries, event_type=EventType.OH_REFERRAL_REQUESTED, sender_org_id=source,
            source_name=msg.source.system, focus=("service-request", "task"))),
        ("patient", patient_resource(r.patient, resource_id=entries.ids["patient"])),
    ]
    referrer = r.referrer
    if referrer.type == "self":
        requester = entries.ref("patient")
    else:
        assert referrer.org_id is not None  # the model requires it unless self
        org = entries.skeleton("Organization", "referrer", _REFERRAL)
        org["identifier"] = [org_identifier(referrer.org_id)]
        resources.append(("referrer", org))
        requester = entries.ref("referrer", referrer.name)

    employment = r.employment
    resources.append(("work-context", work_context(
        entries,
        effective=r.created_on,
        employment_status=employment.status if employment else None,
        employer_id=employment.employer_id if employment else None,
        occupation=employment.occupation if employment else None,
        safety_critical_role=r.safety_critical_role,
        absence_started_on=r.absence_started_on,
    )))
    supporting: list[dict[str, Any]] = [entries.ref("work-context")]
    if r.related_fit_note_id:
        supporting.append(logical_ref(FIT_NOTE_ID_SYSTEM, r.related_fit_note_id,
                                      resource_type="Observation", display="Related fit note"))
    resources.append(("service-request", referral_request(
        entries,
        identifier={"system": OH_REFERRAL_ID_SYSTEM, "value": r.id,
                    "assigner": {"identifier": org_identifier(source)}},
        intent="order",
        priority=r.urgency,
        authored_on=r.created_on,
        requester=requester,
        referrer_type=referrer.type,
        reason={"text": r.reason},
        notes=r.questions or (),
        performer=r.preferred_provider_id,
        supporting=tuple(supporting),
    )))
    resources.append(("task", referral_task(
        entries, intent="order", priority=r.urgency, authored_on=r.created_on, requester=requester,
        description="Occupational health referral: assess and advise on fitness for work and adjustments",
    )))
    return message_bundle(event_id, entries, resources, now=now)


def adapt_oh_referral(msg: OhReferralMessage, *, now: datetime) -> CanonicalEvent:
    """The canonical event of an OH referral that has passed every field rule.

    The event id is (kind, source org, referral id, version 1): referrals carry no
    version, so a resend of the same referral id is the same event."""
    r = msg.referral
    eid = event_id(KIND, msg.source.org_id, r.id, 1)
    employment = r.employment
    facts = Facts(
        nhs_number=r.patient.nhs_number,
        postcode_area=r.patient.postcode_area,
        employment_status=employment.status if employment else None,
        employer_id=employment.employer_id if employment else None,
        preferred_provider_id=r.preferred_provider_id,
        referrer_org_id=r.referrer.org_id,
        referrer_type=r.referrer.type,
        urgency=r.urgency,
        related_fit_note_id=r.related_fit_note_id,
        safety_critical_role=r.safety_critical_role,
        document_id=r.id,
        version=1,
        absence_started_on=r.absence_started_on,
    )
    return message_event(msg, r, kind=KIND, event_id=eid, event_type=EventType.OH_REFERRAL_REQUESTED,
                         facts=facts, bundle=referral_bundle(msg, event_id=eid, now=now))
