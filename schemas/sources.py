"""Inbound source messages (contract §2) as pydantic v2 models.

Every inbound message is an envelope (`message_id`, `sent_at`, `source`) plus one
body whose key depends on the kind (`vocab.SOURCE_KINDS`). `Envelope` holds the
common part; each kind subclasses it with its body: `FitNoteMessage` (`fit_note`),
`OhReferralMessage` (`referral`), `AccessToWorkMessage` (`application`) and
`OhOutcomeMessage` (`outcome`).

Rules enforced (§2):

* every error message names the rule broken and never repeats the offending value
  (it may be personal data); messages are raised as `PydanticCustomError` with a
  stable `type` so `adapters.errors` can turn them into `FieldError`s as they are;
* identifiers (NHS number, postcode, organisation ids) use `schemas.identifiers`
  and are stored normalised (NHS number as 10 digits, postcode upper case with one
  space);
* dates are strict ISO 8601 calendar dates (`YYYY-MM-DD`), timestamps strict
  RFC 3339 with a time zone;
* "nothing is issued in the future": `issued_on`, `assessed_on` (and a birth date)
  may not be after *today*, which is the UK calendar date (Europe/London). Pass it
  as validation context, ``Model.model_validate(data, context={"today": date})``;
  without context the current UK date is used;
* unknown fields are ignored (publishers may send more than the hub needs).

Rules of the other kinds, beyond the shared ones (NHS number, postcode, dates,
`employment.status`):

* OH referral: `referrer.type` is one of `REFERRER_TYPES` (the referrers DOMAIN.md
  names); `referrer.org_id` is required unless the referrer is the person (`self`);
  `urgency` is `routine` (the default) or `urgent` - FHIR `ServiceRequest.priority`
  codes, so it maps one to one; `created_on` and `absence_started_on` are not in
  the future;
* Access to Work: a valid National Insurance number; `nation` is `england`,
  `scotland` or `wales` - `northern-ireland` is refused with its own message
  (Northern Ireland has its own scheme); `support_requested` names at least one
  of `ATW_SUPPORT` (the six kinds of support Access to Work grants), each once;
  `employment.hours_per_week` is more than 0 and at most 168; `email` looks like an
  address;
* OH outcome: `fitness` is one of `FITNESS_OPINIONS`; `provider_id` must be the
  publishing organisation (`source.org_id`): an OH provider reports its own outcomes.

Validate with ``model_validate`` on a parsed JSON object (the adapters parse with
orjson first) or ``model_validate_json``; both apply the same rules.
"""
from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WrapValidator,
    field_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from schemas import identifiers
from schemas.ukdate import UK, uk_today  # noqa: F401 (UK re-exported)

__all__ = [
    "UK",
    "uk_today",
    "Source",
    "Envelope",
    "PersonName",
    "Patient",
    "IssuerOrganisation",
    "Issuer",
    "Condition",
    "MayBeFitAdvice",
    "Period",
    "Employment",
    "FitNote",
    "FitNoteMessage",
    "PROFESSIONS",
    "EMPLOYMENT_STATUSES",
    "ASSESSMENTS",
    "ContactPatient",
    "Applicant",
    "Referrer",
    "OhReferral",
    "OhReferralMessage",
    "AtwEmployment",
    "AccessToWorkApplication",
    "AccessToWorkMessage",
    "OhOutcome",
    "OhOutcomeMessage",
    "REFERRER_TYPES",
    "URGENCIES",
    "NATIONS",
    "ATW_SUPPORT",
    "FITNESS_OPINIONS",
]


def _today(info: ValidationInfo) -> date:
    ctx = info.context
    if isinstance(ctx, dict) and ctx.get("today") is not None:
        today = ctx["today"]
        if isinstance(today, datetime):
            return uk_today(today)
        return today
    return uk_today()


# --------------------------------------------------------------------------- rules
# Each rule raises PydanticCustomError("<type>", "<message>"): the message names the
# rule and never interpolates the input.


