"""The inbound pipeline, as one service function per message:

    subject + bytes -> adapter -> canonical event -> routing -> consent gate
    -> projection -> (event, decisions, deliveries, audit) committed together

Nothing is published here: the outbox relay (hub.outbox) publishes what this
committed. Every step is idempotent on the event id, so a redelivered inbound
message changes nothing.
"""
from __future__ import annotations

import hashlib
import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import orjson

from adapters import adapt
from adapters.milestone import milestone_event
from consent.records import records_from_rows
from hub.audit import AuditLog
from hub.clock import Clock
from hub.directory import Directory
from hub.gate import GateResult, gate
from hub.ig import overrides_for, overrides_for_persons
from hub.projection import project
from hub import metrics
from hub.absence import Note, chain, plus_days
from hub.routing import Candidate, Context, route
from hub.signposting import notice_bundle
from hub.store import UnitOfWork, UnitOfWorkFactory
from hub.streams import deliver_subject
from schemas.events import CanonicalEvent, Facts, FieldError, Rejected
from schemas.fhir import ordered_uuid
from schemas.vocab import CORE_CATEGORY, SOURCE_KINDS, EventType

log = logging.getLogger(__name__)


@dataclass
class Deps:
    """What the service functions need; built once by hub.bootstrap."""

    uow: UnitOfWorkFactory
    directory: Directory
    clock: Clock
    audit: AuditLog
    webhook_budget_s: float = 86400.0


@dataclass(frozen=True)
class InboundResult:
    outcome: Literal["accepted", "duplicate", "dead-lettered"]
    event_id: str | None = None
    errors: tuple[FieldError, ...] = ()
    dead_letter_id: str | None = None
    deliveries: int = 0
    withheld: int = 0
    extra: dict = field(default_factory=dict)
    ready: tuple["Ready", ...] = ()  # committed deliveries, for the relay (hub.outbox) to take as they are


def parse_subject(subject: str) -> tuple[str, str | None, list[FieldError]]:
    """hub.inbound.<kind>.<org_id> -> (kind, org_id, errors)."""
    parts = subject.split(".")
    if len(parts) == 4 and parts[0] == "hub" and parts[1] == "inbound":
        return parts[2], parts[3], []
    kind = parts[2] if len(parts) > 2 and parts[:2] == ["hub", "inbound"] else "unknown"
    return kind, None, [FieldError("", "subject must be hub.inbound.<kind>.<source org_id>")]


def known_kind(kind: str) -> str:
    """A subject's kind as metrics, logs and the audit may name it: one the
    contract knows, else "unknown" (the token is the publisher's own text)."""
    return kind if kind in SOURCE_KINDS else "unknown"


def _printable(text: str | None) -> str | None:
    """Text as a database column can hold it: control characters (NUL above all,
    which PostgreSQL text refuses) replaced by U+FFFD. The payload is kept as bytes."""
    if text is None:
        return None
    return "".join(ch if ch.isprintable() else "\ufffd" for ch in text)


def dead_letter_id(subject: str, data: bytes) -> str:
    return hashlib.sha256(subject.encode() + b"\n" + data).hexdigest()


def check(kind: str, data: bytes, *, org_id: str | None, deps: Deps) -> CanonicalEvent | Rejected:
    """Validate a source message without side effects (used by HTTP before it accepts)."""
    return adapt(kind, data, subject_org_id=org_id, directory=deps.directory, now=deps.clock.now())


async def process_inbound(deps: Deps, subject: str, data: bytes, *, via: str = "broker") -> InboundResult:
    (out,) = await process_inbound_batch(deps, [(subject, data)], via=via)
    return out


async def process_inbound_batch(deps: Deps, messages: Sequence[tuple[str, bytes]], *,
                                via: str = "broker") -> list[InboundResult]:
    """Several inbound messages, in the order given, in one transaction (group
    commit): all their outcomes commit together or none does. Each is handled
    exactly as it would be alone, after the ones before it, so two messages
    about one person keep their order."""
    return await commit_batch(deps, check_batch(deps, messages), via=via)


Checked = tuple[str, str, bytes, "CanonicalEvent | Rejected"]  # (kind, subject, data, its adapter's outcome)


