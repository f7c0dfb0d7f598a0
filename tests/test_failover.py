"""Failover on the local production shape (issue #7, item 4).

`deploy.cluster.LocalCluster` (the code behind `make cluster`) starts three
clustered JetStream nodes (streams with 3 replicas), a PostgreSQL, two
`hub run --worker` processes and one `hub run --api`. The test records the
example consent over HTTP, so each may-be-fit fit note for the example person
goes to EMP-ACME and to its OH provider OHP-HEALTHWORKS (two deliveries per
event), and publishes a stream of distinct fit notes (HUB_FAILOVER_EVENTS,
default 300, over about 15 s) to `hub.inbound.fit-note.B86001`, retrying a
publish that times out under the same Nats-Msg-Id, as a real publisher must.

A third of the way in, while inbound messages are ack-pending, it `kill -9`s
one worker and then the nats-server that leads HUB_INBOUND (JetStream's
stream info names it), and keeps publishing. Then it
proves, from three independent places, that every expected delivery arrived
exactly once:

- the HUB_DELIVER stream, read from the start by an ephemeral consumer, holds
  each `<event id>:<org>` Nats-Msg-Id once, and the recipients' durable
  consumers `deliver-<org>` hand out each one once;
- because the stream's duplicate window hides a re-publish, the database too:
  every delivery row is `delivered`, the audit has exactly one
  `delivery.delivered` row per delivery and one `event.accepted` row per
  event, no dead letters, and `hub audit verify` walks the whole hash chain;
- nothing is left in HUB_INBOUND (the killed worker's un-acked messages were
  redelivered to the survivor after the inbound ack_wait, 20 s).

The test client connects as the cluster's `hub` user (the only user the
external nodes know; see deploy/cluster.py). It runs in the default
(`make test`) pass, brings its own PostgreSQL, and takes about 40 s on
2 cores, about 20 s of it the inbound ack_wait the killed worker's messages wait out.
"""
from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path

import asyncpg
import httpx
import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from deploy.cluster import LocalCluster
from hub.bootstrap import issue_credential_offline
from hub.settings import Settings
from hub.streams import DELIVER_STREAM, INBOUND_CONSUMER, INBOUND_STREAM
from tests.conftest import example
from tests.test_faults import ORGS, SUBJECT, Stream, assert_exactly_once, drain_consumer

N_EVENTS = int(os.environ.get("HUB_FAILOVER_EVENTS", "300"))
PUBLISH_S = float(os.environ.get("HUB_FAILOVER_PUBLISH_S", "15"))

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.environ.get("HUB_TEST_DB") == "postgres",
                       reason="brings its own PostgreSQL: runs once, in the default pass"),
]


@pytest.fixture
def cluster(tmp_path: Path):
    """Started and stopped from the main thread (its children die with the thread that started them)."""
    c = LocalCluster(tmp_path / "cluster", durable=False, log_level="WARNING",
                     extra_env={"HUB_RELAY_INTERVAL_S": "0.5"})
    c.start()
    try:
        yield c
    finally:
        c.stop()


async def _quiet(_exc: Exception) -> None:
    """nats-py error callback: the refused reconnects to the killed node are expected."""


def _logs(cluster: LocalCluster) -> str:
    parts = []
    for p in [cluster.api, *cluster.worker_procs]:
        parts.append(f"--- {p.name}\n" + "\n".join(p.log.read_text(errors="replace").splitlines()[-15:])
                     if p.log.exists() else f"--- {p.name}: no log")
    return "\n".join(parts)


async def _db(cluster: LocalCluster, stream: Stream) -> dict:
    conn = await asyncpg.connect(cluster.postgres.dsn)
    try:
        events = await conn.fetchval("SELECT count(*) FROM events WHERE event_id = ANY($1::text[])",
                                     stream.event_ids)
        deliveries = await conn.fetch("SELECT delivery_id, state FROM deliveries")
        # one delivered row per event and relay pass, naming its recipients: count per delivery id
        delivered = await conn.fetch(
            "SELECT a.event_id || ':' || j.value AS ref, count(*) AS n FROM audit a, "
            "json_array_elements_text(a.detail::json -> 'to') j WHERE a.action = 'delivery.delivered' GROUP BY 1")
        accepted = await conn.fetch("SELECT event_id AS ref, count(*) AS n FROM audit "
                                    "WHERE action = 'event.accepted' GROUP BY event_id")
        dead = await conn.fetchval("SELECT count(*) FROM dead_letters")
    finally:
        await conn.close()
    return {"events": events, "deliveries": {r["delivery_id"]: r["state"] for r in deliveries},
            "states": Counter(r["state"] for r in deliveries),
            "delivered_audit": {r["ref"]: r["n"] for r in delivered},
            "accepted_audit": {r["ref"]: r["n"] for r in accepted}, "dead_letters": dead}