def _rule(error_type: str, message: str) -> WrapValidator:
    """Replace whatever error the inner validation raises with one rule message.

    Use it only around scalar types: around a model it would hide nested errors."""

    def wrap(value: Any, handler: Any) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError(error_type, message) from None

    return WrapValidator(wrap)


def _identifier(check: Any, error_type: str) -> AfterValidator:
    """Run a `schemas.identifiers` check; its ValueError message becomes the rule message."""

    def validate(value: str) -> str:
        try:
            return check(value)
        except ValueError as exc:
            raise PydanticCustomError(error_type, str(exc)) from None

    return AfterValidator(validate)


_ISO_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_DATE_MESSAGE = "must be an ISO 8601 date (YYYY-MM-DD)"


def _parse_iso_date(value: Any) -> date:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str) and _ISO_DATE.match(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise PydanticCustomError("iso_date", _DATE_MESSAGE)


_RFC3339 = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"(?P<tz>Z|[+-][0-9]{2}:[0-9]{2})?$"
)


def _parse_rfc3339(value: Any) -> datetime:
    if isinstance(value, datetime):
        parsed = value
    else:
        m = _RFC3339.match(value.upper()) if isinstance(value, str) else None
        if not m:
            raise PydanticCustomError("rfc3339", "must be an RFC 3339 timestamp")
        try:
            parsed = datetime.fromisoformat(m.group(0))
        except ValueError:
            raise PydanticCustomError("rfc3339", "must be an RFC 3339 timestamp") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise PydanticCustomError(
            "rfc3339_timezone", "must be an RFC 3339 timestamp with a time zone (Z or +hh:mm)"
        )
    try:  # e.g. 9999-12-31T23:59:59-23:59 has no UTC equivalent (found by fuzzing)
        parsed.astimezone(UTC)
    except OverflowError:
        raise PydanticCustomError("rfc3339", "must be an RFC 3339 timestamp") from None
    return parsed


_ODS = re.compile(r"^[A-Z0-9]{3,10}$")


def _ods_code(value: str) -> str:
    code = value.strip().upper()
    if not _ODS.match(code):
        raise PydanticCustomError("ods_code", "must be an ODS code: 3 to 10 letters or digits")
    return code


_SCTID = re.compile(r"^[1-9][0-9]{5,17}$")


def _snomed(value: str) -> str:
    if not _SCTID.match(value):
        raise PydanticCustomError("snomed", "must be a SNOMED CT concept id: 6 to 18 digits")
    return value


def _text(max_length: int) -> Any:
    """A non-blank string of at most `max_length` characters (surrounding spaces kept)."""
    message = f"must be a non-empty string of at most {max_length} characters"

    def not_blank(value: str) -> str:
        if not value.strip():
            raise PydanticCustomError("text", message)
        if "\x00" in value:  # no PostgreSQL text column can hold it (found by fuzzing)
            raise PydanticCustomError("text_nul", "must not contain the NUL character (U+0000)")
        return value

    return Annotated[
        str,
        Field(min_length=1, max_length=max_length),
        _rule("text", message),
        AfterValidator(not_blank),
    ]


# ------------------------------------------------------------------- field types

ShortText = _text(200)
LongText = _text(4000)
# json_schema_extra documents the shape in exported JSON Schemas; the validators enforce it.
NhsNumber = Annotated[
    str,
    Field(json_schema_extra={"pattern": "^[0-9 ]{10,}$"}),
    _identifier(identifiers.nhs_number, "nhs_number"),
]
Postcode = Annotated[
    str,
    Field(json_schema_extra={"pattern": "^ *[A-Za-z]{1,2}[0-9][0-9A-Za-z]? *[0-9][A-Za-z]{2} *$"}),
    _identifier(identifiers.postcode, "postcode"),
]
OrgId = Annotated[
    str,
    Field(json_schema_extra={"pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"}),
    _identifier(identifiers.org_id, "org_id"),
]
OdsCode = Annotated[
    str, Field(json_schema_extra={"pattern": "^[A-Za-z0-9]{3,10}$"}), AfterValidator(_ods_code)
]
SnomedId = Annotated[
    str, Field(json_schema_extra={"pattern": "^[1-9][0-9]{5,17}$"}), AfterValidator(_snomed)
]
IsoDate = Annotated[date, BeforeValidator(_parse_iso_date)]
Timestamp = Annotated[datetime, BeforeValidator(_parse_rfc3339)]
Flag = Annotated[bool, Field(strict=True), _rule("boolean", "must be true or false")]