def check_batch(deps: Deps, messages: Sequence[tuple[str, bytes]]) -> list[Checked]:
    """The first half of process_inbound_batch: validation and adaptation, no
    database. A worker runs it for the next batch while the one before commits."""
    checked = []
    for subject, data in messages:
        kind, org_id, errors = parse_subject(subject)
        result = Rejected(tuple(errors)) if errors else check(kind, data, org_id=org_id, deps=deps)
        checked.append((kind, subject, data, result))
    return checked


async def commit_batch(deps: Deps, checked: list[Checked], *, via: str = "broker") -> list[InboundResult]:
    """The second half of process_inbound_batch: the checked messages' outcomes,
    in order, in one transaction."""
    out = []
    async with deps.uow() as uow:
        for segment in _segments(checked):
            events = [r for *_, r in segment if isinstance(r, CanonicalEvent)]
            pre = await _prefetch(uow, events, deps.clock.now())
            for kind, subject, data, result in segment:
                if isinstance(result, Rejected):
                    out.append(await _dead_letter(uow, deps, kind, subject, data, result, via))
                else:
                    out.append(await _accept(uow, deps, result, subject, data, via, pre))
        await uow.commit()
    return out


@dataclass
class Prefetched:
    """What a run of events about different people needs from the database,
    read once for the run: known event ids, consents, active break-glass."""

    known: dict[str, str]
    consents: dict[str, list]
    overrides: dict[str, list]
    notes: dict[str, Any]
    seqs: dict[str, int]

    def take_seq(self, nhs_number: str) -> int | None:
        """The person's sequence number taken for this run, once."""
        return self.seqs.pop(nhs_number, None)


def _segments(checked: list) -> list[list]:
    """Cut a batch into runs in which no person and no event id appears twice, so
    each run's reads can be made up front and its writes wait until its end: an
    event about someone already in the run starts the next one and sees, through
    the database, everything written before it."""
    segments: list[list] = [[]]
    seen: set[str] = set()
    for item in checked:
        result = item[-1]
        keys = {result.event_id, "nhs:" + result.facts.nhs_number} if isinstance(result, CanonicalEvent) else set()
        if keys & seen:
            segments.append([])
            seen = set()
        segments[-1].append(item)
        seen |= keys
    return [s for s in segments if s]


async def _prefetch(uow: UnitOfWork, events: list[CanonicalEvent], now: datetime) -> Prefetched:
    persons = sorted({e.facts.nhs_number for e in events})
    known = await uow.events.content_hashes([e.event_id for e in events])
    consents = await uow.consents.for_persons(persons)
    overrides = await overrides_for_persons(uow, persons, now)
    notes = await uow.absence.notes([_note_key(e.source_org_id, e.facts.document_id) for e in events
                                     if e.kind == "fit-note"])
    seqs = await uow.person_seq.next([e.facts.nhs_number for e in events if e.event_id not in known])
    return Prefetched(known, consents, overrides, notes, seqs)


async def poison(deps: Deps, subject: str, data: bytes, *, attempts: int, error: str) -> InboundResult:
    """A message whose processing kept failing (not one that broke a field rule):
    dead-lettered as it is, with the failure named, so an operator can resubmit it
    once the cause is fixed."""
    kind, org_id, _ = parse_subject(subject)
    rejected = Rejected((FieldError("", f"processing failed {attempts} times ({error}); kept for an operator "
                                        "to resubmit once the cause is fixed"),), source_org_id=org_id)
    return await record_rejection(deps, kind, subject, data, rejected, via="broker")


async def record_rejection(deps: Deps, kind: str, subject: str, data: bytes, rejected: Rejected,
                           via: str) -> InboundResult:
    async with deps.uow() as uow:
        out = await _dead_letter(uow, deps, kind, subject, data, rejected, via)
        await uow.commit()
    return out


