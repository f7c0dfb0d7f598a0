"""`hub demo`: a guided run against a running hub (`make run`).

It issues its own credentials (as `hub credential issue` would), records a
consent for a made-up test patient, publishes fit notes of different shapes
on the broker as the GP practice B86001, reads what each recipient's consumer
received, and asks the IG API what was withheld and why. Then it withdraws the
consent, publishes again and shows that nothing went out.
"""
from __future__ import annotations

import asyncio
import json
import random
import uuid
from datetime import date, timedelta
from pathlib import Path

import httpx
import nats
import orjson

from adapters import adapt
from hub.bootstrap import issue_credential_offline
from hub.clock import Clock
from hub.directory import load_directory
from hub.nats_auth import inbox_prefix
from hub.settings import Settings
from hub.streams import DELIVER_STREAM, INBOUND_STREAM, inbound_subject, recipient_consumer
from schemas.fhir import bundle_categories
from schemas.vocab import CATEGORY_SYSTEM, PURPOSE_SYSTEM

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RECIPIENTS = ("EMP-ACME", "OHP-HEALTHWORKS", "JCP-LEEDS", "ATW-GB", "B86001", "WW-WEST-YORKSHIRE")
PUBLISHERS = ("B86001", "EMP-ACME", "ATW-ONLINE", "OHP-HEALTHWORKS")


def random_test_nhs_number(rng: random.Random) -> str:
    """A random NHS number in the 999 test range with a valid check digit."""
    while True:
        digits = [9, 9, 9] + [rng.randrange(10) for _ in range(6)]
        check = 11 - sum(d * w for d, w in zip(digits, range(10, 1, -1))) % 11
        check = 0 if check == 11 else check
        if check != 10:
            return "".join(map(str, digits + [check]))


def _example(name: str) -> dict:
    return json.loads((EXAMPLES / f"{name}.example.json").read_text())


def _fit_note(nhs: str, today: date, *, assessment: str, status: str, employer: str | None) -> dict:
    msg = _example("fit-note")
    note = msg["fit_note"]
    msg["message_id"] = str(uuid.uuid4())
    msg["sent_at"] = Clock().now().isoformat()
    note["id"] = f"FN-B86001-DEMO-{uuid.uuid4().hex[:8]}"
    note["issued_on"] = note["assessed_on"] = today.isoformat()
    note["period"] = {"start": today.isoformat(), "end": (today + timedelta(days=21)).isoformat()}
    note["patient"]["nhs_number"] = nhs
    note["assessment"] = assessment
    if assessment != "may-be-fit":
        note.pop("may_be_fit_advice", None)
    note["employment"] = {"status": status, **({"employer_id": employer} if employer else {})}
    return msg


class _Api:
    def __init__(self, base: str, token: str) -> None:
        self.client = httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=10)

    async def get(self, path: str, **params) -> dict:
        r = await self.client.get(path, params=params)
        r.raise_for_status()
        return r.json()


async def _issue(settings: Settings, role: str, org: str | None = None) -> dict:
    return await issue_credential_offline(settings, role=role, org_id=org)


async def _connect(settings: Settings, cred: dict, org: str):
    for attempt in range(20):  # the server reloads its users asynchronously after SIGHUP
        try:
            return await nats.connect(settings.broker_servers, user=cred["nats_user"], password=cred["nats_password"],
                                      inbox_prefix=inbox_prefix(org), allow_reconnect=False, connect_timeout=2)
        except Exception:  # noqa: BLE001
            await asyncio.sleep(0.25)
    raise RuntimeError(f"could not connect to the broker as {org}")


async def _drain(settings: Settings, cred: dict, org: str, event_ids: set[str]) -> list[dict]:
    """Fetch and ack what `org` received; keep this run's bundles."""
    nc = await _connect(settings, cred, org)
    out = []
    try:
        sub = await nc.jetstream().pull_subscribe_bind(recipient_consumer(org), stream=DELIVER_STREAM)
        while True:
            try:
                msgs = await sub.fetch(batch=50, timeout=1.0)
            except TimeoutError:  # nats-py raises its own subclass or the plain asyncio one
                break
            for m in msgs:
                await m.ack()
                bundle = orjson.loads(m.data)
                if bundle["identifier"]["value"] in event_ids:
                    out.append({"headers": m.headers or {}, "bundle": bundle})
    finally:
        await nc.close()
    return out


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