async def _unsettled(cluster: LocalCluster) -> str:
    """The deliveries not yet delivered, with their audit trail: evidence when the test fails."""
    conn = await asyncpg.connect(cluster.postgres.dsn)
    try:
        rows = await conn.fetch("SELECT delivery_id, state, attempts, last_error, next_attempt_at, delivered_at "
                                "FROM deliveries WHERE state <> 'delivered' ORDER BY seq LIMIT 10")
        lines = [str(dict(r)) for r in rows]
        for r in rows:
            trail = await conn.fetch("SELECT seq, at, action, actor FROM audit WHERE ref = $1 ORDER BY seq",
                                     r["delivery_id"])
            lines.extend(f"    audit {dict(a)}" for a in trail)
    finally:
        await conn.close()
    return "\n".join(lines)


async def _wait_settled(cluster: LocalCluster, stream: Stream, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = await _db(cluster, stream)
        s = state["states"]
        if state["events"] >= len(stream) and s.get("delivered", 0) >= 2 * len(stream) \
                and not s.get("pending") and not s.get("retrying"):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"not settled within {timeout}s: {state['events']}/{len(stream)} events, "
                                 f"deliveries {dict(s)}\n{await _unsettled(cluster)}\n{_logs(cluster)}")
        await asyncio.sleep(0.5)


async def _read_stream(js, expect: int) -> list[str]:
    """Every Nats-Msg-Id in HUB_DELIVER, from the first message, by an ephemeral consumer."""
    info = await js.stream_info(DELIVER_STREAM)
    total = info.state.messages
    sub = await js.pull_subscribe("hub.deliver.>", stream=DELIVER_STREAM, config=ConsumerConfig(
        ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0))
    ids: list[str] = []
    empty = 0
    while len(ids) < max(total, expect) and empty < 3:
        try:
            msgs = await sub.fetch(batch=500, timeout=2.0)
        except TimeoutError:  # nats-py raises its own subclass or the plain asyncio one
            empty += 1
            continue
        ids.extend(m.headers.get("Nats-Msg-Id") for m in msgs)
    await sub.unsubscribe()
    return ids


