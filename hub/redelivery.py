"""Delivering again: retrying a dead-lettered delivery, and replaying a
person's or a recipient's deliveries from a time onward (a recipient lost its
data). Either way the delivery keeps its original id, goes back to `pending`
with a copy cut again from the event, and the relay decides consent again
before it is sent (hub.pipeline.recheck); the audit records why."""
from __future__ import annotations

from datetime import datetime

import orjson

from hub.pipeline import Deps, cut_from_event
from hub.store import UnitOfWork


class RedeliveryRefused(ValueError):
    pass


async def resubmit_dead_letter(uow: UnitOfWork, deps: Deps, js, dead_letter_id: str, fixed: bytes | None, *,
                               actor: str) -> str:
    """Publish a dead letter (or its correction) to its inbound subject again: it
    is processed as new input under the same rules. Returns the subject.
    Raises LookupError if unknown, RedeliveryRefused if it cannot go. Commits
    `uow` itself (the letter is marked before it is published): the caller does
    not commit it again."""
    from hub.pipeline import known_kind, parse_subject
    from hub.streams import INBOUND_STREAM

    row = await uow.dead_letters.get(dead_letter_id)
    if row is None:
        raise LookupError(dead_letter_id)
    kind, _org_id, errors = parse_subject(row.subject)
    if errors:
        raise RedeliveryRefused("this dead letter has no valid inbound subject to resubmit to")
    if fixed is not None:
        try:
            orjson.loads(fixed)
        except orjson.JSONDecodeError:
            raise RedeliveryRefused("the corrected message is not valid JSON") from None
    # Marked (and committed) before it is published: the message may be processed at
    # once, and if it fails again it must find the letter resubmitted, to reopen it.
    now = deps.clock.now()
    await uow.dead_letters.mark_resubmitted(dead_letter_id, now)
    await uow.audit.append_many([deps.audit.row("dead-letter.resubmitted", actor=actor, at=now, ref=dead_letter_id,
                                                detail={"kind": known_kind(kind), "corrected": fixed is not None})])
    await uow.commit()
    try:
        await js.publish(row.subject, fixed if fixed is not None else row.payload, stream=INBOUND_STREAM,
                         timeout=10)
    except Exception:
        async with deps.uow() as undo:
            await undo.dead_letters.reopen(dead_letter_id)
            await undo.commit()
        raise
    return row.subject


async def _requeue(uow: UnitOfWork, deps: Deps, row, now: datetime) -> None:
    org = deps.directory.get(row.recipient_id)
    if org is None or org.delivery is None:
        raise RedeliveryRefused(f"{row.recipient_id} is no longer a recipient in the directory")
    if row.purpose == "signposting":
        payload, given = row.payload, []
        if payload is None:
            raise RedeliveryRefused("a delivered signposting notice is not kept")
    else:
        payload, given = await cut_from_event(uow, row.event_id, org, frozenset(row.categories), row.address, now)
    await uow.deliveries.requeue(row.delivery_id, payload=payload, categories=sorted(given), now=now)


async def retry_delivery(uow: UnitOfWork, deps: Deps, delivery_id: str, *, actor: str, now: datetime) -> None:
    row = await uow.deliveries.get(delivery_id)
    if row is None:
        raise LookupError(delivery_id)
    if row.state != "dead-lettered":
        raise RedeliveryRefused(f"only a dead-lettered delivery can be retried (this one is {row.state})")
    await _requeue(uow, deps, row, now)
    await uow.audit.append_many([deps.audit.row("delivery.retried", actor=actor, at=now, ref=delivery_id,
                                                event_id=row.event_id, person=deps.audit.person(row.nhs_number))])


async def replay(uow: UnitOfWork, deps: Deps, *, nhs_number: str | None, recipient_id: str | None,
                 since: datetime, actor: str, now: datetime) -> list[str]:
    """Requeue every delivery made to `recipient_id` and/or about `nhs_number`
    since `since`; returns their ids."""
    if not nhs_number and not recipient_id:
        raise RedeliveryRefused("a replay needs a person (nhs_number) or a recipient (recipient_id)")
    rows = await uow.deliveries.for_replay(nhs_number=nhs_number, recipient_id=recipient_id, since=since)
    for row in rows:
        await _requeue(uow, deps, row, now)
    await uow.audit.append_many([deps.audit.row(
        "delivery.replayed", actor=actor, at=now, ref=row.delivery_id, event_id=row.event_id,
        person=deps.audit.person(row.nhs_number), detail={"since": since.isoformat()}) for row in rows])
    return [r.delivery_id for r in rows]
