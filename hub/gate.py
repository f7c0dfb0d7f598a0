"""The consent gate: one explainable decision per candidate recipient, purpose
and data category the event holds (contract §5, §7). Plain functions.

Order of reasoning for each category:
1. the recipient type's maximum (§5): a category outside it is refused whatever
   any consent says (`recipient-maximum`); an employer never gets clinical notes,
   and gets the diagnosis only if the issuing clinician allowed it;
2. otherwise the person's consents decide (consent.engine.decide, rules 1-5).
The recipient is given the event only if `identity` and the event's core
category are both permitted; otherwise it gets nothing (§5).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Sequence

from consent.engine import decide
from consent.model import ConsentBasis, ConsentRecord, Decision
from schemas.ukdate import format_day
from hub.routing import Candidate
from schemas.events import CanonicalEvent
from schemas.fhir import ordered_uuid
from schemas.vocab import CORE_CATEGORY, RECIPIENT_MAXIMUM, RECIPIENT_PURPOSE, Category, RecipientType

if TYPE_CHECKING:
    from hub.ig import Override

_DECISION_NS = uuid.UUID("5f1f2d0e-6c1a-4b8e-9a43-0c2b7d9f1e11")


@dataclass(frozen=True, slots=True)
class CategoryDecision:
    decision_id: str
    category: str
    decision: Decision


@dataclass(frozen=True, slots=True)
class GateResult:
    candidate: Candidate
    purpose: str
    decisions: tuple[CategoryDecision, ...]
    permitted: frozenset[str]
    deliver: bool
    reason: str  # why the recipient gets the event, or why it gets nothing


def _policy_denial(rule: str, reason: str) -> Decision:
    return Decision(outcome="deny", rule=rule, reason=reason, basis=())


def _policy_limit(event: CanonicalEvent, rtype: RecipientType, category: str) -> Decision | None:
    if rtype is RecipientType.EMPLOYER:
        if category == Category.CLINICAL_NOTES:
            return _policy_denial("never-to-employer", "Denied: clinical notes never reach an employer")
        if category == Category.DIAGNOSIS and not event.facts.share_diagnosis_with_employer:
            return _policy_denial(
                "issuer-withheld",
                "Denied: the issuing clinician did not allow the diagnosis to be shared with the employer",
            )
    if category not in RECIPIENT_MAXIMUM[rtype]:
        return _policy_denial(
            "recipient-maximum",
            f"Denied: {'an' if rtype.value[0] in 'aeiou' else 'a'} {rtype.value} never receives {category} (contract §5)",
        )
    return None


def _break_glass(decision: Decision, overrides: Sequence["Override"], org_id: str, purpose: str,
                 now: datetime) -> Decision:
    """§7 rule 6: an active break-glass for this recipient and purpose turns a
    consent refusal into a permit, saying so (the recipient maxima still hold)."""
    for o in overrides:
        if o.recipient_id == org_id and o.purpose == purpose and now < o.expires_at:
            return Decision(
                outcome="permit", rule="break-glass",
                reason=(f"Permitted by break-glass {o.break_glass_id} until {format_day(o.expires_at)}, "
                        f"overriding: {decision.reason}"),
                basis=(ConsentBasis(o.break_glass_id, 0, "break-glass", "permit"), *decision.basis),
            )
    return decision


def gate(
    event: CanonicalEvent,
    candidate: Candidate,
    consents: Sequence[ConsentRecord],
    now: datetime,
    overrides: Sequence["Override"] = (),
) -> GateResult:
    rtype = candidate.recipient_type
    purpose = RECIPIENT_PURPOSE[rtype].value
    org = candidate.org
    results: list[CategoryDecision] = []
    permitted: set[str] = set()
    for category in sorted(event.categories):
        decision = _policy_limit(event, rtype, category)
        if decision is None:
            decision = decide(consents, purpose=purpose, category=category, org_id=org.id, org_name=org.name,
                              now=now)
            if decision.outcome == "deny" and overrides:
                decision = _break_glass(decision, overrides, org.id, purpose, now)
        decision_id = ordered_uuid(now, _DECISION_NS, f"{event.event_id}|{org.id}|{category}")
        results.append(CategoryDecision(decision_id, category, decision))
        if decision.outcome == "permit":
            permitted.add(category)
    core = CORE_CATEGORY[event.event_type].value
    missing = [c for c in (Category.IDENTITY.value, core) if c not in permitted]
    if missing:
        reason = f"Withheld: {org.name} may not have {' or '.join(missing)}, so it receives nothing"
    else:
        reason = f"Delivered: {', '.join(sorted(permitted))} for {purpose}"
    return GateResult(
        candidate=candidate,
        purpose=purpose,
        decisions=tuple(results),
        permitted=frozenset(permitted),
        deliver=not missing,
        reason=reason,
    )
