"""The canonical fit note bundle (contract §3): valid FHIR R4B, labelled, self-contained."""
from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.fhirutil import walk
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle

from adapters import adapt
from hub.directory import load_directory
from schemas.events import CanonicalEvent
from schemas.fhir import (
    EXT_FIT_NOTE_REPLACES,
    EXT_FIT_NOTE_VERSION,
    SNOMED_SYSTEM,
    entry_uuid,
    fit_note_bundle,
    resource_categories,
)
from schemas.sources import FitNoteMessage
from schemas.vocab import (
    CATEGORY_SYSTEM,
    EVENT_ID_SYSTEM,
    EVENT_TYPE_SYSTEM,
    NHS_NUMBER_SYSTEM,
    ODS_SYSTEM,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fit-note.example.json"
NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
DIRECTORY = load_directory()


def example() -> dict[str, Any]:
    return json.loads(EXAMPLE.read_text())


def _may_be_fit_with_employer(m: dict[str, Any]) -> None:
    pass


def _not_fit_without_advice(m: dict[str, Any]) -> None:
    fn = m["fit_note"]
    fn["assessment"] = "not-fit"
    del fn["may_be_fit_advice"]
    del fn["functional_effects"]


def _unemployed(m: dict[str, Any]) -> None:
    m["fit_note"]["employment"] = {"status": "unemployed"}


def _no_snomed(m: dict[str, Any]) -> None:
    del m["fit_note"]["condition"]["snomed"]
    m["fit_note"]["condition"]["share_with_employer"] = True


def _minimal(m: dict[str, Any]) -> None:
    fn = m["fit_note"]
    for key in ("assessed_on", "functional_effects", "follow_up_assessment_needed", "employment",
                "may_be_fit_advice", "replaces", "version"):
        fn.pop(key, None)
    del fn["patient"]["postcode"], fn["patient"]["birth_date"]
    del fn["issuer"]["registration"], fn["issuer"]["setting"], fn["issuer"]["organisation"]["name"]


def _corrected_replacement(m: dict[str, Any]) -> None:
    fn = m["fit_note"]
    fn["id"] = "FN-B86001-000200"
    fn["replaces"] = "FN-B86001-000123"
    fn["version"] = 2
    fn["issuer"]["profession"] = "physiotherapist"
    fn["issuer"]["registration"] = "HCPC PH123456"


SHAPES: dict[str, Callable[[dict[str, Any]], None]] = {
    "may-be-fit-with-employer": _may_be_fit_with_employer,
    "not-fit-without-advice": _not_fit_without_advice,
    "unemployed": _unemployed,
    "no-condition-snomed": _no_snomed,
    "minimal-no-postcode": _minimal,
    "corrected-replacement": _corrected_replacement,
}


def build(shape: str) -> CanonicalEvent:
    msg = example()
    SHAPES[shape](msg)
    event = adapt("fit-note", json.dumps(msg).encode(), subject_org_id="B86001", directory=DIRECTORY, now=NOW)
    assert isinstance(event, CanonicalEvent), event
    return event



def resources(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["resource"]["resourceType"]: e["resource"] for e in bundle["entry"]}


@pytest.fixture(params=list(SHAPES))
def event(request: pytest.FixtureRequest) -> CanonicalEvent:
    return build(request.param)


def test_bundle_validates_as_fhir_r4b(event: CanonicalEvent) -> None:
    parsed = Bundle.model_validate(event.bundle)
    assert parsed.type == "message"
    assert len(parsed.entry) == len(event.bundle["entry"])
    for entry in event.bundle["entry"]:
        resource = entry["resource"]
        model = get_fhir_model_class(resource["resourceType"])
        model.model_validate(resource)


def test_bundle_round_trips_through_fhir_resources(event: CanonicalEvent) -> None:
    parsed = Bundle.model_validate(event.bundle)
    again = json.loads(parsed.model_dump_json(exclude_none=True))
    assert again["identifier"] == event.bundle["identifier"]
    assert [e["fullUrl"] for e in again["entry"]] == [e["fullUrl"] for e in event.bundle["entry"]]


def test_bundle_envelope(event: CanonicalEvent) -> None:
    b = event.bundle
    assert b["resourceType"] == "Bundle" and b["type"] == "message"
    assert b["identifier"] == {"system": EVENT_ID_SYSTEM, "value": event.event_id}
    assert b["timestamp"] == "2026-11-20T10:00:00.000Z"
    header = b["entry"][0]["resource"]
    assert header["resourceType"] == "MessageHeader"
    assert header["eventCoding"]["system"] == EVENT_TYPE_SYSTEM
    assert header["eventCoding"]["code"] == event.event_type.value
    assert header["source"]["name"] == "GP clinical system"
    assert header["source"]["endpoint"]
    assert "destination" not in header
    fit_note_url = next(e["fullUrl"] for e in b["entry"] if e["resource"]["resourceType"] == "Observation")
    assert header["focus"] == [{"reference": fit_note_url}]
    assert [e["resource"]["resourceType"] for e in b["entry"]] == [
        "MessageHeader", "Patient", "Practitioner", "PractitionerRole", "Organization", "Observation", "Condition"
    ]


def test_every_resource_has_a_data_category(event: CanonicalEvent) -> None:
    expected = {
        "MessageHeader": {"fitness-advice"},
        "Practitioner": {"fitness-advice"},
        "PractitionerRole": {"fitness-advice"},
        "Organization": {"fitness-advice"},
        "Observation": {"fitness-advice"},
        "Condition": {"diagnosis"},
    }
    for entry in event.bundle["entry"]:
        resource = entry["resource"]
        labels = resource["meta"]["security"]
        assert labels and all(label["system"] == CATEGORY_SYSTEM for label in labels)
        cats = resource_categories(resource)
        if resource["resourceType"] == "Patient":
            want = {"identity", "contact"} if "address" in resource else {"identity"}
            assert cats == want
        else:
            assert cats == expected[resource["resourceType"]]


def test_references_resolve_inside_the_bundle(event: CanonicalEvent) -> None:
    urls = [e["fullUrl"] for e in event.bundle["entry"]]
    assert len(set(urls)) == len(urls)
    for entry in event.bundle["entry"]:
        assert entry["fullUrl"].startswith("urn:uuid:")
        assert entry["fullUrl"] == f"urn:uuid:{entry['resource']['id']}"
    refs = [v for k, v in walk(event.bundle) if k == "reference"]
    assert refs, "the bundle should link its resources"
    assert all(ref in urls for ref in refs), refs


def test_no_nulls_or_empty_values(event: CanonicalEvent) -> None:
    for key, value in walk(event.bundle):
        assert value is not None, key
        assert value not in ("", [], {}), key


def test_categories_match_bundle(event: CanonicalEvent) -> None:
    held = set().union(*(resource_categories(e["resource"]) for e in event.bundle["entry"]))
    assert event.categories == held


def test_example_content() -> None:
    r = resources(build("may-be-fit-with-employer").bundle)
    patient = r["Patient"]
    assert patient["identifier"] == [{"system": NHS_NUMBER_SYSTEM, "value": "9434765919"}]
    assert patient["name"][0]["family"] == "Smith" and patient["name"][0]["given"] == ["Jane"]
    assert patient["birthDate"] == "1984-03-02"
    assert patient["address"][0]["postalCode"] == "LS1 4AP"
    assert r["Organization"]["identifier"] == [{"system": ODS_SYSTEM, "value": "B86001"}]
    assert r["Practitioner"]["identifier"][0] == {
        "system": "https://fhir.hl7.org.uk/Id/gmc-number", "value": "7012345"
    }
    obs = r["Observation"]
    assert obs["status"] == "final"
    assert obs["valueCodeableConcept"]["coding"][0]["code"] == "may-be-fit"
    assert obs["effectivePeriod"] == {"start": "2026-11-20", "end": "2026-12-11"}
    assert obs["identifier"][0]["value"] == "FN-B86001-000123"
    components = {c["code"]["coding"][0]["code"]: c for c in obs["component"]}
    assert components["phased-return"]["valueBoolean"] is True
    assert components["altered-hours"]["valueBoolean"] is True
    assert components["amended-duties"]["valueBoolean"] is False
    assert components["workplace-adaptations"]["valueBoolean"] is False
    assert components["functional-effects"]["valueString"].startswith("Avoid lifting")
    assert components["follow-up-assessment-needed"]["valueBoolean"] is True
    assert components["employment-status"]["valueCodeableConcept"]["coding"][0]["code"] == "employed"
    ext = {e["url"]: e for e in obs["extension"]}
    assert ext[EXT_FIT_NOTE_VERSION]["valuePositiveInt"] == 1
    assert EXT_FIT_NOTE_REPLACES not in ext
    cond = r["Condition"]
    assert cond["code"] == {"text": "Lumbar back strain", "coding": [{"system": SNOMED_SYSTEM, "code": "209565008"}]}
    assert cond["subject"]["reference"] == next(
        e["fullUrl"] for e in build("may-be-fit-with-employer").bundle["entry"]
        if e["resource"]["resourceType"] == "Patient"
    )


def test_not_fit_has_no_advice_components() -> None:
    obs = resources(build("not-fit-without-advice").bundle)["Observation"]
    assert obs["valueCodeableConcept"]["coding"][0]["code"] == "not-fit"
    codes = {c["code"]["coding"][0]["code"] for c in obs.get("component", [])}
    assert not codes & {"phased-return", "altered-hours", "amended-duties", "workplace-adaptations"}


def test_minimal_shape_omits_absent_values() -> None:
    r = resources(build("minimal-no-postcode").bundle)
    assert "address" not in r["Patient"] and "birthDate" not in r["Patient"]
    assert resource_categories(r["Patient"]) == {"identity"}
    assert "identifier" not in r["Practitioner"]
    assert "name" not in r["Organization"]
    assert "component" not in r["Observation"]


def test_no_snomed_condition_has_text_only() -> None:
    cond = resources(build("no-condition-snomed").bundle)["Condition"]
    assert cond["code"] == {"text": "Lumbar back strain"}


def test_corrected_replacement_carries_version_and_replaces() -> None:
    event = build("corrected-replacement")
    r = resources(event.bundle)
    obs = r["Observation"]
    assert obs["status"] == "amended"
    ext = {e["url"]: e for e in obs["extension"]}
    assert ext[EXT_FIT_NOTE_VERSION]["valuePositiveInt"] == 2
    assert ext[EXT_FIT_NOTE_REPLACES]["valueIdentifier"]["value"] == "FN-B86001-000123"
    assert r["Practitioner"]["identifier"][0] == {
        "system": "https://fhir.hl7.org.uk/Id/hcpc-number", "value": "PH123456"
    }
    assert r["MessageHeader"]["eventCoding"]["code"] == "fit-note-superseded"


def test_entry_ids_are_stable_per_event() -> None:
    a, b = build("may-be-fit-with-employer"), build("may-be-fit-with-employer")
    assert orjson.dumps(a.bundle) == orjson.dumps(b.bundle)
    assert a.bundle["entry"][1]["fullUrl"] == f"urn:uuid:{entry_uuid(a.event_id, 'patient')}"
    other = build("corrected-replacement")
    assert not {e["fullUrl"] for e in a.bundle["entry"]} & {e["fullUrl"] for e in other.bundle["entry"]}


def test_bundle_is_fast_enough() -> None:
    msg = FitNoteMessage.model_validate(example(), context={"today": NOW.date()})
    eid = build("may-be-fit-with-employer").event_id
    fit_note_bundle(msg, event_id=eid, event_type="fit-note-issued", now=NOW)
    n = 500
    start = time.perf_counter()
    for _ in range(n):
        fit_note_bundle(msg, event_id=eid, event_type="fit-note-issued", now=NOW)
    per_bundle = (time.perf_counter() - start) / n
    assert per_bundle < 0.0005, f"{per_bundle * 1e3:.3f} ms per bundle"


def test_builder_does_not_share_state_between_bundles() -> None:
    a = build("may-be-fit-with-employer")
    snapshot = copy.deepcopy(a.bundle)
    b = build("may-be-fit-with-employer")
    b.bundle["entry"][1]["resource"]["meta"]["security"].clear()
    assert a.bundle == snapshot


def test_the_issuing_practice_is_named_by_its_ods_code():
    """§3: NHS organisations by ODS code. The example's publisher is the issuing
    practice (its org_id is the practice's ODS code), so the sender and the
    note's assigner are in the ODS system; a publisher known by a directory id
    of its own stays in the hub's organisation system."""
    from schemas.vocab import ODS_SYSTEM, ORG_ID_SYSTEM

    r = resources(build("may-be-fit-with-employer").bundle)
    ods = {"system": ODS_SYSTEM, "value": "B86001"}
    assert r["MessageHeader"]["sender"] == {"identifier": ods}
    assert r["Observation"]["identifier"][0]["assigner"] == {"identifier": ods}
    msg = example()
    msg["fit_note"]["issuer"]["organisation"]["ods_code"] = "Y01234"  # published on the practice's behalf
    event = adapt("fit-note", json.dumps(msg).encode(), subject_org_id="B86001", directory=DIRECTORY, now=NOW)
    assert resources(event.bundle)["MessageHeader"]["sender"] == {
        "identifier": {"system": ORG_ID_SYSTEM, "value": "B86001"}}
