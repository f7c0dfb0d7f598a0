"""OH referral field rules (contract §2, §6) through `adapters.adapt`, and its event (§3)."""
from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from schemas.events import CanonicalEvent, Rejected
from schemas.fhir import event_id
from schemas.vocab import Category, EventType
from tests import test_fit_note_rules as rules
from tests.test_fit_note_bundle import resources as _resources
from tests.test_fit_note_rules import DELETE, edit

KIND = "oh-referral"
SUBJECT = "EMP-ACME"
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)  # the example's created_on is today


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
    assert event.kind == KIND
    assert event.event_type is EventType.OH_REFERRAL_REQUESTED
    assert event.source_org_id == "EMP-ACME"
    assert event.event_id == event_id(KIND, "EMP-ACME", "REF-ACME-2026-0042", 1)
    f = event.facts
    assert f.nhs_number == "9434765919" and f.postcode_area == "LS"
    assert (f.employment_status, f.employer_id) == ("employed", "EMP-ACME")
    assert (f.referrer_type, f.referrer_org_id) == ("employer", "EMP-ACME")
    assert f.preferred_provider_id is None
    assert f.urgency == "routine" and f.safety_critical_role is False
    assert f.related_fit_note_id == "FN-B86001-000123"
    assert f.absence_started_on == date(2026, 10, 23)
    assert (f.document_id, f.version) == ("REF-ACME-2026-0042", 1)
    assert event.categories == {Category.IDENTITY, Category.CONTACT, Category.REFERRAL}
    assert event.bundle["entry"][0]["resource"]["eventCoding"]["code"] == "oh-referral-requested"


def test_resend_is_the_same_event() -> None:
    first = accepted(example())
    again = accepted(edit(example(), "message_id", "a-new-message-id"))
    assert (again.event_id, again.content_hash) == (first.event_id, first.content_hash)
    assert accepted(edit(example(), "referral/id", "REF-ACME-2026-0043")).event_id != first.event_id
    assert accepted(edit(example(), "referral/reason", "Other")).content_hash != first.content_hash


