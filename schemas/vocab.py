"""The contract's fixed vocabulary (§3, §5, §7): code systems, data categories,
purposes, event types, and the recipient maxima. Plain values only."""
from __future__ import annotations

from enum import StrEnum

HUB = "https://hub.example.org/fhir"
EVENT_TYPE_SYSTEM = f"{HUB}/CodeSystem/event-type"
NOTICE_TYPE_SYSTEM = f"{HUB}/CodeSystem/notice-type"  # the hub's own notices: not one of §3's six events
NOTICE_ID_SYSTEM = f"{HUB}/Id/notice"
CATEGORY_SYSTEM = f"{HUB}/CodeSystem/data-category"
PURPOSE_SYSTEM = f"{HUB}/CodeSystem/purpose"
EVENT_ID_SYSTEM = f"{HUB}/Id/event"
NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
ORG_ID_SYSTEM = f"{HUB}/Id/organisation"


class Category(StrEnum):
    IDENTITY = "identity"
    CONTACT = "contact"
    FITNESS_ADVICE = "fitness-advice"
    DIAGNOSIS = "diagnosis"
    REFERRAL = "referral"
    CLINICAL_NOTES = "clinical-notes"
    ADJUSTMENTS = "adjustments"
    ATW_APPLICATION = "atw-application"


class Purpose(StrEnum):
    EMPLOYMENT_SUPPORT = "employment-support"
    OCCUPATIONAL_HEALTH = "occupational-health"
    BENEFIT_CLAIM = "benefit-claim"
    RETURN_TO_WORK_SUPPORT = "return-to-work-support"
    ACCESS_TO_WORK = "access-to-work"
    DIRECT_CARE = "direct-care"


class EventType(StrEnum):
    FIT_NOTE_ISSUED = "fit-note-issued"
    FIT_NOTE_SUPERSEDED = "fit-note-superseded"
    OH_REFERRAL_REQUESTED = "oh-referral-requested"
    ACCESS_TO_WORK_REQUESTED = "access-to-work-requested"
    OH_OUTCOME_REPORTED = "oh-outcome-reported"
    ABSENCE_MILESTONE = "absence-milestone"


class RecipientType(StrEnum):
    EMPLOYER = "employer"
    OH_PROVIDER = "oh-provider"
    JOBCENTRE = "jobcentre"
    WORKWELL_SERVICE = "workwell-service"
    ACCESS_TO_WORK = "access-to-work"
    GP = "gp"


# §2: inbound kinds and the key of their body.
SOURCE_KINDS: dict[str, str] = {
    "fit-note": "fit_note",
    "oh-referral": "referral",
    "access-to-work": "application",
    "oh-outcome": "outcome",
}

# §5: an event reaches a recipient only if it may have identity and this category.
CORE_CATEGORY: dict[EventType, Category] = {
    EventType.FIT_NOTE_ISSUED: Category.FITNESS_ADVICE,
    EventType.FIT_NOTE_SUPERSEDED: Category.FITNESS_ADVICE,
    EventType.OH_REFERRAL_REQUESTED: Category.REFERRAL,
    EventType.ABSENCE_MILESTONE: Category.REFERRAL,
    EventType.ACCESS_TO_WORK_REQUESTED: Category.ATW_APPLICATION,
    EventType.OH_OUTCOME_REPORTED: Category.ADJUSTMENTS,
}

C = Category
# §5: the purpose each recipient type receives under, and the most it can ever see.
# The employer's diagnosis is conditional (issuer's share_with_employer) and its identity
# is name only: both are applied by hub.projection / hub.gate, not here.
RECIPIENT_PURPOSE: dict[RecipientType, Purpose] = {
    RecipientType.EMPLOYER: Purpose.EMPLOYMENT_SUPPORT,
    RecipientType.OH_PROVIDER: Purpose.OCCUPATIONAL_HEALTH,
    RecipientType.JOBCENTRE: Purpose.BENEFIT_CLAIM,
    RecipientType.WORKWELL_SERVICE: Purpose.RETURN_TO_WORK_SUPPORT,
    RecipientType.ACCESS_TO_WORK: Purpose.ACCESS_TO_WORK,
    RecipientType.GP: Purpose.DIRECT_CARE,
}
RECIPIENT_MAXIMUM: dict[RecipientType, frozenset[Category]] = {
    RecipientType.EMPLOYER: frozenset({C.IDENTITY, C.FITNESS_ADVICE, C.ADJUSTMENTS, C.DIAGNOSIS}),
    RecipientType.OH_PROVIDER: frozenset(
        {C.IDENTITY, C.CONTACT, C.FITNESS_ADVICE, C.DIAGNOSIS, C.REFERRAL, C.ADJUSTMENTS}
    ),
    RecipientType.JOBCENTRE: frozenset({C.IDENTITY, C.FITNESS_ADVICE, C.DIAGNOSIS}),
    RecipientType.WORKWELL_SERVICE: frozenset(
        {C.IDENTITY, C.CONTACT, C.FITNESS_ADVICE, C.DIAGNOSIS, C.REFERRAL}
    ),
    RecipientType.ACCESS_TO_WORK: frozenset({C.IDENTITY, C.CONTACT, C.ATW_APPLICATION, C.ADJUSTMENTS}),
    RecipientType.GP: frozenset({C.IDENTITY, C.FITNESS_ADVICE, C.ADJUSTMENTS, C.CLINICAL_NOTES}),
}
del C
