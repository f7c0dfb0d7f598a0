"""OH outcome field rules (contract §2, §6) through `adapters.adapt`, and its event (§3)."""
from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas.events import CanonicalEvent, Rejected
from schemas.fhir import event_id
from schemas.sources import FITNESS_OPINIONS
from schemas.vocab import Category, EventType
from tests import test_fit_note_rules as rules
from tests.test_fit_note_bundle import resources as _resources
from tests.test_fit_note_rules import DELETE, assert_no_value_in_messages, edit

KIND = "oh-outcome"
SUBJECT = "OHP-HEALTHWORKS"
NOW = datetime(2026, 11, 28, 17, 0, tzinfo=UTC)  # the example was assessed today


def example() -> dict[str, Any]:
    return rules.example(KIND)


def accepted(msg: dict[str, Any], **kw: Any) -> CanonicalEvent:
    return rules.accepted(msg, **{"kind": KIND, "subject": SUBJECT, "now": NOW, **kw})


def rejected(msg: dict[str, Any], **kw: Any) -> Rejected:
    return rules.rejected(msg, **{"kind": KIND, "subject": SUBJECT, "now": NOW, **kw})


def resources(event: CanonicalEvent) -> dict[str, dict[str, Any]]:
    return _resources(event.bundle)


# ------------------------------------------------------------------ acceptance


def test_example_is_accepted() -> None:
    event = accepted(example())
    assert event.kind == KIND and event.event_type is EventType.OH_OUTCOME_REPORTED
    assert event.event_id == event_id(KIND, "OHP-HEALTHWORKS", "OUT-HW-2026-0007", 1)
    f = event.facts
    assert f.nhs_number == "9434765919" and f.postcode_area is None
    assert f.provider_id == "OHP-HEALTHWORKS"
    assert f.referral_id == "REF-ACME-2026-0042"
    assert f.fitness == "fit-with-adjustments" and f.refer_to_access_to_work is True
    assert (f.document_id, f.version) == ("OUT-HW-2026-0007", 1)
    assert event.categories == {
        Category.IDENTITY, Category.FITNESS_ADVICE, Category.ADJUSTMENTS, Category.CLINICAL_NOTES
    }
    r = resources(event)
    notes = base64.b64decode(r["DocumentReference"]["content"][0]["attachment"]["data"]).decode()
    assert notes == example()["outcome"]["clinical_notes"]
    activities = [a["detail"]["description"] for a in r["CarePlan"]["activity"]]
    assert activities[:3] == example()["outcome"]["recommended_adjustments"]
    assert activities[3] == example()["outcome"]["return_to_work_plan"]
    assert r["CarePlan"]["activity"][4]["detail"]["code"]["coding"][0]["code"] == "refer-to-access-to-work"


@pytest.mark.parametrize("fitness", ["fit", "fit-with-adjustments", "fit-with-restrictions", "not-fit"])
def test_each_fitness_opinion_is_accepted(fitness: str) -> None:
    assert fitness in FITNESS_OPINIONS
    event = accepted(edit(example(), "outcome/fitness", fitness))
    assert event.facts.fitness == fitness
    assert resources(event)["Observation"]["valueCodeableConcept"]["coding"][0]["code"] == fitness


def test_without_notes_or_adjustments() -> None:
    msg = example()
    for key in ("clinical_notes", "recommended_adjustments", "return_to_work_plan", "refer_to_access_to_work",
                "referral_id"):
        msg = edit(msg, f"outcome/{key}", DELETE)
    event = accepted(edit(msg, "outcome/fitness", "fit"))
    r = resources(event)
    assert "DocumentReference" not in r and "activity" not in r["CarePlan"]
    assert r["CarePlan"]["description"] == "No workplace adjustments recommended"
    assert Category.CLINICAL_NOTES not in event.categories
    assert event.facts.refer_to_access_to_work is False and event.facts.referral_id is None


# -------------------------------------------------------- provider = publisher


