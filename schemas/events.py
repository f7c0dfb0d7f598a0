"""The canonical event (§3) and the result types adapters return. Plain values."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from schemas.vocab import Category, EventType


@dataclass(frozen=True, slots=True)
class FieldError:
    """One reason a message was refused: where (RFC 6901 JSON pointer) and why.
    The message never repeats the offending value (it may be personal data)."""

    pointer: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"pointer": self.pointer, "message": self.message}


@dataclass(frozen=True, slots=True)
class Rejected:
    """A source message that is not an event (§6)."""

    errors: tuple[FieldError, ...]
    message_id: str | None = None
    source_org_id: str | None = None


@dataclass(frozen=True, slots=True)
class Facts:
    """What routing and the consent gate need to know about an event, without
    reading FHIR. Fields not relevant to a kind stay None.

    By kind (every kind: nhs_number, postcode_area when known, document_id, version):

    * fit-note: employment_status, employer_id, assessment,
      share_diagnosis_with_employer, replaces, period_start/period_end;
    * oh-referral: employment_status, employer_id, preferred_provider_id,
      referrer_type, referrer_org_id, urgency, related_fit_note_id,
      safety_critical_role, absence_started_on; document_id = referral id;
    * access-to-work: nation, employment_status, employer_id, support_requested,
      oh_outcome_id; document_id = application id;
    * oh-outcome: provider_id (= the publisher), referral_id, fitness,
      refer_to_access_to_work; document_id = outcome id;
    * absence-milestone: episode_id (= document_id), employment_status, employer_id,
      gp_practice_id, referrer_type "absence-milestone", absence_started_on (the
      episode's start), milestone_on (its day 28).

    The contract's other kinds carry no version: theirs is always 1.
    """

    nhs_number: str
    postcode_area: str | None = None
    nation: str | None = None
    employment_status: str | None = None
    employer_id: str | None = None
    preferred_provider_id: str | None = None
    referrer_org_id: str | None = None
    provider_id: str | None = None
    assessment: str | None = None  # fit note: not-fit | may-be-fit
    share_diagnosis_with_employer: bool = False
    document_id: str | None = None  # the source document's own id (fit note id, referral id ...)
    version: int | None = None
    replaces: str | None = None
    period_start: date | None = None
    period_end: date | None = None
    # OH referral
    referrer_type: str | None = None  # gp | employer | self | work-coach | hospital | msk-service | ...
    urgency: str | None = None  # routine | urgent
    related_fit_note_id: str | None = None
    safety_critical_role: bool | None = None
    absence_started_on: date | None = None  # referral: as stated; milestone: the episode's start
    # OH outcome
    referral_id: str | None = None  # the referral an outcome answers
    fitness: str | None = None  # fit | fit-with-adjustments | fit-with-restrictions | not-fit
    refer_to_access_to_work: bool | None = None
    # Access to Work
    support_requested: tuple[str, ...] | None = None
    oh_outcome_id: str | None = None  # the OH outcome an application rests on
    # absence milestone
    episode_id: str | None = None
    milestone_on: date | None = None  # day 28 of the episode
    gp_practice_id: str | None = None


@dataclass(frozen=True, slots=True)
class CanonicalEvent:
    """One accepted source message as a FHIR R4B message Bundle plus plain facts.

    `bundle` holds every category the source gave; each entry's resource carries
    `meta.security` labels (data-category system) so projection can cut it down.
    `event_id` is derived from the source message (kind, source org, document id,
    version): a resent message yields the same id and is recognised as a duplicate.
    `content_hash` is a SHA-256 of the canonicalised body, to tell a true resend
    from a conflicting reuse of the same id and version.
    """

    event_id: str
    event_type: EventType
    kind: str
    source_org_id: str
    message_id: str
    sent_at: datetime
    facts: Facts
    bundle: dict[str, Any]
    categories: frozenset[Category]
    content_hash: str
    extra: dict[str, Any] = field(default_factory=dict)
