"""The bundles of the OH referral, Access to Work, OH outcome and absence-milestone
events (contract §3): valid FHIR R4B, every resource labelled, self-contained; and
what each recipient type of §5 is given of each (hub.projection)."""
from __future__ import annotations

import base64
import copy
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle

from adapters.milestone import REASON, milestone_event
from adapters.oh_referral import EXT_REFERRER_TYPE
from hub.directory import load_directory
from hub.projection import ProjectionRefused, project
from schemas.events import CanonicalEvent
from schemas.fhir import (
    ABSENCE_EPISODE_ID_SYSTEM,
    NINO_SYSTEM,
    OH_OUTCOME_ID_SYSTEM,
    event_id,
    resource_categories,
)
from schemas.vocab import (
    CATEGORY_SYSTEM,
    CORE_CATEGORY,
    EVENT_ID_SYSTEM,
    EVENT_TYPE_SYSTEM,
    NHS_NUMBER_SYSTEM,
    RECIPIENT_MAXIMUM,
    Category,
    RecipientType,
)
from tests import test_access_to_work_rules as atw
from tests import test_fit_note_rules as fit_note
from tests import test_outcome_rules as outcome
from tests import test_referral_rules as referral
from tests.fhirutil import walk
from tests.test_fit_note_bundle import resources
from tests.test_fit_note_rules import DELETE, edit
from tests.test_projection import assert_valid_and_self_contained, by_type

DIRECTORY = load_directory()
LATER = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)
NHS = "9434765919"
NOTES = "Mechanical low back pain, improving with physiotherapy. No red flags."
ALL = frozenset(c.value for c in Category)
RECIPIENT = {
    RecipientType.EMPLOYER: DIRECTORY.get("EMP-ACME"),
    RecipientType.OH_PROVIDER: DIRECTORY.get("OHP-HEALTHWORKS"),
    RecipientType.JOBCENTRE: DIRECTORY.get("JCP-LEEDS"),
    RecipientType.WORKWELL_SERVICE: DIRECTORY.get("WW-WEST-YORKSHIRE"),
    RecipientType.ACCESS_TO_WORK: DIRECTORY.get("ATW-GB"),
    RecipientType.GP: DIRECTORY.get("B86001"),
}


# ------------------------------------------------------------------ the events


def _referral() -> CanonicalEvent:
    return referral.accepted(referral.example())


def _self_referral_minimal() -> CanonicalEvent:
    msg = edit(referral.example(), "referral/referrer", {"type": "self"})
    msg = edit(msg, "referral/patient", {"nhs_number": NHS, "name": {"given": "Jane", "family": "Smith"},
                                         "email": "jane.smith@example.org", "phone": "+44 7700 900123"})
    for key in ("employment", "questions", "related_fit_note_id", "absence_started_on", "urgency"):
        msg = edit(msg, f"referral/{key}", DELETE)
    return referral.accepted(msg)


def _urgent_gp_referral() -> CanonicalEvent:
    msg = edit(referral.example(), "referral/referrer", {"type": "gp", "org_id": "B86001", "name": "Dr A Patel"})
    msg = edit(msg, "referral/urgency", "urgent")
    msg = edit(msg, "referral/preferred_provider_id", "OHP-HEALTHWORKS")
    msg = edit(msg, "referral/safety_critical_role", True)
    return referral.accepted(msg)


def _atw() -> CanonicalEvent:
    return atw.accepted(atw.example())


def _atw_minimal() -> CanonicalEvent:
    msg = atw.example()
    for path in ("applicant/email", "applicant/postcode", "applicant/birth_date", "oh_outcome_ref",
                 "employment/employer_id", "employment/job_title", "employment/hours_per_week",
                 "employment/workplace_contact"):
        msg = edit(msg, f"application/{path}", DELETE)
    msg = edit(msg, "application/employment/status", "unemployed")
    msg = edit(msg, "application/support_requested", ["communication-support-at-interview"])
    return atw.accepted(msg)


def _outcome() -> CanonicalEvent:
    return outcome.accepted(outcome.example())


def _outcome_fit_without_notes() -> CanonicalEvent:
    msg = outcome.example()
    for key in ("clinical_notes", "recommended_adjustments", "return_to_work_plan", "referral_id"):
        msg = edit(msg, f"outcome/{key}", DELETE)
    msg = edit(msg, "outcome/fitness", "fit")
    msg = edit(msg, "outcome/patient/postcode", "LS1 4AP")
    return outcome.accepted(msg)


def _fit_note_patient(**changes: Any) -> dict[str, Any]:
    note = fit_note.accepted(fit_note.example())
    return {**resources(note.bundle)["Patient"], **changes}


