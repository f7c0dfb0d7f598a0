"""FHIR R4B builders for canonical events (contract §3), as plain JSON dicts.

These run once per accepted message, so they build dicts directly (no
fhir.resources models: validating through them costs milliseconds; the tests
validate the output against fhir.resources R4B instead).

Bundle layout
-------------
A `Bundle` of type `message`; `Bundle.identifier` = {`vocab.EVENT_ID_SYSTEM`, event id};
every entry has `fullUrl` ``urn:uuid:<uuid5(event id, role)>`` and the resource's
`id` is the same UUID, so a re-built event is byte-for-byte the same bundle apart
from `timestamp`. References between entries use those fullUrls. Entries, in order:

=================  ==========================  ==================================
resource           data category (meta.security) refers to
=================  ==========================  ==================================
MessageHeader      core category of the event  focus -> fit note
Patient            identity (+ contact)        -
Practitioner       fitness-advice              -
PractitionerRole   fitness-advice              Practitioner, Organization
Organization       fitness-advice              -
Observation        fitness-advice              Patient, PractitionerRole
  (the fit note)
Condition          diagnosis                   Patient, PractitionerRole
=================  ==========================  ==================================

References only point from a resource to resources whose categories any
recipient of that resource also has: every delivery holds identity (the
Patient) and the core category (fitness-advice) or it is not made at all (§5),
so dropping diagnosis or contact never leaves a kept resource pointing at a
dropped one. Nothing points *at* the Condition; MessageHeader.focus names only
the fit note, and projection filters focus anyway.

The fit note as an Observation
------------------------------
There is no FHIR or UK Core profile for the statutory fit note (MED3). An
`Observation` fits it best: the fit note *is* a clinician's assessment of a
person at a point in time, with a coded result and structured parts.

* `code`: hub code system `fit-note` ("Statement of fitness for work");
* `valueCodeableConcept`: `not-fit` / `may-be-fit` (same code system) - the result;
* `effectivePeriod`: the period the note covers;
* `component`: the four may-be-fit advice options (valueBoolean, only when advice
  was given), functional effects (valueString), whether a follow-up assessment is
  needed (valueBoolean), and the person's employment status / occupation
  (what the advice is about); all of it is fitness-advice;
* `issued`: the instant this version was made available (`sent_at`; FHIR's
  `issued` is an instant, the note's own dates are calendar dates);
* `identifier`: the note id (system `.../Id/fit-note`, assigned by the source org);
  extensions carry the `version` (valuePositiveInt), `replaces` (valueIdentifier),
  the statement date `issued_on` and `assessed_on` (valueDate);
* `status`: `final`, or `amended` for a correction (version > 1). A note that
  `replaces` another is a new note in its own right, hence `final`;
* `subject` -> Patient, `performer` -> PractitionerRole (profession + practice).

The diagnosis is kept out of the Observation on purpose: it is a separate
`Condition` (category diagnosis) so it can be withheld from an employer by
dropping one entry. Codes are the hub's own code systems (under `vocab.HUB`)
except SNOMED CT for the condition, the UK Core identifier systems (NHS number,
ODS code, professional registration numbers) and the contract's systems.

Shared building blocks
----------------------
The other kinds (`adapters.oh_referral`, `adapters.access_to_work`,
`adapters.oh_outcome`, `adapters.milestone`) build their bundles in their own
modules from the same parts, defined here once: `Entries` (entry ids, fullUrls
and references of one event), `labelled` (a resource skeleton with its
`meta.security`), `message_header`, `patient_resource` (NHS number, NI number,
name, birth date, postcode, email, phone; labelled by `patient_categories`
from `PATIENT_ELEMENT_CATEGORIES`, which `hub.projection` cuts by too),
`concept` / `logical_ref` / `org_identifier`, `employment_components` and
`message_bundle`. Identifier systems that more than one kind refers to (a
referral id, an outcome id, a fit note id) live here as well.
"""
from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.sources import FitNoteMessage, Patient
from schemas.vocab import (
    CATEGORY_SYSTEM,
    CORE_CATEGORY,
    EVENT_ID_SYSTEM,
    EVENT_TYPE_SYSTEM,
    HUB,
    NHS_NUMBER_SYSTEM,
    ODS_SYSTEM,
    ORG_ID_SYSTEM,
    Category,
    EventType,
)

