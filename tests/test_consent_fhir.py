"""consent.fhir: FHIR R4B Consent JSON <-> ConsentRecord, and its error pointers."""
from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from consent.fhir import ConsentInvalid, consent_to_fhir, parse_consent, withdrawn
from consent.model import ConsentRecord
from schemas.events import FieldError

EXAMPLE = json.loads((Path(__file__).parents[1] / "examples" / "consent.example.json").read_text())

Doc = dict[str, Any]


def example() -> Doc:
    return copy.deepcopy(EXAMPLE)


def errors_of(doc: Any) -> list[FieldError]:
    with pytest.raises(ConsentInvalid) as info:
        parse_consent(doc, consent_id="C-1", version=1)
    assert info.value.errors, "ConsentInvalid must carry at least one error"
    assert all(isinstance(e, FieldError) for e in info.value.errors)
    return info.value.errors


# --- the example ------------------------------------------------------------------------


def test_example_parses() -> None:
    record = parse_consent(example(), consent_id="C-9", version=2)
    assert isinstance(record, ConsentRecord)
    assert (record.id, record.version, record.status) == ("C-9", 2, "active")
    assert record.nhs_number == "9434765919"
    assert record.date_time == datetime(2026, 11, 19, 18, 20, tzinfo=UTC)
    assert record.withdrawn_at is None

    root = record.provision
    assert (root.type, root.path) == ("deny", "root")
    assert not root.states_constraint()
    first, second = root.children
    assert first.path == "1" and second.path == "2"
    assert first.type == "permit"
    assert first.purposes == frozenset({"employment-support"})
    assert first.categories == frozenset({"identity", "fitness-advice", "adjustments"})
    assert first.actors == frozenset({"EMP-ACME"})
    assert first.period_start == datetime(2026, 11, 19, 0, 0, tzinfo=UTC)
    assert first.period_end == datetime(2027, 11, 19, 23, 59, 59, 999999, tzinfo=UTC)
    assert second.actors == frozenset()
    assert second.purposes == frozenset({"occupational-health"})
    assert "diagnosis" in second.categories


def test_nested_paths_and_bst_dates() -> None:
    doc = example()
    doc["provision"]["provision"][1]["provision"] = [
        {"type": "deny", "securityLabel": [
            {"system": "https://hub.example.org/fhir/CodeSystem/data-category", "code": "diagnosis"}]},
        {"type": "deny", "period": {"start": "2027-07-01", "end": "2027-07-31"}},
    ]
    record = parse_consent(doc, consent_id="C-1", version=1)
    deeper = record.provision.children[1].children
    assert [p.path for p in deeper] == ["2.1", "2.2"]
    assert deeper[1].period_start == datetime(2027, 6, 30, 23, 0, tzinfo=UTC)
    assert deeper[1].period_end == datetime(2027, 7, 31, 22, 59, 59, 999999, tzinfo=UTC)


def test_nhs_number_is_normalised() -> None:
    doc = example()
    doc["patient"]["identifier"]["value"] = "943 476 5919"
    assert parse_consent(doc, consent_id="C-1", version=1).nhs_number == "9434765919"


