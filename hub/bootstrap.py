"""One bootstrap wires the edges: database, embedded or external NATS,
FastStream subscriber, outbox relay and the HTTP API. `Hub` is the running
whole; `hub run` and the tests use it the same way."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.nats.message import NatsBatchMessage
from faststream.security import SASLPlaintext
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from nats.errors import TimeoutError as NatsTimeout
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from hub import credentials, metrics
from hub.api import create_app
from hub.audit import AuditLog, load_audit_key
from hub.clock import Clock
from hub.db import checkpointer, make_engine, migrate
from hub.delivery import WebhookChannel
from hub.directory import Directory, load_directory
from hub.nats_server import EmbeddedNats, signal_reload
from hub.milestones import MilestoneTimer
from hub.outbox import OutboxRelay
from hub.pipeline import Deps, check_batch, commit_batch, known_kind, parse_subject, poison, process_inbound
from hub.settings import MIN_PULL_S, Settings
from hub.store import UnitOfWorkFactory
from hub.streams import (
    DELIVER_STREAM,
    DLQ_STREAM,
    INBOUND_CONSUMER,
    INBOUND_STREAM,
    ensure_recipient_consumers,
    ensure_streams,
    inbound_consumer_config,
)

log = logging.getLogger(__name__)


async def _when_jetstream_answers(step: Callable[[], Awaitable[None]], timeout: float = 60.0) -> None:
    """Just after a cluster (re)starts, a stream or consumer may have no leader
    yet and its API calls time out: keep trying for a while rather than exit."""
    from nats.js.errors import ServiceUnavailableError

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await step()
        except (TimeoutError, ServiceUnavailableError) as exc:
            if loop.time() > deadline:
                raise
            log.warning("JetStream is not answering yet (%s; no leader?); retrying", type(exc).__name__)
            await asyncio.sleep(1.0)


T = TypeVar("T")


async def _give_back(raws: list[Any]) -> None:
    """Not acked, handed back: JetStream redelivers them to this consumer (this
    worker restarted, or another) in a second; not at once, or a stopping
    consumer would fetch them again and again."""
    for m in raws:
        await m.nak(delay=1.0)


def _transient(exc: BaseException) -> bool:
    """A database failure no message is to blame for: unavailable, locked, or a
    deadlock or serialisation failure PostgreSQL resolved by aborting us."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    if isinstance(exc, DBAPIError):
        orig = exc.orig
        code = getattr(orig, "sqlstate", None) or getattr(getattr(orig, "__cause__", None), "sqlstate", None)
        return code in ("40P01", "40001")
    return False


def _adjust_pull_fetch() -> None:
    """Two adjustments to nats-py's pull `fetch`, made once, at the edge.

    1. Compatibility (nats-py 2.16 with FastStream 0.7): a fetch can end with
       the built-in TimeoutError where FastStream's batch consumer catches only
       nats.errors.TimeoutError (its subclass), so the consumer task died and
       waited for FastStream's supervisor to restart it: seconds of stalled input.
    2. For the consumers named in FILL_S (the hub's inbound consumer): an
       idle consumer waits for its next message with one long-lived pull of one
       message (FastStream's timeout, 1 s), instead of polling every few
       milliseconds; once a message is in, the rest of the batch is topped up
       from what is there, waiting for messages not yet there at most
       FILL_S[name] in all (those JetStream says are waiting are taken
       anyway). (A long pull for the whole batch would wait for all of it.
       FastStream's batch consumer fetches again until its batch is full or a
       fetch times out: under a steady trickle each top-up found one message,
       so a batch grew for as long as messages kept coming, up to 100 ms at 200
       events/s. The bound is therefore on the whole top-up, from the batch's
       first message.)"""
    from nats.js.client import JetStreamContext as _JS

    original = _JS.PullSubscription.fetch
    if getattr(original, "_hub_shim", False):
        return

    async def fetch(self, batch: int = 1, timeout: float | None = 5, heartbeat: float | None = None):
        top_up = getattr(self, "_hub_top_up", None)
        if top_up is None and (self._stream, self._consumer) in FILL_S:
            top_up = self._hub_top_up = TopUp(*FILL_S[(self._stream, self._consumer)])
        if top_up is not None:
            batch, timeout = top_up.request(batch, timeout)
        try:
            msgs = await original(self, batch, timeout, heartbeat)
        except TimeoutError as exc:  # nats.errors.TimeoutError included
            if top_up is not None:
                top_up.timed_out()
            if isinstance(exc, NatsTimeout):
                raise
            raise NatsTimeout from exc
        if top_up is not None:
            top_up.got(len(msgs), _waiting_after(msgs[-1]) if msgs else 0)
        return msgs

    fetch._hub_shim = True  # type: ignore[attr-defined]
    _JS.PullSubscription.fetch = fetch