async def _dead_letter(uow: UnitOfWork, deps: Deps, kind: str, subject: str, data: bytes,
                       rejected: Rejected, via: str) -> InboundResult:
    now = deps.clock.now()
    kind = known_kind(kind)
    dl_id = dead_letter_id(subject, data)
    created = await uow.dead_letters.add_if_absent({
        "dead_letter_id": dl_id,
        "kind": kind,
        "subject": _printable(subject)[:300],
        "via": via,
        "source_org_id": _printable(rejected.source_org_id),
        "message_id": _printable(rejected.message_id or "")[:200] or None,
        "payload": data,
        "errors": [e.as_dict() for e in rejected.errors],
        "status": "open",
        "received_at": now,
    })
    if created:
        metrics.DEAD_LETTERS.labels("input", kind).inc()
        await uow.audit.append_many([deps.audit.row(
            "inbound.dead-lettered", actor=rejected.source_org_id or "unknown", at=now, ref=dl_id,
            detail={"kind": kind, "pointers": [e.pointer for e in rejected.errors][:20]},
        )])
        log.info("dead-lettered %s message %s: %d errors at %s", kind, dl_id[:12], len(rejected.errors),
                 ", ".join(e.pointer or "/" for e in rejected.errors[:5]))
    return InboundResult("dead-lettered", errors=rejected.errors, dead_letter_id=dl_id)


async def _accept(uow: UnitOfWork, deps: Deps, event: CanonicalEvent, subject: str, data: bytes,
                  via: str, pre: Prefetched) -> InboundResult:
    known_hash = pre.known.get(event.event_id)
    if known_hash is not None:
        if known_hash == event.content_hash:
            return InboundResult("duplicate", event_id=event.event_id)
        body_key = SOURCE_KINDS[event.kind]
        conflict = Rejected(
            (FieldError(f"/{body_key}/id", "an earlier message with this id and version had different "
                                           "content; send a new version to correct it"),),
            message_id=event.message_id, source_org_id=event.source_org_id,
        )
        return await _dead_letter(uow, deps, event.kind, subject, data, conflict, via)

    now = deps.clock.now()
    ctx = Context()
    if event.kind == "fit-note":
        episode = await _track_absence(uow, deps, event, now, pre)
        ctx = Context(
            milestone_passed=episode is not None and episode.milestone_event_id is not None,
            previous_recipients=tuple(await _had_replaced_note(uow, event)),
        )
    elif event.kind == "oh-outcome":
        ctx = await _outcome_context(uow, event)
    return await persist_event(uow, deps, event, ctx, now=now, via=via, pre=pre)


