"""Crash and fault safety ("Deliveries you can trust", item 5), on real processes.

Each test streams may-be-fit fit notes for the example person. The example
consent lets each one go to EMP-ACME and to its OH provider OHP-HEALTHWORKS, so
there are two deliveries per event. The test breaks something real
mid-stream, lets the hub recover, and then proves from the recipients' own
consumers that every delivery arrived exactly once: N distinct Nats-Msg-Id per
recipient, each ``<event id>:<org>``, and no message twice. It also checks that
the audit has exactly one ``delivery.delivered`` row per delivery and that the
hash chain still verifies.

1. ``kill -9`` of ``hub run``, whose embedded nats-server dies with it, then a
   restart on the same data dir;
2. an external nats-server stopped (SIGTERM) for ~2 s and started again on the
   same port and store dir;
3. the SQLite database held under an exclusive lock for ~3 s while events
   arrive: nothing is delivered and nothing is acked meanwhile;
4. the same lock held for longer than the hub's SQLite busy timeout (30 s,
   fixed in ``hub/db.py``; no setting lowers it, so the test waits it out).

Findings these tests made, now fixed in the hub: a connection leaked when
BEGIN failed on a locked database (test 4 asserts none leaks), a database
outage counted towards parking a message as poison (test 4 asserts no valid
message is dead-lettered), and a crashed hub's fetched messages waited a
minute for the inbound ack_wait (now 20 s).

Nothing is mocked: real nats-server binaries, real SQLite files, and in
test 1 the real ``hub`` command. The number of events per test is
``HUB_FAULT_EVENTS`` (default 300). The hub handles about 25 events a
second through the broker on a 2-core machine, so that stream takes about
12 s. Two tests still run longer, because they wait out timeouts fixed in the
hub: test 1 (~70 s) waits for the inbound ack_wait and test 4 (~40 s) for
the busy timeout.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import nats
import orjson
import pytest
from nats.aio.client import Client as NatsClient

from hub.bootstrap import Hub, issue_credential_offline
from hub.clock import Clock
from hub.fhir_audit import RECORD_SYSTEM
from hub.nats_auth import inbox_prefix
from hub.nats_server import find_nats_server
from hub.settings import Settings
from hub.streams import (
    DELIVER_STREAM,
    INBOUND_CONSUMER,
    INBOUND_STREAM,
    inbound_subject,
    recipient_consumer,
)
from schemas.fhir import event_id as make_event_id
from tests.conftest import connect_as, example, fit_note

# Run once, on the default database: two of these hold SQLite's own lock, and
# together they take minutes, which the PostgreSQL pass cannot afford in budget.
pytestmark = pytest.mark.skipif(os.environ.get("HUB_TEST_DB") == "postgres",
                                reason="fault tests run on the default database (SQLite) only")
from tests.natsutil import free_port, port_listening, wait_until
from tests.test_fit_note_flow import record_consent

BIN = Path(sys.executable).parent
N_EVENTS = int(os.environ.get("HUB_FAULT_EVENTS", "300"))
#: Generous waits for the hub to work through N events (it manages about 25 a second).
PROCESS_S = 60 + N_EVENTS / 5
ORGS = ("EMP-ACME", "OHP-HEALTHWORKS")
PUBLISHER = "B86001"
SUBJECT = inbound_subject("fit-note", PUBLISHER)


@pytest.fixture
def clock() -> Clock:
    """The real clock, for the in-process hubs too: a delivery whose publish
    failed is retried at now + back-off, which a fixed clock never reaches."""
    return Clock()


# --------------------------------------------------------------------------- the stream


class Stream:
    """N fit notes with unique note ids, and the event ids the hub must derive."""

    def __init__(self, n: int) -> None:
        msgs = [fit_note() for _ in range(n)]
        self.items = [(m["message_id"], orjson.dumps(m)) for m in msgs]
        self.event_ids = [make_event_id("fit-note", PUBLISHER, m["fit_note"]["id"], 1) for m in msgs]

    def __len__(self) -> int:
        return len(self.items)

    def delivery_ids(self, org: str | None = None) -> set[str]:
        return {f"{e}:{o}" for e in self.event_ids for o in ORGS if org in (None, o)}


async def publish(js, stream: Stream, items=None, *, deadline_s: float = 60.0, chunk: int = 50,
                  pause: float = 0.0, done: list | None = None) -> None:
    """Publish to HUB_INBOUND as the GP, waiting for JetStream's ack of every
    message; a publish that fails (the server is down) is retried with the same
    Nats-Msg-Id, so the stream drops it if the first attempt was stored.
    `pause` spaces the chunks out; `done` collects the acked message ids."""
    deadline = time.monotonic() + deadline_s

    async def one(msg_id: str, data: bytes) -> None:
        while True:
            try:
                await js.publish(SUBJECT, data, stream=INBOUND_STREAM, timeout=2,
                                 headers={"Nats-Msg-Id": msg_id})
                if done is not None:
                    done.append(msg_id)
                return
            except Exception:  # noqa: BLE001 - down or reconnecting: try again
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    items = stream.items if items is None else items
    for i in range(0, len(items), chunk):
        await asyncio.gather(*(one(mid, data) for mid, data in items[i:i + chunk]))
        if pause:
            await asyncio.sleep(pause)


# --------------------------------------------------------------------------- the database, read beside the hub


def db_state(db: Path) -> dict:
    """Counts from the hub's SQLite file on a separate, read-only connection. A
    WAL reader neither takes nor waits for the write lock, so this never stalls
    the hub and still works while a test holds the lock."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as c:
        events = c.execute("SELECT count(*) FROM events").fetchone()[0]
        states = dict(c.execute("SELECT state, count(*) FROM deliveries GROUP BY state").fetchall())
        # one delivered row per event and relay pass, naming its recipients: count per delivery id
        delivered_audit = c.execute(
            "SELECT a.event_id || ':' || j.value, count(*) FROM audit a, json_each(a.detail, '$.to') j "
            "WHERE a.action = 'delivery.delivered' GROUP BY 1").fetchall()
        dead = c.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
    return {"events": events, "states": states, "delivered_audit": dict(delivered_audit), "dead_letters": dead}