def test_partial_dates_and_datetimes() -> None:
    doc = example()
    doc["provision"]["provision"][0]["period"] = {"start": "2026-11", "end": "2027"}
    doc["dateTime"] = "2026-11-19"
    record = parse_consent(doc, consent_id="C-1", version=1)
    p = record.provision.children[0]
    assert p.period_start == datetime(2026, 11, 1, 0, 0, tzinfo=UTC)
    assert p.period_end == datetime(2027, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert record.date_time == datetime(2026, 11, 19, 0, 0, tzinfo=UTC)

    doc["provision"]["provision"][0]["period"] = {"end": "2027-11-19T17:00:00+01:00"}
    p = parse_consent(doc, consent_id="C-1", version=1).provision.children[0]
    assert p.period_start is None
    assert p.period_end == datetime(2027, 11, 19, 16, 0, tzinfo=UTC)


# --- the hub's rules: exact pointers, values never echoed ---------------------------------


def _set(path: list[Any], value: Any) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


def _del(path: list[Any]) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        node = doc
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return mutate


P0 = ["provision", "provision", 0]
P1 = ["provision", "provision", 1]

HUB_RULES = [
    # (id, mutation, expected pointer, the offending value that must not be echoed)
    ("status", _set(["status"], "half-agreed"), "/status", "half-agreed"),
    ("scope-code", _set(["scope", "coding", 0, "code"], "research-xyz"), "/scope", "research-xyz"),
    ("scope-system", _set(["scope", "coding", 0, "system"], "http://example.org/elsewhere"), "/scope",
     "http://example.org/elsewhere"),
    ("nhs-system", _set(["patient", "identifier", "system"], "http://example.org/mrn"),
     "/patient/identifier/system", "http://example.org/mrn"),
    ("nhs-check-digit", _set(["patient", "identifier", "value"], "9434765918"), "/patient/identifier/value",
     "9434765918"),
    ("nhs-length", _set(["patient", "identifier", "value"], "94347659"), "/patient/identifier/value", "94347659"),
    ("no-identifier", _del(["patient", "identifier"]), "/patient/identifier", None),
    ("no-provision", _del(["provision"]), "/provision", None),
    ("root-type-missing", _del(["provision", "type"]), "/provision/type", None),
    ("nested-type", _set([*P1, "type"], "perhaps"), "/provision/provision/1/type", "perhaps"),
    ("purpose-code", _set([*P0, "purpose", 0, "code"], "marketing-blast"),
     "/provision/provision/0/purpose/0/code", "marketing-blast"),
    ("purpose-system", _set([*P0, "purpose", 0, "system"], "http://example.org/purposes"),
     "/provision/provision/0/purpose/0/system", "http://example.org/purposes"),
    ("category-code", _set([*P1, "securityLabel", 3, "code"], "genome-data"),
     "/provision/provision/1/securityLabel/3/code", "genome-data"),
    ("category-system", _set([*P1, "securityLabel", 0, "system"], "http://example.org/labels"),
     "/provision/provision/1/securityLabel/0/system", "http://example.org/labels"),
    ("actor-not-org", _set([*P0, "actor", 0, "reference", "reference"], "Patient/P-77"),
     "/provision/provision/0/actor/0/reference/reference", "Patient/P-77"),
    ("actor-bad-org-id", _set([*P0, "actor", 0, "reference", "reference"], "Organization/EMP ACME!"),
     "/provision/provision/0/actor/0/reference/reference", "EMP ACME!"),
    ("actor-role", _set([*P0, "actor", 0, "role", "coding", 0, "code"], "PRCP-X"),
     "/provision/provision/0/actor/0/role", "PRCP-X"),
    ("period-reversed", _set([*P0, "period"], {"start": "2027-11-19", "end": "2026-11-19"}),
     "/provision/provision/0/period/end", "2026-11-19"),
    ("unsupported-data", _set([*P0, "data"], [{"meaning": "instance", "reference": {"reference": "DocumentReference/D-1"}}]),
     "/provision/provision/0/data", "DocumentReference/D-1"),
    ("empty-purpose", _set([*P0, "purpose"], []), "/provision/provision/0/purpose", None),
    ("deep-purpose", _set([*P0, "provision"], [{"type": "deny", "purpose": [
        {"system": "https://hub.example.org/fhir/CodeSystem/purpose", "code": "sell-it"}]}]),
     "/provision/provision/0/provision/0/purpose/0/code", "sell-it"),
]


@pytest.mark.parametrize(("mutate", "pointer", "bad"), [r[1:] for r in HUB_RULES], ids=[r[0] for r in HUB_RULES])
def test_hub_rule_violation_points_at_the_field(mutate: Callable[[Doc], None], pointer: str, bad: str | None) -> None:
    doc = example()
    mutate(doc)
    errors = errors_of(doc)
    assert [e.pointer for e in errors] == [pointer], errors
    if bad is not None:
        for e in errors:
            assert bad not in e.message


def test_resource_type_is_checked_first() -> None:
    doc = example()
    doc["resourceType"] = "Patient"
    assert errors_of(doc) == [FieldError("/resourceType", "must be Consent")]


def test_not_an_object() -> None:
    assert [e.pointer for e in errors_of(["not", "a", "consent"])] == [""]


def test_every_error_is_reported_at_once() -> None:
    doc = example()
    doc["status"] = "half-agreed"
    doc["provision"]["provision"][0]["purpose"][0]["code"] = "marketing-blast"
    doc["provision"]["provision"][1]["securityLabel"][0]["code"] = "genome-data"
    pointers = {e.pointer for e in errors_of(doc)}
    assert pointers == {
        "/status",
        "/provision/provision/0/purpose/0/code",
        "/provision/provision/1/securityLabel/0/code",
    }


# --- FHIR structural errors become pointers too ------------------------------------------

FHIR_ERRORS = [
    ("bad-date", _set([*P0, "period", "end"], "2027-13-40"), "/provision/provision/0/period/end", "2027-13-40"),
    ("naive-datetime", _set(["dateTime"], "2026-11-19T18:20:00"), "/dateTime", "2026-11-19T18:20:00"),
    ("unknown-element", _set(["favouriteColour"], "ultraviolet"), "/favouriteColour", "ultraviolet"),
    ("code-not-string", _set([*P0, "purpose", 0, "code"], 424242), "/provision/provision/0/purpose/0/code", "424242"),
    ("nhs-not-string", _set(["patient", "identifier", "value"], 9434765919), "/patient/identifier/value",
     "9434765919"),
    ("purpose-not-list", _set([*P0, "purpose"], "employment-support-now"), "/provision/provision/0/purpose",
     "employment-support-now"),
    ("actor-without-role", _del([*P0, "actor", 0, "role"]), "/provision/provision/0/actor/0/role", None),
    ("status-missing", _del(["status"]), "/status", None),
    ("scope-missing", _del(["scope"]), "/scope", None),
    ("status-blank", _set(["status"], " "), "/status", None),
]


@pytest.mark.parametrize(("mutate", "pointer", "bad"), [r[1:] for r in FHIR_ERRORS], ids=[r[0] for r in FHIR_ERRORS])
def test_fhir_validation_error_becomes_pointer(mutate: Callable[[Doc], None], pointer: str, bad: str | None) -> None:
    doc = example()
    mutate(doc)
    errors = errors_of(doc)
    # One fault, one error: the hub's own rules do not report it a second time.
    assert [e.pointer for e in errors] == [pointer], errors
    if bad is not None:
        for e in errors:
            assert bad not in e.message


def test_fhir_and_hub_errors_are_reported_together() -> None:
    doc = example()
    doc["favouriteColour"] = "ultraviolet"
    doc["provision"]["provision"][0]["purpose"][0]["code"] = "marketing-blast"
    pointers = [e.pointer for e in errors_of(doc)]
    assert pointers == ["/favouriteColour", "/provision/provision/0/purpose/0/code"]


def test_pointer_escapes_special_characters() -> None:
    doc = example()
    doc["a/b~c"] = 1
    assert [e.pointer for e in errors_of(doc)] == ["/a~1b~0c"]


# --- back to FHIR ---------------------------------------------------------------------


def test_consent_to_fhir_overlays_id_meta_and_status() -> None:
    original = example()
    original["meta"] = {"tag": [{"code": "kept"}]}
    before = copy.deepcopy(original)
    record = parse_consent(original, consent_id="C-9", version=3)
    inactive = ConsentRecord(
        record.id, record.version, "inactive", record.nhs_number, record.date_time, record.provision
    )
    stored = consent_to_fhir(inactive, original, last_updated=datetime(2026, 12, 3, 10, 15, 30, tzinfo=UTC))
    assert stored["id"] == "C-9"
    assert stored["meta"] == {"tag": [{"code": "kept"}], "versionId": "3", "lastUpdated": "2026-12-03T10:15:30Z"}
    assert stored["status"] == "inactive"
    assert stored["provision"] == before["provision"]
    assert original == before  # not mutated
    # The stored form is itself a valid Consent.
    again = parse_consent(stored, consent_id="C-9", version=3)
    assert again.status == "inactive"
    assert again.provision == record.provision


def test_withdrawn_copies_with_status_inactive() -> None:
    original = example()
    out = withdrawn(original)
    assert out["status"] == "inactive"
    assert original["status"] == "active"
    out["provision"]["type"] = "permit"
    assert original["provision"]["type"] == "deny"  # a deep copy


def test_fhir_invariant_error_points_at_the_resource() -> None:
    doc = example()
    doc["sourceAttachment"] = {"title": "signed-form"}
    doc["sourceReference"] = {"reference": "DocumentReference/secret-77"}
    errors = errors_of(doc)
    assert [e.pointer for e in errors] == [""]
    assert "secret-77" not in errors[0].message


def test_bad_date_message_is_readable() -> None:
    doc = example()
    doc["provision"]["provision"][0]["period"]["end"] = "19/11/2027"
    (error,) = errors_of(doc)
    assert error == FieldError(
        "/provision/provision/0/period/end", "must be a FHIR dateTime (e.g. 2027-11-19 or 2027-11-19T09:00:00Z)"
    )