async def persist_event(uow: UnitOfWork, deps: Deps, event: CanonicalEvent, ctx: Context, *, now: datetime,
                        via: str, pre: Prefetched | None = None) -> InboundResult:
    """Route, gate, project and record one event: the event row, one decision per
    candidate and category, a delivery (outbox) row per candidate, unroutable and
    signposting records and their audit rows, all in the caller's transaction."""
    nhs = event.facts.nhs_number
    seq = (pre.take_seq(nhs) if pre is not None else None) or (await uow.person_seq.next([nhs]))[nhs]
    if pre is not None and nhs in pre.consents:
        consents, overrides = records_from_rows(pre.consents[nhs]), pre.overrides.get(nhs, [])
    else:
        consents = records_from_rows(await uow.consents.for_person(nhs))
        overrides = await overrides_for(uow, nhs, now)
    plan = route(event, deps.directory, ctx)
    gated = [gate(event, cand, consents, now, overrides) for cand in plan.candidates]
    person = deps.audit.person(event.facts.nhs_number)
    basis = consent_state(consents, overrides, now)

    await uow.events.add({
        "event_id": event.event_id,
        "kind": event.kind,
        "event_type": event.event_type.value,
        "source_org_id": event.source_org_id,
        "message_id": event.message_id,
        "nhs_number": event.facts.nhs_number,
        "document_id": event.facts.document_id,
        "version": event.facts.version,
        "replaces": event.facts.replaces,
        "content_hash": event.content_hash,
        "categories": sorted(event.categories),
        "facts": _facts_json(event),
        "bundle": orjson.dumps(event.bundle),
        "received_at": now,
        "person_seq": seq,
    })
    decision_rows, delivery_rows, audit_rows, ready = [], [], [], []
    for g in gated:
        decision_rows.extend(_decision_rows(event, g, now))
        delivery, payload = _delivery_row(event, g, now, seq)
        delivery_rows.append(delivery)
        if payload is not None:
            ready.append(Ready(delivery["delivery_id"], payload, basis))
        if not g.deliver:  # a refusal is audited on its own, with the decisions that made it
            audit_rows.append(deps.audit.row(
                "delivery.withheld", actor="hub", at=now, ref=delivery["delivery_id"], event_id=event.event_id,
                person=person, detail={"recipient": g.candidate.org.id, "decisions": delivery["decision_ids"]},
            ))
    # One row says the event was accepted and to whom it was queued; what each recipient may
    # see and why is in its decision rows (by event id). References only, no payload.
    accepted = {"to": [g.candidate.org.id for g in gated if g.deliver]}
    if via != "broker":
        accepted["via"] = via
    audit_rows.insert(0, deps.audit.row("event.accepted", actor=event.source_org_id, at=now,
                                        event_id=event.event_id, person=person, detail=accepted))
    unroutable_rows = [
        {"id": hashlib.sha256(f"{event.event_id}|{u.role}|{u.org_id}".encode()).hexdigest()[:32],
         "event_id": event.event_id, "role": u.role, "org_id": u.org_id, "reason": u.reason,
         "recorded_at": now}
        for u in plan.unroutable
    ]
    audit_rows.extend(
        deps.audit.row("routing.unroutable", actor="hub", at=now, ref=r["id"], event_id=event.event_id,
                       person=person, detail={"role": r["role"], "org": r["org_id"]})
        for r in unroutable_rows
    )
    if plan.signpost is not None:
        notice = _signpost(deps, event, plan.signpost, now, seq)
        if notice is not None:
            delivery_rows.append(notice)
        await uow.signposting.add({
            "id": event.event_id, "event_id": event.event_id, "nhs_number": event.facts.nhs_number,
            "referrer_org_id": event.facts.referrer_org_id, "referrer_type": event.facts.referrer_type,
            "postcode_area": event.facts.postcode_area, "reason": plan.signpost,
            "notice_delivery_id": notice["delivery_id"] if notice else None, "recorded_at": now,
        })
        audit_rows.append(deps.audit.row(
            "routing.signposted", actor="hub", at=now, ref=event.event_id, event_id=event.event_id,
            person=person, detail={"notified": notice["recipient_id"] if notice else None}))
    for bg_id in sorted({b["consent_id"] for d in decision_rows if d["rule"] == "break-glass" for b in d["basis"]
                         if b["provision"] == "break-glass"}):
        await uow.break_glass.used(bg_id)
        audit_rows.append(deps.audit.row("break-glass.used", actor="hub", at=now, ref=bg_id,
                                         event_id=event.event_id, person=person))
    for (outcome, rule), n in Counter((d["outcome"], d["rule"]) for d in decision_rows).items():
        metrics.DECISIONS.labels(outcome, rule).inc(n)
    await uow.decisions.add_many(decision_rows)
    await uow.deliveries.add_many(delivery_rows)
    await uow.unroutable.add_many(unroutable_rows)
    await uow.audit.append_many(audit_rows)
    sent = sum(1 for g in gated if g.deliver)
    return InboundResult("accepted", event_id=event.event_id, deliveries=sent, withheld=len(gated) - sent,
                         ready=tuple(ready))


def _signpost(deps: Deps, event: CanonicalEvent, reason: str, now: datetime, seq: int) -> dict | None:
    """Tell the referrer, on its own delivery channel, that its referral had nowhere to go."""
    referrer = deps.directory.get(event.facts.referrer_org_id)
    if referrer is None or referrer.delivery is None:
        return None
    address = deliver_subject(referrer.id) if referrer.delivery.channel == "broker" else (referrer.delivery.url or "")
    bundle = notice_bundle(referral_event_id=event.event_id, referral_id=event.facts.document_id,
                           referrer_id=referrer.id, referrer_name=referrer.name, endpoint=address,
                           reason=reason, now=now)
    return {
        "delivery_id": f"{event.event_id}:{referrer.id}", "event_id": event.event_id,
        "nhs_number": event.facts.nhs_number, "recipient_id": referrer.id, "recipient_type": referrer.type,
        "purpose": "signposting", "channel": referrer.delivery.channel, "address": address, "state": "pending",
        "categories": [], "decision_ids": [], "reason": f"Signposting notice: {reason}",
        "payload": orjson.dumps(bundle), "attempts": 0, "created_at": now, "person_seq": seq,
    }


