"""Information-governance services: break-glass, disclosures, the audit
trail's verification, and the counts behind the console's dashboard. Plain
functions over a unit of work, shared by the HTTP API, the CLI and the console."""
from __future__ import annotations

import csv
import io
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from hub import tables as t
from hub.audit import AuditLog
from hub.audit_chain import GENESIS, Broken, verify
from hub.directory import Directory
from hub.store import UnitOfWork
from schemas.vocab import Purpose

MAX_BREAK_GLASS = timedelta(hours=72)


class IGError(ValueError):
    pass


# --- break-glass --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Override:
    """An active break-glass, as the consent gate sees it."""

    break_glass_id: str
    recipient_id: str
    purpose: str
    expires_at: datetime
    justification: str


async def record_break_glass(uow: UnitOfWork, audit: AuditLog, directory: Directory, *, nhs_number: str,
                             recipient_id: str, purpose: str, justification: str, expires_at: datetime,
                             actor: str, now: datetime) -> dict:
    if directory.get(recipient_id) is None:
        raise IGError("recipient_id is not in the directory")
    if purpose not in {p.value for p in Purpose}:
        raise IGError("purpose is not one of the contract's purposes")
    if len(justification.strip()) < 20:
        raise IGError("justification must say why, in at least 20 characters")
    if expires_at <= now:
        raise IGError("expires_at must be in the future")
    if expires_at - now > MAX_BREAK_GLASS:
        raise IGError("a break-glass lasts at most 72 hours")
    row = {"break_glass_id": f"BG-{uuid.uuid4().hex[:12]}", "nhs_number": nhs_number,
           "recipient_id": recipient_id, "purpose": purpose, "justification": justification.strip(),
           "created_by": actor, "created_at": now, "expires_at": expires_at, "uses": 0}
    await uow.break_glass.add(row)
    await uow.audit.append_many([audit.row("break-glass.recorded", actor=actor, at=now, ref=row["break_glass_id"],
                                           person=audit.person(nhs_number),
                                           detail={"recipient": recipient_id, "purpose": purpose,
                                                   "expires_at": expires_at.isoformat()})])
    return row


async def review_break_glass(uow: UnitOfWork, audit: AuditLog, break_glass_id: str, *, note: str, actor: str,
                             now: datetime) -> Any:
    row = await uow.break_glass.get(break_glass_id)
    if row is None:
        raise LookupError(break_glass_id)
    if row.reviewed_at is not None:
        raise IGError("this break-glass has already been reviewed")
    if not note.strip():
        raise IGError("a review needs a note")
    await uow.break_glass.review(break_glass_id, by=actor, at=now, note=note.strip())
    await uow.audit.append_many([audit.row("break-glass.reviewed", actor=actor, at=now, ref=break_glass_id,
                                           person=audit.person(row.nhs_number))])
    return await uow.break_glass.get(break_glass_id)


async def overrides_for(uow: UnitOfWork, nhs_number: str, now: datetime) -> list[Override]:
    return [_override(r) for r in await uow.break_glass.active(nhs_number, now)]


async def overrides_for_persons(uow: UnitOfWork, nhs_numbers: list[str], now: datetime) -> dict[str, list[Override]]:
    """The active break-glass overrides of several people at once."""
    return {n: [_override(r) for r in rows] for n, rows in (await uow.break_glass.active_for(nhs_numbers, now)).items()}


def _override(r: Any) -> Override:
    return Override(r.break_glass_id, r.recipient_id, r.purpose, r.expires_at, r.justification)


# --- disclosures --------------------------------------------------------------------------------

DISCLOSURE_COLUMNS = ("delivered_at", "recipient_id", "recipient_name", "recipient_type", "purpose", "event_type",
                      "categories", "consents", "break_glass", "decision_ids", "delivery_id", "event_id", "outcome")