class TopUp:
    """How one pull consumer's batches are filled (see _adjust_pull_fetch). FastStream
    starts each batch with a fetch of the whole batch size and goes on fetching the
    rest until the batch is full or a fetch times out. An idle consumer's batch
    starts with one long pull of one message; once a message is in, the rest is
    what else arrives within `fill` seconds in all, except that messages already
    waiting (JetStream says how many after each message) are fetched without
    waiting for more, even once the fill has run out: a batch that took such a
    pile is handed over as soon as nothing more waits. After a batch that
    filled (a backlog), the next is fetched whole at once."""

    def __init__(self, fill: float, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.fill = fill
        self.size = size
        self.clock = clock
        self.until: float | None = None  # the current batch's deadline, once it has a message
        self.asked = 0  # what FastStream asked for last
        self.filled = False  # the last batch came out full
        self.waiting = 0  # what JetStream said was still waiting after the last message fetched
        self.piled = False  # this batch took messages that were already waiting

    def request(self, batch: int, timeout: float | None) -> tuple[int, float | None]:
        """The fetch to make (batch size, timeout); nats' TimeoutError once the batch
        has waited its fill, so that FastStream hands it to the handler."""
        self.asked = batch
        if batch >= self.size:  # a new batch
            self.piled = False
            if not self.filled:
                self.until = None
                return 1, timeout
            self.until = self.clock() + self.fill
            return batch, self.fill if timeout is None else min(timeout, self.fill)
        left = (self.until or 0.0) - self.clock()
        if self.waiting:
            # Already there: a pull for exactly those ends as soon as they arrive, so they
            # are taken even if the fill has run out meanwhile (the event loop was busy
            # elsewhere); otherwise a backlog would go on in batches of one. (Out of
            # fill, the pull expires after one more, in case another worker took them.)
            self.piled = True
            batch = min(batch, self.waiting)
            if left < MIN_PULL_S:
                left = max(self.fill, MIN_PULL_S)
        elif left < MIN_PULL_S or self.piled:
            self.filled = False
            raise NatsTimeout
        wait = left if timeout is None else min(timeout, left)
        if wait < MIN_PULL_S:  # FastStream's own deadline for the batch is (about) up
            self.filled = False
            raise NatsTimeout
        return batch, wait

    def got(self, n: int, waiting: int = 0) -> None:
        if self.until is None:
            self.until = self.clock() + self.fill  # the batch's first message
        self.filled = n >= self.asked  # all FastStream asked for: its batch is full
        self.waiting = waiting

    def timed_out(self) -> None:
        self.filled = False


FILL_S: dict[tuple[str, str], tuple[float, int]] = {}  # (stream, durable consumer) -> (top-up wait, batch)
_adjust_pull_fetch()
IDLE_PULL_S = 1.0
STOP_GRACE_S = 10.0
TRANSIENT_FIRST_RETRY_S = 0.1  # a batch the database failed is tried again after this, doubling up to
TRANSIENT_MAX_RETRY_S = 2.0  # this
IN_PROGRESS_EVERY_S = 5.0  # a batch not acked this long is reported in progress (the inbound ack wait is 20 s)


async def _its_messages(batch: NatsBatchMessage) -> list[Msg]:
    """The inbound subscriber's decoder: the pull batch's messages as they came
    (the pipeline parses each message's bytes itself, `check_batch`). Not the
    batch itself: FastStream keeps what its decoder returns on the batch, and the
    batch referring to itself would wait for the cycle collector to be freed."""
    return batch.raw_message


def build_broker(settings: Settings, identity: "credentials.HubBrokerIdentity | None",
                 on_inbound: Callable[[list[Msg]], Awaitable[None]]) -> NatsBroker:
    """The FastStream broker: the inbound subscriber, and the delivery and
    dead-letter subjects declared as publishers so the AsyncAPI document
    describes the whole broker side."""
    if identity:
        user, password = identity.user, identity.password
    else:
        user, password = settings.nats_user, settings.nats_password
    security = SASLPlaintext(username=user, password=password) if user else None
    # apply_types=False: the handler is given the pull batch's messages (`_its_messages`),
    # not their bodies decoded as JSON nor the batch by dependency injection, which resolves
    # Context("message") on a worker thread: a thread hand-off per batch that, while the
    # event loop is busy, waits for the GIL (up to Python's 5 ms switch interval).
    broker = NatsBroker(settings.broker_servers, security=security, name="hub",
                        max_reconnect_attempts=-1, reconnect_time_wait=0.5, logger=log,
                        log_level=logging.DEBUG, apply_types=False)

    @broker.subscriber(
        "hub.inbound.>",
        stream=JStream(INBOUND_STREAM, declare=False),
        durable=INBOUND_CONSUMER,
        config=inbound_consumer_config(),
        # batch=True: one handler call per pull batch, its messages in stream order. An idle
        # consumer long-polls (1 s); a batch is then topped up for at most inbound_batch_wait_s
        # (messages already waiting excepted), which bounds the latency batching adds (see
        # _adjust_pull_fetch).
        pull_sub=PullSub(batch_size=settings.inbound_batch, timeout=IDLE_PULL_S, batch=True),
        ack_policy=AckPolicy.MANUAL,
        decoder=_its_messages,
        title="hub.inbound.{kind}.{org_id}",
        description="Source messages published by GP and hospital systems, referrers, the Access to Work "
                    "service and OH providers (contract §2). {kind} is fit-note, oh-referral, "
                    "access-to-work or oh-outcome; {org_id} must be the publisher's own organisation. "
                    "Payloads: the JSON Schemas in schemas/json/. A message that breaks a field rule "
                    "goes, unchanged, to hub.dlq.{kind}.",
    )
    async def on_inbound_message(messages: Any) -> None:  # the batch's nats Msg list (`_its_messages`)
        await on_inbound(messages)

    broker.publisher(
        "hub.deliver.{org_id}", stream=JStream(DELIVER_STREAM, declare=False),
        title="hub.deliver.{org_id}",
        description="Deliveries (contract §4): a FHIR R4B message Bundle cut down to what the recipient may "
                    "see, header Nats-Msg-Id '<event id>:<org_id>', kept in stream HUB_DELIVER for the "
                    "recipient's durable pull consumer deliver-<org_id>.",
        schema=dict,
    )
    broker.publisher(
        "hub.dlq.{kind}", stream=JStream(DLQ_STREAM, declare=False),
        title="hub.dlq.{kind}",
        description="Dead letters (contract §6): the refused source message unchanged, with header "
                    "Hub-Errors holding the errors as JSON [{pointer, message}].",
        schema=bytes,
    )
    return broker


ROLES = ("all", "worker", "api")


def _waiting_after(msg: Any) -> int:
    """How many messages the consumer had waiting after this one (JetStream says so
    in each message's metadata; 0 if it does not)."""
    try:
        return int(msg.metadata.num_pending or 0)
    except Exception:  # noqa: BLE001 - no JetStream metadata
        return 0


class Hub:
    """One hub process. Its role says which edges it runs:

    - ``all`` (``hub run``): everything in one process;
    - ``worker`` (``hub run --worker``): the inbound consumer, the outbox relay
      and the milestone timer, no HTTP;
    - ``api`` (``hub run --api``): the HTTP API and console, with an outbox
      relay for what HTTP itself records (dead letters, break-glass); no inbound
      consumer and no timer.

    Any number of each share one NATS and one database: the durable pull
    consumer gives each inbound message to one worker, and the relay and the
    timer take rows under row locks, so nothing is sent twice."""

    def __init__(self, settings: Settings, *, clock: Clock | None = None,
                 directory: Directory | None = None, role: str = "all") -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        self.role = role
        self.settings = settings
        self.data_dir = settings.resolved_data_dir
        self.directory = directory or load_directory(settings.directory)
        self.clock = clock or Clock()
        self.checkpointer = checkpointer(settings.db_url)  # SQLite: the log is checkpointed off the event loop
        self.engine = make_engine(settings.db_url, background_checkpoint=self.checkpointer is not None)
        self.audit = AuditLog(load_audit_key(self.data_dir, settings.audit_key))
        self.deps = Deps(uow=UnitOfWorkFactory(self.engine), directory=self.directory, clock=self.clock,
                         audit=self.audit, webhook_budget_s=settings.webhook_retry_budget_s)
        self.embedded: EmbeddedNats | None = None
        self.identity = credentials.HubBrokerIdentity.load_or_create(self.data_dir) \
            if settings.embedded_broker else None
        self.broker = self._build_broker()
        self.js: JetStreamContext
        self.relay: OutboxRelay
        self._tasks: list[asyncio.Task] = []
        self.largest_batch = 0  # the most inbound messages one transaction has taken so far
        self._checked: asyncio.Queue = asyncio.Queue(maxsize=1)  # checked batches waiting to commit
        self._committing = False
        self._given_back = False  # stopping: a batch was handed back to JetStream, so all after it are too
        self._unacked: dict[int, tuple[float, list[Any]]] = {}  # fetched batches not yet acked, with when
        self.checked_ahead = 0  # batches checked while the one before was committing
        self._closing = False
        self._http: httpx.AsyncClient | None = None
        self.api = create_app(self)
        self.started = False

    # --- broker side -----------------------------------------------------------------

    def _build_broker(self) -> NatsBroker:
        return build_broker(self.settings, self.identity, self.handle_inbound)

    async def handle_inbound(self, messages: list[Msg]) -> None:
        """One pull batch, in stream order: checked here (validation and adaptation,
        no database), then committed by `_commit_in_order`, one batch at a time in
        the order they came, so two messages about one person are never reordered
        within a worker. During a backlog the consumer fetches and checks the next
        batch while this one waits for the database's write lock (the relay holds
        it while the stream acks its deliveries) or commits; at most one checked
        batch waits its turn, and the consumer waits behind it."""
        raws = list(messages)
        if self._closing:  # stopping: another worker (or this one, restarted) takes them shortly
            await _give_back(raws)
            return
        self.largest_batch = max(self.largest_batch, len(raws))
        started = time.perf_counter()
        self._unacked[id(raws)] = (time.monotonic(), raws)  # until _commit_in_order is done with them
        try:
            checked = check_batch(self.deps, [(m.subject, m.data) for m in raws])
        except Exception as exc:  # noqa: BLE001 - an adapter's bug: each message alone, in its turn
            log.warning("checking an inbound batch of %d failed (%s)", len(raws), type(exc).__name__)
            checked = None
        if self._committing:
            self.checked_ahead += 1
        await self._checked.put((raws, checked, started))
        if not _waiting_after(raws[-1]):
            # Not a backlog: wait until it is committed, so that the next batch takes
            # all that arrives meanwhile. (Fetched at once, it would hold a message or
            # two, and many small transactions cost more than a few large ones.)
            await self._checked.join()

    async def _commit_in_order(self) -> None:
        while True:
            raws, checked, started = await self._checked.get()
            self._committing = True
            try:
                await self._commit(raws, checked, started)
            except Exception:  # noqa: BLE001 - not acked: JetStream redelivers them; the task lives on
                log.exception("inbound batch of %d could not be handled; it will be redelivered", len(raws))
            finally:
                self._committing = False
                self._unacked.pop(id(raws), None)
                self._checked.task_done()

    async def _keep_in_progress(self) -> None:
        """Tell JetStream, every IN_PROGRESS_EVERY_S, that the batches fetched and not
        yet acked that long ago are still being worked on: one waiting for the
        database (tried again in place), the one checked behind it, the one the
        consumer holds behind that. Otherwise, after the inbound ack wait (20 s),
        JetStream would hand them to another worker, which could commit them
        before the batch ahead of them, out of order."""
        while True:
            await asyncio.sleep(IN_PROGRESS_EVERY_S)
            now = time.monotonic()
            for fetched, raws in list(self._unacked.values()):
                if now - fetched < IN_PROGRESS_EVERY_S:
                    continue
                for m in raws:
                    try:
                        await m.in_progress()
                    except Exception:  # noqa: BLE001 - acked meanwhile, or the connection is down
                        break

    async def _commit(self, raws: list[Any], checked: list[Any] | None, started: float) -> None:
        """A checked batch in one transaction (group commit), acked only after it
        committed. If it fails, each message is handled on its own, in order, so
        one bad message cannot hold back or poison the rest. If the database fails
        it (unavailable, locked, a deadlock broken), the same batch is tried again
        in place (`_until_the_database_answers`), so nothing after it overtakes it."""
        if self._given_back:  # stopping, and a batch before this one was given back
            await _give_back(raws)
            return
        if checked is None:  # checking it raised (handle_inbound logged it): each message alone
            for m in raws:
                await self._handle_alone(m)
            return
        try:
            outs = await self._until_the_database_answers(raws, lambda: commit_batch(self.deps, checked, via="broker"))
        except Exception as exc:  # noqa: BLE001 - sorted below
            if _transient(exc):  # stopping while the database is down: redelivered, in order, later
                self._given_back = True
                await _give_back(raws)
                return
            log.warning("inbound batch of %d failed (%s); handling each message alone", len(raws),
                        type(exc).__name__)
            for m in raws:
                await self._handle_alone(m)
            return
        self._hand_over(outs)  # the relay runs once the acks below yield
        for m, out in zip(raws, outs):
            await m.ack()  # only after the commit
            metrics.EVENTS_IN.labels(known_kind(parse_subject(m.subject)[0]), out.outcome).inc()
        metrics.PIPELINE_SECONDS.observe(time.perf_counter() - started)
        log.debug("committed %d inbound messages in %.1f ms", len(raws), 1000 * (time.perf_counter() - started))

    async def _until_the_database_answers(self, raws: list[Any], attempt: Callable[[], Awaitable[T]]) -> T:
        """`attempt()`, tried again with back-off for as long as the database fails
        it and the hub is not stopping (`_keep_in_progress` keeps JetStream from
        redelivering the messages meanwhile). No message is to blame, so none of
        this counts towards poison, and the messages behind wait: a person's later
        event never overtakes an earlier one held up by an outage.
        Raises the database's error once the hub is stopping, or any other error."""
        delay, tries = TRANSIENT_FIRST_RETRY_S, 0
        while True:
            try:
                return await attempt()
            except Exception as exc:
                if not _transient(exc) or self._closing:
                    raise
                tries += 1
                log.warning("database unavailable (%s, %d tries); %d inbound messages tried again in %.1f s",
                            type(exc).__name__, tries, len(raws), delay)
            await asyncio.sleep(delay)
            delay = min(2 * delay, TRANSIENT_MAX_RETRY_S)

    def _hand_over(self, outs: list[Any]) -> None:
        """Committed outcomes to the relay: the copies cut for their deliveries, and a
        wake-up unless nothing new was recorded (duplicates only)."""
        self.relay.hold([r for out in outs for r in out.ready])
        if any(out.outcome != "duplicate" for out in outs):
            self.relay.kick()

    async def _handle_alone(self, raw: Any) -> None:
        """One inbound message in its own transaction; a failure is retried with
        back-off, and after HUB_INBOUND_MAX_ATTEMPTS the message is dead-lettered."""
        attempt = raw.metadata.num_delivered if raw.metadata else 1
        kind = known_kind(parse_subject(raw.subject)[0])
        if self._given_back:
            await _give_back([raw])
            return
        try:
            out = await self._until_the_database_answers(
                [raw], lambda: process_inbound(self.deps, raw.subject, raw.data, via="broker"))
        except Exception as exc:  # noqa: BLE001 - not acked: JetStream redelivers it after a delay
            if _transient(exc):  # stopping while the database is down
                self._given_back = True
                await _give_back([raw])
                return
            if attempt < self.settings.inbound_max_attempts:
                log.warning("inbound %s message failed (attempt %d of %d, %s); will be redelivered",
                            kind, attempt, self.settings.inbound_max_attempts, type(exc).__name__)
                await raw.nak(delay=min(30.0, 0.5 * 2 ** attempt))
                return
            # A poison message: park it with the dead letters so it never blocks the stream.
            log.error("inbound %s message failed %d times (%s); dead-lettered", kind, attempt, type(exc).__name__)
            try:
                out = await poison(self.deps, raw.subject, raw.data, attempts=attempt, error=type(exc).__name__)
            except Exception:  # noqa: BLE001 - the database itself is failing: try again later
                log.exception("could not dead-letter a poison message; will be redelivered")
                await raw.nak(delay=30.0)
                return
        self._hand_over([out])
        await raw.ack()  # only after the commit
        metrics.EVENTS_IN.labels(kind, out.outcome).inc()

    # --- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        t0 = asyncio.get_running_loop().time()
        await migrate(self.engine)
        if self.checkpointer is not None:
            self.checkpointer.start()
        if self.settings.embedded_broker:
            async with self.deps.uow() as uow:
                users = await credentials.broker_users(uow)
            assert self.identity is not None
            self.embedded = EmbeddedNats(
                self.data_dir, self.settings.nats_port, hub_user=self.identity.user,
                hub_password=self.identity.password, hub_password_hash=self.identity.password_hash, users=users)
            await self.embedded.start()
        await self.broker.connect()
        self.js = self.broker.config.connection_state.stream
        await _when_jetstream_answers(lambda: ensure_streams(self.js, self.settings))
        await _when_jetstream_answers(lambda: ensure_recipient_consumers(self.js, self.directory))
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0))
        self.relay = OutboxRelay(self.deps, self.js, WebhookChannel(self._http, self.directory),
                                 interval=self.settings.relay_interval_s)
        self._tasks.append(asyncio.create_task(self.relay.run(), name="outbox-relay"))
        if self.role != "api":
            self.milestones = MilestoneTimer(self.deps, interval=self.settings.milestone_poll_s,
                                             on_fired=self.relay.kick)
            FILL_S[(INBOUND_STREAM, INBOUND_CONSUMER)] = (self.settings.inbound_batch_wait_s,
                                                          self.settings.inbound_batch)
            self._closing = self._given_back = False
            self._checked = asyncio.Queue(maxsize=1)  # (a stop that ran out of grace left its batches behind)
            self._unacked.clear()
            self._tasks.append(asyncio.create_task(self._commit_in_order(), name="inbound-commit"))
            self._tasks.append(asyncio.create_task(self._keep_in_progress(), name="inbound-in-progress"))
            await self.broker.start()
            self._tasks.append(asyncio.create_task(self.milestones.run(), name="milestone-timer"))
        self.started = True
        log.info("hub %s started in %.2fs (broker %s, database %s)", self.role,
                 asyncio.get_running_loop().time() - t0, "embedded" if self.embedded else "external",
                 self.engine.url.get_backend_name())

    async def stop(self) -> None:
        self._closing = True
        try:  # what was checked is committed and acked before the connection goes
            await asyncio.wait_for(self._checked.join(), STOP_GRACE_S)
        except TimeoutError:
            log.warning("stopping with inbound messages not yet committed; JetStream redelivers them")
        if getattr(self, "milestones", None) is not None:
            self.milestones.stop()
        if getattr(self, "relay", None) is not None:
            await self.relay.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.broker.stop()
        if self._http is not None:
            await self._http.aclose()
        if self.embedded is not None:
            await self.embedded.stop()
        await self.engine.dispose()
        if self.checkpointer is not None:
            self.checkpointer.stop()
        self.started = False

    async def __aenter__(self) -> "Hub":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    def healthy(self) -> bool:
        conn = self.broker.config.connection_state
        try:
            return self.started and bool(conn.connection and conn.connection.is_connected)
        except Exception:  # noqa: BLE001
            return False

    # --- operations used by the API and CLI ------------------------------------------------

    async def sync_broker_users(self) -> None:
        """After a credential change: give the embedded server the new user list."""
        if self.embedded is None:
            return
        async with self.deps.uow() as uow:
            users = await credentials.broker_users(uow)
        await self.embedded.apply_users(users)

    async def resubmit_dead_letter(self, dead_letter_id: str, fixed: bytes | None, *, actor: str) -> str:
        """See hub.redelivery.resubmit_dead_letter (raises LookupError, RedeliveryRefused)."""
        from hub.redelivery import resubmit_dead_letter

        async with self.deps.uow() as uow:
            subject = await resubmit_dead_letter(uow, self.deps, self.js, dead_letter_id, fixed, actor=actor)
        return subject


