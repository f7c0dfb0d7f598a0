"""The envelope model (§2) and the error conversion of §6 (adapters.errors)."""
from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from typing import Annotated

import orjson
import pytest
from pydantic import AfterValidator, BaseModel, ValidationError

from adapters import errors
from schemas.events import FieldError
from schemas.sources import (
    Condition,
    Envelope,
    FitNote,
    FitNoteMessage,
    Patient,
    Source,
    uk_today,
)

ENVELOPE = {
    "message_id": "m-1",
    "sent_at": "2026-11-20T09:15:00Z",
    "source": {"org_id": "B86001", "system": "GP clinical system"},
}


def envelope(**changes: object) -> dict:
    return {**ENVELOPE, **changes}


def field_errors(model: type[BaseModel], data: object, **kw: object) -> tuple[FieldError, ...]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data, **kw)
    return errors.from_validation_error(info.value)


# ------------------------------------------------------------------- pointers


@pytest.mark.parametrize(
    ("loc", "pointer"),
    [
        ((), ""),
        (("fit_note",), "/fit_note"),
        (("fit_note", "patient", "nhs_number"), "/fit_note/patient/nhs_number"),
        (("items", 0, "code"), "/items/0/code"),
        (("a/b", "m~n", "~/"), "/a~1b/m~0n/~0~1"),
        (("",), "/"),
    ],
)
def test_json_pointer(loc: tuple, pointer: str) -> None:
    assert errors.json_pointer(loc) == pointer


class _Item(BaseModel):
    code: str


class _Listy(BaseModel):
    items: list[_Item]


def _leaky(value: str) -> str:
    raise ValueError(f"{value} is not allowed here")


class _Leaky(BaseModel):
    secret: Annotated[str, AfterValidator(_leaky)]


def _plain(value: str) -> str:
    raise ValueError("must be plain")


class _Plain(BaseModel):
    value: Annotated[str, AfterValidator(_plain)]


def test_array_indexes_are_numbers_in_pointers() -> None:
    errs = field_errors(_Listy, {"items": [{"code": "a"}, {"code": 5}]})
    assert errs == (FieldError("/items/1/code", "must be a string"),)


def test_value_error_prefix_is_dropped() -> None:
    assert field_errors(_Plain, {"value": "x"}) == (FieldError("/value", "must be plain"),)


def test_a_message_repeating_the_input_is_replaced() -> None:
    errs = field_errors(_Leaky, {"secret": "9434765919"})
    assert errs[0].pointer == "/secret"
    assert "9434765919" not in errs[0].message


def test_prefix_is_prepended() -> None:
    with pytest.raises(ValidationError) as info:
        _Plain.model_validate({"value": "x"})
    assert errors.from_validation_error(info.value, prefix=("body", 2)) == (
        FieldError("/body/2/value", "must be plain"),
    )


def test_invalid_json_error_has_position_not_content() -> None:
    with pytest.raises(orjson.JSONDecodeError) as info:
        orjson.loads(b'{"nhs_number": 9434765919x}')
    err = errors.invalid_json(info.value)
    assert err.pointer == ""
    assert err.message.startswith("not valid JSON") and "column" in err.message
    assert "9434765919" not in err.message and "nhs_number" not in err.message


# ------------------------------------------------------------------- envelope


def test_envelope_accepts_the_example_and_ignores_extras() -> None:
    env = Envelope.model_validate(envelope(extra_field={"x": 1}, fit_note={"anything": True}))
    assert env.message_id == "m-1"
    assert env.sent_at == datetime(2026, 11, 20, 9, 15, tzinfo=UTC)
    assert env.source == Source(org_id="B86001", system="GP clinical system")
    assert not hasattr(env, "extra_field")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-20T09:15:00Z", datetime(2026, 11, 20, 9, 15, tzinfo=UTC)),
        ("2026-11-20T09:15:00.123Z", datetime(2026, 11, 20, 9, 15, 0, 123000, tzinfo=UTC)),
        ("2026-11-20t09:15:00z", datetime(2026, 11, 20, 9, 15, tzinfo=UTC)),
        ("2026-11-20T10:15:00+01:00", datetime(2026, 11, 20, 9, 15, tzinfo=UTC)),
        ("2026-11-20 04:15:00-05:00", datetime(2026, 11, 20, 9, 15, tzinfo=UTC)),
    ],
)
def test_sent_at_forms(value: str, expected: datetime) -> None:
    sent_at = Envelope.model_validate(envelope(sent_at=value)).sent_at
    assert sent_at == expected and sent_at.tzinfo is not None


