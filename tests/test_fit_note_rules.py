"""Fit note field rules (contract §2, §6) through `adapters.adapt`, and event identity (§3)."""
from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from adapters import adapt
from hub.directory import load_directory
from schemas.events import CanonicalEvent, Rejected
from schemas.fhir import resource_categories
from schemas.vocab import Category, EventType

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)  # UK date 2026-11-20 (GMT)
DIRECTORY = load_directory()
DELETE = object()


def example(name: str = "fit-note") -> dict[str, Any]:
    return json.loads((EXAMPLES / f"{name}.example.json").read_text())


def run(
    msg: dict[str, Any] | bytes,
    *,
    kind: str = "fit-note",
    subject: str | None = "B86001",
    now: datetime = NOW,
) -> CanonicalEvent | Rejected:
    raw = msg if isinstance(msg, bytes) else json.dumps(msg).encode()
    return adapt(kind, raw, subject_org_id=subject, directory=DIRECTORY, now=now)


def accepted(msg: dict[str, Any] | bytes, **kw: Any) -> CanonicalEvent:
    result = run(msg, **kw)
    assert isinstance(result, CanonicalEvent), getattr(result, "errors", result)
    return result


def rejected(msg: dict[str, Any] | bytes, **kw: Any) -> Rejected:
    result = run(msg, **kw)
    assert isinstance(result, Rejected), f"accepted: {result!r}"
    return result