async def test_kill_a_nats_node_and_a_worker_mid_stream_every_delivery_arrives_exactly_once(cluster):
    t0 = time.monotonic()
    stream = Stream(N_EVENTS)
    total = 2 * len(stream)

    # The example consent, over the API, with a consent-client credential (written to the database).
    settings = Settings(data_dir=cluster.data_dir / "cli", nats_url=cluster.hub_nats_url, nats_user="hub",
                        nats_password=cluster.nats_password, database_url=cluster.database_url,
                        audit_key=cluster.audit_key)
    cc = await issue_credential_offline(settings, role="consent-client", org_id=None)
    async with httpx.AsyncClient(base_url=cluster.api_url, timeout=10) as http:
        r = await http.post("/fhir/Consent", json=example("consent"),
                            headers={"Authorization": f"Bearer {cc['http_token']}"})
        assert r.status_code == 201, r.text

    nc = await nats.connect(**cluster.nats_connect_options(), max_reconnect_attempts=-1, reconnect_time_wait=0.2,
                            connect_timeout=2, error_cb=_quiet)
    js = nc.jetstream(timeout=3)
    acked: list[str] = []
    retries = 0

    async def publish_one(msg_id: str, data: bytes, deadline: float) -> None:
        nonlocal retries
        while True:
            try:
                await js.publish(SUBJECT, data, stream=INBOUND_STREAM, timeout=2, headers={"Nats-Msg-Id": msg_id})
                acked.append(msg_id)
                return
            except Exception:
                retries += 1
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def publisher() -> None:
        deadline = time.monotonic() + PUBLISH_S + 90
        chunk = 10
        pause = PUBLISH_S / max(1, len(stream) / chunk)
        for i in range(0, len(stream), chunk):
            started = time.monotonic()
            await asyncio.gather(*(publish_one(mid, data, deadline) for mid, data in stream.items[i:i + chunk]))
            await asyncio.sleep(max(0.0, pause - (time.monotonic() - started)))

    pub = asyncio.create_task(publisher())
    try:
        # A third of the way in, once deliveries are flowing.
        while len(acked) < len(stream) // 3 or (await _db(cluster, stream))["states"].get("delivered", 0) == 0:
            assert not pub.done(), pub.exception() if pub.done() else None
            await asyncio.sleep(0.2)
        # The worker first, while it holds fetched messages (ack pending), then the leader.
        leader = (await js.stream_info(INBOUND_STREAM)).cluster.leader
        victim = cluster.nats_index(leader)
        while (in_flight := (await js.consumer_info(INBOUND_STREAM, INBOUND_CONSUMER)).num_ack_pending) == 0:
            await asyncio.sleep(0.05)
        t_kill = time.monotonic()
        cluster.kill_worker(0)
        before = await _db(cluster, stream)
        cluster.kill_nats(victim)
        killed_at = (len(acked), before["events"], before["states"].get("delivered", 0))
        assert killed_at[0] < len(stream) and before["events"] < len(stream), "the kills did not land mid-stream"

        await asyncio.wait_for(pub, PUBLISH_S + 120)
        t_published = time.monotonic()
        assert len(set(acked)) == len(stream)
        new_leader = (await js.stream_info(INBOUND_STREAM)).cluster.leader
        assert new_leader and new_leader != leader

        state = await _wait_settled(cluster, stream, timeout=120)
        t_settled = time.monotonic()

        # 1. The broker: HUB_DELIVER holds each delivery once; each recipient's consumer hands it out once.
        ids = await _read_stream(js, total)
        twice = {i: c for i, c in Counter(ids).items() if c > 1}
        assert not twice, f"HUB_DELIVER holds {len(twice)} deliveries twice, e.g. {list(twice.items())[:3]}"
        assert set(ids) == stream.delivery_ids(), (
            f"HUB_DELIVER: {len(stream.delivery_ids() - set(ids))} deliveries missing, "
            f"{len(set(ids) - stream.delivery_ids())} unexpected")
        got = {org: await drain_consumer(cluster.nats_urls, org, {"user": "hub", "password": cluster.nats_password},
                                         expect=len(stream)) for org in ORGS}
        assert_exactly_once(got, stream)

        # 2. The database: each delivery made and audited once, each event accepted once, the chain intact.
        assert set(state["deliveries"]) == stream.delivery_ids()
        assert set(state["deliveries"].values()) == {"delivered"}, state["states"]
        audited = state["delivered_audit"]
        twice = {ref: n for ref, n in audited.items() if n > 1}
        assert not twice, (f"{len(twice)} deliveries audited as delivered more than once (sent twice by two "
                           f"relays?), e.g. {list(twice.items())[:3]}")
        assert set(audited) == stream.delivery_ids(), f"{len(stream.delivery_ids() - set(audited))} not audited"
        accepted = state["accepted_audit"]
        assert {ref: n for ref, n in accepted.items() if n > 1} == {}, "an event was accepted twice"
        assert set(accepted) == set(stream.event_ids)
        assert state["dead_letters"] == 0
        out = await asyncio.to_thread(cluster.hub_cli, "audit", "verify")
        assert out.returncode == 0 and "audit trail intact" in out.stdout, out.stdout + out.stderr

        # 3. Nothing left behind in the inbound work queue (the killed worker's messages were redelivered).
        deadline = time.monotonic() + 45
        while True:
            info = await js.stream_info(INBOUND_STREAM)
            consumer = await js.consumer_info(INBOUND_STREAM, INBOUND_CONSUMER)
            if info.state.messages == 0:
                break
            assert time.monotonic() < deadline, (f"HUB_INBOUND still holds {info.state.messages} messages "
                                                 f"({consumer.num_pending} pending, {consumer.num_ack_pending} "
                                                 f"ack-pending)")
            await asyncio.sleep(0.5)
        assert consumer.num_pending == 0
    finally:
        if not pub.done():
            pub.cancel()
        await nc.close()
    print(f"\n{len(stream)} events, {total} deliveries; killed {leader} (HUB_INBOUND leader; now {new_leader}) "
          f"and worker-1 ({in_flight} inbound messages ack-pending) after {killed_at[0]} published, {killed_at[1]} committed, {killed_at[2]} delivered "
          f"({t_kill - t0:.1f}s in); {retries} publish retries; all published {t_published - t_kill:.1f}s and "
          f"settled {t_settled - t_kill:.1f}s after the kills; test {time.monotonic() - t0:.1f}s")
