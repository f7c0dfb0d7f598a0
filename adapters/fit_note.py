"""Adapter for inbound kind `fit-note` (§2): a validated `FitNoteMessage` -> `CanonicalEvent`."""
from __future__ import annotations

from datetime import datetime

from adapters.common import message_event
from schemas.events import CanonicalEvent, Facts
from schemas.fhir import event_id, fit_note_bundle
from schemas.sources import FitNoteMessage
from schemas.vocab import EventType

KIND = "fit-note"

__all__ = ["KIND", "adapt_fit_note", "fit_note_event_type"]


def fit_note_event_type(version: int, replaces: str | None) -> EventType:
    """fit-note-issued for a first version that replaces nothing; otherwise superseded (§3)."""
    if replaces or version > 1:
        return EventType.FIT_NOTE_SUPERSEDED
    return EventType.FIT_NOTE_ISSUED


def adapt_fit_note(msg: FitNoteMessage, *, now: datetime) -> CanonicalEvent:
    """Build the canonical event of a fit note message that has passed every field rule.

    The event id depends only on (kind, source org, note id, version): a resend of the
    same note version, even with a new message_id, gives the same id. The content hash
    covers the normalised body alone, so a true resend also hashes the same while a
    different note reusing that id and version does not.
    """
    note = msg.fit_note
    org_id = msg.source.org_id
    eid = event_id(KIND, org_id, note.id, note.version)
    event_type = fit_note_event_type(note.version, note.replaces)
    bundle = fit_note_bundle(msg, event_id=eid, event_type=event_type, now=now)
    employment = note.employment
    facts = Facts(
        nhs_number=note.patient.nhs_number,
        postcode_area=note.patient.postcode_area,
        employment_status=employment.status if employment else None,
        employer_id=employment.employer_id if employment else None,
        assessment=note.assessment,
        share_diagnosis_with_employer=note.condition.share_with_employer,
        document_id=note.id,
        version=note.version,
        replaces=note.replaces,
        period_start=note.period.start,
        period_end=note.period.end,
    )
    return message_event(msg, note, kind=KIND, event_id=eid, event_type=event_type,
                         facts=facts, bundle=bundle)