def _milestone(patient: dict[str, Any] | None = None, **kw: Any) -> CanonicalEvent:
    args: dict[str, Any] = {
        "nhs_number": NHS, "episode_id": "8f5e1c2a-episode", "episode_start": date(2026, 11, 1),
        "day_28": date(2026, 11, 28), "patient": patient if patient is not None else _fit_note_patient(),
        "employer_id": "EMP-ACME", "employment_status": "employed", "postcode_area": "LS",
        "gp_practice_id": "B86001", "now": datetime(2026, 11, 28, 0, 0, tzinfo=UTC),
    }
    args.update(kw)
    return milestone_event(**args)


def _milestone_without_contact() -> CanonicalEvent:
    patient = _fit_note_patient()
    del patient["address"]
    return _milestone(patient, employer_id=None, employment_status=None, postcode_area=None)


EVENTS: dict[str, Callable[[], CanonicalEvent]] = {
    "referral": _referral,
    "referral-self-minimal": _self_referral_minimal,
    "referral-urgent-gp": _urgent_gp_referral,
    "access-to-work": _atw,
    "access-to-work-minimal": _atw_minimal,
    "outcome": _outcome,
    "outcome-fit-without-notes": _outcome_fit_without_notes,
    "milestone": _milestone,
    "milestone-without-contact": _milestone_without_contact,
}
# The resource types of each kind's bundle, and each one's data categories
# (Patient: identity, plus contact when it holds an address or telecom).
LABELS: dict[str, dict[str, set[str]]] = {
    "oh-referral": {"MessageHeader": {"referral"}, "Organization": {"referral"}, "Observation": {"referral"},
                    "ServiceRequest": {"referral"}, "Task": {"referral"}},
    "access-to-work": {"MessageHeader": {"atw-application"}, "Task": {"atw-application"}},
    "oh-outcome": {"MessageHeader": {"adjustments"}, "Organization": {"adjustments"},
                   "Observation": {"fitness-advice"}, "CarePlan": {"adjustments"},
                   "DocumentReference": {"clinical-notes"}},
    "absence-milestone": {"MessageHeader": {"referral"}, "Observation": {"referral"},
                          "ServiceRequest": {"referral"}, "Task": {"referral"}},
}
# Who may receive each kind at all (§5: identity and the core category within the maximum).
DELIVERABLE: dict[str, set[RecipientType]] = {
    "oh-referral": {RecipientType.OH_PROVIDER, RecipientType.WORKWELL_SERVICE},
    "absence-milestone": {RecipientType.OH_PROVIDER, RecipientType.WORKWELL_SERVICE},
    "access-to-work": {RecipientType.ACCESS_TO_WORK},
    "oh-outcome": {RecipientType.EMPLOYER, RecipientType.OH_PROVIDER, RecipientType.ACCESS_TO_WORK,
                   RecipientType.GP},
}


@pytest.fixture(scope="module", params=list(EVENTS))
def event(request: pytest.FixtureRequest) -> CanonicalEvent:
    return EVENTS[request.param]()


def run(bundle: dict[str, Any], rtype: RecipientType, permitted: frozenset[str] | set[str]):
    org = RECIPIENT[rtype]
    return project(bundle, recipient=org, permitted=frozenset(permitted),
                   delivery_endpoint=f"nats:hub.deliver.{org.id}", now=LATER)


def text_of(bundle: dict[str, Any]) -> str:
    return orjson.dumps(bundle).decode()


# ------------------------------------------------------------ canonical bundles


def test_bundle_validates_as_fhir_r4b(event: CanonicalEvent) -> None:
    parsed = Bundle.model_validate(event.bundle)
    assert parsed.type == "message" and len(parsed.entry) == len(event.bundle["entry"])
    for entry in event.bundle["entry"]:
        get_fhir_model_class(entry["resource"]["resourceType"]).model_validate(entry["resource"])


def test_bundle_envelope(event: CanonicalEvent) -> None:
    b = event.bundle
    assert b["identifier"] == {"system": EVENT_ID_SYSTEM, "value": event.event_id}
    header = b["entry"][0]["resource"]
    assert header["resourceType"] == "MessageHeader"
    assert header["eventCoding"]["system"] == EVENT_TYPE_SYSTEM
    assert header["eventCoding"]["code"] == event.event_type.value
    assert header["sender"]["identifier"]["value"] == event.source_org_id
    assert "destination" not in header and header["focus"]
    assert resource_categories(header) == {CORE_CATEGORY[event.event_type].value}


