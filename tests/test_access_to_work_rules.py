"""Access to Work field rules (contract §2, §6) through `adapters.adapt`, and its event (§3)."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from adapters.access_to_work import ATW_SUPPORT_SYSTEM
from schemas.events import CanonicalEvent, Rejected
from schemas.fhir import NINO_SYSTEM, event_id
from schemas.sources import ATW_SUPPORT
from schemas.vocab import Category, EventType
from tests import test_fit_note_rules as rules
from tests.test_fit_note_bundle import resources as _resources
from tests.test_fit_note_rules import DELETE, assert_no_value_in_messages, edit

KIND = "access-to-work"
SUBJECT = "ATW-ONLINE"
NOW = datetime(2026, 11, 21, 15, 0, tzinfo=UTC)  # the example was submitted today


def example() -> dict[str, Any]:
    return rules.example(KIND)


def accepted(msg: dict[str, Any], **kw: Any) -> CanonicalEvent:
    return rules.accepted(msg, **{"kind": KIND, "subject": SUBJECT, "now": NOW, **kw})


def rejected(msg: dict[str, Any], **kw: Any) -> Rejected:
    return rules.rejected(msg, **{"kind": KIND, "subject": SUBJECT, "now": NOW, **kw})


def resources(event: CanonicalEvent) -> dict[str, dict[str, Any]]:
    return _resources(event.bundle)


def inputs(event: CanonicalEvent, code: str) -> list[dict[str, Any]]:
    return [i for i in resources(event)["Task"]["input"] if i["type"]["coding"][0]["code"] == code]


# ------------------------------------------------------------------ acceptance


def test_example_is_accepted() -> None:
    event = accepted(example())
    assert event.kind == KIND and event.event_type is EventType.ACCESS_TO_WORK_REQUESTED
    assert event.event_id == event_id(KIND, "ATW-ONLINE", "ATW-2026-118842", 1)
    f = event.facts
    assert f.nhs_number == "9434765919" and f.postcode_area == "LS"
    assert f.nation == "england"
    assert (f.employment_status, f.employer_id) == ("employed", "EMP-ACME")
    assert f.support_requested == ("special-aids-equipment", "adaptations-to-premises")
    assert f.oh_outcome_id == "OUT-HW-2026-0007"
    assert (f.document_id, f.version) == ("ATW-2026-118842", 1)
    assert event.categories == {Category.IDENTITY, Category.CONTACT, Category.ATW_APPLICATION}
    patient = resources(event)["Patient"]
    assert {"system": NINO_SYSTEM, "value": "AB123456C"} in patient["identifier"]
    assert patient["telecom"] == [{"system": "email", "value": "jane.smith@example.org", "use": "home"}]


def test_ni_number_is_normalised() -> None:
    event = accepted(edit(example(), "application/applicant/national_insurance_number", "ab 12 34 56 c"))
    assert {"system": NINO_SYSTEM, "value": "AB123456C"} in resources(event)["Patient"]["identifier"]


@pytest.mark.parametrize("nation", ["england", "scotland", "wales"])
def test_each_covered_nation_is_accepted(nation: str) -> None:
    event = accepted(edit(example(), "application/nation", nation))
    assert event.facts.nation == nation
    assert inputs(event, "nation")[0]["valueCodeableConcept"]["coding"][0]["code"] == nation


@pytest.mark.parametrize("support", list(ATW_SUPPORT))
def test_each_kind_of_support_is_accepted(support: str) -> None:
    event = accepted(edit(example(), "application/support_requested", [support]))
    (item,) = inputs(event, "support-requested")
    assert item["valueCodeableConcept"]["coding"][0] == {
        "system": ATW_SUPPORT_SYSTEM, "code": support, "display": item["valueCodeableConcept"]["text"]
    }


def test_support_kinds_are_the_six_of_the_domain() -> None:
    assert len(ATW_SUPPORT) == 6
    event = accepted(edit(example(), "application/support_requested", list(reversed(ATW_SUPPORT))))
    codes = [i["valueCodeableConcept"]["coding"][0]["code"] for i in inputs(event, "support-requested")]
    assert codes == list(reversed(ATW_SUPPORT))


@pytest.mark.parametrize("hours", [0.5, 16, 37.5, 168])
def test_hours_within_a_week_are_accepted(hours: float) -> None:
    event = accepted(edit(example(), "application/employment/hours_per_week", hours))
    assert inputs(event, "hours-per-week")[0]["valueDecimal"] == hours


@pytest.mark.parametrize("status", ["employed", "self-employed", "unemployed", "job-to-start"])
def test_each_employment_status_is_accepted(status: str) -> None:
    assert accepted(edit(example(), "application/employment/status", status)).facts.employment_status == status


def test_optional_parts_may_be_absent() -> None:
    msg = example()
    for path in ("application/oh_outcome_ref", "application/applicant/email", "application/applicant/postcode",
                 "application/employment/employer_id", "application/employment/job_title",
                 "application/employment/hours_per_week", "application/employment/workplace_contact"):
        msg = edit(msg, path, DELETE)
    event = accepted(msg)
    assert event.categories == {Category.IDENTITY, Category.ATW_APPLICATION}
    assert "basedOn" not in resources(event)["Task"]


# -------------------------------------------------------------- Northern Ireland


def test_northern_ireland_is_refused_and_the_error_says_why() -> None:
    result = rejected(edit(example(), "application/nation", "northern-ireland"))
    assert [e.pointer for e in result.errors] == ["/application/nation"]
    message = result.errors[0].message
    assert "Access to Work does not cover Northern Ireland" in message
    assert "its own scheme" in message


# -------------------------------------------------------------- refusals


_bad = rules.bad


NI = "application/applicant/national_insurance_number"
BAD: list[tuple[str, str, Any, str]] = [
    ("ni-format", *_bad(NI, "AB12345C")),
    ("ni-suffix", *_bad(NI, "AB123456E")),
    ("ni-first-letter-d", *_bad(NI, "DA123456A")),
    ("ni-second-letter-o", *_bad(NI, "AO123456A")),
    ("ni-prefix-never-issued", *_bad(NI, "GB123456A")),
    ("ni-missing", *_bad(NI, DELETE)),
    ("ni-number", *_bad(NI, 123456)),
    ("nhs-check-digit", *_bad("application/applicant/nhs_number", "9434765918")),
    ("postcode", *_bad("application/applicant/postcode", "12345")),
    ("email-no-domain", *_bad("application/applicant/email", "jane.smith@")),
    ("email-no-at", *_bad("application/applicant/email", "jane.smith.example.org")),
    ("email-no-dot", *_bad("application/applicant/email", "jane@localhost")),
    ("birth-date-future", *_bad("application/applicant/birth_date", "2030-01-01")),
    ("nation-other", *_bad("application/nation", "france")),
    ("nation-case", *_bad("application/nation", "England")),
    ("nation-missing", *_bad("application/nation", DELETE)),
    ("support-empty", *_bad("application/support_requested", [])),
    ("support-repeated", *_bad("application/support_requested", ["support-worker", "support-worker"])),
    ("support-not-array", *_bad("application/support_requested", "support-worker")),
    ("support-missing", *_bad("application/support_requested", DELETE)),
    ("hours-zero", *_bad("application/employment/hours_per_week", 0)),
    ("hours-negative", *_bad("application/employment/hours_per_week", -4)),
    ("hours-over-a-week", *_bad("application/employment/hours_per_week", 169)),
    ("hours-string", *_bad("application/employment/hours_per_week", "37.5")),
    ("hours-bool", *_bad("application/employment/hours_per_week", True)),
    ("employment-status", *_bad("application/employment/status", "retired")),
    ("employment-missing", *_bad("application/employment", DELETE)),
    ("employer-id-format", *_bad("application/employment/employer_id", "Acme Ltd")),
    ("submitted-future", *_bad("application/submitted_on", "2026-11-22")),
    ("submitted-format", *_bad("application/submitted_on", "2026-11-21T10:00:00Z")),
    ("barriers-missing", *_bad("application/barriers", DELETE)),
    ("barriers-blank", *_bad("application/barriers", "  ")),
    ("outcome-ref-empty", *_bad("application/oh_outcome_ref", "")),
    ("id-missing", *_bad("application/id", DELETE)),
    ("applicant-missing", *_bad("application/applicant", DELETE)),
    ("body-missing", *_bad("application", DELETE)),
]


@pytest.mark.parametrize(("path", "value", "pointer"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_field_rule_refusal(path: str, value: Any, pointer: str) -> None:
    rules.assert_refused(rejected, example, path, value, pointer)


def test_an_unknown_kind_of_support_is_refused_where_it_is() -> None:
    msg = edit(example(), "application/support_requested", ["support-worker", "a new chair"])
    result = rejected(msg)
    assert [e.pointer for e in result.errors] == ["/application/support_requested/1"]
    assert "kind of Access to Work support" in result.errors[0].message
    assert_no_value_in_messages(result, "a new chair")


def test_messages_name_the_rule() -> None:
    cases = {
        NI: ("GB123456A", "never issued"),
        "application/nation": ("france", "england, scotland or wales"),
        "application/support_requested": ([], "at least one"),
        "application/employment/hours_per_week": (200, "168"),
        "application/applicant/email": ("jane@", "email address"),
    }
    for path, (value, words) in cases.items():
        result = rejected(edit(example(), path, value))
        assert words in result.errors[0].message, (path, result.errors)
    repeated = rejected(edit(example(), "application/support_requested", ["travel-to-work"] * 2))
    assert "twice" in repeated.errors[0].message