__all__ = [
    "EVENT_ID_NAMESPACE",
    "event_id",
    "entry_uuid",
    "instant",
    "resource_categories",
    "bundle_categories",
    "security_labels",
    "Entries",
    "labelled",
    "concept",
    "logical_ref",
    "org_identifier",
    "message_header",
    "PATIENT_ELEMENT_CATEGORIES",
    "patient_categories",
    "patient_resource",
    "employment_status_concept",
    "employment_components",
    "message_bundle",
    "fit_note_bundle",
    "NINO_SYSTEM",
    "OH_REFERRAL_ID_SYSTEM",
    "OH_OUTCOME_ID_SYSTEM",
    "ATW_APPLICATION_ID_SYSTEM",
    "ABSENCE_EPISODE_ID_SYSTEM",
    "HUB_ORG_ID",
    "HUB_NAME",
    "FIT_NOTE_CODE_SYSTEM",
    "FIT_NOTE_ID_SYSTEM",
    "PROFESSION_SYSTEM",
    "EMPLOYMENT_STATUS_SYSTEM",
    "SNOMED_SYSTEM",
    "EXT_FIT_NOTE_VERSION",
    "EXT_FIT_NOTE_REPLACES",
    "EXT_FIT_NOTE_ISSUED_ON",
    "EXT_FIT_NOTE_ASSESSED_ON",
    "EXT_SHARE_WITH_EMPLOYER",
]

# uuid5(NAMESPACE_URL, vocab.EVENT_ID_SYSTEM), written out so it can never drift.
EVENT_ID_NAMESPACE = uuid.UUID("f1939d59-c394-5674-88ab-4f3e9c47b1d0")

FIT_NOTE_CODE_SYSTEM = f"{HUB}/CodeSystem/fit-note"
PROFESSION_SYSTEM = f"{HUB}/CodeSystem/fit-note-profession"
EMPLOYMENT_STATUS_SYSTEM = f"{HUB}/CodeSystem/employment-status"
FIT_NOTE_ID_SYSTEM = f"{HUB}/Id/fit-note"
SNOMED_SYSTEM = "http://snomed.info/sct"
EXT_FIT_NOTE_VERSION = f"{HUB}/StructureDefinition/fit-note-version"
EXT_FIT_NOTE_REPLACES = f"{HUB}/StructureDefinition/fit-note-replaces"
EXT_FIT_NOTE_ISSUED_ON = f"{HUB}/StructureDefinition/fit-note-issued-on"
EXT_FIT_NOTE_ASSESSED_ON = f"{HUB}/StructureDefinition/fit-note-assessed-on"
EXT_SHARE_WITH_EMPLOYER = f"{HUB}/StructureDefinition/share-with-employer"
# Identifiers of source documents, assigned by the publishing organisation.
OH_REFERRAL_ID_SYSTEM = f"{HUB}/Id/oh-referral"
OH_OUTCOME_ID_SYSTEM = f"{HUB}/Id/oh-outcome"
ATW_APPLICATION_ID_SYSTEM = f"{HUB}/Id/access-to-work-application"
ABSENCE_EPISODE_ID_SYSTEM = f"{HUB}/Id/absence-episode"
NINO_SYSTEM = "https://fhir.hl7.org.uk/Id/nino"
# The hub itself, as the sender of the events it makes (absence-milestone).
HUB_ORG_ID = "HUB"
HUB_NAME = "Health and work integration hub"