def test_every_resource_is_labelled(event: CanonicalEvent) -> None:
    expected = LABELS[event.kind]
    seen = set()
    for entry in event.bundle["entry"]:
        resource = entry["resource"]
        assert resource["meta"]["security"]
        assert all(label["system"] == CATEGORY_SYSTEM for label in resource["meta"]["security"])
        rt = resource["resourceType"]
        seen.add(rt)
        if rt == "Patient":
            contact = "address" in resource or "telecom" in resource
            assert resource_categories(resource) == ({"identity", "contact"} if contact else {"identity"})
        else:
            assert resource_categories(resource) == expected[rt], rt
    assert seen - {"Patient"} <= set(expected)
    held = set().union(*(resource_categories(e["resource"]) for e in event.bundle["entry"]))
    assert event.categories == held


def test_references_resolve_inside_the_bundle(event: CanonicalEvent) -> None:
    urls = [e["fullUrl"] for e in event.bundle["entry"]]
    assert len(set(urls)) == len(urls)
    for entry in event.bundle["entry"]:
        assert entry["fullUrl"] == f"urn:uuid:{entry['resource']['id']}"
    refs = [v for k, v in walk(event.bundle) if k == "reference"]
    assert refs and all(ref in urls for ref in refs), refs


def test_no_nulls_or_empty_values(event: CanonicalEvent) -> None:
    for key, value in walk(event.bundle):
        assert value is not None, key
        assert value not in ("", [], {}), key


@pytest.mark.parametrize("name", list(EVENTS))
def test_rebuilt_bundle_is_the_same(name: str) -> None:
    first, again = EVENTS[name](), EVENTS[name]()
    assert orjson.dumps(again.bundle) == orjson.dumps(first.bundle)
    assert (again.event_id, again.content_hash) == (first.event_id, first.content_hash)


def test_a_resource_points_only_at_resources_every_reader_of_it_has(event: CanonicalEvent) -> None:
    """Every delivery holds identity and the core category, so a reference may point
    at the Patient, at the core category or at its own categories - nothing else."""
    core = CORE_CATEGORY[event.event_type].value
    by_url = {e["fullUrl"]: e["resource"] for e in event.bundle["entry"]}
    for entry in event.bundle["entry"][1:]:
        own = resource_categories(entry["resource"])
        for key, ref in walk(entry["resource"]):
            if key == "reference":
                target = resource_categories(by_url[ref])
                assert target <= own | {core, "identity", "contact"}, (entry["resource"]["resourceType"], target)


# ----------------------------------------------------------------- projections


@pytest.mark.parametrize("rtype", list(RecipientType))
def test_each_recipient_type_gets_at_most_its_maximum(event: CanonicalEvent, rtype: RecipientType) -> None:
    maximum = RECIPIENT_MAXIMUM[rtype]
    for permitted in (maximum, ALL):
        if rtype not in DELIVERABLE[event.kind]:
            with pytest.raises(ProjectionRefused):
                run(event.bundle, rtype, permitted)
            continue
        out, given = run(event.bundle, rtype, permitted)
        assert_valid_and_self_contained(out)
        never = {Category.CONTACT, Category.CLINICAL_NOTES} if rtype is RecipientType.EMPLOYER else set()
        assert given == (event.categories & maximum) - never
        for entry in out["entry"]:
            assert resource_categories(entry["resource"]) <= maximum - never
        text = text_of(out)
        if Category.CLINICAL_NOTES not in given:
            assert "DocumentReference" not in by_type(out)
            assert "physiotherapy" not in text
            assert base64.b64encode(NOTES.encode()).decode() not in text
        if Category.CONTACT not in given:
            assert "LS1 4AP" not in text and "jane.smith@example.org" not in text and "telecom" not in text
        if rtype is RecipientType.EMPLOYER:
            assert set(by_type(out)["Patient"]) == {"resourceType", "id", "meta", "name"}
            assert NHS not in text and "AB123456C" not in text and "1984-03-02" not in text


def test_outcome_to_the_employer_is_adjustments_and_fitness_only() -> None:
    event = _outcome()
    out, given = run(event.bundle, RecipientType.EMPLOYER, ALL)
    assert given == {Category.IDENTITY, Category.FITNESS_ADVICE, Category.ADJUSTMENTS}
    r = by_type(out)
    assert set(r) == {"MessageHeader", "Patient", "Organization", "Observation", "CarePlan"}
    assert NOTES not in text_of(out) and NHS not in text_of(out)
    assert r["Observation"]["valueCodeableConcept"]["coding"][0]["code"] == "fit-with-adjustments"
    assert r["CarePlan"]["activity"][0]["detail"]["description"] == "Sit-stand workstation"
    # consent narrowed to adjustments only: the plan still goes, the opinion does not
    out, given = run(event.bundle, RecipientType.EMPLOYER, {"identity", "adjustments"})
    assert "Observation" not in by_type(out) and "CarePlan" in by_type(out)
    assert [f["reference"] for f in out["entry"][0]["resource"]["focus"]] == [
        e["fullUrl"] for e in out["entry"] if e["resource"]["resourceType"] == "CarePlan"
    ]
    assert_valid_and_self_contained(out)


