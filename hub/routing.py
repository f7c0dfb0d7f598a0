"""Routing (contract §8): which organisations are candidates for an event.

A plain function over the event's facts and the directory. It answers who
*could* receive the event; the consent gate then decides, per candidate, what
(if anything) each may see.
"""
from __future__ import annotations

from dataclasses import dataclass

from hub.directory import Directory, Organisation
from schemas.events import CanonicalEvent
from schemas.vocab import EventType, RecipientType


@dataclass(frozen=True, slots=True)
class Candidate:
    org: Organisation
    role: str  # why it is a candidate: employer, employer-oh-provider, jobcentre-for-area ...

    @property
    def recipient_type(self) -> RecipientType:
        return RecipientType(self.org.type)


@dataclass(frozen=True, slots=True)
class Unroutable:
    """A candidate the event names but the hub cannot reach; kept for IG (§8)."""

    role: str
    org_id: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class Route:
    candidates: tuple[Candidate, ...]
    unroutable: tuple[Unroutable, ...]


class _Builder:
    def __init__(self, directory: Directory) -> None:
        self.directory = directory
        self.candidates: dict[str, Candidate] = {}
        self.unroutable: list[Unroutable] = []

    def named(self, org_id: str | None, role: str, expected_type: str) -> Organisation | None:
        """A candidate the message names by id: unknown or unconnected ones are unroutable."""
        if not org_id:
            return None
        org = self.directory.get(org_id)
        if org is None:
            self.unroutable.append(Unroutable(role, org_id, f"{role} {org_id} is not in the directory"))
            return None
        if org.type != expected_type:
            self.unroutable.append(
                Unroutable(role, org_id, f"{org_id} is a {org.type} in the directory, not a {expected_type}")
            )
            return None
        return org

    def add(self, org: Organisation, role: str) -> None:
        if org.delivery is None:
            self.unroutable.append(Unroutable(role, org.id, f"{org.name} has no delivery channel"))
            return
        self.candidates.setdefault(org.id, Candidate(org, role))

    def route(self) -> Route:
        return Route(tuple(self.candidates.values()), tuple(self.unroutable))


def route_fit_note(event: CanonicalEvent, directory: Directory, *, milestone_passed: bool = False) -> Route:
    """fit-note-issued / fit-note-superseded: the employer; the employer's OH
    provider when the note is may-be-fit (or, later, once an absence milestone
    has passed); the Jobcentre for the person's area when unemployed."""
    f = event.facts
    b = _Builder(directory)
    employer = b.named(f.employer_id, "employer", RecipientType.EMPLOYER)
    if employer is not None:
        b.add(employer, "employer")
        if (f.assessment == "may-be-fit" or milestone_passed) and employer.oh_provider:
            provider = directory.get(employer.oh_provider)
            if provider is not None:
                b.add(provider, "employer-oh-provider")
    if f.employment_status == "unemployed":
        jobcentre = directory.jobcentre_for_area(f.postcode_area)
        if jobcentre is None:
            b.unroutable.append(Unroutable(
                "jobcentre-for-area", None, f"no Jobcentre in the directory serves postcode area {f.postcode_area}"
            ))
        else:
            b.add(jobcentre, "jobcentre-for-area")
    return b.route()


_ROUTES = {
    EventType.FIT_NOTE_ISSUED: route_fit_note,
    EventType.FIT_NOTE_SUPERSEDED: route_fit_note,
}


def route(event: CanonicalEvent, directory: Directory, **context) -> Route:
    try:
        fn = _ROUTES[event.event_type]
    except KeyError:
        raise NotImplementedError(f"no routing rule for {event.event_type}") from None
    return fn(event, directory, **context)
