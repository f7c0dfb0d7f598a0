"""Projection (contract §4, §5): what each recipient is actually given."""
from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.fhirutil import walk
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle

from adapters import adapt
from hub.directory import Organisation, load_directory
from hub.projection import ProjectionRefused, project
from schemas.events import CanonicalEvent
from schemas.fhir import resource_categories, security_labels
from schemas.vocab import ORG_ID_SYSTEM, RECIPIENT_MAXIMUM, Category, RecipientType

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fit-note.example.json"
NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
LATER = datetime(2026, 11, 20, 10, 5, tzinfo=UTC)
DIRECTORY = load_directory()
EMPLOYER = DIRECTORY.get("EMP-ACME")
OH = DIRECTORY.get("OHP-HEALTHWORKS")
JOBCENTRE = DIRECTORY.get("JCP-LEEDS")
GP = DIRECTORY.get("B86001")
ALL = frozenset(c.value for c in Category)
NHS = "9434765919"
SECRETS = (NHS, "943 476 5919", "1984-03-02", "1984", "LS1 4AP", "LS1", "postalCode", "birthDate", "nhs-number")


def event(**changes: Any) -> CanonicalEvent:
    msg = json.loads(EXAMPLE.read_text())
    msg["fit_note"].update(changes)
    result = adapt("fit-note", json.dumps(msg).encode(), subject_org_id="B86001", directory=DIRECTORY, now=NOW)
    assert isinstance(result, CanonicalEvent), result
    return result


@pytest.fixture
def bundle() -> dict[str, Any]:
    return event().bundle


def run(bundle: dict[str, Any], recipient: Organisation, permitted: frozenset[str] | set[str]):
    return project(
        bundle, recipient=recipient, permitted=frozenset(permitted),
        delivery_endpoint=f"nats:hub.deliver.{recipient.id}", now=LATER,
    )


def by_type(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["resource"]["resourceType"]: e["resource"] for e in bundle["entry"]}



def assert_valid_and_self_contained(bundle: dict[str, Any]) -> None:
    Bundle.model_validate(bundle)
    for entry in bundle["entry"]:
        get_fhir_model_class(entry["resource"]["resourceType"]).model_validate(entry["resource"])
        assert resource_categories(entry["resource"]), entry["resource"]["resourceType"]
    urls = {e["fullUrl"] for e in bundle["entry"]}
    dangling = [v for k, v in walk(bundle) if k == "reference" and v not in urls]
    assert not dangling


# ---------------------------------------------------------------- employer


@pytest.mark.parametrize(
    "permitted",
    [
        {"identity", "fitness-advice"},
        {"identity", "fitness-advice", "adjustments"},
        ALL,  # far more than an employer may have: projection still enforces §5
    ],
    ids=["minimum", "maximum-without-diagnosis", "everything"],
)
def test_employer_gets_name_only(bundle: dict[str, Any], permitted: set[str]) -> None:
    out, given = run(bundle, EMPLOYER, permitted)
    text = orjson.dumps(out).decode()
    for secret in SECRETS:
        assert secret not in text, secret
    assert "Smith" in text and "Jane" in text
    patient = by_type(out)["Patient"]
    assert set(patient) == {"resourceType", "id", "meta", "name"}
    assert resource_categories(patient) == {"identity"}
    assert Category.CONTACT not in given and Category.CLINICAL_NOTES not in given
    assert_valid_and_self_contained(out)


def test_employer_gets_no_diagnosis_unless_permitted(bundle: dict[str, Any]) -> None:
    out, given = run(bundle, EMPLOYER, {"identity", "fitness-advice"})
    text = orjson.dumps(out).decode()
    assert "Condition" not in by_type(out)
    assert "Lumbar" not in text and "209565008" not in text
    assert given == {Category.IDENTITY, Category.FITNESS_ADVICE}

    out, given = run(bundle, EMPLOYER, {"identity", "fitness-advice", "diagnosis"})
    assert by_type(out)["Condition"]["code"]["text"] == "Lumbar back strain"
    assert given == {Category.IDENTITY, Category.FITNESS_ADVICE, Category.DIAGNOSIS}
    assert NHS not in orjson.dumps(out).decode()
    assert_valid_and_self_contained(out)


def test_employer_gets_the_fitness_advice(bundle: dict[str, Any]) -> None:
    out, _ = run(bundle, EMPLOYER, {"identity", "fitness-advice"})
    r = by_type(out)
    assert r["Observation"]["valueCodeableConcept"]["coding"][0]["code"] == "may-be-fit"
    assert {"Practitioner", "PractitionerRole", "Organization"} <= set(r)
    assert r["MessageHeader"]["focus"] == [{"reference": next(
        e["fullUrl"] for e in out["entry"] if e["resource"]["resourceType"] == "Observation")}]