def test_nothing_refers_to_the_clinical_notes() -> None:
    bundle = _outcome().bundle
    notes_url = next(e["fullUrl"] for e in bundle["entry"]
                     if e["resource"]["resourceType"] == "DocumentReference")
    assert notes_url not in [v for k, v in walk(bundle) if k == "reference"]


def test_outcome_to_the_gp_has_the_clinical_notes() -> None:
    out, given = run(_outcome().bundle, RecipientType.GP, RECIPIENT_MAXIMUM[RecipientType.GP])
    assert Category.CLINICAL_NOTES in given
    attachment = by_type(out)["DocumentReference"]["content"][0]["attachment"]
    assert base64.b64decode(attachment["data"]).decode() == NOTES
    assert by_type(out)["Patient"]["identifier"][0] == {"system": NHS_NUMBER_SYSTEM, "value": NHS}
    # without clinical-notes permitted, the GP gets the rest
    out, given = run(_outcome().bundle, RecipientType.GP, {"identity", "fitness-advice", "adjustments"})
    assert "DocumentReference" not in by_type(out) and NOTES not in text_of(out)


def test_access_to_work_service_gets_the_ni_number_and_the_application() -> None:
    out, given = run(_atw().bundle, RecipientType.ACCESS_TO_WORK, RECIPIENT_MAXIMUM[RecipientType.ACCESS_TO_WORK])
    assert given == {Category.IDENTITY, Category.CONTACT, Category.ATW_APPLICATION}
    r = by_type(out)
    assert {"system": NINO_SYSTEM, "value": "AB123456C"} in r["Patient"]["identifier"]
    assert r["Patient"]["telecom"][0]["value"] == "jane.smith@example.org"
    task = r["Task"]
    support = [i["valueCodeableConcept"]["coding"][0]["code"] for i in task["input"]
               if i["type"]["coding"][0]["code"] == "support-requested"]
    assert support == ["special-aids-equipment", "adaptations-to-premises"]
    assert task["basedOn"][0]["identifier"] == {"system": OH_OUTCOME_ID_SYSTEM, "value": "OUT-HW-2026-0007"}
    # without contact: the NI number stays (identity), the email and postcode go
    out, _ = run(_atw().bundle, RecipientType.ACCESS_TO_WORK, {"identity", "atw-application"})
    patient = by_type(out)["Patient"]
    assert "telecom" not in patient and "address" not in patient
    assert {"system": NINO_SYSTEM, "value": "AB123456C"} in patient["identifier"]


def test_referral_to_the_oh_provider_has_referral_and_contact() -> None:
    out, given = run(_referral().bundle, RecipientType.OH_PROVIDER, RECIPIENT_MAXIMUM[RecipientType.OH_PROVIDER])
    assert given == {Category.IDENTITY, Category.CONTACT, Category.REFERRAL}
    r = by_type(out)
    assert set(r) == {"MessageHeader", "Patient", "Organization", "Observation", "ServiceRequest", "Task"}
    assert r["Patient"]["address"][0]["postalCode"] == "LS1 4AP"
    sr = r["ServiceRequest"]
    assert sr["reasonCode"][0]["text"].startswith("Recurrent back pain")
    assert [n["text"] for n in sr["note"]] == referral.example()["referral"]["questions"]
    assert sr["priority"] == "routine" and sr["requester"]["display"] == "Acme Logistics HR"
    work = {c["code"]["coding"][0]["code"]: c for c in r["Observation"]["component"]}
    assert work["occupation"]["valueString"] == "Warehouse supervisor"
    assert work["safety-critical-role"]["valueBoolean"] is False
    assert work["absence-started-on"]["valueDateTime"] == "2026-10-23"
    sr_url = next(e["fullUrl"] for e in out["entry"] if e["resource"]["resourceType"] == "ServiceRequest")
    assert r["Task"]["focus"] == {"reference": sr_url}
    assert (r["Task"]["status"], r["Task"]["intent"]) == ("requested", "order")