async def _wait_for(ig: _Api, nhs: str, event_ids: set[str], timeout: float = 20.0) -> list[dict]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        rows = [d for d in (await ig.get("/api/v1/deliveries", nhs_number=nhs))["deliveries"]
                if d["event_id"] in event_ids]
        seen = {d["event_id"] for d in rows}
        settled = all(d["state"] in ("delivered", "withheld") for d in rows)
        if seen >= event_ids and settled:
            return rows
        if loop.time() > deadline:
            raise RuntimeError("the hub did not process the demo's fit notes in time; is `hub run` running?")
        await asyncio.sleep(0.3)


def _message(kind: str, nhs: str, today: date, **body) -> dict:
    """An example message of `kind` for the demo patient, dated today, with `body` fields replaced."""
    msg = _example(kind)
    key = {"oh-referral": "referral", "access-to-work": "application", "oh-outcome": "outcome"}[kind]
    msg["message_id"] = str(uuid.uuid4())
    msg["sent_at"] = Clock().now().isoformat()
    inner = msg[key]
    inner["id"] = f"{inner['id']}-DEMO-{uuid.uuid4().hex[:6]}"
    person = inner.get("patient") or inner.get("applicant")
    person["nhs_number"] = nhs
    for date_field in ("created_on", "submitted_on", "assessed_on"):
        if date_field in inner:
            inner[date_field] = today.isoformat()
    inner.update(body)
    return msg


async def run_demo(settings: Settings, base_url: str) -> int:
    rng = random.Random()
    today = Clock().today_uk()
    nhs = random_test_nhs_number(rng)
    print(f"hub demo against {base_url}; test patient NHS number {nhs}\n")

    consent_client = await _issue(settings, "consent-client")
    ig_cred = await _issue(settings, "ig-auditor")
    publishers = {org: await _issue(settings, "publisher", org) for org in PUBLISHERS}
    recipients = {org: await _issue(settings, "recipient", org) for org in RECIPIENTS}
    consents = _Api(base_url, consent_client["http_token"])
    ig = _Api(base_url, ig_cred["http_token"])
    show = _Show(settings, publishers, recipients, ig, nhs)

    # 1. consent: Acme may have identity, fitness advice and adjustments for employment
    #    support; any OH provider what it needs for occupational health; Access to Work its
    #    application; the GP the outcome for direct care. Nothing for benefit-claim.
    consent = _example("consent")
    consent["patient"]["identifier"]["value"] = nhs
    consent["dateTime"] = Clock().now().isoformat()
    consent["provision"]["provision"][0]["period"] = {"start": today.isoformat(),
                                                      "end": (today + timedelta(days=365)).isoformat()}
    consent["provision"]["provision"] += [
        _permit("access-to-work", "identity", "contact", "atw-application", "adjustments"),
        _permit("direct-care", "identity", "fitness-advice", "adjustments", "clinical-notes"),
    ]
    r = await consents.client.post("/fhir/Consent", content=json.dumps(consent),
                                   headers={"Content-Type": "application/fhir+json"})
    r.raise_for_status()
    consent_id = r.json()["id"]
    print(f"1. consent {consent_id} recorded: EMP-ACME employment-support (identity, fitness-advice, "
          "adjustments); any OH provider occupational-health; Access to Work; the GP for direct care. "
          "Nothing for benefit-claim.\n")

    shown = await show.round("2. fit notes published by the GP practice B86001", [
        ("may-be-fit, employed at Acme", "fit-note", "B86001",
         _fit_note(nhs, today, assessment="may-be-fit", status="employed", employer="EMP-ACME")),
        ("not-fit, employed at Acme", "fit-note", "B86001",
         _fit_note(nhs, today, assessment="not-fit", status="employed", employer="EMP-ACME")),
        ("not-fit, unemployed (LS)", "fit-note", "B86001",
         _fit_note(nhs, today, assessment="not-fit", status="unemployed", employer=None)),
    ])
    backdated = _fit_note(nhs, today, assessment="not-fit", status="employed", employer="EMP-ACME")
    backdated["fit_note"]["period"] = {"start": (today - timedelta(days=30)).isoformat(),
                                       "end": (today + timedelta(days=7)).isoformat()}
    referral = _message("oh-referral", nhs, today, absence_started_on=(today - timedelta(days=30)).isoformat())
    outcome = _message("oh-outcome", nhs, today, referral_id=referral["referral"]["id"])
    shown += await show.round("3. a referral, an Access to Work request, an OH outcome, and a long absence", [
        ("OH referral from Acme", "oh-referral", "EMP-ACME", referral),
        ("Access to Work request", "access-to-work", "ATW-ONLINE", _message("access-to-work", nhs, today)),
        ("OH outcome from HealthWorks", "oh-outcome", "OHP-HEALTHWORKS", outcome),
        ("not-fit for 30 days so far", "fit-note", "B86001", backdated),
    ], milestones=True)

    r = await consents.client.post(f"/fhir/Consent/{consent_id}/$withdraw")
    r.raise_for_status()
    print(f"4. consent {consent_id} withdrawn (status {r.json()['status']}).\n")
    shown_after = await show.round("5. published again", [
        ("may-be-fit, employed at Acme (after withdrawal)", "fit-note", "B86001",
         _fit_note(nhs, today, assessment="may-be-fit", status="employed", employer="EMP-ACME")),
    ])

    report = (await ig.get("/api/v1/disclosures", nhs_number=nhs))["disclosures"]
    print(f"6. disclosure report for {nhs} (GET /api/v1/disclosures; also as CSV for a subject access request):\n"
          + _table([[d["delivered_at"][:19].replace("T", " "), f"{d['recipient_name']} ({d['recipient_id']})",
                     d["event_type"], ", ".join(d["categories"]),
                     ", ".join(d["consents"] + d["break_glass"])] for d in report],
                   ["delivered (UTC)", "recipient", "event", "categories given", "under consent"]) + "\n")

    ok = shown > 0 and shown_after == 0 and len(report) == shown
    print("demo " + ("finished: deliveries before the withdrawal, none after." if ok else "found something unexpected."))
    return 0 if ok else 1