_UK_CORE_ID = "https://fhir.hl7.org.uk/Id"
# The regulator that registers each certifying profession, and its UK Core identifier system.
_REGISTRATION: dict[str, tuple[str, str]] = {
    "gp": ("GMC", f"{_UK_CORE_ID}/gmc-number"),
    "hospital-doctor": ("GMC", f"{_UK_CORE_ID}/gmc-number"),
    "nurse": ("NMC", f"{_UK_CORE_ID}/nmc-number"),
    "pharmacist": ("GPHC", f"{_UK_CORE_ID}/gphc-number"),
    "occupational-therapist": ("HCPC", f"{_UK_CORE_ID}/hcpc-number"),
    "physiotherapist": ("HCPC", f"{_UK_CORE_ID}/hcpc-number"),
}
_PROFESSION_DISPLAY: dict[str, str] = {
    "gp": "General practitioner",
    "hospital-doctor": "Hospital doctor",
    "nurse": "Nurse",
    "pharmacist": "Pharmacist",
    "occupational-therapist": "Occupational therapist",
    "physiotherapist": "Physiotherapist",
}
_ASSESSMENT_DISPLAY: dict[str, str] = {
    "not-fit": "Not fit for work",
    "may-be-fit": "May be fit for work taking account of advice",
}
_ADVICE: tuple[tuple[str, str, str], ...] = (
    ("phased_return", "phased-return", "Phased return to work"),
    ("altered_hours", "altered-hours", "Altered hours"),
    ("amended_duties", "amended-duties", "Amended duties"),
    ("workplace_adaptations", "workplace-adaptations", "Workplace adaptations"),
)
_EMPLOYMENT_DISPLAY: dict[str, str] = {
    "employed": "Employed",
    "self-employed": "Self-employed",
    "unemployed": "Unemployed",
    "job-to-start": "Job to start",
}
_EVENT_DISPLAY: dict[str, str] = {
    EventType.FIT_NOTE_ISSUED: "Fit note issued",
    EventType.FIT_NOTE_SUPERSEDED: "Fit note superseded",
    EventType.OH_REFERRAL_REQUESTED: "Occupational health referral requested",
    EventType.ACCESS_TO_WORK_REQUESTED: "Access to Work requested",
    EventType.OH_OUTCOME_REPORTED: "Occupational health outcome reported",
    EventType.ABSENCE_MILESTONE: "Absence milestone reached",
}


# ----------------------------------------------------------------------- helpers


def uuid5(namespace: uuid.UUID | bytes, name: str) -> str:
    """`str(uuid.uuid5(namespace, name))`, about four times faster (no UUID objects):
    the hub makes several per event (event, entry and decision ids)."""
    digest = bytearray(hashlib.sha1((namespace if isinstance(namespace, bytes) else namespace.bytes)
                                    + name.encode()).digest()[:16])
    return _uuid_text(digest, 5)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ordered_uuid(at: datetime, namespace: uuid.UUID, name: str) -> str:
    """A UUID (version 8, RFC 9562) that sorts by time: the first 48 bits are `at` in
    Unix milliseconds, as in version 7, and the rest come from SHA-1 of `namespace`
    and `name`, so the same name at the same instant gives the same id. For rows
    written by the thousand whose ids are indexed: each new id lands at the end of
    the index, where the ids just written are, instead of on a random page of it
    (`python -m bench.pages`: a random id cost a page written to SQLite's log per row)."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("an ordered uuid needs a timezone-aware datetime")
    ms = (at - _EPOCH) // timedelta(milliseconds=1) & 0xFFFF_FFFF_FFFF  # (integers: no float rounding)
    digest = bytearray(ms.to_bytes(6, "big") + hashlib.sha1(namespace.bytes + name.encode()).digest()[:10])
    return _uuid_text(digest, 8)


def _uuid_text(digest: bytearray, version: int) -> str:
    """16 bytes as a UUID's text, with its version and the RFC 4122 variant set."""
    digest[6] = (digest[6] & 0x0F) | (version << 4)
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def event_id(kind: str, source_org_id: str, document_id: str, version: int) -> str:
    """The event id (§3): stable for a source document version, so a resent message
    (even under a new message_id) yields the same id and is recognised as a duplicate."""
    return uuid5(EVENT_ID_NAMESPACE, f"{kind}|{source_org_id}|{document_id}|{version}")


def entry_uuid(event: str, role: str) -> str:
    """The UUID of one entry of an event's bundle: uuid5(event id, role)."""
    return uuid5(uuid.UUID(event), role)


def instant(moment: datetime) -> str:
    """A FHIR `instant` in UTC with millisecond precision: 2026-11-20T09:15:00.000Z."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("a FHIR instant needs a timezone-aware datetime")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def security_labels(*categories: str) -> list[dict[str, str]]:
    """`meta.security` codings naming data categories (§5)."""
    return [{"system": CATEGORY_SYSTEM, "code": str(c)} for c in categories]


def resource_categories(resource: dict[str, Any]) -> frozenset[str]:
    """The data categories a resource's `meta.security` names (other systems ignored)."""
    meta = resource.get("meta")
    labels = meta.get("security") if meta else None
    if not labels:
        return _NONE
    return frozenset([label["code"] for label in labels
                      if label.get("system") == CATEGORY_SYSTEM and label.get("code")])