PROFESSIONS: tuple[str, ...] = (
    "gp",
    "hospital-doctor",
    "nurse",
    "pharmacist",
    "occupational-therapist",
    "physiotherapist",
)
EMPLOYMENT_STATUSES: tuple[str, ...] = ("employed", "self-employed", "unemployed", "job-to-start")
ASSESSMENTS: tuple[str, ...] = ("not-fit", "may-be-fit")

Profession = Annotated[
    Literal["gp", "hospital-doctor", "nurse", "pharmacist", "occupational-therapist", "physiotherapist"],
    _rule(
        "profession",
        "must be a profession that may certify fit notes: gp, hospital-doctor, nurse, "
        "pharmacist, occupational-therapist or physiotherapist",
    ),
]
EmploymentStatus = Annotated[
    Literal["employed", "self-employed", "unemployed", "job-to-start"],
    _rule("employment_status", "must be employed, self-employed, unemployed or job-to-start"),
]
Assessment = Annotated[
    Literal["not-fit", "may-be-fit"],
    _rule("assessment", "must be a fit note assessment: not-fit or may-be-fit"),
]
Version = Annotated[
    int,
    Field(strict=True, ge=1),
    _rule("version", "must be a whole number, 1 or more"),
]

REFERRER_TYPES: tuple[str, ...] = (
    "gp",
    "employer",
    "self",
    "work-coach",
    "hospital",
    "msk-service",
    "mental-health-service",
)
URGENCIES: tuple[str, ...] = ("routine", "urgent")
NATIONS: tuple[str, ...] = ("england", "scotland", "wales")
ATW_SUPPORT: tuple[str, ...] = (
    "special-aids-equipment",
    "adaptations-to-premises",
    "support-worker",
    "travel-to-work",
    "communication-support-at-interview",
    "mental-health-support",
)
FITNESS_OPINIONS: tuple[str, ...] = ("fit", "fit-with-adjustments", "fit-with-restrictions", "not-fit")

ReferrerType = Annotated[
    Literal["gp", "employer", "self", "work-coach", "hospital", "msk-service", "mental-health-service"],
    _rule(
        "referrer_type",
        "must be a referrer type: gp, employer, self, work-coach, hospital, msk-service "
        "or mental-health-service",
    ),
]
Urgency = Annotated[Literal["routine", "urgent"], _rule("urgency", "must be routine or urgent")]
AtwSupportKind = Annotated[
    Literal[
        "special-aids-equipment",
        "adaptations-to-premises",
        "support-worker",
        "travel-to-work",
        "communication-support-at-interview",
        "mental-health-support",
    ],
    _rule(
        "atw_support",
        "must be a kind of Access to Work support: special-aids-equipment, adaptations-to-premises, "
        "support-worker, travel-to-work, communication-support-at-interview or mental-health-support",
    ),
]
Fitness = Annotated[
    Literal["fit", "fit-with-adjustments", "fit-with-restrictions", "not-fit"],
    _rule(
        "fitness",
        "must be an OH fitness opinion: fit, fit-with-adjustments, fit-with-restrictions or not-fit",
    ),
]


def _nation(value: Any, handler: Any) -> Any:
    if value == "northern-ireland":
        raise PydanticCustomError(
            "nation_not_covered",
            "Access to Work does not cover Northern Ireland, which has its own scheme; "
            "apply to the Northern Ireland scheme instead (england, scotland or wales only here)",
        )
    try:
        return handler(value)
    except ValidationError:
        raise PydanticCustomError("nation", "must be england, scotland or wales") from None