# --- what routing needs to remember ---------------------------------------------------------


def _note_key(source_org_id: str, note_id: str) -> str:
    return f"{source_org_id}|{note_id}"


async def _had_replaced_note(uow: UnitOfWork, event: CanonicalEvent) -> list[str]:
    """For a superseding note: who had the note (or earlier version) it replaces,
    about the same person from the same issuer."""
    f = event.facts
    replaced = [f.replaces] if f.replaces else []
    if (f.version or 1) > 1:
        replaced.append(f.document_id)
    earlier = [r.event_id for document_id in replaced
               for r in await uow.events.by_document("fit-note", document_id, nhs_number=f.nhs_number,
                                                     source_org_id=event.source_org_id)]
    return await uow.deliveries.recipients_of(earlier)


async def _outcome_context(uow: UnitOfWork, event: CanonicalEvent) -> Context:
    latest = await uow.events.latest_fit_note(event.facts.nhs_number)
    employer_id = None
    if event.facts.referral_id:
        referrals = await uow.events.by_document("oh-referral", event.facts.referral_id,
                                                    nhs_number=event.facts.nhs_number)
        if referrals:
            employer_id = referrals[-1].facts.get("employer_id")
    return Context(gp_practice_id=latest.source_org_id if latest else None, referral_employer_id=employer_id)


async def _track_absence(uow: UnitOfWork, deps: Deps, event: CanonicalEvent, now: datetime, pre: Prefetched):
    """Record the note, re-chain the person's episodes, fire any milestone now due;
    return the episode row this note belongs to (None if it is not a not-fit note)."""
    f = event.facts
    key = _note_key(event.source_org_id, f.document_id)
    existing = pre.notes.get(key)
    not_fit = f.assessment == "not-fit"
    if existing is None and not not_fit and not f.replaces:
        # A first note that is not a not-fit note cannot change the person's episodes:
        # it is recorded (a later version may be not-fit) and nothing else is due.
        await uow.absence.put_note(_note_row(event, key, None, now), new=True)
        return None
    if existing is None or existing.version <= (f.version or 1):
        await uow.absence.put_note(_note_row(event, key, existing, now), new=existing is None)
    if f.replaces:
        await uow.absence.supersede(_note_key(event.source_org_id, f.replaces), f.nhs_number)
    await rechain(uow, f.nhs_number, now)
    for due in await uow.absence.due(now, nhs_number=f.nhs_number):
        await fire_milestone(uow, deps, due, now, latest=event, pre=pre)
    note = await uow.absence.note(key)
    if note is None or note.episode_id is None:
        return None
    return next((e for e in await uow.absence.episodes(f.nhs_number) if e.episode_id == note.episode_id), None)


def _note_row(event: CanonicalEvent, key: str, existing: Any, now: datetime) -> dict:
    f = event.facts
    return {
        "note_key": key, "nhs_number": f.nhs_number, "version": f.version or 1, "event_id": event.event_id,
        "start_on": f.period_start, "end_on": f.period_end, "not_fit": f.assessment == "not-fit",
        "superseded": False, "episode_id": existing.episode_id if existing else None,
        "arrived_at": existing.arrived_at if existing else now,
    }


async def rechain(uow: UnitOfWork, nhs_number: str, now: datetime) -> None:
    rows = await uow.absence.current_not_fit(nhs_number)
    before = {e.episode_id: e for e in await uow.absence.episodes(nhs_number)}
    fired = [e.episode_id for e in before.values() if e.milestone_event_id]
    arrival = {r.note_key: i for i, r in enumerate(sorted(rows, key=lambda r: (r.arrived_at, r.note_key)))}
    notes = [Note(r.note_key, r.start_on, r.end_on, arrival[r.note_key], r.episode_id) for r in rows]
    episodes = chain(nhs_number, notes, fired=fired)
    assignments: dict[str, str | None] = {}
    for ep in episodes:
        await uow.absence.put_episode({
            "episode_id": ep.episode_id, "nhs_number": nhs_number, "start_on": ep.start, "end_on": ep.end,
            "milestone_due_at": ep.milestone_due_at, "updated_at": now,
        })
        assignments.update({k: ep.episode_id for k in ep.note_keys})
    await uow.absence.set_note_episodes(assignments)
    kept = {ep.episode_id for ep in episodes}
    await uow.absence.drop_episodes([e for e in before if e not in kept])


