"""Adapter for inbound kind `access-to-work` (§2): a validated `AccessToWorkMessage`
-> `CanonicalEvent` of type `access-to-work-requested`.

The bundle
----------
==============  ========================  ==================================
resource        data category             refers to
==============  ========================  ==================================
MessageHeader   atw-application (core)    focus -> Task
Patient         identity (+contact)       -
Task            atw-application           Patient
==============  ========================  ==================================

The application is a request for DWP to act, so it is a `Task` (status
`requested`, intent `order`, `code` "Access to Work application" in the hub code
system `access-to-work`), `for` and `requester` the Patient, `authoredOn` the
submission date, `identifier` the application id (system
`ATW_APPLICATION_ID_SYSTEM`, assigned by the publisher). What the person asks
for is `Task.input`, each typed by a code of the same code system:

* `support-requested`, once per kind of support, valueCodeableConcept in the hub
  code system `access-to-work-support` (the six kinds of DOMAIN.md);
* `barriers` (valueString): how the condition affects the work;
* `nation` (valueCodeableConcept, hub code system `nation`): which scheme applies;
* the job: `employment-status` (the hub's employment-status codes), `employer`
  (valueIdentifier), `job-title`, `hours-per-week` (valueDecimal) and
  `workplace-contact`.

The Patient carries the NHS number and the National Insurance number (system
`https://fhir.hl7.org.uk/Id/nino`) as identity, postcode and email as contact.

`oh_outcome_ref` names the OH outcome that recommended this support; it is
`Task.basedOn`, a reference by identifier to that outcome's CarePlan (system
`OH_OUTCOME_ID_SYSTEM`, the identifier `adapters.oh_outcome` gives the CarePlan),
not a copy of it. The requested support is not split into a separate
`adapters`-labelled resource: in this message it *is* the application (the
person's request, not an OH recommendation), the only recipient type that may
have `atw-application` (access-to-work) may have `adjustments` too, and no
other recipient gets this event, so a split would protect nothing. The whole
Task is therefore `atw-application`.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from adapters.common import message_event
from schemas.events import CanonicalEvent, Facts
from schemas.fhir import (
    ATW_APPLICATION_ID_SYSTEM,
    OH_OUTCOME_ID_SYSTEM,
    Entries,
    concept,
    employment_status_concept,
    event_id,
    logical_ref,
    message_bundle,
    message_header,
    org_identifier,
    patient_resource,
)
from schemas.sources import AccessToWorkMessage
from schemas.vocab import HUB, Category, EventType

KIND = "access-to-work"

__all__ = [
    "KIND",
    "adapt_access_to_work",
    "access_to_work_bundle",
    "ATW_CODE_SYSTEM",
    "ATW_SUPPORT_SYSTEM",
    "NATION_SYSTEM",
]

ATW_CODE_SYSTEM = f"{HUB}/CodeSystem/access-to-work"
ATW_SUPPORT_SYSTEM = f"{HUB}/CodeSystem/access-to-work-support"
NATION_SYSTEM = f"{HUB}/CodeSystem/nation"

SUPPORT_DISPLAY: dict[str, str] = {
    "special-aids-equipment": "Special aids and equipment",
    "adaptations-to-premises": "Adaptations to premises",
    "support-worker": "Support worker",
    "travel-to-work": "Travel to work",
    "communication-support-at-interview": "Communication support at interview",
    "mental-health-support": "Mental health support service",
}
_NATION_DISPLAY: dict[str, str] = {"england": "England", "scotland": "Scotland", "wales": "Wales"}
_ROLES = ("message-header", "patient", "application")


def _input(code: str, display: str, value_type: str, value: Any) -> dict[str, Any]:
    return {"type": concept(ATW_CODE_SYSTEM, code, display), value_type: value}


def access_to_work_bundle(msg: AccessToWorkMessage, *, event_id: str, now: datetime) -> dict[str, Any]:
    """The canonical bundle of one validated Access to Work application (see module docstring)."""
    app = msg.application
    source = msg.source.org_id
    entries = Entries(event_id, _ROLES)

    inputs = [
        _input("support-requested", "Support requested", "valueCodeableConcept",
               concept(ATW_SUPPORT_SYSTEM, kind, SUPPORT_DISPLAY[kind]))
        for kind in app.support_requested
    ]
    inputs.append(_input("barriers", "Barriers at work", "valueString", app.barriers))
    inputs.append(_input("nation", "Nation", "valueCodeableConcept",
                         concept(NATION_SYSTEM, app.nation, _NATION_DISPLAY[app.nation])))
    job = app.employment
    inputs.append(_input("employment-status", "Employment status", "valueCodeableConcept",
                         employment_status_concept(job.status)))
    if job.employer_id:
        inputs.append(_input("employer", "Employer", "valueIdentifier", org_identifier(job.employer_id)))
    if job.job_title:
        inputs.append(_input("job-title", "Job title", "valueString", job.job_title))
    if job.hours_per_week is not None:
        inputs.append(_input("hours-per-week", "Hours per week", "valueDecimal", job.hours_per_week))
    if job.workplace_contact:
        inputs.append(_input("workplace-contact", "Workplace contact", "valueString", job.workplace_contact))

    task = entries.skeleton("Task", "application", Category.ATW_APPLICATION)
    task["identifier"] = [{"system": ATW_APPLICATION_ID_SYSTEM, "value": app.id,
                           "assigner": {"identifier": org_identifier(source)}}]
    if app.oh_outcome_ref:
        task["basedOn"] = [logical_ref(OH_OUTCOME_ID_SYSTEM, app.oh_outcome_ref, resource_type="CarePlan",
                                       display="OH outcome recommending this support")]
    task["status"] = "requested"
    task["intent"] = "order"
    task["code"] = concept(ATW_CODE_SYSTEM, "application", "Access to Work application")
    task["description"] = "Access to Work application: " + ", ".join(
        SUPPORT_DISPLAY[kind].lower() for kind in app.support_requested)
    task["for"] = entries.ref("patient")
    task["authoredOn"] = app.submitted_on.isoformat()
    task["requester"] = entries.ref("patient")
    task["input"] = inputs

    return message_bundle(event_id, entries, (
        ("message-header", message_header(
            entries, event_type=EventType.ACCESS_TO_WORK_REQUESTED, sender_org_id=source,
            source_name=msg.source.system, focus=("application",))),
        ("patient", patient_resource(app.applicant, resource_id=entries.ids["patient"])),
        ("application", task),
    ), now=now)


def adapt_access_to_work(msg: AccessToWorkMessage, *, now: datetime) -> CanonicalEvent:
    """The canonical event of an Access to Work application that has passed every
    field rule; event id (kind, source org, application id, version 1)."""
    app = msg.application
    eid = event_id(KIND, msg.source.org_id, app.id, 1)
    facts = Facts(
        nhs_number=app.applicant.nhs_number,
        postcode_area=app.applicant.postcode_area,
        nation=app.nation,
        employment_status=app.employment.status,
        employer_id=app.employment.employer_id,
        support_requested=app.support_requested,
        oh_outcome_id=app.oh_outcome_ref,
        document_id=app.id,
        version=1,
    )
    return message_event(msg, app, kind=KIND, event_id=eid, event_type=EventType.ACCESS_TO_WORK_REQUESTED,
                         facts=facts, bundle=access_to_work_bundle(msg, event_id=eid, now=now))