_NONE: frozenset[str] = frozenset()


def bundle_categories(bundle: dict[str, Any]) -> frozenset[str]:
    """Every data category a (projected) bundle gives its reader."""
    return frozenset().union(*(resource_categories(e["resource"]) for e in bundle.get("entry", ())))


class Entries:
    """The entries of one event's bundle, by role: ids, fullUrls and references.

    Each role's id is `entry_uuid(event id, role)` and its fullUrl ``urn:uuid:<id>``,
    so a rebuilt event has the same ids."""

    __slots__ = ("ids", "urls")

    def __init__(self, event: str, roles: Iterable[str]) -> None:
        namespace = uuid.UUID(event).bytes
        self.ids = {role: uuid5(namespace, role) for role in roles}
        self.urls = {role: f"urn:uuid:{value}" for role, value in self.ids.items()}

    def ref(self, role: str, display: str | None = None) -> dict[str, str]:
        """A reference to the entry of `role` (KeyError if the bundle has no such role)."""
        out = {"reference": self.urls[role]}
        if display:
            out["display"] = display
        return out

    def skeleton(self, resource_type: str, role: str, *categories: str) -> dict[str, Any]:
        """`labelled(resource_type, self.ids[role], *categories)`."""
        return labelled(resource_type, self.ids[role], *categories)


def labelled(resource_type: str, resource_id: str, *categories: str) -> dict[str, Any]:
    """A resource's first elements: type, id and its data-category labels."""
    return {
        "resourceType": resource_type,
        "id": resource_id,
        "meta": {"security": security_labels(*categories)},
    }


def concept(system: str, code: str, display: str) -> dict[str, Any]:
    """A CodeableConcept of one coding, with the display as its text."""
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}




def org_identifier(org_id: str, *, nhs: bool = False) -> dict[str, str]:
    """An organisation's identifier: an NHS organisation's ODS code in the ODS
    system (contract §3, as UK Core does); any other by its directory id."""
    return {"system": ODS_SYSTEM if nhs else ORG_ID_SYSTEM, "value": org_id}


def logical_ref(
    system: str, value: str, *, resource_type: str | None = None, display: str | None = None
) -> dict[str, Any]:
    """A reference by business identifier to something not in the bundle
    (an organisation, an earlier referral, fit note or outcome)."""
    out: dict[str, Any] = {}
    if resource_type:
        out["type"] = resource_type
    out["identifier"] = {"system": system, "value": value}
    if display:
        out["display"] = display
    return out


def message_header(
    entries: Entries,
    *,
    event_type: EventType | str,
    sender_org_id: str,
    source_name: str,
    focus: Sequence[str],
    sender_nhs: bool = False,
) -> dict[str, Any]:
    """The MessageHeader (role ``message-header``), labelled with the event's core
    category. `destination` is filled in per recipient by hub.projection.
    `sender_nhs`: the sender is an NHS organisation, named by its ODS code."""
    event_type = EventType(event_type)
    header = entries.skeleton("MessageHeader", "message-header", CORE_CATEGORY[event_type])
    header["eventCoding"] = {
        "system": EVENT_TYPE_SYSTEM,
        "code": event_type.value,
        "display": _EVENT_DISPLAY[event_type],
    }
    header["sender"] = {"identifier": org_identifier(sender_org_id, nhs=sender_nhs)}
    header["source"] = {"name": source_name, "endpoint": f"{ORG_ID_SYSTEM}/{sender_org_id}"}
    header["focus"] = [entries.ref(role) for role in focus]
    return header


# A Patient's elements and the category each holds (§5): hub.projection cuts by this.
PATIENT_ELEMENT_CATEGORIES: dict[str, Category] = {
    "identifier": Category.IDENTITY,
    "name": Category.IDENTITY,
    "birthDate": Category.IDENTITY,
    "address": Category.CONTACT,
    "telecom": Category.CONTACT,
}


def patient_categories(patient: dict[str, Any]) -> list[str]:
    """The categories a Patient resource holds, from the elements it has: identity,
    plus contact when it has an address or telecom (identity first, for stable labels)."""
    return list(dict.fromkeys(c.value for e, c in PATIENT_ELEMENT_CATEGORIES.items() if e in patient))