def _permit(purpose: str, *categories: str) -> dict:
    return {"type": "permit",
            "purpose": [{"system": PURPOSE_SYSTEM, "code": purpose}],
            "securityLabel": [{"system": CATEGORY_SYSTEM, "code": c} for c in categories]}


class _Show:
    """Publish messages as their publishers; print, per candidate recipient, what it
    received (the categories of the bundle its consumer gave it) or why not."""

    def __init__(self, settings: Settings, publishers: dict, recipients: dict, ig: _Api, nhs: str) -> None:
        self.settings, self.publishers, self.recipients, self.ig, self.nhs = settings, publishers, recipients, ig, nhs
        self.directory = load_directory(settings.directory)

    async def round(self, title: str, messages: list[tuple[str, str, str, dict]], milestones: bool = False) -> int:
        labels: dict[str, str] = {}  # event id -> label; ids derive from the messages, as the hub derives them
        for label, kind, org, msg in messages:
            event = adapt(kind, orjson.dumps(msg), subject_org_id=org, directory=self.directory, now=Clock().now())
            if not hasattr(event, "event_id"):
                raise RuntimeError(f"demo message {label!r} is invalid: {event.errors}")
            labels[event.event_id] = label
            nc = await _connect(self.settings, self.publishers[org], org)
            await nc.jetstream().publish(inbound_subject(kind, org), orjson.dumps(msg), stream=INBOUND_STREAM)
            await nc.close()
        await _wait_for(self.ig, self.nhs, set(labels))
        if milestones:  # the hub's own events: the 28-day milestone a backdated note set off
            for e in (await self.ig.get("/api/v1/events", nhs_number=self.nhs, kind="absence-milestone"))["events"]:
                labels.setdefault(e["event_id"], "absence milestone (the hub, day 28)")
        deliveries = await _wait_for(self.ig, self.nhs, set(labels))
        decisions = [d for d in (await self.ig.get("/api/v1/decisions", nhs_number=self.nhs))["decisions"]
                     if d["event_id"] in labels]
        received = {org: await _drain(self.settings, cred, org, set(labels)) for org, cred in self.recipients.items()}
        order = list(labels)
        rows: list[list[str]] = []
        got = 0
        for d in sorted(deliveries, key=lambda d: (order.index(d["event_id"]), d["recipient_id"])):
            bundles = [b for b in received.get(d["recipient_id"], [])
                       if b["bundle"]["identifier"]["value"] == d["event_id"]]
            if bundles:
                got += 1
                what = "received " + ", ".join(sorted(bundle_categories(bundles[0]["bundle"])))
            else:
                what = f"nothing ({d['state']})"
            rows.append([labels[d["event_id"]], d["recipient_id"], what])
            for x in decisions:
                if x["event_id"] == d["event_id"] and x["recipient_id"] == d["recipient_id"] and x["outcome"] == "deny":
                    rows.append(["", "", f"  {x['category']}: {x['reason']}"])
        print(f"{title}:\n" + _table(rows, ["message", "recipient", "what it got / why not"]) + "\n")
        return got


__all__ = ["run_demo", "random_test_nhs_number"]