def edit(msg: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of msg with the slash-separated path set to value (or removed)."""
    out = copy.deepcopy(msg)
    *parents, last = path.split("/")
    node = out
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return out


def assert_no_value_in_messages(result: Rejected, *values: Any) -> None:
    for error in result.errors:
        for value in values:
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                text = str(value).strip()
                compact = text.replace(" ", "")
                if len(compact) >= 3:
                    assert text not in error.message, (error, value)
                    assert compact not in error.message.replace(" ", ""), (error, value)

def bad(path: str, value: Any) -> tuple[str, Any, str]:
    """A refusal case: replace `path` (a/b/c) by `value`; the error points at it."""
    return path, value, "/" + path


def assert_refused(rejected_fn: Any, example_fn: Any, path: str, value: Any, pointer: str) -> None:
    """The example with one field changed is refused with exactly one error, at
    `pointer`, whose message is non-empty and never repeats the value."""
    msg = edit(example_fn(), path, value)
    result = rejected_fn(msg)
    assert [e.pointer for e in result.errors] == [pointer], result.errors
    assert all(e.message for e in result.errors)
    assert_no_value_in_messages(result, value)
    assert result.message_id == msg["message_id"]



# ------------------------------------------------------------------ acceptance


def test_example_is_accepted() -> None:
    event = accepted(example())
    assert event.kind == "fit-note"
    assert event.event_type is EventType.FIT_NOTE_ISSUED
    assert event.source_org_id == "B86001"
    assert event.message_id == "3f0c2a52-7d0e-4a55-9c1e-5b8f3f2f6a01"
    assert event.sent_at == datetime(2026, 11, 20, 9, 15, tzinfo=UTC)
    f = event.facts
    assert f.nhs_number == "9434765919"  # spaces removed
    assert f.postcode_area == "LS"
    assert f.employment_status == "employed"
    assert f.employer_id == "EMP-ACME"
    assert f.assessment == "may-be-fit"
    assert f.share_diagnosis_with_employer is False
    assert f.document_id == "FN-B86001-000123"
    assert f.version == 1 and f.replaces is None
    assert (f.period_start, f.period_end) == (date(2026, 11, 20), date(2026, 12, 11))
    assert event.categories == {
        Category.IDENTITY, Category.CONTACT, Category.FITNESS_ADVICE, Category.DIAGNOSIS
    }
    assert len(event.content_hash) == 64 and int(event.content_hash, 16) >= 0
    assert event.bundle["identifier"]["value"] == event.event_id


def test_categories_are_those_the_bundle_holds() -> None:
    event = accepted(edit(example(), "fit_note/patient/postcode", DELETE))
    held = set().union(*(resource_categories(e["resource"]) for e in event.bundle["entry"]))
    assert event.categories == held
    assert Category.CONTACT not in event.categories
    assert event.facts.postcode_area is None


def test_unknown_fields_are_ignored() -> None:
    msg = example()
    msg["trace"] = {"hop": 1}
    msg["fit_note"]["patient"]["favourite_colour"] = "blue"
    msg["fit_note"]["issuer"]["extra"] = [1, 2, 3]
    accepted(msg)


def test_normalises_nhs_number_and_postcode() -> None:
    msg = edit(example(), "fit_note/patient/postcode", "ls1  4ap")
    msg = edit(msg, "fit_note/patient/nhs_number", "9434765919")
    event = accepted(msg)
    patient = event.bundle["entry"][1]["resource"]
    assert patient["identifier"][0]["value"] == "9434765919"
    assert patient["address"][0]["postalCode"] == "LS1 4AP"
    assert event.facts.postcode_area == "LS"


@pytest.mark.parametrize(
    "option", ["phased_return", "altered_hours", "amended_duties", "workplace_adaptations"]
)
def test_each_advice_option_is_accepted(option: str) -> None:
    advice = {k: False for k in ("phased_return", "altered_hours", "amended_duties", "workplace_adaptations")}
    advice[option] = True
    event = accepted(edit(example(), "fit_note/may_be_fit_advice", advice))
    observation = event.bundle["entry"][5]["resource"]
    ticked = [c["code"]["coding"][0]["code"] for c in observation["component"] if c.get("valueBoolean") is True
              and c["code"]["coding"][0]["code"] != "follow-up-assessment-needed"]
    assert ticked == [option.replace("_", "-")]


def test_advice_options_may_be_partial_or_absent() -> None:
    accepted(edit(example(), "fit_note/may_be_fit_advice", {"amended_duties": True}))
    accepted(edit(example(), "fit_note/may_be_fit_advice", DELETE))
    not_fit = edit(edit(example(), "fit_note/assessment", "not-fit"), "fit_note/may_be_fit_advice", None)
    assert accepted(not_fit).facts.assessment == "not-fit"


@pytest.mark.parametrize(
    "profession",
    ["gp", "hospital-doctor", "nurse", "pharmacist", "occupational-therapist", "physiotherapist"],
)
def test_each_certifying_profession_is_accepted(profession: str) -> None:
    event = accepted(edit(example(), "fit_note/issuer/profession", profession))
    role = event.bundle["entry"][3]["resource"]
    assert role["code"][0]["coding"][0]["code"] == profession


@pytest.mark.parametrize("status", ["employed", "self-employed", "unemployed", "job-to-start"])
def test_each_employment_status_is_accepted(status: str) -> None:
    assert accepted(edit(example(), "fit_note/employment/status", status)).facts.employment_status == status


# ------------------------------------------------------- event identity (§3)


def test_resend_gives_the_same_event_id() -> None:
    first = accepted(example())
    again = accepted(example())
    resent = accepted(edit(example(), "message_id", "another-message-id"))
    resent_later = accepted(edit(example(), "sent_at", "2026-11-20T11:00:00+00:00"))
    assert first.event_id == again.event_id == resent.event_id == resent_later.event_id
    assert first.content_hash == resent.content_hash == resent_later.content_hash
    assert first.bundle == again.bundle
    # spacing of the NHS number does not change the normalised body
    assert accepted(edit(example(), "fit_note/patient/nhs_number", "9434765919")).content_hash == first.content_hash


def test_same_id_and_version_with_other_content_has_same_id_but_other_hash() -> None:
    first = accepted(example())
    changed = accepted(edit(example(), "fit_note/functional_effects", "No lifting at all."))
    assert changed.event_id == first.event_id
    assert changed.content_hash != first.content_hash


def test_replacing_and_corrected_notes_are_superseded_with_distinct_ids() -> None:
    original = accepted(example())
    replacing = edit(edit(example(), "fit_note/id", "FN-B86001-000200"), "fit_note/replaces", "FN-B86001-000123")
    replaced = accepted(replacing)
    corrected = accepted(edit(example(), "fit_note/version", 2))
    assert replaced.event_type is EventType.FIT_NOTE_SUPERSEDED
    assert corrected.event_type is EventType.FIT_NOTE_SUPERSEDED
    assert len({original.event_id, replaced.event_id, corrected.event_id}) == 3
    assert replaced.facts.replaces == "FN-B86001-000123"
    assert corrected.facts.version == 2
    assert replaced.bundle["entry"][0]["resource"]["eventCoding"]["code"] == "fit-note-superseded"
    assert corrected.bundle["entry"][5]["resource"]["status"] == "amended"
    assert replaced.bundle["entry"][5]["resource"]["status"] == "final"


def test_same_note_id_from_another_source_is_another_event() -> None:
    a = accepted(example())
    msg = edit(example(), "source/org_id", "EMP-ACME")  # any known org
    b = accepted(msg, subject="EMP-ACME")
    assert a.event_id != b.event_id


def test_today_is_the_uk_date() -> None:
    msg = edit(example(), "fit_note/issued_on", "2026-06-21")
    msg = edit(msg, "fit_note/assessed_on", "2026-06-21")
    msg = edit(msg, "fit_note/period", {"start": "2026-06-21", "end": "2026-07-01"})
    # 23:30 UTC on 20 June is 00:30 BST on 21 June: the note is not from the future.
    accepted(msg, now=datetime(2026, 6, 20, 23, 30, tzinfo=UTC))
    # 22:30 UTC is 23:30 BST on 20 June: it is.
    result = rejected(msg, now=datetime(2026, 6, 20, 22, 30, tzinfo=UTC))
    assert sorted(e.pointer for e in result.errors) == ["/fit_note/assessed_on", "/fit_note/issued_on"]


def test_subject_org_may_be_absent() -> None:
    accepted(example(), subject=None)


# -------------------------------------------------------------- refusals


def _nested(path: str, value: Any) -> tuple[str, Any, str]:
    return path, value, "/" + path


BAD: list[tuple[str, str, Any, str]] = [
    # id, path to edit, value (DELETE to remove), expected pointer
    ("nhs-too-short", *_nested("fit_note/patient/nhs_number", "943 476 591")),
    ("nhs-too-long", *_nested("fit_note/patient/nhs_number", "94347659190")),
    ("nhs-letters", *_nested("fit_note/patient/nhs_number", "943476591X")),
    ("nhs-dashes", *_nested("fit_note/patient/nhs_number", "943-476-5919")),
    ("nhs-number-type", *_nested("fit_note/patient/nhs_number", 9434765919)),
    ("nhs-check-digit", *_nested("fit_note/patient/nhs_number", "9434765918")),
    ("nhs-check-digit-ten", *_nested("fit_note/patient/nhs_number", "1000000019")),
    ("nhs-empty", *_nested("fit_note/patient/nhs_number", "")),
    ("postcode-outward-only", *_nested("fit_note/patient/postcode", "LS1")),
    ("postcode-digits", *_nested("fit_note/patient/postcode", "12345")),
    ("postcode-symbol", *_nested("fit_note/patient/postcode", "L$1 4AP")),
    ("birth-date-format", *_nested("fit_note/patient/birth_date", "02/03/1984")),
    ("birth-date-future", *_nested("fit_note/patient/birth_date", "2027-01-01")),
    ("issued-month-13", *_nested("fit_note/issued_on", "2026-13-01")),
    ("issued-words", *_nested("fit_note/issued_on", "20 November 2026")),
    ("issued-datetime", *_nested("fit_note/issued_on", "2026-11-20T09:00:00Z")),
    ("issued-number", *_nested("fit_note/issued_on", 20261120)),
    ("period-start-day-31", *_nested("fit_note/period/start", "2026-11-31")),
    ("period-end-format", *_nested("fit_note/period/end", "2026/12/11")),
    ("period-end-before-start", *_nested("fit_note/period/end", "2026-11-19")),
    ("issued-in-future", *_nested("fit_note/issued_on", "2026-11-21")),
    ("assessed-in-future", *_nested("fit_note/assessed_on", "2026-11-21")),
    ("assessment-value", *_nested("fit_note/assessment", "signed-off")),
    ("assessment-case", *_nested("fit_note/assessment", "Not-Fit-For-Work")),
    ("advice-not-bool", *_nested("fit_note/may_be_fit_advice/phased_return", "sometimes")),
    ("advice-not-object", *_nested("fit_note/may_be_fit_advice", "phased return")),
    ("profession-dentist", *_nested("fit_note/issuer/profession", "dentist")),
    ("profession-paramedic", *_nested("fit_note/issuer/profession", "paramedic")),
    ("profession-upper", *_nested("fit_note/issuer/profession", "GP-DOCTOR")),
    ("employment-status", *_nested("fit_note/employment/status", "retired")),
    ("employer-id-format", *_nested("fit_note/employment/employer_id", "ACME LTD!")),
    ("version-zero", *_nested("fit_note/version", 0)),
    ("version-negative", *_nested("fit_note/version", -3)),
    ("version-string", *_nested("fit_note/version", "two")),
    ("version-float", *_nested("fit_note/version", 1.5)),
    ("version-bool", *_nested("fit_note/version", True)),
    ("replaces-itself", *_nested("fit_note/replaces", "FN-B86001-000123")),
    ("replaces-empty", *_nested("fit_note/replaces", "")),
    ("ods-code", *_nested("fit_note/issuer/organisation/ods_code", "B86-001!")),
    ("snomed", *_nested("fit_note/condition/snomed", "backpain")),
    ("share-not-bool", *_nested("fit_note/condition/share_with_employer", "perhaps")),
    ("follow-up-not-bool", *_nested("fit_note/follow_up_assessment_needed", "maybe later")),
    ("patient-not-object", *_nested("fit_note/patient", "Jane Smith")),
    ("family-blank", *_nested("fit_note/patient/name/family", "   ")),
    ("missing-note-id", *_nested("fit_note/id", DELETE)),
    ("missing-issued-on", *_nested("fit_note/issued_on", DELETE)),
    ("missing-patient", *_nested("fit_note/patient", DELETE)),
    ("missing-nhs-number", *_nested("fit_note/patient/nhs_number", DELETE)),
    ("missing-family-name", *_nested("fit_note/patient/name/family", DELETE)),
    ("missing-issuer", *_nested("fit_note/issuer", DELETE)),
    ("missing-profession", *_nested("fit_note/issuer/profession", DELETE)),
    ("missing-ods-code", *_nested("fit_note/issuer/organisation/ods_code", DELETE)),
    ("missing-condition", *_nested("fit_note/condition", DELETE)),
    ("missing-condition-text", *_nested("fit_note/condition/text", DELETE)),
    ("missing-assessment", *_nested("fit_note/assessment", DELETE)),
    ("missing-period", *_nested("fit_note/period", DELETE)),
    ("missing-period-end", *_nested("fit_note/period/end", DELETE)),
    ("missing-employment-status", *_nested("fit_note/employment/status", DELETE)),
    ("null-nhs-number", *_nested("fit_note/patient/nhs_number", None)),
    ("missing-message-id", *_nested("message_id", DELETE)),
    ("empty-message-id", *_nested("message_id", "")),
    ("long-message-id", *_nested("message_id", "m" * 201)),
    ("missing-sent-at", *_nested("sent_at", DELETE)),
    ("sent-at-without-timezone", *_nested("sent_at", "2026-11-20T09:15:00")),
    ("sent-at-date-only", *_nested("sent_at", "2026-11-20")),
    ("sent-at-words", *_nested("sent_at", "this morning")),
    ("sent-at-epoch", *_nested("sent_at", 1795000000)),
    ("missing-source", *_nested("source", DELETE)),
    ("missing-source-org", *_nested("source/org_id", DELETE)),
    ("source-org-format", *_nested("source/org_id", "B86 001")),
    ("missing-source-system", *_nested("source/system", DELETE)),
    ("missing-body", *_nested("fit_note", DELETE)),
    ("null-body", *_nested("fit_note", None)),
]


@pytest.mark.parametrize(("path", "value", "pointer"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_field_rule_refusal(path: str, value: Any, pointer: str) -> None:
    original = example()
    msg = edit(original, path, value)
    result = rejected(msg)
    assert [e.pointer for e in result.errors] == [pointer], result.errors
    assert all(e.message for e in result.errors)
    assert_no_value_in_messages(result, value)
    assert not any(m.message.startswith("Value error") for m in result.errors)
    # a rejection still says what it was, when that could be read
    if path != "message_id":
        assert result.message_id == original["message_id"]


def test_advice_with_not_fit_is_refused_at_the_advice() -> None:
    result = rejected(edit(example(), "fit_note/assessment", "not-fit"))
    assert [e.pointer for e in result.errors] == ["/fit_note/may_be_fit_advice"]
    assert "may-be-fit" in result.errors[0].message


def test_messages_name_the_rule() -> None:
    cases = {
        "fit_note/patient/nhs_number": ("9434765918", "check digit"),
        "fit_note/patient/postcode": ("XX", "postcode"),
        "fit_note/period/end": ("2026-11-01", "before its start"),
        "fit_note/issued_on": ("2026-12-01", "future"),
        "fit_note/issuer/profession": ("dentist", "profession"),
        "fit_note/employment/status": ("retired", "employed"),
        "fit_note/version": (0, "1 or more"),
        "sent_at": ("2026-11-20T09:15:00", "time zone"),
    }
    for path, (value, words) in cases.items():
        result = rejected(edit(example(), path, value))
        assert words in result.errors[0].message, (path, result.errors)


def test_several_errors_are_reported_together() -> None:
    msg = edit(example(), "fit_note/patient/nhs_number", "9434765918")
    msg = edit(msg, "fit_note/issuer/profession", "dentist")
    msg = edit(msg, "fit_note/version", 0)
    result = rejected(msg)
    assert sorted(e.pointer for e in result.errors) == [
        "/fit_note/issuer/profession", "/fit_note/patient/nhs_number", "/fit_note/version"
    ]


@pytest.mark.parametrize(
    "raw",
    [b'{"message_id": "secret-123", "fit_note": {"patient": Jane Smith}}', b"", b"{", b"\xff\xfe", b"{'a': 1}"],
)
def test_invalid_json(raw: bytes) -> None:
    result = rejected(raw)
    assert len(result.errors) == 1
    assert result.errors[0].pointer == ""
    assert result.errors[0].message.startswith("not valid JSON")
    for secret in ("secret", "Jane", "Smith", "message_id"):
        assert secret not in result.errors[0].message
    assert result.message_id is None and result.source_org_id is None


def test_invalid_json_gives_the_position() -> None:
    result = rejected(b'{\n  "a": 1,\n  "b": nope\n}')
    assert "line 3" in result.errors[0].message and "column 8" in result.errors[0].message


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"fit note"', b"42", b"null", b"true"])
def test_non_object(raw: bytes) -> None:
    result = rejected(raw)
    assert [(e.pointer, e.message) for e in result.errors] == [("", "must be a JSON object")]


def test_unknown_source_org() -> None:
    msg = edit(example(), "source/org_id", "GP-NOWHERE")
    result = rejected(msg, subject="GP-NOWHERE")
    assert [(e.pointer, e.message) for e in result.errors] == [
        ("/source/org_id", "organisation is not in the directory")
    ]
    assert result.source_org_id == "GP-NOWHERE"
    assert result.message_id == msg["message_id"]


def test_subject_and_source_org_must_match() -> None:
    result = rejected(example(), subject="EMP-ACME")
    assert [(e.pointer, e.message) for e in result.errors] == [
        ("/source/org_id", "does not match the organisation in the subject")
    ]
    assert result.source_org_id == "B86001"


@pytest.mark.parametrize("kind", ["sick-note", "", "fit_note", "FIT-NOTE"])
def test_unknown_kind(kind: str) -> None:
    result = rejected(example(), kind=kind)
    assert [(e.pointer, e.message) for e in result.errors] == [("", "unknown message kind")]
    assert result.message_id == example()["message_id"]
    assert result.source_org_id == "B86001"


def test_body_key_follows_the_kind() -> None:
    result = rejected(example(), kind="oh-referral")
    assert [(e.pointer, e.message) for e in result.errors] == [("/referral", "is required")]


def test_missing_body_message() -> None:
    result = rejected(edit(example(), "fit_note", DELETE))
    assert [(e.pointer, e.message) for e in result.errors] == [("/fit_note", "is required")]


def test_naive_now_is_a_caller_error() -> None:
    with pytest.raises(ValueError):
        run(example(), now=datetime(2026, 11, 20, 10, 0))
