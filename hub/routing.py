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

    def add(self, org: Organisation | None, role: str) -> bool:
        """True if `org` is now a candidate; one with no delivery channel is unroutable."""
        if org is None:
            return False
        if org.delivery is None:
            self.unroutable.append(Unroutable(role, org.id, f"{org.name} has no delivery channel"))
            return False
        self.candidates.setdefault(org.id, Candidate(org, role))
        return True

    def route(self) -> "Route":
        return Route(tuple(self.candidates.values()), tuple(self.unroutable))


@dataclass(frozen=True, slots=True)
class Context:
    """What routing needs from the hub's memory, looked up by the pipeline."""

    milestone_passed: bool = False  # the fit note's absence episode has reached day 28
    previous_recipients: tuple[str, ...] = ()  # who had the note this one supersedes
    gp_practice_id: str | None = None  # source of the person's latest fit note
    referral_employer_id: str | None = None  # employer named by the referral an outcome answers


@dataclass(frozen=True, slots=True)
class Route:
    candidates: tuple[Candidate, ...]
    unroutable: tuple[Unroutable, ...]
    signpost: str | None = None  # why a referral had nowhere to go (§8); None when routed


def route_fit_note(event: CanonicalEvent, directory: Directory, ctx: Context) -> Route:
    """fit-note-issued / -superseded: the employer; the employer's OH provider
    when the note is may-be-fit or the absence has passed its 28-day milestone;
    the Jobcentre for the person's area when unemployed; and, for a superseding
    note, every recipient that had the note it replaces."""
    f = event.facts
    b = _Builder(directory)
    employer = b.named(f.employer_id, "employer", RecipientType.EMPLOYER)
    if employer is not None:
        b.add(employer, "employer")
        if (f.assessment == "may-be-fit" or ctx.milestone_passed) and employer.oh_provider:
            b.add(directory.get(employer.oh_provider), "employer-oh-provider")
    if f.employment_status == "unemployed":
        jobcentre = directory.jobcentre_for_area(f.postcode_area)
        if jobcentre is None:
            b.unroutable.append(Unroutable(
                "jobcentre-for-area", None, f"no Jobcentre in the directory serves postcode area {f.postcode_area}"
            ))
        else:
            b.add(jobcentre, "jobcentre-for-area")
    for org_id in ctx.previous_recipients:
        org = directory.get(org_id)
        if org is not None:
            b.add(org, "had-replaced-note")
    return b.route()


def _route_referral(f, directory: Directory, b: "_Builder") -> Route:
    """An OH referral: the preferred provider if one is named and known, else the
    employer's OH provider; with neither, the WorkWell service for the person's
    area; with none of these, a signposting record. One that is known but cannot
    be reached (no delivery channel) is recorded as unroutable and the next is
    tried, so a referral never ends with nowhere to go and no signposting."""
    preferred = b.named(f.preferred_provider_id, "preferred-provider", RecipientType.OH_PROVIDER)
    if b.add(preferred, "preferred-provider"):
        return b.route()
    employer = b.named(f.employer_id, "employer", RecipientType.EMPLOYER) \
        if f.employment_status in ("employed", "job-to-start") else None
    oh = b.named(employer.oh_provider, "employer-oh-provider", RecipientType.OH_PROVIDER) \
        if employer is not None else None
    if b.add(oh, "employer-oh-provider"):
        return b.route()
    if b.add(directory.workwell_for_area(f.postcode_area), "workwell-for-area"):
        return b.route()
    if oh is not None:
        why = f"{employer.name}'s OH provider {oh.name} cannot be reached"
    elif employer is not None and employer.oh_provider:
        why = f"{employer.name}'s OH provider {employer.oh_provider} is not a known OH provider"
    elif employer is not None:
        why = f"{employer.name} has no OH provider"
    elif f.employment_status in ("self-employed", "unemployed"):
        why = f"the person is {f.employment_status}, so has no OH through work"
    else:
        why = "no employer with an OH provider is known"
    area = f.postcode_area or "unknown"
    route = b.route()
    return Route(route.candidates, route.unroutable,
                 signpost=f"{why}, and no WorkWell service covers postcode area {area}")


def route_referral(event: CanonicalEvent, directory: Directory, ctx: Context) -> Route:
    return _route_referral(event.facts, directory, _Builder(directory))


def route_milestone(event: CanonicalEvent, directory: Directory, ctx: Context) -> Route:
    """absence-milestone: routed as an OH referral from the hub itself (§8)."""
    return _route_referral(event.facts, directory, _Builder(directory))


def route_access_to_work(event: CanonicalEvent, directory: Directory, ctx: Context) -> Route:
    b = _Builder(directory)
    service = directory.access_to_work_for_nation(event.facts.nation)
    if service is None:
        b.unroutable.append(Unroutable("access-to-work-for-nation", None,
                                       f"no Access to Work service in the directory covers {event.facts.nation}"))
    else:
        b.add(service, "access-to-work-for-nation")
    return b.route()


def route_outcome(event: CanonicalEvent, directory: Directory, ctx: Context) -> Route:
    """oh-outcome-reported: the employer (adjustments and fitness advice only,
    which the employer's maximum enforces) and the GP practice that issued the
    person's latest fit note."""
    b = _Builder(directory)
    employer_id = event.facts.employer_id or ctx.referral_employer_id
    employer = b.named(employer_id, "employer", RecipientType.EMPLOYER)
    if employer is not None:
        b.add(employer, "employer")
    if ctx.gp_practice_id:
        gp = b.named(ctx.gp_practice_id, "gp-practice", RecipientType.GP)
        if gp is not None:
            b.add(gp, "gp-practice")
    else:
        b.unroutable.append(Unroutable("gp-practice", None, "no fit note on record names the person's GP practice"))
    return b.route()


_ROUTES = {
    EventType.FIT_NOTE_ISSUED: route_fit_note,
    EventType.FIT_NOTE_SUPERSEDED: route_fit_note,
    EventType.OH_REFERRAL_REQUESTED: route_referral,
    EventType.ABSENCE_MILESTONE: route_milestone,
    EventType.ACCESS_TO_WORK_REQUESTED: route_access_to_work,
    EventType.OH_OUTCOME_REPORTED: route_outcome,
}


def route(event: CanonicalEvent, directory: Directory, ctx: Context | None = None) -> Route:
    return _ROUTES[event.event_type](event, directory, ctx or Context())