def committed_events(db: Path, event_ids: list[str]) -> set[str]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as c:
        marks = ",".join("?" * len(event_ids))
        return {r[0] for r in c.execute(f"SELECT event_id FROM events WHERE event_id IN ({marks})", event_ids)}


async def assert_inbound_left_only_committed(js, db: Path) -> int:
    """What HUB_INBOUND still holds once everything is settled may only be
    messages the hub committed but whose ack was lost with the connection (the
    broker redelivers them after ack_wait, the hub finds their event id and acks
    them): every one ack-pending, none waiting unprocessed, each one's event
    already committed. Returns how many there were."""
    info = await js.stream_info(INBOUND_STREAM)
    consumer = await js.consumer_info(INBOUND_STREAM, INBOUND_CONSUMER)
    if info.state.messages == 0:
        return 0
    assert consumer.num_pending == 0, f"{consumer.num_pending} inbound messages never reached the hub"
    assert consumer.num_ack_pending == info.state.messages
    left = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        with contextlib.suppress(nats.js.errors.NotFoundError):
            msg = await js.get_msg(INBOUND_STREAM, seq)
            left.append(make_event_id("fit-note", PUBLISHER, orjson.loads(msg.data)["fit_note"]["id"], 1))
    assert len(left) == info.state.messages
    assert committed_events(db, left) == set(left), "an inbound message left un-acked was never committed"
    return len(left)


def settled(state: dict, n: int) -> bool:
    """All n events committed and every delivery made (none pending or retrying)."""
    return state["events"] >= n and state["states"].get("delivered", 0) >= 2 * n and \
        not state["states"].get("pending") and not state["states"].get("retrying")


async def wait_settled(db: Path, n: int, timeout: float, what: str,
                       timeline: list[tuple[float, int]] | None = None) -> dict:
    """Wait until `settled`; `timeline` collects (seconds, events committed) at each change."""
    t0 = deadline = time.monotonic()
    deadline += timeout
    while True:
        state = await asyncio.to_thread(db_state, db)
        if timeline is not None and (not timeline or timeline[-1][1] != state["events"]):
            timeline.append((time.monotonic() - t0, state["events"]))
        if settled(state, n):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not settled within {timeout}s: {state['events']}/{n} events, "
                                 f"deliveries {state['states']}")
        await asyncio.sleep(0.25)