def _with_clinical_notes(bundle: dict[str, Any]) -> dict[str, Any]:
    """The canonical bundle plus an OH clinician's note (as later kinds will carry)."""
    patient_url = bundle["entry"][1]["fullUrl"]
    note = {
        "fullUrl": "urn:uuid:5a3c6c9e-2f57-4d0e-9c36-3f8f1e0b7a11",
        "resource": {
            "resourceType": "Observation",
            "id": "5a3c6c9e-2f57-4d0e-9c36-3f8f1e0b7a11",
            "meta": {"security": security_labels("clinical-notes")},
            "status": "final",
            "code": {"text": "OH clinician's notes"},
            "subject": {"reference": patient_url},
            "valueString": "Confidential clinical detail",
        },
    }
    out = copy.deepcopy(bundle)
    out["entry"].append(note)
    return out


def test_employer_never_gets_clinical_notes(bundle: dict[str, Any]) -> None:
    with_notes = _with_clinical_notes(bundle)
    out, given = run(with_notes, EMPLOYER, ALL)
    assert "Confidential clinical detail" not in orjson.dumps(out).decode()
    assert Category.CLINICAL_NOTES not in given
    # ... while a GP permitted clinical notes does get them
    out, given = run(with_notes, GP, {"identity", "fitness-advice", "clinical-notes"})
    assert "Confidential clinical detail" in orjson.dumps(out).decode()
    assert Category.CLINICAL_NOTES in given
    assert_valid_and_self_contained(out)


# ---------------------------------------------------------- other recipients


def test_oh_provider_with_all_its_categories_gets_the_address(bundle: dict[str, Any]) -> None:
    out, given = run(bundle, OH, RECIPIENT_MAXIMUM[RecipientType.OH_PROVIDER])
    patient = by_type(out)["Patient"]
    assert patient["address"][0]["postalCode"] == "LS1 4AP"
    assert patient["identifier"][0]["value"] == NHS
    assert patient["birthDate"] == "1984-03-02"
    assert resource_categories(patient) == {"identity", "contact"}
    assert "Condition" in by_type(out)
    assert given == {Category.IDENTITY, Category.CONTACT, Category.FITNESS_ADVICE, Category.DIAGNOSIS}
    assert len(out["entry"]) == len(bundle["entry"])
    assert_valid_and_self_contained(out)


def test_oh_provider_without_contact_gets_no_address(bundle: dict[str, Any]) -> None:
    out, given = run(bundle, OH, {"identity", "fitness-advice"})
    patient = by_type(out)["Patient"]
    assert "address" not in patient and patient["identifier"][0]["value"] == NHS
    assert "LS1 4AP" not in orjson.dumps(out).decode()
    assert resource_categories(patient) == {"identity"}
    assert given == {Category.IDENTITY, Category.FITNESS_ADVICE}
    assert_valid_and_self_contained(out)


def test_recipient_maximum_caps_permitted(bundle: dict[str, Any]) -> None:
    out, given = run(bundle, JOBCENTRE, ALL)  # jobcentre: identity, fitness-advice, diagnosis
    assert given == {Category.IDENTITY, Category.FITNESS_ADVICE, Category.DIAGNOSIS}
    patient = by_type(out)["Patient"]
    assert "address" not in patient and patient["identifier"][0]["value"] == NHS
    assert_valid_and_self_contained(out)


@pytest.mark.parametrize(
    "permitted",
    [set(), {"identity"}, {"fitness-advice"}, {"identity", "contact", "diagnosis"}],
)
def test_refused_without_identity_and_core_category(bundle: dict[str, Any], permitted: set[str]) -> None:
    with pytest.raises(ProjectionRefused):
        run(bundle, OH, permitted)


def test_refused_for_non_recipient_types(bundle: dict[str, Any]) -> None:
    publisher = DIRECTORY.get("ATW-ONLINE")
    with pytest.raises(ProjectionRefused):
        run(bundle, publisher, ALL)


# ------------------------------------------------------------------ addressing


def test_a_gp_practice_is_addressed_by_its_ods_code(bundle: dict[str, Any]) -> None:
    from schemas.vocab import ODS_SYSTEM

    out, _ = project(bundle, recipient=GP, permitted=frozenset({"identity", "fitness-advice"}),
                     delivery_endpoint="hub.deliver.B86001", now=LATER)
    receiver = out["entry"][0]["resource"]["destination"][0]["receiver"]
    assert receiver["identifier"] == {"system": ODS_SYSTEM, "value": "B86001"}