async def fire_milestone(uow: UnitOfWork, deps: Deps, episode: Any, now: datetime,
                         latest: CanonicalEvent | None = None, pre: Prefetched | None = None) -> InboundResult | None:
    """Emit the one absence-milestone event of an episode, in the caller's transaction."""
    if latest is not None:
        facts, bundle = latest.facts, latest.bundle
        f = {"employer_id": facts.employer_id, "employment_status": facts.employment_status,
             "postcode_area": facts.postcode_area}
        gp = latest.source_org_id
    else:
        row = await uow.events.latest_fit_note(episode.nhs_number)
        if row is None:
            return None
        f, bundle, gp = row.facts, orjson.loads(row.bundle), row.source_org_id
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    event = milestone_event(
        nhs_number=episode.nhs_number, episode_id=episode.episode_id, episode_start=episode.start_on,
        day_28=plus_days(episode.start_on, 27), patient=patient, employer_id=f.get("employer_id"),
        employment_status=f.get("employment_status"), postcode_area=f.get("postcode_area"),
        gp_practice_id=gp, now=now,
    )
    await uow.absence.mark_fired(episode.episode_id, event.event_id)
    if await uow.events.content_hash(event.event_id) is not None:
        return InboundResult("duplicate", event_id=event.event_id)
    return await persist_event(uow, deps, event, Context(), now=now, via="timer", pre=pre)


def _facts_json(event: CanonicalEvent) -> dict:
    f = event.facts
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v)
            for k, v in ((s, getattr(f, s)) for s in f.__slots__) if v is not None}


def _decision_rows(event: CanonicalEvent, g: GateResult, now: datetime) -> list[dict]:
    return [{
        "decision_id": cd.decision_id,
        "event_id": event.event_id,
        "nhs_number": event.facts.nhs_number,
        "recipient_id": g.candidate.org.id,
        "purpose": g.purpose,
        "category": cd.category,
        "outcome": cd.decision.outcome,
        "rule": cd.decision.rule,
        "reason": cd.decision.reason,
        "basis": [{"consent_id": b.consent_id, "version": b.version, "provision": b.provision_path,
                   "type": b.type} for b in cd.decision.basis],
        "decided_at": now,
    } for cd in g.decisions]


def _delivery_row(event: CanonicalEvent, g: GateResult, now: datetime, seq: int) -> tuple[dict, bytes | None]:
    """The outbox row of one candidate, and the copy it is to be sent (None if it
    gets nothing). The copy is not stored: the relay is handed it (`Ready`), and
    one that was not (after a restart) cuts it again from the event, as of the
    row's created_at, which gives the same bytes (`payload_of`)."""
    org = g.candidate.org
    assert org.delivery is not None
    address = deliver_subject(org.id) if org.delivery.channel == "broker" else (org.delivery.url or "")
    payload, given = None, frozenset()
    if g.deliver:
        bundle, given = project(event.bundle, recipient=org, permitted=g.permitted,
                                delivery_endpoint=address, now=now)
        payload = orjson.dumps(bundle)
    return {
        "delivery_id": f"{event.event_id}:{org.id}",
        "event_id": event.event_id,
        "nhs_number": event.facts.nhs_number,
        "recipient_id": org.id,
        "recipient_type": org.type,
        "purpose": g.purpose,
        "channel": org.delivery.channel,
        "address": address,
        "state": "pending" if g.deliver else "withheld",
        "categories": sorted(given),
        "decision_ids": [cd.decision_id for cd in g.decisions
                         if (cd.decision.outcome == "permit") == g.deliver],
        "reason": g.reason,
        "payload": None,
        "attempts": 0,
        "created_at": now,
        "person_seq": seq,
    }, payload


# --- consent again, at the moment of delivery --------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What the relay may do with one due delivery now."""

    delivery_id: str
    send: bool
    payload: bytes | None = None  # the (possibly narrowed) copy to send
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class ConsentState:
    """What one person's decisions rested on: the versions of their consents and
    their active break-glass overrides (`key`), and the first instant after the
    decisions at which a period in any of them starts or ends (`until`; None if
    none does). Deciding again while the same key holds, before `until`, gives
    the same answers: the consent engine reads nothing else that changes."""

    key: tuple
    until: datetime | None

    def holds(self, key: tuple, now: datetime) -> bool:
        return key == self.key and (self.until is None or now < self.until)