Nation = Annotated[Literal["england", "scotland", "wales"], WrapValidator(_nation)]
NiNumber = Annotated[
    str,
    Field(json_schema_extra={"pattern": "^ *[A-Za-z]{2} *([0-9] *){6}[A-Da-d] *$"}),
    _identifier(identifiers.ni_number, "ni_number"),
]
HoursPerWeek = Annotated[
    float,
    Field(strict=True, gt=0, le=168),
    _rule("hours_per_week", "must be a number of hours more than 0 and at most 168"),
]

_EMAIL = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+$")
_EMAIL_MESSAGE = "must be an email address"


def _email(value: str) -> str:
    address = value.strip()
    if not _EMAIL.match(address):
        raise PydanticCustomError("email", _EMAIL_MESSAGE)
    return address


Email = Annotated[
    str,
    Field(max_length=254, json_schema_extra={"format": "email", "pattern": "^[^@ ]+@[^@ ]+[.][^@ ]+$"}),
    _rule("email", _EMAIL_MESSAGE),
    AfterValidator(_email),
]

_PHONE = re.compile(r"^(\+44|0)[0-9]{9,10}$")
_PHONE_SEPARATORS = str.maketrans("", "", " -()")


def _phone(value: str) -> str:
    """A UK phone number; stored without separators (+44 or 0, then 9 or 10 digits)."""
    compact = value.translate(_PHONE_SEPARATORS)
    if not _PHONE.match(compact):
        raise PydanticCustomError("phone", "must be a UK phone number")
    return compact


Phone = Annotated[
    str,
    Field(json_schema_extra={"pattern": "^[+0-9(][0-9 ()-]{8,20}$"}),
    _rule("phone", "must be a UK phone number"),
    AfterValidator(_phone),
]


def _support_list(items: tuple[str, ...]) -> tuple[str, ...]:
    if not items:
        raise PydanticCustomError("atw_support_empty", "must name at least one kind of support")
    if len(set(items)) != len(items):
        raise PydanticCustomError("atw_support_repeated", "must not name the same kind of support twice")
    return items