def test_destination_and_timestamp(bundle: dict[str, Any]) -> None:
    out, _ = project(bundle, recipient=EMPLOYER, permitted=frozenset({"identity", "fitness-advice"}),
                     delivery_endpoint="https://acme.example/hook", now=LATER)
    header = out["entry"][0]["resource"]
    assert header["destination"] == [
        {
            "name": "Acme Logistics Ltd",
            "endpoint": "https://acme.example/hook",
            "receiver": {
                "identifier": {"system": ORG_ID_SYSTEM, "value": "EMP-ACME"},
                "display": "Acme Logistics Ltd",
            },
        }
    ]
    assert header["eventCoding"] == bundle["entry"][0]["resource"]["eventCoding"]
    assert out["identifier"] == bundle["identifier"]
    assert out["timestamp"] == "2026-11-20T10:05:00.000Z"


def test_focus_is_filtered_to_kept_entries(bundle: dict[str, Any]) -> None:
    b = copy.deepcopy(bundle)
    condition_url = b["entry"][-1]["fullUrl"]
    b["entry"][0]["resource"]["focus"].append({"reference": condition_url})
    out, _ = run(b, EMPLOYER, {"identity", "fitness-advice"})
    focus = [f["reference"] for f in out["entry"][0]["resource"]["focus"]]
    assert condition_url not in focus and len(focus) == 1
    out, _ = run(b, EMPLOYER, {"identity", "fitness-advice", "diagnosis"})
    assert condition_url in [f["reference"] for f in out["entry"][0]["resource"]["focus"]]


# ------------------------------------------------------------ input untouched


def test_input_bundle_is_unchanged(bundle: dict[str, Any]) -> None:
    before = orjson.dumps(bundle)
    snapshot = copy.deepcopy(bundle)
    outputs = [
        run(bundle, EMPLOYER, ALL)[0],
        run(bundle, OH, RECIPIENT_MAXIMUM[RecipientType.OH_PROVIDER])[0],
        run(bundle, JOBCENTRE, {"identity", "fitness-advice"})[0],
        run(bundle, GP, {"identity", "fitness-advice"})[0],
    ]
    assert orjson.dumps(bundle) == before
    assert bundle == snapshot
    assert "destination" not in bundle["entry"][0]["resource"]
    # each recipient got its own header, and the employer's cut did not leak into the others
    headers = [o["entry"][0]["resource"] for o in outputs]
    assert len({id(h) for h in headers}) == len(headers)
    assert by_type(outputs[1])["Patient"]["identifier"][0]["value"] == NHS


def test_superseded_event_projects_too() -> None:
    b = event(version=2).bundle
    out, given = run(b, EMPLOYER, {"identity", "fitness-advice"})
    assert out["entry"][0]["resource"]["eventCoding"]["code"] == "fit-note-superseded"
    assert given == {Category.IDENTITY, Category.FITNESS_ADVICE}
    assert_valid_and_self_contained(out)


def test_unlabelled_resource_is_dropped(bundle: dict[str, Any]) -> None:
    b = copy.deepcopy(bundle)
    b["entry"].append({
        "fullUrl": "urn:uuid:8d0f8d57-8e0c-4c43-a3d4-6a1f3c2b9e77",
        "resource": {"resourceType": "Basic", "id": "8d0f8d57-8e0c-4c43-a3d4-6a1f3c2b9e77",
                     "code": {"text": "unclassified"}},
    })
    out, given = run(b, OH, RECIPIENT_MAXIMUM[RecipientType.OH_PROVIDER])
    assert "Basic" not in by_type(out)
    assert len(out["entry"]) == len(bundle["entry"])
    assert_valid_and_self_contained(out)


def test_employer_gets_no_other_identity_resource(bundle: dict[str, Any]) -> None:
    """Name only means name only: a further resource labelled identity is withheld."""
    b = copy.deepcopy(bundle)
    b["entry"].append({
        "fullUrl": "urn:uuid:3b1e7c9a-4c55-4a8e-9d0f-2e6b7a1c5d33",
        "resource": {
            "resourceType": "RelatedPerson", "id": "3b1e7c9a-4c55-4a8e-9d0f-2e6b7a1c5d33",
            "meta": {"security": security_labels("identity")},
            "patient": {"reference": b["entry"][1]["fullUrl"]},
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9990000018"}],
        },
    })
    out, _ = run(b, EMPLOYER, ALL)
    assert "RelatedPerson" not in by_type(out) and "9990000018" not in orjson.dumps(out).decode()
    out, _ = run(b, OH, RECIPIENT_MAXIMUM[RecipientType.OH_PROVIDER])
    assert "RelatedPerson" in by_type(out)
    assert_valid_and_self_contained(out)