def longest_stall(timeline: list[tuple[float, int]]) -> tuple[float, int]:
    """The longest time between two changes of the committed-event count, and the count it stalled at."""
    gaps = [(b[0] - a[0], a[1]) for a, b in itertools.pairwise(timeline)]
    return max(gaps, default=(0.0, timeline[-1][1] if timeline else 0))


# --------------------------------------------------------------------------- the recipients' side


async def drain_consumer(url: str, org: str, auth: dict | None = None, *, expect: int) -> list:
    """Everything waiting on consumer deliver-<org>, read (and acked) as that
    recipient, with its own inbox prefix: until `expect` arrived (or two empty
    fetches in a row), then one more look, so that "exactly" is checked."""
    nc = await nats.connect(url, inbox_prefix=inbox_prefix(org), allow_reconnect=False, connect_timeout=3,
                            **(auth or {}))
    try:
        sub = await nc.jetstream(timeout=5).pull_subscribe_bind(recipient_consumer(org), stream=DELIVER_STREAM)
        got, empty = [], 0
        while empty < 2:
            try:
                msgs = await sub.fetch(batch=500, timeout=1.0 if len(got) < expect else 0.5)
            except TimeoutError:  # nats-py raises its own subclass or the plain asyncio one
                empty += 1
                continue
            empty = 0 if len(got) + len(msgs) < expect else 1
            for m in msgs:
                await m.ack()
            got.extend(msgs)
        await nc.flush()
        return got
    finally:
        await nc.close()


def assert_exactly_once(got: dict[str, list], stream: Stream) -> None:
    """Per recipient: every expected delivery id once, nothing else, nothing twice."""
    for org in ORGS:
        ids = [m.headers.get("Nats-Msg-Id") for m in got[org]]
        expected = stream.delivery_ids(org)
        twice = {i: c for i, c in Counter(ids).items() if c > 1}
        assert not twice, f"{org} received {len(twice)} deliveries more than once, e.g. {list(twice.items())[:3]}"
        missing, unexpected = expected - set(ids), set(ids) - expected
        assert not missing, f"{org} never received {len(missing)} of {len(expected)} deliveries"
        assert not unexpected, f"{org} received deliveries nobody expected: {sorted(unexpected)[:3]}"
        assert len(ids) == len(set(ids)) == len(stream)
        for m in got[org][:: max(1, len(got[org]) // 20)]:  # a sample: the body is that event, for that org
            body = orjson.loads(m.data)
            eid, _, to = m.headers["Nats-Msg-Id"].rpartition(":")
            assert body["identifier"]["value"] == eid and to == org
            assert body["entry"][0]["resource"]["destination"][0]["receiver"]["identifier"]["value"] == org


def assert_audited(state: dict, stream: Stream) -> None:
    audited = state["delivered_audit"]
    assert set(audited) == stream.delivery_ids(), (
        f"delivery.delivered audit rows: {len(set(audited) & stream.delivery_ids())} of "
        f"{2 * len(stream)} deliveries, {len(set(audited) - stream.delivery_ids())} unexpected")
    twice = {ref: c for ref, c in audited.items() if c > 1}
    assert not twice, f"{len(twice)} deliveries audited as delivered more than once, e.g. {list(twice.items())[:3]}"
    assert state["dead_letters"] == 0


def hub_cli(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "hub"), *args], env=env, capture_output=True, text=True, timeout=120,
                          check=check)