@dataclass(frozen=True, slots=True)
class Ready:
    """A delivery just committed as due, handed to the relay as it can be sent:
    the copy cut at acceptance, and the consent state its decisions rested on."""

    delivery_id: str
    payload: bytes
    consents: ConsentState


def consent_key(consents: Iterable[tuple[str, int]], overrides: Iterable[tuple[str, datetime]]) -> tuple:
    """(consent id, version) of each consent and (id, expiry) of each active break-glass."""
    return tuple(sorted(consents)), tuple(sorted(overrides))


def consent_state(consents: Sequence[Any], overrides: Sequence[Any], now: datetime) -> ConsentState:
    # an edge at `now` itself counts as ahead: a period end covers its own instant and no later
    ahead = [o.expires_at for o in overrides if o.expires_at >= now]
    ahead.extend(b for r in consents for p in r.provision.walk() for b in (p.period_start, p.period_end)
                 if b is not None and b >= now)
    key = consent_key(((r.id, r.version) for r in consents), ((o.break_glass_id, o.expires_at) for o in overrides))
    return ConsentState(key, min(ahead) if ahead else None)


async def cut_from_event(uow: UnitOfWork, event_id: str, org: Any, permitted: frozenset[str], address: str,
                         now: datetime) -> tuple[bytes, frozenset[str]]:
    """A recipient's copy cut again from the stored event (`project`), stamped `now`,
    and the categories it holds: for a copy not held, narrowed, retried or replayed."""
    bundle, given = project(orjson.loads(await uow.events.bundle(event_id)), recipient=org, permitted=permitted,
                            delivery_endpoint=address, now=now)
    return orjson.dumps(bundle), given


async def payload_of(uow: UnitOfWork, deps: Deps, row: Any) -> bytes:
    """The copy a due delivery is to be sent: the one stored with it (a signposting
    notice, a narrowed or requeued delivery) or else cut from its event as of the
    row's created_at, exactly as at acceptance."""
    if row.payload is not None:
        return row.payload
    payload, _ = await cut_from_event(uow, row.event_id, deps.directory.get(row.recipient_id),
                                      frozenset(row.categories), row.address, row.created_at)
    return payload


async def recheck(uow: UnitOfWork, deps: Deps, rows: list[Any], now: datetime,
                  ready: dict[str, Ready] | None = None) -> list[Verdict]:
    """Decide consent again for deliveries about to be made, in the caller's
    transaction (which also marks them): a withdrawal, a new deny, an expiry or
    an expired break-glass committed before this point stops or narrows every
    delivery that relied on it, whether it was queued, retrying or replayed.

    A delivery the relay was handed (`ready`) whose person's consent state still
    holds is sent as cut. Any other is decided again: unchanged, it is sent as
    committed; narrowed but still allowed identity and the core category, re-cut
    from the event; otherwise withheld, with new decision rows saying why."""
    ready = ready or {}
    persons = sorted({r.nhs_number for r in rows if r.purpose != "signposting"})
    await uow.lock_persons(persons, exclusive=False)
    keys = await uow.consents.versions_for_persons(persons)
    overrides = await overrides_for_persons(uow, persons, now)
    state = {n: consent_key(keys.get(n, ()), ((o.break_glass_id, o.expires_at) for o in overrides.get(n, [])))
             for n in persons}
    verdicts: dict[str, Verdict] = {}
    slow = []
    for r in rows:
        handed = ready.get(r.delivery_id)
        if r.purpose == "signposting":  # a notice to the referrer: no personal data, no consent involved
            verdicts[r.delivery_id] = Verdict(r.delivery_id, True, r.payload)
        elif (handed is not None and r.payload is None and deps.directory.get(r.recipient_id) is not None
              and handed.consents.holds(state[r.nhs_number], now)):  # (a stored copy is newer: requeued)
            verdicts[r.delivery_id] = Verdict(r.delivery_id, True, handed.payload)
        else:
            slow.append(r)
    if slow:
        for v in await _decide_again(uow, deps, slow, now, overrides):
            verdicts[v.delivery_id] = v
    return [verdicts[r.delivery_id] for r in rows]


