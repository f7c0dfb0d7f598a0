"""Fuzzing the inbound edges of the running hub (issue "Deliveries you can trust", item 6).

With the real hub (embedded nats-server; a SQLite file, or PostgreSQL with
``HUB_TEST_DB=postgres``), Hypothesis sends malformed and hostile bodies to
``POST /api/v1/inbound/{kind}`` and hostile subjects and bodies to
`hub.pipeline.process_inbound`. The bodies are those of `tests.test_fuzz_adapters`
(arbitrary bytes and JSON, an example with one node made hostile, bodies around
the size cap) plus new messages with hostile strings in their free-text fields
(ids, names, clinical text), which are accepted and so travel through the
pipeline into the database and the deliveries. The hub's clock is set after the
examples' dates, so each example is valid as it is.

* HTTP answers only 202, 413 (over the 256 KiB cap, with a clear message) or
  422 ``{"errors": [{pointer, message}...], "dead_letter_id": ...}``, and 403
  only when ``source.org_id`` names another organisation than the credential's;
  never 5xx. A 202 carries the id `adapters.adapt` gives the same bytes. After
  the run the hub still accepts a valid message (202) and processes it, and no
  accepted message failed in the pipeline (none parked as a poison message).
* `process_inbound` returns "accepted", "duplicate" or "dead-lettered", never
  raises; its errors have RFC 6901 pointers and never repeat an injected value.

How Hypothesis meets the asyncio hub. The hub and its fixtures live on
pytest-asyncio's event loop, and Hypothesis drives a *synchronous* test
function. Each test is an ordinary async test: it sets up what it needs, then
runs a ``@given`` function in a worker thread (``asyncio.to_thread``); for each
example that function submits a coroutine (an HTTP request through
``httpx.ASGITransport``, or a `process_inbound` call) to the test's loop with
``asyncio.run_coroutine_threadsafe`` and waits for its result with a timeout,
so a hang fails the example rather than the run. Because the test's loop is
free while it awaits the thread, the hub's own tasks (the JetStream consumer
that processes what HTTP accepted, the outbox relay) keep running between and
during examples, as in production, and the test can check the hub's state
after the last example in the same test. Hypothesis keeps all it is good at:
generation, shrinking, the example database, and the failing example reported
as usual.

Rejected alternatives: pytest-asyncio's own support for ``@given`` on async
tests runs each example with ``Runner.run`` on the same loop, so the loop (and
with it the hub's consumer and relay) stands still between examples, and
nothing can run after the last example within the test; generating inputs up
front (``.example()``, or a list filled by another test) loses shrinking and
the database and is discouraged by Hypothesis itself.

Each example hits the database, so the budgets are small (40 per test, times
``HUB_FUZZ_SCALE``); the broad search is in `tests.test_fuzz_adapters`.

Two crashes this found outside the adapters have regression tests at the end:
a not-fit note whose period reaches the end of year 9999 (episode arithmetic in
hub/absence.py; the fuzz changes one field of the may-be-fit example, so it
does not make one itself) and, on PostgreSQL, a subject holding U+0000 (the
dead-letter store).
"""
from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Coroutine
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from adapters import MAX_MESSAGE_BYTES, adapt
from hub import tables as t
from hub.clock import FixedClock
from hub.pipeline import process_inbound
from schemas import identifiers
from schemas.events import CanonicalEvent
from schemas.vocab import SOURCE_KINDS
from tests.conftest import fit_note
from tests.natsutil import wait_until
from tests.test_fuzz_adapters import (
    _POINTER,
    _SAFE_TEXT,
    EXAMPLE,
    EXAMPLE_ORG,
    KINDS,
    NOW,
    SCALE,
    hostile_free_text,
    json_values,
    leak_candidates,
    mutated_examples,
    serialise,
)

ORGS = sorted(set(EXAMPLE_ORG.values()))  # B86001, EMP-ACME, OHP-HEALTHWORKS, ATW-ONLINE
EXAMPLE_TIMEOUT_S = 30.0  # one request or pipeline call; far beyond any real one

# No deadline: an example's time includes the database and the broker, whose
# latency on a loaded CI machine is not what these tests measure;
# EXAMPLE_TIMEOUT_S bounds a hang instead. No health check is suppressed (the
# @given functions take no fixtures: one hub serves every example, on purpose).
HTTP_SETTINGS = settings(max_examples=40 * SCALE, deadline=None)