async def issue_credential_offline(settings: Settings, *, role: str, org_id: str | None) -> dict:
    """`hub credential issue`: writes to the database and, for the embedded
    broker, rewrites its users and signals a running server to reload."""
    from hub.clock import Clock as _Clock

    engine = make_engine(settings.db_url)
    try:
        await migrate(engine)
        directory = load_directory(settings.directory)
        audit = AuditLog(load_audit_key(settings.resolved_data_dir, settings.audit_key))
        uow = UnitOfWorkFactory(engine)
        async with uow() as u:
            issued = await credentials.issue(u, directory, audit, role=role, org_id=org_id, now=_Clock().now())
            await u.commit()
        await _reload_embedded(settings, uow)
        return issued.public()
    finally:
        await engine.dispose()


async def revoke_credential_offline(settings: Settings, key: str) -> str:
    from hub.clock import Clock as _Clock

    engine = make_engine(settings.db_url)
    try:
        await migrate(engine)
        audit = AuditLog(load_audit_key(settings.resolved_data_dir, settings.audit_key))
        uow = UnitOfWorkFactory(engine)
        async with uow() as u:
            cred_id = await credentials.revoke(u, audit, key, now=_Clock().now())
            await u.commit()
        await _reload_embedded(settings, uow)
        return cred_id
    finally:
        await engine.dispose()


async def _reload_embedded(settings: Settings, uow: UnitOfWorkFactory) -> None:
    if not settings.embedded_broker:
        return
    identity = credentials.HubBrokerIdentity.load_or_create(settings.resolved_data_dir)
    async with uow() as u:
        users = await credentials.broker_users(u)
    signal_reload(settings.resolved_data_dir, users, identity.user, identity.password_hash)
