"""The consent decision (§7 rules 1-5) as plain functions over `consent.model` values.

`decide` is called once per recipient, per data category, per event, so it does
no parsing and no I/O: set look-ups and datetime comparisons over a handful of
small provision trees.

The rules, as implemented:

1. only consents that are `active` and whose root period covers now count;
2. a provision matches when every constraint it states fits (`Provision.matches`);
3. within one consent, the deepest matching provision decides. Nested
   provisions are looked at only inside a matching parent; the root is the
   consent's default (if the root itself does not match, the consent says
   nothing about the request). When several provisions match at that deepest
   level and disagree, deny wins;
4. across consents, a deny from a provision that states a purpose, category or
   actor beats any permit. A deny that states none of these (the usual bare
   root "deny everything else") does not beat another consent's permit;
5. without a permit the answer is deny.

When the answer is deny only because nothing in force permits, the engine looks
for the precise reason: a consent that would have permitted but was withdrawn
(rule code `consent-withdrawn`), or one that would have permitted until its
period, or the period of the provision that permitted, ended (`consent-expired`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from consent.model import (
    ACTIVE,
    DENY,
    INACTIVE,
    PERMIT,
    ROOT,
    ConsentBasis,
    ConsentRecord,
    Decision,
    Provision,
    format_day,
)

CONSENT_PERMIT = "consent-permit"
CONSENT_DENY = "consent-deny"
DEFAULT_DENY = "default-deny"
NO_CONSENT = "no-consent"
CONSENT_WITHDRAWN = "consent-withdrawn"
CONSENT_EXPIRED = "consent-expired"


@dataclass(frozen=True, slots=True)
class _Hit:
    """A matching provision, with the end of its effective period: the earliest
    end among it and its ancestors, and the path of the provision that sets it."""

    provision: Provision
    end: datetime | None
    end_path: str | None


@dataclass(frozen=True, slots=True)
class _Verdict:
    """What one consent says (rule 3): its deciding type and the provisions of
    that type at the deepest matching level."""

    record: ConsentRecord
    type: str
    hits: tuple[_Hit, ...]

    @property
    def specific(self) -> bool:
        """A deny that states a purpose, category or actor (rule 4)."""
        return self.type == DENY and any(h.provision.states_constraint() for h in self.hits)

    def basis(self) -> tuple[ConsentBasis, ...]:
        r = self.record
        return tuple(ConsentBasis(r.id, r.version, h.provision.path, self.type) for h in self.hits)


def _child_hit(parent: _Hit, child: Provision) -> _Hit:
    end = child.period_end
    if end is not None and (parent.end is None or end < parent.end):
        return _Hit(child, end, child.path)
    return _Hit(child, parent.end, parent.end_path)


def _evaluate(
    record: ConsentRecord, purpose: str, category: str, org_id: str, at: datetime
) -> _Verdict | None:
    """What `record`'s provisions say at `at` (rules 2 and 3), ignoring its status.

    None when the root provision does not match: the consent is silent.
    """
    root = record.provision
    if not root.matches(purpose, category, org_id, at):
        return None
    level = (_Hit(root, root.period_end, ROOT if root.period_end is not None else None),)
    while True:
        deeper = tuple(
            _child_hit(hit, child)
            for hit in level
            for child in hit.provision.children
            if child.matches(purpose, category, org_id, at)
        )
        if not deeper:
            break
        level = deeper
    denies = tuple(h for h in level if h.provision.type == DENY)
    if denies:
        return _Verdict(record, DENY, denies)
    return _Verdict(record, PERMIT, level)


def decide(
    consents: Sequence[ConsentRecord],
    *,
    purpose: str,
    category: str,
    org_id: str,
    org_name: str,
    now: datetime,
) -> Decision:
    """May organisation `org_id` (called `org_name` in reasons) have `category`
    for `purpose` at `now`, given the person's `consents`?

    `consents` are one person's consents, in any status (the ones not in force
    only serve to explain a refusal). `now` must be timezone-aware.
    """
    what = f"{purpose} / {category}"
    permits: list[_Verdict] = []
    specific_denies: list[_Verdict] = []
    default_denies: list[_Verdict] = []
    for record in consents:
        if not record.is_in_force(now):
            continue
        verdict = _evaluate(record, purpose, category, org_id, now)
        if verdict is None:
            continue
        if verdict.type == PERMIT:
            permits.append(verdict)
        elif verdict.specific:
            specific_denies.append(verdict)
        else:
            default_denies.append(verdict)

    if specific_denies:
        return _specific_deny(specific_denies, what, org_name)
    if permits:
        return _permit(permits, what, org_name)
    lapsed = _lapse(consents, purpose, category, org_id, now)
    if lapsed is not None:
        return lapsed
    if default_denies:
        return _default_deny(default_denies, what)
    return Decision(DENY, NO_CONSENT, f"Denied: no consent on record for {what}")


# --- reasons -----------------------------------------------------------------


def _where(record: ConsentRecord, path: str) -> str:
    return f"consent {record.id}" if path == ROOT else f"consent {record.id} provision {path}"


def _until(end: datetime | None) -> str:
    return "" if end is None else f" until {format_day(end)}"


def _also(others: Sequence[tuple[ConsentRecord, str]]) -> str:
    if not others:
        return ""
    return " (also " + ", ".join(_where(r, p) for r, p in others) + ")"


def _flatten(verdicts: Sequence[_Verdict]) -> list[tuple[_Verdict, _Hit]]:
    return [(v, h) for v in verdicts for h in v.hits]


def _basis(verdicts: Sequence[_Verdict]) -> tuple[ConsentBasis, ...]:
    return tuple(b for v in verdicts for b in v.basis())


def _permit(permits: Sequence[_Verdict], what: str, org_name: str) -> Decision:
    """Name the permit that lasts longest (an open-ended one first); list all in basis."""
    pairs = _flatten(permits)
    lead_v, lead_h = max(pairs, key=_lasting)
    others = [(v.record, h.provision.path) for v, h in pairs if h is not lead_h]
    reason = (
        f"Permitted: {_where(lead_v.record, lead_h.provision.path)} allows {what} "
        f"for {org_name}{_until(lead_h.end)}{_also(others)}"
    )
    return Decision(PERMIT, CONSENT_PERMIT, reason, _basis(permits))


def _lasting(pair: tuple[_Verdict, _Hit]) -> tuple[bool, float]:
    """Sort key: open-ended first, then the latest end."""
    end = pair[1].end
    return (True, 0.0) if end is None else (False, end.timestamp())


def _specific_deny(denies: Sequence[_Verdict], what: str, org_name: str) -> Decision:
    pairs = [(v, h) for v, h in _flatten(denies) if h.provision.states_constraint()]
    lead_v, lead_h = pairs[0]
    others = [(v.record, h.provision.path) for v, h in pairs[1:]]
    reason = (
        f"Denied: {_where(lead_v.record, lead_h.provision.path)} refuses {what} "
        f"for {org_name}{_until(lead_h.end)}{_also(others)}"
    )
    basis = tuple(
        ConsentBasis(v.record.id, v.record.version, h.provision.path, DENY) for v, h in pairs
    )
    return Decision(DENY, CONSENT_DENY, reason, basis)


def _default_deny(denies: Sequence[_Verdict], what: str) -> Decision:
    pairs = _flatten(denies)
    lead_v, lead_h = pairs[0]
    path = lead_h.provision.path
    if path == ROOT:
        lead = f"consent {lead_v.record.id} does not allow {what} (its default is deny)"
    else:
        lead = f"{_where(lead_v.record, path)} does not allow {what}"
    others = [(v.record, h.provision.path) for v, h in pairs[1:]]
    return Decision(DENY, DEFAULT_DENY, f"Denied: {lead}{_also(others)}", _basis(denies))


# --- why nothing permits: withdrawn or expired consents ------------------------


@dataclass(frozen=True, slots=True)
class _Lapse:
    when: datetime | None
    decision: Decision


def _lapse(
    consents: Sequence[ConsentRecord], purpose: str, category: str, org_id: str, now: datetime
) -> Decision | None:
    """The most recent withdrawal or expiry of a consent that would otherwise permit."""
    best: _Lapse | None = None
    for record in consents:
        if record.status == INACTIVE:
            found = _withdrawn(record, purpose, category, org_id, now)
        elif record.status == ACTIVE:
            found = _expired(record, purpose, category, org_id, now)
        else:
            continue
        if found is None:
            continue
        if best is None or (
            found.when is not None and (best.when is None or found.when > best.when)
        ):
            best = found
    return None if best is None else best.decision


def _withdrawn(
    record: ConsentRecord, purpose: str, category: str, org_id: str, now: datetime
) -> _Lapse | None:
    """A withdrawn consent that would permit now, or did when it was withdrawn."""
    verdict = _evaluate(record, purpose, category, org_id, now)
    if (verdict is None or verdict.type != PERMIT) and record.withdrawn_at is not None:
        verdict = _evaluate(record, purpose, category, org_id, record.withdrawn_at)
    if verdict is None or verdict.type != PERMIT:
        return None
    if record.withdrawn_at is None:
        reason = f"Denied: consent {record.id} has been withdrawn"
    else:
        reason = f"Denied: consent {record.id} withdrawn on {format_day(record.withdrawn_at)}"
    return _Lapse(record.withdrawn_at, Decision(DENY, CONSENT_WITHDRAWN, reason, verdict.basis()))


def _expired(
    record: ConsentRecord, purpose: str, category: str, org_id: str, now: datetime
) -> _Lapse | None:
    """An active consent that permitted up to an end date now past.

    Tries each period end in the consent that is already past, latest first:
    if the consent permitted at that instant and the permitting provision's
    effective period ended exactly then, the permission expired then.
    """
    ends = sorted(
        {p.period_end for p in record.provision.walk() if p.period_end and p.period_end < now},
        reverse=True,
    )
    for end in ends:
        verdict = _evaluate(record, purpose, category, org_id, end)
        if verdict is None or verdict.type != PERMIT:
            continue
        hit_ends = [h.end for h in verdict.hits]
        if None in hit_ends or max(e for e in hit_ends if e is not None) != end:
            continue  # still permitted after `end`: something else stopped it, not expiry
        hit = next(h for h in verdict.hits if h.end == end)
        if hit.end_path == ROOT:
            reason = f"Denied: consent {record.id} expired on {format_day(end)}"
        else:
            where = _where(record, hit.end_path or hit.provision.path)
            reason = f"Denied: {where} expired on {format_day(end)}"
        return _Lapse(end, Decision(DENY, CONSENT_EXPIRED, reason, verdict.basis()))
    return None