@pytest.fixture
def clock() -> FixedClock:
    """The hub's clock (overrides conftest's): after every example's dates, so
    each example, and each harmless change to one, is accepted."""
    return FixedClock(NOW)


@pytest.fixture
async def http(hub):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=hub.api), base_url="http://hub") as client:
        yield client


def bearer(cred: dict) -> dict:
    return {"Authorization": f"Bearer {cred['http_token']}"}


def on_loop(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> Any:
    """Run `coro` on the test's loop from Hypothesis' thread and wait for its result."""
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=EXAMPLE_TIMEOUT_S)


def named_org(raw: bytes) -> str | None:
    """source.org_id as the API reads it (a well-formed organisation id), if any."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    source = data.get("source") if isinstance(data, dict) else None
    org = source.get("org_id") if isinstance(source, dict) else None
    try:
        return identifiers.org_id(org) if org is not None else None
    except ValueError:
        return None


def assert_errors(errors: Any, injected: Any) -> None:
    assert isinstance(errors, list) and errors, errors
    leaks = leak_candidates(injected)
    for error in errors:
        assert set(error) == {"pointer", "message"}, error
        assert isinstance(error["pointer"], str) and _POINTER.match(error["pointer"]), error
        assert isinstance(error["message"], str) and error["message"].strip(), error
        for text in leaks:
            assert text not in error["message"], f"{error['pointer']}: message repeats the injected value"


# ---------------------------------------------------------------- the bodies


def fresh_message(kind: str, uid: uuid.UUID) -> dict:
    """The kind's example with message id and document id from `uid`: a new event
    (uids are drawn, so a replayed example sends the same message)."""
    msg = {**EXAMPLE[kind], "message_id": str(uid)}
    body_key = SOURCE_KINDS[kind]
    msg[body_key] = {**msg[body_key], "id": f"FUZZ-{uid.hex[:12]}"}
    return msg


def fresh(kind: str, uid: uuid.UUID) -> bytes:
    return serialise(fresh_message(kind, uid))


@st.composite
def fresh_hostile_free_text(draw: st.DrawFn) -> tuple[str, bytes, Any]:
    """Hostile strings in free-text fields of a new message: mostly accepted, so
    they go all the way into the database and the deliveries."""
    uid = draw(st.uuids())
    return draw(hostile_free_text({kind: fresh_message(kind, uid) for kind in KINDS}))


@st.composite
def http_cases(draw: st.DrawFn) -> tuple[str, bytes, Any, str]:
    """(kind, body, injected, publisher org). Mostly the publisher is the one
    the example names, so the well-formed messages get through to 202."""
    which = draw(st.sampled_from(["mutated", "mutated", "free text", "free text", "valid", "bytes", "json",
                                  "oversize"]))
    if which == "mutated":
        kind, raw, injected = draw(mutated_examples())
    elif which == "free text":
        kind, raw, injected = draw(fresh_hostile_free_text())
    elif which == "valid":
        kind, injected = draw(st.sampled_from(KINDS)), None
        raw = fresh(kind, draw(st.uuids()))
    else:
        kind, injected = draw(st.sampled_from(KINDS)), None
        if which == "bytes":
            raw = draw(st.binary(max_size=1_000))
        elif which == "json":
            injected = draw(json_values())
            raw = serialise(injected)
        else:
            raw = b"{" + b" " * draw(st.integers(MAX_MESSAGE_BYTES - 8, MAX_MESSAGE_BYTES + 4_096)) + b"}"
    org = draw(st.one_of(st.just(EXAMPLE_ORG[kind]), st.sampled_from(ORGS))) if which != "bytes" \
        else EXAMPLE_ORG[kind]
    return kind, raw, injected, org


async def test_fuzzed_inbound_http(hub, http, creds) -> None:
    loop = asyncio.get_running_loop()
    publishers = {org: await creds.issue("publisher", org) for org in ORGS}
    statuses: Counter[int] = Counter()
    # The event of the first message accepted under each Nats-Msg-Id (org:message_id):
    # JetStream drops a later one with the same id as a resend, by design (§2).
    accepted: dict[tuple[str, str], str] = {}

    @HTTP_SETTINGS
    @given(case=http_cases())
    # Each status at least once, whatever is drawn:
    @example(case=("oh-referral", fresh("oh-referral", uuid.uuid4()), None, "EMP-ACME"))  # 202
    @example(case=("fit-note", fresh("fit-note", uuid.uuid4()), None, "EMP-ACME"))  # 403
    @example(case=("fit-note", b"{" + b" " * MAX_MESSAGE_BYTES + b"}", None, "B86001"))  # 413
    @example(case=("access-to-work", b'{"message_id": "\xff"}', None, "ATW-ONLINE"))  # 422
    def fuzz(case: tuple[str, bytes, Any, str]) -> None:
        kind, raw, injected, org = case
        r = on_loop(loop, http.post(f"/api/v1/inbound/{kind}", headers=bearer(publishers[org]), content=raw))
        statuses[r.status_code] += 1
        assert r.status_code in (202, 403, 413, 422), (r.status_code, r.text[:500])
        body = r.json()
        if len(raw) > MAX_MESSAGE_BYTES:
            assert r.status_code == 413
            assert body == {"errors": [{"pointer": "", "message": "message larger than 256 KiB"}]}
        elif r.status_code == 403:
            other = named_org(raw)
            assert other is not None and other != org, "403 only for a message naming another organisation"
            assert body == {"errors": [{"pointer": "/source/org_id",
                                        "message": "does not match the credential's organisation"}]}
        elif r.status_code == 422:
            assert set(body) == {"errors", "dead_letter_id"} and isinstance(body["dead_letter_id"], str)
            assert_errors(body["errors"], injected)
        elif r.status_code == 202:
            expected = adapt(kind, raw, subject_org_id=None, directory=hub.directory, now=hub.clock.now())
            assert isinstance(expected, CanonicalEvent)
            assert body == {"event_id": expected.event_id, "status": "accepted"}
            accepted.setdefault((expected.source_org_id, expected.message_id), expected.event_id)
        else:
            pytest.fail(f"unexpected status {r.status_code}")

    await asyncio.to_thread(fuzz)
    assert set(statuses) == {202, 403, 413, 422}, statuses

    # The hub still takes a valid message and processes it, after all that.
    r = await http.post("/api/v1/inbound/fit-note", headers=bearer(publishers["B86001"]),
                        content=orjson.dumps(fit_note()))
    assert r.status_code == 202
    event_id = r.json()["event_id"]

    async def processed() -> bool:
        async with hub.deps.uow() as uow:
            return await uow.events.content_hash(event_id) is not None
    await wait_until(processed, 20.0, "the valid message processed")

    # Every message HTTP accepted became an event (a later one reusing its
    # document id and version is a duplicate of it, or a conflict dead-lettered);
    # none failed in the pipeline itself, which would leave it redelivered and
    # then parked as a poison message.
    expected_events = set(accepted.values())

    async def missing() -> set[str]:
        async with hub.deps.uow() as uow:
            stored = set((await uow.conn.execute(
                select(t.events.c.event_id).where(t.events.c.event_id.in_(expected_events)))).scalars())
        return expected_events - stored

    deadline = loop.time() + 60.0  # a message that raised is retried with back-off, then parked
    while await missing() and loop.time() < deadline:
        await asyncio.sleep(0.1)
    async with hub.deps.uow() as uow:
        rows = (await uow.conn.execute(select(t.dead_letters.c.subject, t.dead_letters.c.errors))).all()
    poisoned = [(r.subject, r.errors) for r in rows if any("processing failed" in e["message"] for e in r.errors)]
    assert not poisoned, poisoned
    assert not await missing(), f"accepted over HTTP but never processed: {await missing()}"


async def test_oversized_body_gets_413_with_a_clear_message(http, creds) -> None:
    gp = await creds.issue("publisher", "B86001")
    msg = fit_note(**{"fit_note.functional_effects": "x" * MAX_MESSAGE_BYTES})
    r = await http.post("/api/v1/inbound/fit-note", headers=bearer(gp), content=orjson.dumps(msg))
    assert r.status_code == 413
    assert r.json() == {"errors": [{"pointer": "", "message": "message larger than 256 KiB"}]}


# ------------------------------------------------------------- the pipeline

ODD_ORGS = ("B86001", "b86001", "EMP-ACME", "NOT-IN-DIRECTORY", "", " ", "*", ">", "B86001 ", "B86001\x00",
            "B86001\t",
            "💥", "A" * 500, "../..", "${jndi:x}", "'; DROP TABLE events;--")
FIXED_SUBJECTS = (
    "", ".", "..", "hub", "hub.inbound", "hub.inbound.", "hub.inbound.fit-note", "hub.inbound.x.y.z",
    "hub.inbound.fit-note.B86001.extra", "hub.inbound..B86001", "HUB.INBOUND.fit-note.B86001",
    "hub.inbound.*.B86001", "hub.inbound.>", "hub.deliver.B86001", "hub.inbound.milestone.B86001",
    "hub.inbound.absence-milestone.B86001", "hub.inbound.fit_note.B86001",
)
subjects = st.one_of(
    st.sampled_from(FIXED_SUBJECTS),
    st.builds(lambda kind, org: f"hub.inbound.{kind}.{org}",
              st.one_of(st.sampled_from(KINDS), st.sampled_from(["unknown", "FIT-NOTE", ""]), _SAFE_TEXT),
              st.one_of(st.sampled_from(ODD_ORGS), _SAFE_TEXT)),
    st.lists(st.one_of(st.sampled_from(["hub", "inbound", *KINDS, *ODD_ORGS]), _SAFE_TEXT),
             max_size=6).map(".".join),
)


@st.composite
def pipeline_cases(draw: st.DrawFn) -> tuple[str, bytes, Any]:
    """(subject, body, injected): hostile subjects with any body, and the right
    subject with hostile bodies (so the body is read, not refused for its subject)."""
    which = draw(st.sampled_from(["mutated", "free text", "subject"]))
    if which != "subject":
        kind, raw, injected = draw(mutated_examples() if which == "mutated" else fresh_hostile_free_text())
        subject = f"hub.inbound.{kind}.{EXAMPLE_ORG[kind]}"
    else:
        subject = draw(subjects)
        kind = draw(st.sampled_from(KINDS))
        raw, injected = draw(st.one_of(
            st.tuples(st.binary(max_size=500), st.none()),
            st.just((serialise(EXAMPLE[kind]), None)),
            json_values().map(lambda v: (serialise(v), v)),
        ))
        if draw(st.integers(0, 4)) == 0:  # now and then the example as it is: accepted, then a duplicate
            subject, raw = f"hub.inbound.{kind}.{EXAMPLE_ORG[kind]}", serialise(EXAMPLE[kind])
        injected = [subject, injected]  # the subject must not be echoed either
    return subject, raw, injected


async def test_fuzzed_process_inbound(hub) -> None:
    loop = asyncio.get_running_loop()
    outcomes: Counter[str] = Counter()

    @HTTP_SETTINGS
    @given(case=pipeline_cases())
    def fuzz(case: tuple[str, bytes, Any]) -> None:
        subject, raw, injected = case
        out = on_loop(loop, process_inbound(hub.deps, subject, raw, via="broker"))
        outcomes[out.outcome] += 1
        assert out.outcome in ("accepted", "duplicate", "dead-lettered"), out
        if out.outcome == "dead-lettered":
            assert isinstance(out.dead_letter_id, str) and out.dead_letter_id
            assert_errors([e.as_dict() for e in out.errors], injected)
        else:
            assert isinstance(out.event_id, str) and uuid.UUID(out.event_id)

    await asyncio.to_thread(fuzz)
    assert outcomes["dead-lettered"], outcomes


async def test_a_period_at_the_end_of_the_calendar_does_not_break_the_pipeline(hub) -> None:
    not_fit = {"fit_note.assessment": "not-fit", "fit_note.may_be_fit_advice": None}
    first = fit_note(**not_fit, **{"fit_note.period": {"start": "2026-11-20", "end": "9999-12-31"}})
    out = await process_inbound(hub.deps, "hub.inbound.fit-note.B86001", orjson.dumps(first))
    assert out.outcome in ("accepted", "dead-lettered")
    later = fit_note(**not_fit, **{"fit_note.period": {"start": "2026-11-21", "end": "2026-11-28"}})
    out = await process_inbound(hub.deps, "hub.inbound.fit-note.B86001", orjson.dumps(later))
    assert out.outcome == "accepted"


async def test_a_subject_with_nul_is_dead_lettered(hub) -> None:
    out = await process_inbound(hub.deps, "hub.inbound.fit-note.B86001\x00", serialise(EXAMPLE["fit-note"]))
    assert out.outcome == "dead-lettered"