def patient_resource(person: Patient, *, resource_id: str) -> dict[str, Any]:
    """The Patient of a source message's person: NHS number (and NI number when the
    model has one), name, birth date, postcode, email and phone when given."""
    patient: dict[str, Any] = {"resourceType": "Patient", "id": resource_id, "meta": None}
    identifiers = [{"system": NHS_NUMBER_SYSTEM, "value": person.nhs_number}]
    # Not every source's person model has these fields: read them from the instance's
    # values (a missing attribute costs pydantic an exception, 3% of the hot path).
    values = person.__dict__
    nino = values.get("national_insurance_number")
    if nino:
        identifiers.append({"system": NINO_SYSTEM, "value": nino})
    patient["identifier"] = identifiers
    patient["name"] = [{"use": "official", "family": person.name.family, "given": [person.name.given]}]
    telecom = []
    phone = values.get("phone")
    if phone:
        telecom.append({"system": "phone", "value": phone, "use": "home"})
    email = values.get("email")
    if email:
        telecom.append({"system": "email", "value": email, "use": "home"})
    if telecom:
        patient["telecom"] = telecom
    if person.birth_date is not None:
        patient["birthDate"] = person.birth_date.isoformat()
    if person.postcode:
        patient["address"] = [{"use": "home", "postalCode": person.postcode}]
    patient["meta"] = {"security": security_labels(*patient_categories(patient))}
    return patient


def employment_status_concept(status: str) -> dict[str, Any]:
    return concept(EMPLOYMENT_STATUS_SYSTEM, status, _EMPLOYMENT_DISPLAY[status])


def employment_components(system: str, status: str, occupation: str | None) -> list[dict[str, Any]]:
    """Observation components for a person's employment status and occupation,
    coded in `system` (the fit note's code system, or the referral's)."""
    out = [{"code": concept(system, "employment-status", "Employment status"),
            "valueCodeableConcept": employment_status_concept(status)}]
    if occupation:
        out.append({"code": concept(system, "occupation", "Occupation"), "valueString": occupation})
    return out


def message_bundle(
    event: str, entries: Entries, resources: Iterable[tuple[str, dict[str, Any]]], *, now: datetime
) -> dict[str, Any]:
    """The message Bundle of an event: (role, resource) pairs in order, the
    MessageHeader first."""
    return {
        "resourceType": "Bundle",
        "id": event,
        "identifier": {"system": EVENT_ID_SYSTEM, "value": event},
        "type": "message",
        "timestamp": instant(now),
        "entry": [{"fullUrl": entries.urls[role], "resource": res} for role, res in resources],
    }


def _registration_identifier(profession: str, registration: str) -> dict[str, str]:
    regulator, system = _REGISTRATION[profession]
    value = registration.strip()
    head, _, rest = value.partition(" ")
    if rest.strip() and head.rstrip(":").upper() == regulator:
        value = rest.strip()  # "GMC 7012345" -> "7012345"
    return {"system": system, "value": value}


# ---------------------------------------------------------------------- fit note

_FIT_NOTE_ROLES = (
    "message-header",
    "patient",
    "practitioner",
    "practitioner-role",
    "organization",
    "fit-note",
    "condition",
)