def test_provider_must_be_the_publisher() -> None:
    msg = edit(example(), "outcome/provider_id", "OHP-ELSEWHERE")
    result = rejected(msg)
    assert [e.pointer for e in result.errors] == ["/outcome/provider_id"]
    assert "publishing organisation" in result.errors[0].message
    assert "its own outcomes" in result.errors[0].message
    assert_no_value_in_messages(result, "OHP-ELSEWHERE")


def test_an_employer_cannot_report_an_outcome_in_a_providers_name() -> None:
    msg = edit(example(), "source/org_id", "EMP-ACME")
    result = rejected(msg, subject="EMP-ACME")
    assert [e.pointer for e in result.errors] == ["/outcome/provider_id"]


def test_provider_is_compared_once_the_outcome_itself_is_valid() -> None:
    msg = edit(edit(example(), "outcome/provider_id", "OHP-ELSEWHERE"), "outcome/fitness", "unfit")
    result = rejected(msg)
    assert [e.pointer for e in result.errors] == ["/outcome/fitness"]  # the body's own rules first
    fixed = edit(msg, "outcome/fitness", "fit")
    assert [e.pointer for e in rejected(fixed).errors] == ["/outcome/provider_id"]


# -------------------------------------------------------------- refusals


_bad = rules.bad


BAD: list[tuple[str, str, Any, str]] = [
    ("nhs-check-digit", *_bad("outcome/patient/nhs_number", "9434765918")),
    ("nhs-letters", *_bad("outcome/patient/nhs_number", "94347659AB")),
    ("postcode", *_bad("outcome/patient/postcode", "L$1 4AP")),
    ("birth-date-future", *_bad("outcome/patient/birth_date", "2027-03-02")),
    ("assessed-future", *_bad("outcome/assessed_on", "2026-11-29")),
    ("assessed-format", *_bad("outcome/assessed_on", "28 Nov 2026")),
    ("assessed-missing", *_bad("outcome/assessed_on", DELETE)),
    ("fitness-value", *_bad("outcome/fitness", "unfit")),
    ("fitness-case", *_bad("outcome/fitness", "Fit")),
    ("fitness-missing", *_bad("outcome/fitness", DELETE)),
    ("provider-format", *_bad("outcome/provider_id", "HealthWorks OH")),
    ("provider-other", *_bad("outcome/provider_id", "OHP-OTHER")),
    ("provider-missing", *_bad("outcome/provider_id", DELETE)),
    ("adjustments-not-array", *_bad("outcome/recommended_adjustments", "Sit-stand desk")),
    ("plan-blank", *_bad("outcome/return_to_work_plan", " ")),
    ("refer-atw-not-bool", *_bad("outcome/refer_to_access_to_work", "yes please")),
    ("notes-blank", *_bad("outcome/clinical_notes", "   ")),
    ("referral-id-empty", *_bad("outcome/referral_id", "")),
    ("id-missing", *_bad("outcome/id", DELETE)),
    ("patient-missing", *_bad("outcome/patient", DELETE)),
    ("body-missing", *_bad("outcome", DELETE)),
]


@pytest.mark.parametrize(("path", "value", "pointer"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_field_rule_refusal(path: str, value: Any, pointer: str) -> None:
    rules.assert_refused(rejected, example, path, value, pointer)


def test_a_blank_adjustment_is_refused_where_it_is() -> None:
    msg = edit(example(), "outcome/recommended_adjustments", ["Sit-stand workstation", ""])
    assert [e.pointer for e in rejected(msg).errors] == ["/outcome/recommended_adjustments/1"]


def test_messages_name_the_rule() -> None:
    cases = {
        "outcome/fitness": ("unfit", "fit-with-adjustments"),
        "outcome/assessed_on": ("2026-12-01", "future"),
        "outcome/provider_id": ("OHP-OTHER", "source.org_id"),
    }
    for path, (value, words) in cases.items():
        result = rejected(edit(example(), path, value))
        assert words in result.errors[0].message, (path, result.errors)