def test_referral_is_never_given_to_an_employer() -> None:
    for build in (_referral, _milestone):
        with pytest.raises(ProjectionRefused):
            run(build().bundle, RecipientType.EMPLOYER, ALL)


# ------------------------------------------------------------------- milestone


def test_milestone_event_identity_and_facts() -> None:
    event = _milestone()
    assert event.event_id == event_id("absence-milestone", "HUB", "8f5e1c2a-episode", 1)
    assert (event.kind, event.source_org_id, event.event_type.value) == (
        "absence-milestone", "HUB", "absence-milestone")
    f = event.facts
    assert (f.nhs_number, f.episode_id, f.document_id, f.version) == (NHS, "8f5e1c2a-episode", "8f5e1c2a-episode", 1)
    assert (f.employer_id, f.employment_status, f.postcode_area, f.gp_practice_id) == (
        "EMP-ACME", "employed", "LS", "B86001")
    assert (f.absence_started_on, f.milestone_on) == (date(2026, 11, 1), date(2026, 11, 28))
    assert event.categories == {Category.IDENTITY, Category.CONTACT, Category.REFERRAL}


def test_one_milestone_per_episode() -> None:
    first = _milestone()
    later = _milestone(_fit_note_patient(name=[{"family": "Smith-Jones", "given": ["Jane"]}]),
                       now=datetime(2026, 11, 30, 8, 0, tzinfo=UTC), employer_id="EMP-CORNER-CAFE")
    assert later.event_id == first.event_id and later.content_hash == first.content_hash
    assert _milestone(episode_id="another-episode").event_id != first.event_id


def test_milestone_bundle_is_a_proposed_referral() -> None:
    r = by_type(_milestone().bundle)
    sr, task = r["ServiceRequest"], r["Task"]
    assert sr["intent"] == task["intent"] == "proposal"
    assert sr["reasonCode"][0]["text"] == REASON == (
        "continuous fit-note-certified absence reached 28 days; an OH referral is expected")
    assert sr["identifier"][0]["system"] == ABSENCE_EPISODE_ID_SYSTEM
    assert sr["requester"]["identifier"]["value"] == "HUB"
    assert sr["extension"][0]["url"] == EXT_REFERRER_TYPE
    assert sr["authoredOn"] == "2026-11-28"
    work = {c["code"]["coding"][0]["code"]: c for c in r["Observation"]["component"]}
    assert work["absence-started-on"]["valueDateTime"] == "2026-11-01"
    assert r["Patient"]["identifier"] == [{"system": NHS_NUMBER_SYSTEM, "value": NHS}]


def test_milestone_patient_is_a_relabelled_copy() -> None:
    source = _fit_note_patient()
    snapshot = copy.deepcopy(source)
    event = _milestone(source)
    patient = by_type(event.bundle)["Patient"]
    assert patient["id"] != source["id"] and source == snapshot
    # a Patient already cut down to a name only (e.g. an employer's copy) is labelled identity only
    named = {"resourceType": "Patient", "id": "x", "identifier": source["identifier"], "name": source["name"]}
    event = _milestone(named)
    assert resource_categories(by_type(event.bundle)["Patient"]) == {"identity"}
    assert Category.CONTACT not in event.categories


@pytest.mark.parametrize(
    "patient",
    [
        {"resourceType": "Practitioner", "id": "x"},
        {"resourceType": "Patient", "id": "x", "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": "9990000018"}]},
        {"resourceType": "Patient", "id": "x", "name": [{"family": "Smith"}]},
    ],
)
def test_milestone_refuses_someone_elses_patient(patient: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        _milestone(patient)


# ------------------------------------------------------------------------ speed


def test_builders_are_fast_enough() -> None:
    from adapters.access_to_work import access_to_work_bundle
    from adapters.oh_outcome import outcome_bundle
    from adapters.oh_referral import referral_bundle
    from schemas.sources import AccessToWorkMessage, OhOutcomeMessage, OhReferralMessage

    cases = [
        (referral_bundle, OhReferralMessage, referral.example(), referral.NOW),
        (access_to_work_bundle, AccessToWorkMessage, atw.example(), atw.NOW),
        (outcome_bundle, OhOutcomeMessage, outcome.example(), outcome.NOW),
    ]
    eid = event_id("test", "X", "Y", 1)
    for build, model, data, now in cases:
        msg = model.model_validate(data, context={"today": now.date()})
        n = 300
        start = time.perf_counter()
        for _ in range(n):
            build(msg, event_id=eid, now=now)
        per_bundle = (time.perf_counter() - start) / n
        assert per_bundle < 0.0005, f"{build.__name__}: {per_bundle * 1e3:.3f} ms per bundle"