def fit_note_bundle(
    msg: FitNoteMessage, *, event_id: str, event_type: EventType | str, now: datetime
) -> dict[str, Any]:
    """The canonical event bundle of one validated fit note message (see module docstring)."""
    note = msg.fit_note
    entries = Entries(event_id, _FIT_NOTE_ROLES)
    ref = entries.ref
    fitness = Category.FITNESS_ADVICE.value

    # The publisher is the issuing practice when its id is the practice's ODS code (§1:
    # a source's org_id is its directory id or ODS code): an NHS organisation, by ODS code.
    by_ods = msg.source.org_id == note.issuer.organisation.ods_code
    header = message_header(entries, event_type=event_type, sender_org_id=msg.source.org_id,
                            source_name=msg.source.system, focus=("fit-note",), sender_nhs=by_ods)
    patient = patient_resource(note.patient, resource_id=entries.ids["patient"])

    # --- The issuer: Practitioner, PractitionerRole (profession at the practice), Organization.
    issuer = note.issuer
    practitioner = entries.skeleton("Practitioner", "practitioner", fitness)
    practitioner["name"] = [{"text": issuer.name}]
    if issuer.registration:
        practitioner["identifier"] = [_registration_identifier(issuer.profession, issuer.registration)]
    role = entries.skeleton("PractitionerRole", "practitioner-role", fitness)
    role["practitioner"] = ref("practitioner")
    role["organization"] = ref("organization")
    role["code"] = [concept(PROFESSION_SYSTEM, issuer.profession, _PROFESSION_DISPLAY[issuer.profession])]
    org = issuer.organisation
    organization = entries.skeleton("Organization", "organization", fitness)
    organization["identifier"] = [{"system": ODS_SYSTEM, "value": org.ods_code}]
    if issuer.setting:
        organization["type"] = [{"text": issuer.setting}]
    if org.name:
        organization["name"] = org.name

    # --- The fit note itself.
    extensions: list[dict[str, Any]] = [
        {"url": EXT_FIT_NOTE_VERSION, "valuePositiveInt": note.version},
        {"url": EXT_FIT_NOTE_ISSUED_ON, "valueDate": note.issued_on.isoformat()},
    ]
    if note.assessed_on is not None:
        extensions.append({"url": EXT_FIT_NOTE_ASSESSED_ON, "valueDate": note.assessed_on.isoformat()})
    if note.replaces:
        extensions.append(
            {"url": EXT_FIT_NOTE_REPLACES,
             "valueIdentifier": {"system": FIT_NOTE_ID_SYSTEM, "value": note.replaces}}
        )
    components: list[dict[str, Any]] = []
    if note.may_be_fit_advice is not None:
        advice = note.may_be_fit_advice
        for attr, code, display in _ADVICE:
            components.append(
                {"code": concept(FIT_NOTE_CODE_SYSTEM, code, display),
                 "valueBoolean": getattr(advice, attr)}
            )
    if note.functional_effects:
        components.append(
            {"code": concept(FIT_NOTE_CODE_SYSTEM, "functional-effects",
                             "Functional effects of the condition"),
             "valueString": note.functional_effects}
        )
    if note.follow_up_assessment_needed is not None:
        components.append(
            {"code": concept(FIT_NOTE_CODE_SYSTEM, "follow-up-assessment-needed",
                             "Follow-up assessment needed at the end of the period"),
             "valueBoolean": note.follow_up_assessment_needed}
        )
    if note.employment is not None:
        components.extend(employment_components(
            FIT_NOTE_CODE_SYSTEM, note.employment.status, note.employment.occupation))
    fit_note = entries.skeleton("Observation", "fit-note", fitness)
    fit_note.update({
        "extension": extensions,
        "identifier": [
            {"system": FIT_NOTE_ID_SYSTEM, "value": note.id,
             "assigner": {"identifier": org_identifier(msg.source.org_id, nhs=by_ods)}}
        ],
        "status": "amended" if note.version > 1 else "final",
        "code": concept(FIT_NOTE_CODE_SYSTEM, "fit-note", "Statement of fitness for work"),
        "subject": ref("patient"),
        "effectivePeriod": {"start": note.period.start.isoformat(), "end": note.period.end.isoformat()},
        "issued": instant(msg.sent_at),
        "performer": [ref("practitioner-role")],
        "valueCodeableConcept": concept(
            FIT_NOTE_CODE_SYSTEM, note.assessment, _ASSESSMENT_DISPLAY[note.assessment]
        ),
    })
    if components:
        fit_note["component"] = components

    # --- The diagnosis: its own resource so it can be withheld by dropping one entry.
    cond = note.condition
    code: dict[str, Any] = {"text": cond.text}
    if cond.snomed:
        code["coding"] = [{"system": SNOMED_SYSTEM, "code": cond.snomed}]
    condition = entries.skeleton("Condition", "condition", Category.DIAGNOSIS)
    condition.update({
        "extension": [{"url": EXT_SHARE_WITH_EMPLOYER, "valueBoolean": cond.share_with_employer}],
        "code": code,
        "subject": ref("patient"),
        "recordedDate": note.issued_on.isoformat(),
        "asserter": ref("practitioner-role"),
    })

    return message_bundle(event_id, entries, (
        ("message-header", header),
        ("patient", patient),
        ("practitioner", practitioner),
        ("practitioner-role", role),
        ("organization", organization),
        ("fit-note", fit_note),
        ("condition", condition),
    ), now=now)
