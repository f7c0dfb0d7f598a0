"""The outbox relay: publishes what the pipeline committed.

Rows are written `pending` in the same transaction as their decisions; the
relay sends each and marks it `delivered`. It sends the copies the inbound
handler cut and handed it (`hold`) while the person's consents are as they
were, and cuts any other from the stored event (`pipeline.recheck`). A
crash between send and mark re-sends on restart under the same delivery id,
which the broker's duplicate window (Nats-Msg-Id) or the recipient
(X-Request-ID) recognises. Dead letters are published to hub.dlq.<kind> the
same way. Webhook recipients are served by one task each, so a slow or dead
webhook never holds up anyone else.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

import orjson
from nats.js import JetStreamContext

from hub import metrics
from hub.audit import AuditLog
from hub.delivery import BrokerChannel, DeliveryFailed, WebhookChannel
from hub.pipeline import Deps, Ready, recheck
from hub.streams import DLQ_STREAM, dlq_subject
from hub.wake import Wake

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 300.0
OTHER_WORK_EVERY_S = 0.1
READY_MAX_BYTES = 64 * 2**20  # copies held for sending; the oldest beyond it are forgotten (cut again when due)
PASS_MAX_ROWS = 5000  # a broker pass claims at most this many (its statements' id lists stay far below drivers' limits)
LEASE_TTL = timedelta(seconds=60)  # renewed before every webhook delivery; longer than any one POST


def backoff(attempts: int, retry_after: float | None = None) -> float:
    """Exponential back-off with jitter, capped; a Retry-After wins if longer."""
    base = min(MAX_BACKOFF_S, 2.0 ** min(attempts, 16))
    delay = base / 2 + random.uniform(0, base / 2)
    return max(delay, retry_after or 0.0)


def delivered_rows(audit: AuditLog, rows, now: datetime, channel: str = "broker") -> list[dict]:
    """The audit of deliveries made: one row per event, naming the recipients
    that got it in this pass (each delivery id is <event id>:<recipient>)."""
    by_event: dict[str, list] = {}
    for r in rows:
        by_event.setdefault(r.event_id, []).append(r)
    detail = {} if channel == "broker" else {"channel": channel}
    return [audit.row("delivery.delivered", actor="hub", at=now, event_id=event_id,
                      person=audit.person(rs[0].nhs_number), detail={"to": [r.recipient_id for r in rs], **detail})
            for event_id, rs in by_event.items()]


class OutboxRelay:
    def __init__(self, deps: Deps, js: JetStreamContext, webhook: WebhookChannel, *, interval: float = 1.0,
                 batch: int = 500) -> None:
        self.deps = deps
        self.uow = deps.uow
        self.js = js
        self.broker = BrokerChannel(js)
        self.webhook = webhook
        self.clock = deps.clock
        self.audit = deps.audit
        self.interval = interval
        self.batch = batch
        self._wake = Wake()
        self._webhook_tasks: dict[str, asyncio.Task] = {}
        self._stopping = False
        self.on_delivered: Callable[[list[str]], None] | None = None
        self.holder = f"relay-{uuid.uuid4()}"  # this relay, as a lease holder
        self._other_work_at = 0.0
        self._ready: dict[str, Ready] = {}
        self._ready_bytes = 0

    def kick(self) -> None:
        self._wake.set()

    def hold(self, ready: list[Ready]) -> None:
        """Deliveries just committed, with the copies cut for them and the consent
        state they rest on: sent without reading the copies back (see recheck).
        Only a cache: the relay still claims each row in the database, and sends
        one it was not handed (or has forgotten) from what the database holds.
        How many it holds also sizes its next broker pass (see _send_broker).
        It does not wake the relay: the caller kicks it."""
        if ready:
            for r in ready:
                self._forget_one(r.delivery_id)
                self._ready[r.delivery_id] = r
                self._ready_bytes += len(r.payload)
            while self._ready_bytes > READY_MAX_BYTES:  # the oldest first (another worker may have sent them)
                self._forget_one(next(iter(self._ready)))

    def _forget(self, rows) -> None:
        for r in rows:
            self._forget_one(r.delivery_id)

    def _forget_one(self, delivery_id: str) -> None:
        gone = self._ready.pop(delivery_id, None)
        if gone is not None:
            self._ready_bytes -= len(gone.payload)

    async def run(self) -> None:
        while not self._stopping:
            # Broker deliveries on every wake-up; webhook recipients and dead letters at most
            # every OTHER_WORK_EVERY_S (their lookup is a transaction of its own).
            everything = time.monotonic() - self._other_work_at >= OTHER_WORK_EVERY_S
            # Cleared before the pass, not after: a kick while it runs (a commit it did
            # not see; on PostgreSQL they run side by side) makes another pass at once.
            self._wake.clear()
            try:
                busy = await self.drain_once(everything=everything)
            except Exception:  # noqa: BLE001 - the relay must outlive a database or broker hiccup
                log.exception("outbox relay pass failed; retrying")
                busy = False
            if busy:
                continue
            # skipped webhook and dead-letter work is looked at once its 100 ms are up
            wait = self.interval if everything else min(self.interval, OTHER_WORK_EVERY_S)
            await self._wake.wait(wait)

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        for task in self._webhook_tasks.values():
            task.cancel()
        await asyncio.gather(*self._webhook_tasks.values(), return_exceptions=True)

    async def drain_once(self, everything: bool = True) -> bool:
        """One pass; True if its broker pass was full (more may be waiting).
        `everything`: also start webhook recipients' tasks and publish dead letters."""
        full = await self._send_broker()
        if not everything:
            return full
        self._other_work_at = time.monotonic()
        now = self.clock.now()
        async with self.uow() as uow:
            webhook_recipients = await uow.deliveries.due_recipients(now, channel="webhook")
            letters = await uow.dead_letters.unpublished(limit=100)
        for recipient in webhook_recipients:
            task = self._webhook_tasks.get(recipient)
            if task is None or task.done():
                self._webhook_tasks[recipient] = asyncio.create_task(self._serve_webhook(recipient))
        if letters:
            await self._publish_dead_letters(letters)
        return full

    async def _send_broker(self) -> bool:
        """The due broker deliveries are claimed (row locks: another worker's
        relay skips them), consent is decided again, those still allowed are
        published, and all are marked, in one transaction: a withdrawal that
        committed before it is seen; one that commits after it waits for it.

        A pass claims, oldest first, as many rows as it holds copies for (those
        handed over and not yet claimed) and up to `batch` more (at most
        PASS_MAX_ROWS), so it keeps up with the inbound batches committed
        between its passes (each takes its turn at the write lock). A fixed size
        fell behind them: an inbound batch of 500 fit notes hands over 1 000
        deliveries, and over a long backlog the copies held for sending grew
        until the oldest were forgotten and had to be cut again from their events.
        Returns True if the pass was full (more may be due)."""
        now, started = self.clock.now(), time.perf_counter()
        limit = min(self.batch + len(self._ready), PASS_MAX_ROWS)
        async with self.uow() as uow:
            rows = await uow.deliveries.due(now, channel="broker", limit=limit, claim=True)
            if not rows:
                return False
            verdicts = await recheck(uow, self.deps, rows, now, self._ready)
            sending = [(r, v) for r, v in zip(rows, verdicts) if v.send]
            results = await self.broker.send_many(
                [(r.delivery_id, r.address, v.payload, r.person_seq) for r, v in sending])
            done = [r for (r, _v), res in zip(sending, results) if res is None]
            await uow.deliveries.mark_delivered([r.delivery_id for r in done], now)
            await uow.audit.append_many(delivered_rows(self.audit, done, now))
            for (r, _v), res in zip(sending, results):
                if isinstance(res, DeliveryFailed):
                    await uow.deliveries.mark_retry(r.delivery_id, attempts=r.attempts + 1,
                                                    next_at=now + timedelta(seconds=backoff(r.attempts)),
                                                    error=res.error)
            await uow.commit()
        self._forget(rows)
        log.debug("relayed %d broker deliveries in %.1f ms", len(done), 1000 * (time.perf_counter() - started))
        self._made(done, "broker")
        if done and self.on_delivered:
            self.on_delivered([r.delivery_id for r in done])
        return len(rows) >= limit

    async def _serve_webhook(self, recipient_id: str) -> None:
        """Deliver one webhook recipient's due rows in order; stop at the first
        failure (it is rescheduled) so order per recipient holds. Only the holder
        of the recipient's lease does this, so with several workers one serves
        each recipient at a time (another takes over if it dies)."""
        lease = f"webhook:{recipient_id}"
        try:
            await self._webhook_rows(recipient_id, lease)
        finally:
            try:
                async with self.uow() as uow:
                    await uow.leases.release(lease, self.holder)
                    await uow.commit()
            except Exception:  # noqa: BLE001 - it expires on its own
                log.warning("could not release lease %s", lease)

    async def _webhook_rows(self, recipient_id: str, lease: str) -> None:
        while True:
            now = self.clock.now()
            async with self.uow() as uow:
                if not await uow.leases.take(lease, self.holder, now, LEASE_TTL):
                    return  # another worker is serving this recipient
                rows = await uow.deliveries.due(now, channel="webhook", recipient_id=recipient_id,
                                                limit=self.batch)
                await uow.commit()
            if not rows:
                return
            for r in rows:
                async with self.uow() as uow:
                    if not await uow.leases.take(lease, self.holder, self.clock.now(), LEASE_TTL):
                        return
                    if not await uow.deliveries.still_due(r.delivery_id, self.clock.now()):
                        self._forget([r])
                        continue  # settled or rescheduled meanwhile (this worker stalled past its lease)
                    (verdict,) = await recheck(uow, self.deps, [r], self.clock.now(), self._ready)
                    await uow.commit()
                self._forget([r])
                if not verdict.send:
                    continue
                try:
                    await self.webhook.send(r.delivery_id, r.recipient_id, r.address, verdict.payload, r.person_seq)
                except DeliveryFailed as exc:
                    await self._webhook_failed(r, exc)
                    return
                now = self.clock.now()
                async with self.uow() as uow:
                    await uow.deliveries.mark_delivered([r.delivery_id], now)
                    await uow.audit.append_many(delivered_rows(self.audit, [r], now, channel="webhook"))
                    await uow.commit()
                self._made([r], "webhook")
                if self.on_delivered:
                    self.on_delivered([r.delivery_id])

    def _made(self, rows, channel: str) -> None:
        now = self.clock.now()
        for r in rows:
            org = self.deps.directory.get(r.recipient_id)
            metrics.DELIVERIES_MADE.labels(org.type if org else "unknown", channel).inc()
            metrics.END_TO_END_SECONDS.observe(max(0.0, (now - r.created_at).total_seconds()))

    def _budget(self, recipient_id: str) -> timedelta:
        org = self.deps.directory.get(recipient_id)
        hours = org.delivery.retry_budget_hours if org and org.delivery else None
        return timedelta(hours=hours) if hours else timedelta(seconds=self.deps.webhook_budget_s)

    async def _webhook_failed(self, r, exc: DeliveryFailed) -> None:
        """Retry with back-off while the error is worth retrying and the
        recipient's budget lasts; otherwise dead-letter the delivery."""
        now = self.clock.now()
        next_at = now + timedelta(seconds=backoff(r.attempts, exc.retry_after))
        spent = next_at - r.created_at > self._budget(r.recipient_id)
        async with self.uow() as uow:
            if exc.retryable and not spent:
                await uow.deliveries.mark_retry(r.delivery_id, attempts=r.attempts + 1, next_at=next_at,
                                                error=exc.error)
                log.warning("webhook delivery %s failed (%s); retry %d at %s", r.delivery_id, exc.error,
                            r.attempts + 1, next_at.isoformat())
            else:
                why = exc.error if not exc.retryable else f"retry budget spent; last error: {exc.error}"
                if not await uow.deliveries.mark_dead_lettered(r.delivery_id, attempts=r.attempts + 1, error=why):
                    return  # settled meanwhile by another worker (this one stalled past its lease)
                metrics.DEAD_LETTERS.labels("delivery", "webhook").inc()
                await uow.audit.append_many([self.audit.row(
                    "delivery.dead-lettered", actor="hub", at=now, ref=r.delivery_id, event_id=r.event_id,
                    person=self.audit.person(r.nhs_number), detail={"recipient": r.recipient_id, "error": why})])
                log.error("webhook delivery %s dead-lettered: %s", r.delivery_id, why)
            await uow.commit()

    async def _publish_dead_letters(self, letters) -> None:
        now = self.clock.now()
        published = []
        for dl in letters:
            errors = dl.errors if isinstance(dl.errors, list) else orjson.loads(dl.errors)
            try:
                await self.js.publish(
                    dlq_subject(dl.kind), dl.payload, stream=DLQ_STREAM, timeout=5,
                    headers={"Nats-Msg-Id": dl.dead_letter_id, "Hub-Dead-Letter-Id": dl.dead_letter_id,
                             "Hub-Errors": orjson.dumps(errors).decode()},
                )
                published.append(dl.dead_letter_id)
            except Exception as exc:  # noqa: BLE001
                log.warning("could not publish dead letter %s: %s", dl.dead_letter_id[:12], type(exc).__name__)
        if published:
            async with self.uow() as uow:
                for dl_id in published:
                    await uow.dead_letters.mark_published(dl_id, now)
                await uow.commit()