def assert_audit_verifies(data_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env["HUB_DATA_DIR"] = str(data_dir)
    out = hub_cli(env, "audit", "verify", check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "audit trail intact" in out.stdout


def alive(pid: int) -> bool:
    """A live process (a zombie waiting for its reaper counts as dead)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "zombie" not in status.lower() and "(dead)" not in status.lower()


# --------------------------------------------------------------------------- 1. kill -9 of `hub run`


class HubProcess:
    """`hub run` as a real process over one data dir, (re)startable."""

    def __init__(self, tmp_path: Path) -> None:
        self.data_dir = tmp_path / "var"
        self.log_path = tmp_path / "hub.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
        self.env = {**env, "HUB_DATA_DIR": str(self.data_dir), "HUB_NATS_PORT": str(free_port()),
                    "HUB_HTTP_PORT": str(free_port()), "HUB_LOG_LEVEL": "WARNING"}
        self.base = f"http://127.0.0.1:{self.env['HUB_HTTP_PORT']}"
        self.nats_url = f"nats://127.0.0.1:{self.env['HUB_NATS_PORT']}"
        self.settings = Settings(data_dir=self.data_dir, nats_port=int(self.env["HUB_NATS_PORT"]))
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def db(self) -> Path:
        return self.data_dir / "hub.db"

    def hub_user(self) -> dict:
        ident = json.loads((self.data_dir / "nats" / "hub-user.json").read_text())
        return {"user": ident["user"], "password": ident["password"]}

    def nats_pid(self) -> int:
        return int((self.data_dir / "nats" / "nats.pid").read_text().strip())

    async def start(self, timeout: float = 40.0) -> None:
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n----- start {self.starts}\n".encode())
            log.flush()
            self.proc = subprocess.Popen([str(BIN / "hub"), "run"], env=self.env, stdout=log,  # noqa: ASYNC220
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=1) as http:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{self.base}/health")).status_code == 200:
                        return
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"hub run (start {self.starts}) did not become healthy:\n{self.log()}")
                await asyncio.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(10) == -signal.SIGKILL

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"hub run ignored SIGTERM for 30 s:\n{self.log()}") from None


async def deliver_stream_count(nc: NatsClient) -> int:
    return (await nc.jetstream(timeout=5).stream_info(DELIVER_STREAM)).state.messages


@pytest.mark.timeout(180 + 3 * PROCESS_S)
async def test_kill_minus_9_of_the_hub_mid_stream_loses_and_duplicates_nothing(tmp_path):
    """NOTE (reported, not a loss): the inbound messages the killed hub had
    fetched but not yet committed stay "ack pending" on its durable consumer
    until their ack_wait (60 s, hub/streams.py inbound_consumer_config) runs
    out. Only then does JetStream redeliver them to the restarted hub. So the
    last few events of the stream arrive about a minute after the restart, and
    this test takes 70-80 s however small the stream is. The test prints the
    stall it saw."""
    hub = HubProcess(tmp_path)
    hub.env["HUB_INBOUND_BATCH"] = "50"  # several transactions, so that the kill can land between two
    stream = Stream(N_EVENTS)
    total = 2 * len(stream)
    await hub.start()
    try:
        issued = {}
        for role, org in [("publisher", PUBLISHER), ("recipient", "EMP-ACME"), ("recipient", "OHP-HEALTHWORKS"),
                          ("consent-client", None), ("ig-auditor", None)]:
            issued[org or role] = await issue_credential_offline(hub.settings, role=role, org_id=org)
        async with httpx.AsyncClient(base_url=hub.base, timeout=10) as http:
            r = await http.post("/fhir/Consent", json=example("consent"),
                                headers={"Authorization": f"Bearer {issued['consent-client']['http_token']}"})
            assert r.status_code == 201, r.text

        gp = issued[PUBLISHER]
        async def connect_gp() -> NatsClient:  # a new user is known once the server has applied the reload
            for attempt in range(50):
                try:
                    return await nats.connect(hub.nats_url, user=gp["nats_user"], password=gp["nats_password"],
                                              inbox_prefix=inbox_prefix(PUBLISHER), allow_reconnect=False)
                except nats.errors.Error:
                    if attempt == 49:
                        raise
                    await asyncio.sleep(0.1)
        nc = await connect_gp()
        try:
            await publish(nc.jetstream(), stream)  # JetStream holds them all; the hub works through them
        finally:
            await nc.close()

        # Wait until some, but not all, deliveries are stored in HUB_DELIVER.
        mon = await nats.connect(hub.nats_url, **hub.hub_user(), allow_reconnect=False)
        try:
            await wait_until(lambda: _at_least(mon, total // 5), PROCESS_S, "a fifth of the deliveries made")
            before_kill = await deliver_stream_count(mon)
        finally:
            await mon.close()
        nats_pid = hub.nats_pid()
        hub.kill9()
        killed_state = db_state(hub.db)
        assert 0 < before_kill < total, f"the kill did not land mid-stream ({before_kill} of {total} made)"
        assert killed_state["events"] < len(stream), "every event was already committed when the hub was killed"

        # PDEATHSIG: the embedded nats-server does not outlive the hub.
        deadline = time.monotonic() + 10
        while alive(nats_pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not alive(nats_pid), "the embedded nats-server outlived its hub (kill -9)"

        t_restart = time.monotonic()
        await hub.start()
        mon = await nats.connect(hub.nats_url, **hub.hub_user(), allow_reconnect=False)
        try:
            inbound = await mon.jetstream().consumer_info(INBOUND_STREAM, INBOUND_CONSUMER)
            timeline: list[tuple[float, int]] = []
            state = await wait_settled(hub.db, len(stream), 60 + PROCESS_S, "after the restart", timeline)
            recovery_s = time.monotonic() - t_restart
            assert await deliver_stream_count(mon) == total, "HUB_DELIVER holds a delivery twice (or misses one)"
            unacked = await assert_inbound_left_only_committed(mon.jetstream(), hub.db)
        finally:
            await mon.close()
        got = {}
        for org in ORGS:
            cred = issued[org]
            got[org] = await drain_consumer(hub.nats_url, org, {"user": cred["nats_user"],
                                                                 "password": cred["nats_password"]},
                                            expect=len(stream))
        assert_exactly_once(got, stream)
        assert_audited(state, stream)

        # The same, as IG sees it over HTTP (one page holds at most 5000 AuditEvents).
        if total < 5000:
            async with httpx.AsyncClient(base_url=hub.base, timeout=30) as http:
                r = await http.get("/fhir/AuditEvent", params={"type": "delivery.delivered", "_count": "5000"},
                                   headers={"Authorization": f"Bearer {issued['ig-auditor']['http_token']}"})
            assert r.status_code == 200, r.text
            refs = [ent["what"]["identifier"]["value"] for e in r.json()["entry"]
                    for ent in e["resource"]["entity"] if ent["what"]["identifier"]["system"] == RECORD_SYSTEM]
            assert len(refs) == len(set(refs)) == total and set(refs) == stream.delivery_ids()
        assert hub.stop() == 0, hub.log()
        assert_audit_verifies(hub.data_dir)
        stall, stalled_at = longest_stall(timeline)
        print(f"\nkill -9 after {before_kill}/{total} deliveries stored, {killed_state['events']}/{len(stream)} "
              f"events committed; at restart the inbound consumer had {inbound.num_ack_pending} ack-pending "
              f"(ack_wait {inbound.config.ack_wait:.0f}s) and {inbound.num_pending} pending; settled "
              f"{recovery_s:.1f}s after the restart, with a {stall:.1f}s stall at {stalled_at}/{len(stream)} events; "
              f"{unacked} committed inbound messages still un-acked")
    finally:
        hub.stop()


async def _at_least(nc: NatsClient, n: int) -> bool:
    return await deliver_stream_count(nc) >= n


# --------------------------------------------------------------------------- 2. the broker restarted


class ExternalNats:
    """A JetStream nats-server the hub did not start (as tests/servers.py), on a
    fixed loopback port and a store dir that survives its restarts."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = store.parent / "nats.log"

    def start(self, timeout: float = 10.0) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [find_nats_server(), "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store)],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not port_listening(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"nats-server did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


async def _quiet(_exc: Exception) -> None:
    """nats-py error callback: the refused reconnects during the outage are expected."""


@contextlib.contextmanager
def external_nats(tmp_path: Path) -> Iterator[ExternalNats]:
    server = ExternalNats(tmp_path / "nats-store")
    server.store.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_nats_server_stopped_and_started_mid_stream_loses_and_duplicates_nothing(tmp_path):
    stream = Stream(N_EVENTS)
    total = 2 * len(stream)
    with external_nats(tmp_path) as server:
        settings = Settings(data_dir=tmp_path / "var", nats_url=server.url, http_port=free_port(),
                            relay_interval_s=0.2)
        db = settings.resolved_data_dir / "hub.db"
        hub = Hub(settings, clock=Clock())
        await hub.start()
        try:
            await record_consent(hub, None)
            # No users on this server: the publisher connects as itself would, with its inbox prefix.
            pub = await nats.connect(server.url, inbox_prefix=inbox_prefix(PUBLISHER), max_reconnect_attempts=-1,
                                     reconnect_time_wait=0.2, error_cb=_quiet)
            try:
                # Half before the outage, the rest published straight through it (retrying, same Nats-Msg-Id).
                half = len(stream) // 2
                await publish(pub.jetstream(), stream, stream.items[:half])
                await wait_until(lambda: db_state(db)["states"].get("delivered", 0) >= total // 5, PROCESS_S,
                                 "a fifth of the deliveries made")
                published: list[str] = []
                rest = asyncio.create_task(publish(pub.jetstream(), stream, stream.items[half:], chunk=10,
                                                   pause=0.15, deadline_s=PROCESS_S, done=published))
                await asyncio.sleep(0.3)
                before, published_before = db_state(db), len(published)
                t_down = time.monotonic()
                await asyncio.to_thread(server.stop)  # SIGTERM; the hub runs on in this event loop
                hub_saw_it, retrying = False, 0
                while time.monotonic() - t_down < 2.0:
                    hub_saw_it |= not hub.healthy()
                    retrying = max(retrying, db_state(db)["states"].get("retrying", 0))
                    await asyncio.sleep(0.05)
                during = db_state(db)
                await asyncio.to_thread(server.start)  # same port, same store dir
                outage_s = time.monotonic() - t_down
                await asyncio.wait_for(rest, PROCESS_S)
            finally:
                await pub.close()
            assert 0 < before["states"].get("delivered", 0) < total, "the outage did not land mid-stream"
            assert published_before < len(stream) - half, "the publisher had finished before the outage"
            assert during["events"] < len(stream)
            assert hub_saw_it, "the hub never noticed the broker was gone"
            t_up = time.monotonic()
            timeline: list[tuple[float, int]] = []
            state = await wait_settled(db, len(stream), PROCESS_S, "after the broker came back", timeline)
            recovery_s = time.monotonic() - t_up
            assert hub.healthy()

            assert (await hub.js.stream_info(DELIVER_STREAM)).state.messages == total
            unacked = await assert_inbound_left_only_committed(hub.js, db)
            got = {org: await drain_consumer(server.url, org, expect=len(stream)) for org in ORGS}
            assert_exactly_once(got, stream)
            assert_audited(state, stream)
            stall, stalled_at = longest_stall(timeline)
            print(f"\nbroker down {outage_s:.1f}s after {before['states'].get('delivered', 0)}/{total} deliveries "
                  f"and {half + published_before}/{len(stream)} events published; up to {retrying} deliveries "
                  f"retrying meanwhile; settled {recovery_s:.1f}s after it came back "
                  f"(longest stall {stall:.1f}s at {stalled_at} events); {unacked} committed inbound messages "
                  "still un-acked (their ack was lost with the connection)")
        finally:
            await hub.stop()
        assert_audit_verifies(settings.resolved_data_dir)


# --------------------------------------------------------------------------- 3 and 4. the database locked


@contextlib.asynccontextmanager
async def exclusive_lock(db: Path) -> AsyncIterator[sqlite3.Connection]:
    """Hold SQLite's write lock from another connection (BEGIN EXCLUSIVE), as a
    long migration, a backup or another writer would. It is taken in a worker
    thread: the in-process hub may be mid-transaction (the relay polls every
    0.2 s), and it can only finish that transaction if this event loop keeps
    running."""
    conn = sqlite3.connect(db, timeout=30, isolation_level=None, check_same_thread=False)
    try:
        await asyncio.to_thread(conn.execute, "BEGIN EXCLUSIVE")
        try:
            yield conn
        finally:
            await asyncio.to_thread(conn.execute, "ROLLBACK")
    finally:
        conn.close()


async def _locked_database_scenario(hub: Hub, creds, hold_s: float, n_before: int, n_during: int) -> dict:
    """Publish n_before events and let them settle; lock the database for
    hold_s while n_during more arrive, checking throughout that nothing new is
    delivered and nothing is acked; release; everything exactly once."""
    stream = Stream(n_before + n_during)
    total = 2 * len(stream)
    db = hub.settings.resolved_data_dir / "hub.db"
    await record_consent(hub, creds)
    gp = await creds.issue("publisher", PUBLISHER)
    recipients = {org: await creds.issue("recipient", org) for org in ORGS}
    nc = await connect_as(hub, gp, PUBLISHER)
    js = hub.js
    try:
        await publish(nc.jetstream(), stream, stream.items[:n_before])
        await wait_settled(db, n_before, 60, "before the lock")
        samples = []
        async with exclusive_lock(db):
            t_lock = time.monotonic()
            stored = (await js.stream_info(DELIVER_STREAM)).state.messages
            assert stored == 2 * n_before
            await publish(nc.jetstream(), stream, stream.items[n_before:])
            while time.monotonic() - t_lock < hold_s:
                await asyncio.sleep(0.5)
                inbound = await js.consumer_info(INBOUND_STREAM, INBOUND_CONSUMER)
                held = (await js.stream_info(INBOUND_STREAM)).state.messages
                now_stored = (await js.stream_info(DELIVER_STREAM)).state.messages
                samples.append((round(time.monotonic() - t_lock, 1), inbound.num_ack_pending,
                                inbound.num_pending, held, now_stored))
                # Nothing new reaches a recipient while nothing can be committed ...
                assert now_stored == stored, f"a delivery was made while the database was locked: {samples}"
                # ... and no inbound message is acked before its outcome is committed: the work-queue
                # stream still holds every one published during the lock.
                assert held == n_during, f"inbound messages acked while the database was locked: {samples}"
                assert inbound.num_ack_pending + inbound.num_pending == n_during, samples
            assert db_state(db)["events"] == n_before
            assert any(s[1] > 0 for s in samples), f"the hub never took an inbound message during the lock: {samples}"
        t_release = time.monotonic()
        state = await wait_settled(db, len(stream), 90, "after the lock was released")
        settle_s = time.monotonic() - t_release
    finally:
        await nc.close()
    assert hub.healthy()
    assert (await js.stream_info(DELIVER_STREAM)).state.messages == total
    assert (await js.stream_info(INBOUND_STREAM)).state.messages == 0
    got = {}
    for org in ORGS:
        got[org] = await drain_consumer(hub.settings.broker_url, org,
                                        {"user": recipients[org]["nats_user"],
                                         "password": recipients[org]["nats_password"]}, expect=len(stream))
    assert_exactly_once(got, stream)
    assert_audited(state, stream)
    print(f"\nlocked {hold_s:.0f}s (ack-pending, pending, inbound held, deliveries stored): "
          f"{samples[0]} .. {samples[-1]}; settled {settle_s:.1f}s after release")
    return {"samples": samples, "settle_s": settle_s}


async def test_database_locked_for_a_few_seconds_delays_but_loses_and_duplicates_nothing(hub, creds):
    await _locked_database_scenario(hub, creds, hold_s=3.0, n_before=50, n_during=100)
    await hub.stop()
    assert_audit_verifies(hub.settings.resolved_data_dir)


@pytest.mark.timeout(180)
async def test_database_locked_past_the_busy_timeout_loses_and_duplicates_nothing(hub, creds, caplog):
    """SQLite's busy timeout is 30 s, fixed in hub/db.py (the connect timeout
    and PRAGMA busy_timeout; no HUB_* setting changes it), so this test holds
    the lock for 33 s instead of lowering it. Every transaction waiting on the
    lock then fails: the ones that reached SQLite with "database is locked",
    the ones queued for a pooled connection with the pool's own 30 s timeout.
    The inbound batch is tried again in place until the lock is gone, and the
    relay's pass fails and is retried. Once the lock is gone everything goes through, exactly
    once, and no valid message is dead-lettered as poison.

    And no pooled connection leaks when BEGIN fails (UnitOfWork.__aenter__
    gives it back)."""
    caplog.set_level(logging.WARNING)
    await _locked_database_scenario(hub, creds, hold_s=33.0, n_before=20, n_during=60)
    failures = [r.getMessage() for r in caplog.records if r.name == "hub.bootstrap"
                and ("failed" in r.getMessage() or "database unavailable" in r.getMessage())]
    # whichever reached SQLite first outlived the timeout: an inbound batch or a relay pass (both retried)
    relay_timed_out = any(r.name == "hub.outbox" and r.exc_info and "OperationalError" in type(r.exc_info[1]).__name__
                          for r in caplog.records)
    assert relay_timed_out or any("OperationalError" in m for m in failures), (
        "no transaction outlived the busy timeout; the test proved nothing beyond test 3: " + repr(failures[:5]))
    assert not any("dead-lettered" in m for m in failures), failures
    await hub.stop()
    assert_audit_verifies(hub.settings.resolved_data_dir)
    gc.collect()
    leaked = [r for r in caplog.records if "non-checked-in connection" in r.getMessage()]
    assert leaked == [], f"{len(leaked)} pooled connections leaked when BEGIN failed on the locked database"