async def disclosures(uow: UnitOfWork, directory: Directory, nhs_number: str) -> list[dict]:
    """Every delivery made about a person: to whom, when, what kind of event,
    which categories, and the decisions (and so consents) that allowed it. Also
    every one that may have been made: withheld or dead-lettered after an attempt
    whose outcome is unknown (`outcome` "maybe-delivered", no `delivered_at`). (A
    copy narrowed after such an attempt lists the categories of both.)"""
    rows = await uow.deliveries.search(nhs_number=nhs_number, state="delivered", limit=100_000)
    for state in ("withheld", "dead-lettered"):
        rows += [r for r in await uow.deliveries.search(nhs_number=nhs_number, state=state, limit=100_000)
                 if r.attempts]
    rows.sort(key=lambda r: r.seq)
    events = {e.event_id: e.event_type for e in await uow.events.search(nhs_number=nhs_number, limit=100_000)}
    decisions = {d.decision_id: d for d in await uow.decisions.search(nhs_number=nhs_number, limit=100_000)}
    out = []
    for r in rows:
        basis = [b for did in r.decision_ids if did in decisions for b in decisions[did].basis]
        org = directory.get(r.recipient_id)
        out.append({
            "delivered_at": r.delivered_at.isoformat() if r.delivered_at else None,
            "recipient_id": r.recipient_id,
            "recipient_name": org.name if org else r.recipient_id,
            "recipient_type": r.recipient_type,
            "purpose": r.purpose,
            "event_type": events.get(r.event_id),
            "categories": list(r.categories),
            "consents": sorted({b["consent_id"] for b in basis if not b["consent_id"].startswith("BG-")}),
            "break_glass": sorted({b["consent_id"] for b in basis if b["consent_id"].startswith("BG-")}),
            "decision_ids": list(r.decision_ids),
            "delivery_id": r.delivery_id,
            "event_id": r.event_id,
            "outcome": "delivered" if r.state == "delivered" else "maybe-delivered",
        })
    return out


def disclosures_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(DISCLOSURE_COLUMNS)
    for r in rows:
        writer.writerow(["; ".join(v) if isinstance(v, list) else (v if v is not None else "")
                         for v in (r[c] for c in DISCLOSURE_COLUMNS)])
    return buf.getvalue()


# --- the audit trail ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Verification:
    rows: int
    broken: Broken | None

    @property
    def ok(self) -> bool:
        return self.broken is None


async def verify_audit(uow: UnitOfWork, batch: int = 5000) -> Verification:
    seq, prev = 0, GENESIS
    while True:
        rows = await uow.audit.after(seq, limit=batch)
        if not rows:
            break
        seq, prev, broken = verify(rows, start_seq=seq, start_hash=prev)
        if broken:
            return Verification(seq, broken)
    head = await uow.audit.head()
    if head.seq != seq or bytes(head.hash) != prev:
        return Verification(seq, Broken(seq + 1, f"missing: the trail ends at row {seq} but its head "
                                                 f"says {head.seq} (rows were removed from the end)"))
    return Verification(seq, None)


# --- the dashboard ------------------------------------------------------------------------------

async def dashboard(uow: UnitOfWork, *, since: datetime, until: datetime) -> dict:
    """Counts per UK day: deliveries made, refusals by rule, dead letters."""
    from schemas.ukdate import uk_date

    days = []
    d = uk_date(since)
    while d <= uk_date(until):
        days.append(d.isoformat())
        d += timedelta(days=1)
    delivered: Counter = Counter()
    refused: dict[str, Counter] = defaultdict(Counter)
    dead: Counter = Counter()
    c = t.deliveries.c
    for (at,) in (await uow.conn.execute(select(c.delivered_at).where(
            c.state == "delivered", c.delivered_at >= since, c.delivered_at < until))).all():
        delivered[uk_date(at).isoformat()] += 1
    dc = t.decisions.c
    for at, rule in (await uow.conn.execute(select(dc.decided_at, dc.rule).where(
            dc.outcome == "deny", dc.decided_at >= since, dc.decided_at < until))).all():
        refused[rule][uk_date(at).isoformat()] += 1
    lc = t.dead_letters.c
    for (at,) in (await uow.conn.execute(select(lc.received_at).where(
            lc.received_at >= since, lc.received_at < until))).all():
        dead[uk_date(at).isoformat()] += 1
    return {
        "days": days,
        "delivered": [delivered[x] for x in days],
        "refused": {rule: [counts[x] for x in days] for rule, counts in sorted(refused.items())},
        "dead_letters": [dead[x] for x in days],
        "totals": {"delivered": sum(delivered.values()), "refused": sum(sum(c.values()) for c in refused.values()),
                   "dead_letters": sum(dead.values()),
                   "break_glass_unreviewed": (await uow.conn.execute(select(func.count()).select_from(
                       t.break_glass).where(t.break_glass.c.reviewed_at.is_(None)))).scalar_one()},
    }