@pytest.mark.parametrize(
    "referrer_type",
    ["gp", "employer", "self", "work-coach", "hospital", "msk-service", "mental-health-service"],
)
def test_each_referrer_type_is_accepted(referrer_type: str) -> None:
    event = accepted(edit(example(), "referral/referrer/type", referrer_type))
    assert event.facts.referrer_type == referrer_type
    sr = resources(event)["ServiceRequest"]
    assert sr["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] == referrer_type


def test_self_referral_needs_no_organisation() -> None:
    msg = edit(example(), "referral/referrer", {"type": "self"})
    event = accepted(msg)
    assert event.facts.referrer_org_id is None
    r = resources(event)
    patient_url = next(e["fullUrl"] for e in event.bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    assert r["ServiceRequest"]["requester"] == {"reference": patient_url}
    assert r["Task"]["requester"] == {"reference": patient_url}
    assert "Organization" not in r
    # a self-referral may still say through which organisation it came
    via = accepted(edit(example(), "referral/referrer", {"type": "self", "org_id": "EMP-ACME"}))
    assert via.facts.referrer_org_id == "EMP-ACME"


@pytest.mark.parametrize("urgency", ["routine", "urgent"])
def test_urgency_is_the_priority(urgency: str) -> None:
    r = resources(accepted(edit(example(), "referral/urgency", urgency)))
    assert r["ServiceRequest"]["priority"] == r["Task"]["priority"] == urgency


def test_urgency_defaults_to_routine() -> None:
    event = accepted(edit(example(), "referral/urgency", DELETE))
    assert event.facts.urgency == "routine"


def test_optional_parts_may_be_absent_or_null() -> None:
    msg = example()
    for key in ("related_fit_note_id", "preferred_provider_id", "absence_started_on", "questions",
                "employment", "safety_critical_role"):
        msg = edit(msg, f"referral/{key}", None if key != "safety_critical_role" else DELETE)
    event = accepted(msg)
    assert event.facts.employer_id is None and event.facts.absence_started_on is None


@pytest.mark.parametrize("status", ["employed", "self-employed", "unemployed", "job-to-start"])
def test_each_employment_status_is_accepted(status: str) -> None:
    assert accepted(edit(example(), "referral/employment/status", status)).facts.employment_status == status


def test_contact_details_are_normalised() -> None:
    msg = edit(example(), "referral/patient/phone", "07700 900-123")
    msg = edit(msg, "referral/patient/email", " jane.smith@example.org ")
    patient = resources(accepted(msg))["Patient"]
    assert patient["telecom"] == [
        {"system": "phone", "value": "07700900123", "use": "home"},
        {"system": "email", "value": "jane.smith@example.org", "use": "home"},
    ]


@pytest.mark.parametrize(
    ("phone", "stored"),
    [("07700 900123", "07700900123"), ("+44 7700 900123", "+447700900123"), ("(0113) 496-0000", "01134960000")],
)
def test_uk_phone_numbers_are_accepted(phone: str, stored: str) -> None:
    patient = resources(accepted(edit(example(), "referral/patient/phone", phone)))["Patient"]
    assert patient["telecom"] == [{"system": "phone", "value": stored, "use": "home"}]


def test_preferred_provider_is_a_fact_and_the_desired_performer() -> None:
    event = accepted(edit(example(), "referral/preferred_provider_id", "OHP-HEALTHWORKS"))
    assert event.facts.preferred_provider_id == "OHP-HEALTHWORKS"
    assert resources(event)["ServiceRequest"]["performer"][0]["identifier"]["value"] == "OHP-HEALTHWORKS"


def test_unknown_fields_are_ignored() -> None:
    msg = example()
    msg["referral"]["notes_for_hr"] = "ignore me"
    msg["referral"]["referrer"]["extra"] = 1
    accepted(msg)


# -------------------------------------------------------------- refusals


_bad = rules.bad


BAD: list[tuple[str, str, Any, str]] = [
    ("nhs-check-digit", *_bad("referral/patient/nhs_number", "9434765918")),
    ("nhs-too-short", *_bad("referral/patient/nhs_number", "943476591")),
    ("nhs-missing", *_bad("referral/patient/nhs_number", DELETE)),
    ("postcode", *_bad("referral/patient/postcode", "LS1")),
    ("birth-date-future", *_bad("referral/patient/birth_date", "2027-01-01")),
    ("email", *_bad("referral/patient/email", "jane.smith@")),
    ("email-spaces", *_bad("referral/patient/email", "jane smith@example.org")),
    ("phone-letters", *_bad("referral/patient/phone", "call me maybe")),
    ("phone-too-short", *_bad("referral/patient/phone", "0113 496")),
    ("created-format", *_bad("referral/created_on", "21/11/2026")),
    ("created-future", *_bad("referral/created_on", "2026-11-22")),
    ("created-missing", *_bad("referral/created_on", DELETE)),
    ("absence-future", *_bad("referral/absence_started_on", "2026-12-01")),
    ("absence-format", *_bad("referral/absence_started_on", "last month")),
    ("employment-status", *_bad("referral/employment/status", "retired")),
    ("employer-id-format", *_bad("referral/employment/employer_id", "ACME LTD!")),
    ("referrer-type", *_bad("referral/referrer/type", "dentist")),
    ("referrer-type-case", *_bad("referral/referrer/type", "Employer")),
    ("referrer-type-missing", *_bad("referral/referrer/type", DELETE)),
    ("referrer-org-missing", *_bad("referral/referrer/org_id", DELETE)),
    ("referrer-org-null", *_bad("referral/referrer/org_id", None)),
    ("referrer-org-format", *_bad("referral/referrer/org_id", "ACME HR!")),
    ("referrer-missing", *_bad("referral/referrer", DELETE)),
    ("urgency", *_bad("referral/urgency", "whenever")),
    ("urgency-case", *_bad("referral/urgency", "URGENT")),
    ("preferred-provider-format", *_bad("referral/preferred_provider_id", "any provider")),
    ("related-fit-note-empty", *_bad("referral/related_fit_note_id", "")),
    ("safety-critical-not-bool", *_bad("referral/safety_critical_role", "sometimes")),
    ("reason-missing", *_bad("referral/reason", DELETE)),
    ("reason-blank", *_bad("referral/reason", "   ")),
    ("questions-not-array", *_bad("referral/questions", "Can she lift?")),
    ("referral-id-missing", *_bad("referral/id", DELETE)),
    ("patient-missing", *_bad("referral/patient", DELETE)),
    ("body-missing", *_bad("referral", DELETE)),
]


@pytest.mark.parametrize(("path", "value", "pointer"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_field_rule_refusal(path: str, value: Any, pointer: str) -> None:
    rules.assert_refused(rejected, example, path, value, pointer)


def test_a_blank_question_is_refused_where_it_is() -> None:
    msg = edit(example(), "referral/questions", ["Which duties?", "  "])
    assert [e.pointer for e in rejected(msg).errors] == ["/referral/questions/1"]


def test_messages_name_the_rule() -> None:
    cases = {
        "referral/referrer/type": ("dentist", "referrer type"),
        "referral/referrer/org_id": (None, "unless the person refers themselves"),
        "referral/urgency": ("soon", "routine or urgent"),
        "referral/created_on": ("2026-11-30", "future"),
        "referral/employment/status": ("retired", "employed"),
        "referral/patient/nhs_number": ("9434765918", "check digit"),
    }
    for path, (value, words) in cases.items():
        result = rejected(edit(example(), path, value))
        assert words in result.errors[0].message, (path, result.errors)


def test_source_org_must_match_the_subject() -> None:
    result = rejected(example(), subject="B86001")
    assert [e.pointer for e in result.errors] == ["/source/org_id"]
