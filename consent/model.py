"""The consent domain model (§7): plain, immutable values.

A person's consent is a tree of provisions. The root provision is the consent's
default; each nested provision is an exception that applies inside its parent
(FHIR's "exceptions nest inside" semantics). Nothing here knows about FHIR JSON,
storage or transport: `consent.fhir` turns FHIR resources into these values and
`consent.engine` decides over them.

Time
----
Every datetime here is timezone-aware and, as built by this package, in UTC.

FHIR periods are often written as plain dates ("2027-11-19"). The hub reads a
date the way the person giving consent means it, in UK time (Europe/London):

- as a period START, a date means from the first instant of that day;
- as a period END, a date means up to and including the last instant of that
  day: "until 19 Nov 2027" still covers 19 Nov 2027 at 23:30 in London.

Partial dates ("2027", "2027-11") widen the same way to the whole year or month.
A full dateTime is taken exactly as written. `period_end` therefore always holds
the *last instant covered* (inclusive): a period covers `now` when
``period_start <= now <= period_end``. `day_start` and `day_end` perform the
conversion and are exported for callers that build records by hand (tests).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from schemas.ukdate import UK, day_end, day_start, format_day, uk_date  # noqa: F401 (re-exported)

PERMIT = "permit"
DENY = "deny"
PROVISION_TYPES = frozenset({PERMIT, DENY})

ROOT = "root"

# FHIR R4B ConsentState (http://hl7.org/fhir/consent-state-codes).
CONSENT_STATUSES = frozenset(
    {"draft", "proposed", "active", "rejected", "inactive", "entered-in-error"}
)
ACTIVE = "active"
INACTIVE = "inactive"





@dataclass(frozen=True, slots=True)
class Provision:
    """One rule of a consent: permit or deny, under the constraints it states.

    An empty `purposes`, `categories` or `actors` set states no constraint on
    that axis (it applies to every purpose / category / organisation); a None
    period bound is open. `actors` hold organisation ids (the `<id>` of
    `Organization/<id>`). `path` names the provision for people and for the
    audit: "root" for the consent's top provision, "1", "2" for the root's
    nested provisions (1-based), "2.1" for the first inside "2", and so on.
    """

    type: str
    purposes: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()
    actors: frozenset[str] = frozenset()
    period_start: datetime | None = None
    period_end: datetime | None = None
    children: tuple[Provision, ...] = ()
    path: str = ROOT

    def states_constraint(self) -> bool:
        """True if this provision names a purpose, a data category or an actor.

        Rule 4: only such a deny beats another consent's permit; a bare deny
        (at most a period) is a default, not a specific refusal.
        """
        return bool(self.purposes or self.categories or self.actors)

    def covers(self, now: datetime) -> bool:
        """True if this provision's own period (if any) includes `now`."""
        if self.period_start is not None and now < self.period_start:
            return False
        if self.period_end is not None and now > self.period_end:
            return False
        return True

    def matches(self, purpose: str, category: str, org_id: str, now: datetime) -> bool:
        """Rule 2: every constraint this provision states fits the request.

        Its purposes (if any) include `purpose`, its categories (if any) include
        `category`, its actors (if any) include `org_id`, and its period (if
        any) covers `now`. Parents are not consulted: see `consent.engine`.
        """
        return (
            (not self.purposes or purpose in self.purposes)
            and (not self.categories or category in self.categories)
            and (not self.actors or org_id in self.actors)
            and self.covers(now)
        )

    def walk(self) -> tuple[Provision, ...]:
        """This provision and every provision nested in it, depth first."""
        out: list[Provision] = []
        stack = [self]
        while stack:
            p = stack.pop()
            out.append(p)
            stack.extend(reversed(p.children))
        return tuple(out)


@dataclass(frozen=True, slots=True)
class ConsentRecord:
    """One version of a person's consent, as the hub holds it.

    `nhs_number` is the normalised 10 digits. `withdrawn_at` is set by whoever
    stores the consent when the person withdraws it (status becomes inactive);
    it lets a refusal say when consent was withdrawn.
    """

    id: str
    version: int
    status: str
    nhs_number: str
    date_time: datetime | None
    provision: Provision
    withdrawn_at: datetime | None = None

    def is_in_force(self, now: datetime) -> bool:
        """Rule 1: the consent is `active` and its root period, if any, covers `now`."""
        return self.status == ACTIVE and self.provision.covers(now)


@dataclass(frozen=True, slots=True)
class ConsentBasis:
    """One provision a decision rests on: which consent (and version), where in
    it, and what that provision says (permit or deny)."""

    consent_id: str
    version: int
    provision_path: str
    type: str


@dataclass(frozen=True, slots=True)
class Decision:
    """The consent gate's answer for one recipient, purpose and category.

    `rule` is a short machine code (consent-permit, consent-deny, default-deny,
    no-consent, consent-withdrawn, consent-expired); `reason` is plain English
    for the person and for IG; `basis` lists the provisions relied on.
    """

    outcome: str
    rule: str
    reason: str
    basis: tuple[ConsentBasis, ...] = ()

    @property
    def permitted(self) -> bool:
        return self.outcome == PERMIT