async def _decide_again(uow: UnitOfWork, deps: Deps, rows: list[Any], now: datetime,
                        overrides: dict[str, list]) -> list[Verdict]:
    persons = sorted({r.nhs_number for r in rows})
    consents = {n: records_from_rows(rs) for n, rs in (await uow.consents.for_persons(persons)).items()}
    heads = await uow.events.heads([r.event_id for r in rows])
    verdicts = []
    for r in rows:
        head = heads[r.event_id]
        org = deps.directory.get(r.recipient_id)
        if org is None:
            reason = "Withheld at delivery: recipient left the directory" + _maybe_reached(r)
            verdicts.append(Verdict(r.delivery_id, False, reason=reason))
            await uow.deliveries.mark_withheld(r.delivery_id, reason=reason, decision_ids=[], tried=r.attempts > 0)
            continue
        event = CanonicalEvent(
            event_id=head.event_id, event_type=EventType(head.event_type), kind=head.kind,
            source_org_id=head.source_org_id, message_id=head.message_id, sent_at=head.received_at,
            facts=Facts(nhs_number=head.nhs_number,
                        share_diagnosis_with_employer=bool(head.facts.get("share_diagnosis_with_employer"))),
            bundle={}, categories=frozenset(head.categories), content_hash=head.content_hash,
        )
        g = gate(event, Candidate(org, "recheck"), consents.get(r.nhs_number, []), now,
                 overrides.get(r.nhs_number, []))
        if g.deliver and set(r.categories) <= g.permitted:
            verdicts.append(Verdict(r.delivery_id, True, await payload_of(uow, deps, r)))
            continue
        changed = [{**d, "decision_id": ordered_uuid(now, _RECHECK_NS, d["decision_id"])}
                   for d in _decision_rows(event, g, now)]
        await uow.decisions.add_many(changed)
        if g.deliver:  # narrowed: cut again from the event with what is still permitted
            payload, given = await cut_from_event(uow, r.event_id, org, g.permitted, r.address, now)
            ids = [d["decision_id"] for d in changed if d["outcome"] == "permit"]
            if r.attempts:  # an earlier, wider copy may have reached the recipient: the record keeps both
                given, ids = set(given) | set(r.categories), [*r.decision_ids, *ids]
            await uow.deliveries.narrow(r.delivery_id, payload=payload, categories=sorted(given), decision_ids=ids)
            verdicts.append(Verdict(r.delivery_id, True, payload))
            continue
        reason = "Withheld at delivery: " + "; ".join(
            d["reason"] for d in changed if d["outcome"] == "deny" and d["category"] in ("identity", _core(event)))
        reason += _maybe_reached(r)
        ids = [d["decision_id"] for d in changed if d["outcome"] == "deny"]
        await uow.deliveries.mark_withheld(r.delivery_id, reason=reason, decision_ids=ids, tried=r.attempts > 0)
        detail = {"recipient": r.recipient_id, "decisions": ids, "at_delivery": True}
        if r.attempts:
            detail["earlier_attempts"] = r.attempts  # outcome unknown: it may have reached the recipient
        await uow.audit.append_many([deps.audit.row(
            "delivery.withheld", actor="hub", at=now, ref=r.delivery_id, event_id=r.event_id,
            person=deps.audit.person(r.nhs_number), detail=detail)])
        verdicts.append(Verdict(r.delivery_id, False, reason=reason))
    return verdicts


def _maybe_reached(r: Any) -> str:
    """What a withheld delivery's reason adds when an attempt at it was made before:
    its outcome is unknown, so the copy may have reached the recipient."""
    if not r.attempts:
        return ""
    return (f". Before that, {r.attempts} attempt(s) failed with an unknown outcome (last: {r.last_error}), "
            "so a copy may have reached the recipient")


_RECHECK_NS = uuid.UUID("8c3f0a7e-52d4-4f2b-b6a9-1e0d3c4b5a61")


def _core(event: CanonicalEvent) -> str:
    return CORE_CATEGORY[event.event_type].value