SupportRequested = Annotated[
    tuple[AtwSupportKind, ...],
    Field(json_schema_extra={"minItems": 1, "uniqueItems": True}),
    AfterValidator(_support_list),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


def _not_future(value: date | None, info: ValidationInfo, what: str) -> date | None:
    if value is not None and value > _today(info):
        raise PydanticCustomError("future_date", f"{what} must not be in the future")
    return value


# ------------------------------------------------------------------------ envelope


class Source(_Model):
    """Who published the message: a directory id or ODS code, and its system (free text)."""

    org_id: OrgId
    system: ShortText


class Envelope(_Model):
    """The part every inbound message shares (§2)."""

    message_id: ShortText = Field(description="unique per source; retried sends reuse it")
    sent_at: Timestamp = Field(description="RFC 3339 timestamp with a time zone")
    source: Source


# ------------------------------------------------------------------------ fit note


class PersonName(_Model):
    given: ShortText
    family: ShortText


class Patient(_Model):
    nhs_number: NhsNumber = Field(description="10 digits with a valid modulus-11 check digit")
    name: PersonName
    birth_date: IsoDate | None = None
    postcode: Postcode | None = None

    @field_validator("birth_date")
    @classmethod
    def _birth_not_future(cls, value: date | None, info: ValidationInfo) -> date | None:
        return _not_future(value, info, "a birth date")

    @property
    def postcode_area(self) -> str | None:
        """The area letters of the postcode's outward code (LS of LS1 4AP), if any."""
        return identifiers.postcode_area(self.postcode) if self.postcode else None


class IssuerOrganisation(_Model):
    ods_code: OdsCode
    name: ShortText | None = None


class Issuer(_Model):
    name: ShortText
    profession: Profession
    registration: ShortText | None = None
    organisation: IssuerOrganisation
    setting: ShortText | None = None


class Condition(_Model):
    text: LongText
    snomed: SnomedId | None = None
    share_with_employer: Flag = False


class MayBeFitAdvice(_Model):
    """The four options of the statutory fit note; any may be ticked."""

    phased_return: Flag = False
    altered_hours: Flag = False
    amended_duties: Flag = False
    workplace_adaptations: Flag = False


class Period(_Model):
    start: IsoDate
    end: IsoDate

    @field_validator("end")
    @classmethod
    def _end_not_before_start(cls, end: date, info: ValidationInfo) -> date:
        start = info.data.get("start")
        if start is not None and end < start:
            raise PydanticCustomError("period", "the period's end must not be before its start")
        return end


class _EmploymentBase(_Model):
    status: EmploymentStatus
    employer_id: OrgId | None = None


class Employment(_EmploymentBase):
    """The person's work, as a fit note or an OH referral states it."""

    occupation: ShortText | None = None


class FitNote(_Model):
    """The statement of fitness for work (fit note) body, key `fit_note`."""

    id: ShortText = Field(description="the note's id at its source")
    version: Version = Field(default=1, description="1 for a new note; a later version corrects it")
    replaces: ShortText | None = Field(default=None, description="id of an earlier note this one supersedes")
    issued_on: IsoDate
    assessed_on: IsoDate | None = None
    patient: Patient
    issuer: Issuer
    condition: Condition
    assessment: Assessment
    may_be_fit_advice: MayBeFitAdvice | None = None
    functional_effects: LongText | None = None
    period: Period
    follow_up_assessment_needed: Flag | None = None
    employment: Employment | None = None

    @field_validator("replaces")
    @classmethod
    def _not_self(cls, replaces: str | None, info: ValidationInfo) -> str | None:
        if replaces is not None and replaces == info.data.get("id"):
            raise PydanticCustomError("replaces", "must name another fit note, not this one")
        return replaces

    @field_validator("issued_on")
    @classmethod
    def _issued_not_future(cls, value: date, info: ValidationInfo) -> date:
        return _not_future(value, info, "the issue date")  # type: ignore[return-value]

    @field_validator("assessed_on")
    @classmethod
    def _assessed_not_future(cls, value: date | None, info: ValidationInfo) -> date | None:
        return _not_future(value, info, "the assessment date")

    @field_validator("may_be_fit_advice")
    @classmethod
    def _advice_only_if_may_be_fit(
        cls, advice: MayBeFitAdvice | None, info: ValidationInfo
    ) -> MayBeFitAdvice | None:
        assessment = info.data.get("assessment")
        if advice is not None and assessment is not None and assessment != "may-be-fit":
            raise PydanticCustomError(
                "may_be_fit_advice", "may be given only when the assessment is may-be-fit"
            )
        return advice


class FitNoteMessage(Envelope):
    """Inbound kind `fit-note` (§2): the envelope plus `fit_note`."""

    fit_note: FitNote


# -------------------------------------------------------------------- OH referral


class ContactPatient(Patient):
    """A person who may also be reached by email or phone (referrals, applications)."""

    email: Email | None = None
    phone: Phone | None = None


class Referrer(_Model):
    """Who refers: its kind, and its organisation unless the person refers themselves."""

    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"type": {"const": "self"}}},
            "else": {"required": ["org_id"], "properties": {"org_id": {"type": "string"}}},
        }
    )

    type: ReferrerType
    org_id: OrgId | None = Field(
        default=None, validate_default=True,
        description="the referring organisation; required unless type is self",
    )
    name: ShortText | None = None

    @field_validator("org_id")
    @classmethod
    def _org_unless_self(cls, org_id: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("type")
        if org_id is None and kind is not None and kind != "self":
            raise PydanticCustomError(
                "referrer_org_id", "is required unless the person refers themselves (type self)"
            )
        return org_id


class OhReferral(_Model):
    """An occupational-health referral, key `referral`."""

    id: ShortText = Field(description="the referral's id at its source")
    created_on: IsoDate
    referrer: Referrer
    patient: ContactPatient
    employment: Employment | None = None
    reason: LongText
    questions: tuple[LongText, ...] | None = None
    urgency: Urgency = Field(default="routine", description="routine (the default) or urgent")
    related_fit_note_id: ShortText | None = None
    preferred_provider_id: OrgId | None = None
    absence_started_on: IsoDate | None = None
    safety_critical_role: Flag = False

    @field_validator("created_on")
    @classmethod
    def _created_not_future(cls, value: date, info: ValidationInfo) -> date:
        return _not_future(value, info, "the referral date")  # type: ignore[return-value]

    @field_validator("absence_started_on")
    @classmethod
    def _absence_not_future(cls, value: date | None, info: ValidationInfo) -> date | None:
        return _not_future(value, info, "the absence start")


class OhReferralMessage(Envelope):
    """Inbound kind `oh-referral` (§2): the envelope plus `referral`."""

    referral: OhReferral


# ---------------------------------------------------------------- Access to Work


class Applicant(ContactPatient):
    national_insurance_number: NiNumber = Field(
        description="two letters, six digits, a final letter A-D; prefixes never issued are refused"
    )


class AtwEmployment(_EmploymentBase):
    """The job the support is for."""

    job_title: ShortText | None = None
    hours_per_week: HoursPerWeek | None = None
    workplace_contact: ShortText | None = None


class AccessToWorkApplication(_Model):
    """An Access to Work application, key `application`."""

    id: ShortText = Field(description="the application's id at its source")
    submitted_on: IsoDate
    applicant: Applicant
    nation: Nation = Field(
        description="england, scotland or wales; Northern Ireland has its own scheme and is refused"
    )
    employment: AtwEmployment
    barriers: LongText = Field(description="how the condition affects the work")
    support_requested: SupportRequested = Field(description="at least one kind of support, each once")
    oh_outcome_ref: ShortText | None = Field(
        default=None, description="id of an OH outcome that recommended this support"
    )

    @field_validator("submitted_on")
    @classmethod
    def _submitted_not_future(cls, value: date, info: ValidationInfo) -> date:
        return _not_future(value, info, "the submission date")  # type: ignore[return-value]


class AccessToWorkMessage(Envelope):
    """Inbound kind `access-to-work` (§2): the envelope plus `application`."""

    application: AccessToWorkApplication


# -------------------------------------------------------------------- OH outcome


class OhOutcome(_Model):
    """An OH provider's assessment outcome, key `outcome`."""

    id: ShortText = Field(description="the outcome's id at the provider")
    referral_id: ShortText | None = Field(default=None, description="the referral this answers")
    provider_id: OrgId = Field(description="the OH provider; must be the publisher (source.org_id)")
    patient: Patient
    assessed_on: IsoDate
    fitness: Fitness
    recommended_adjustments: tuple[LongText, ...] | None = None
    return_to_work_plan: LongText | None = None
    refer_to_access_to_work: Flag = False
    clinical_notes: LongText | None = Field(
        default=None, description="the OH clinician's notes: for the GP, never for the employer"
    )

    @field_validator("assessed_on")
    @classmethod
    def _assessed_not_future(cls, value: date, info: ValidationInfo) -> date:
        return _not_future(value, info, "the assessment date")  # type: ignore[return-value]


class OhOutcomeMessage(Envelope):
    """Inbound kind `oh-outcome` (§2): the envelope plus `outcome`."""

    outcome: OhOutcome

    @field_validator("outcome")
    @classmethod
    def _provider_is_publisher(cls, outcome: OhOutcome, info: ValidationInfo) -> OhOutcome:
        source = info.data.get("source")
        if source is not None and outcome.provider_id != source.org_id:
            # Raised as a ValidationError so the error sits at /outcome/provider_id.
            raise ValidationError.from_exception_data(
                "OhOutcome",
                [InitErrorDetails(
                    type=PydanticCustomError(
                        "provider_not_publisher",
                        "must be the publishing organisation (source.org_id): "
                        "an OH provider reports only its own outcomes",
                    ),
                    loc=("provider_id",),
                    input=outcome.provider_id,
                )],
            )
        return outcome