@pytest.mark.parametrize(
    "value",
    ["2026-11-20T09:15:00", "2026-11-20", "2026-11-20T25:15:00Z", "20/11/2026 09:15Z", 1795000000, None, ""],
)
def test_sent_at_must_be_rfc3339_with_zone(value: object) -> None:
    errs = field_errors(Envelope, envelope(sent_at=value))
    assert [e.pointer for e in errs] == ["/sent_at"]


@pytest.mark.parametrize("message_id", ["", "   ", "m" * 201, 42, None])
def test_message_id_rules(message_id: object) -> None:
    errs = field_errors(Envelope, envelope(message_id=message_id))
    assert [e.pointer for e in errs] == ["/message_id"]


def test_message_id_of_200_chars_is_fine() -> None:
    assert Envelope.model_validate(envelope(message_id="m" * 200)).message_id == "m" * 200


@pytest.mark.parametrize("org_id", ["B86 001", "", "-lead", "x" * 65, "a.b", 12345])
def test_source_org_id_format(org_id: object) -> None:
    errs = field_errors(Envelope, envelope(source={"org_id": org_id, "system": "x"}))
    assert [e.pointer for e in errs] == ["/source/org_id"]
    assert all(str(org_id) not in e.message for e in errs if len(str(org_id)) >= 3)


# ------------------------------------------------------------------- models


def test_patient_normalises_and_exposes_area() -> None:
    p = Patient.model_validate(
        {"nhs_number": "943 476 5919", "name": {"given": "J", "family": "S"}, "postcode": "m1 1ae"}
    )
    assert p.nhs_number == "9434765919"
    assert p.postcode == "M1 1AE"
    assert p.postcode_area == "M"
    assert "postcode_area" not in p.model_dump()


def test_condition_defaults() -> None:
    c = Condition.model_validate({"text": "Stress"})
    assert c.snomed is None and c.share_with_employer is False


def test_today_from_context_and_default() -> None:
    note_date = uk_today()
    body = {
        "id": "N1", "issued_on": note_date.isoformat(),
        "patient": {"nhs_number": "9434765919", "name": {"given": "J", "family": "S"}},
        "issuer": {"name": "Dr X", "profession": "gp", "organisation": {"ods_code": "B86001"}},
        "condition": {"text": "Stress"}, "assessment": "not-fit",
        "period": {"start": note_date.isoformat(), "end": note_date.isoformat()},
    }
    assert FitNote.model_validate(body).version == 1  # default "today" is the UK date now
    errs = field_errors(FitNote, body, context={"today": note_date - timedelta(days=1)})
    assert [e.pointer for e in errs] == ["/issued_on"]


def test_uk_today() -> None:
    assert uk_today(datetime(2026, 6, 20, 23, 30, tzinfo=UTC)) == date(2026, 6, 21)  # BST
    assert uk_today(datetime(2026, 12, 20, 23, 30, tzinfo=UTC)) == date(2026, 12, 20)  # GMT
    assert uk_today(datetime(2026, 6, 21, 1, 0, tzinfo=timezone(timedelta(hours=5)))) == date(2026, 6, 20)
    with pytest.raises(ValueError):
        uk_today(datetime(2026, 6, 20, 12, 0))


@pytest.mark.parametrize("model", [Envelope, Source, FitNoteMessage, FitNote, Patient])
def test_json_schema_exports(model: type[BaseModel]) -> None:
    schema = model.model_json_schema()
    orjson.dumps(schema)  # serialisable
    assert schema["type"] == "object"


def test_fit_note_json_schema_documents_the_rules() -> None:
    schema = FitNoteMessage.model_json_schema()
    defs = schema["$defs"]
    assert set(schema["required"]) == {"message_id", "sent_at", "source", "fit_note"}
    assert schema["properties"]["sent_at"]["format"] == "date-time"
    assert defs["FitNote"]["properties"]["assessment"]["enum"] == ["not-fit", "may-be-fit"]
    assert defs["FitNote"]["properties"]["version"]["minimum"] == 1
    assert defs["FitNote"]["properties"]["issued_on"]["format"] == "date"
    assert len(defs["Issuer"]["properties"]["profession"]["enum"]) == 6
    assert defs["Employment"]["properties"]["status"]["enum"] == [
        "employed", "self-employed", "unemployed", "job-to-start"
    ]
