"""The IG console without a browser: its pages over httpx against the real app,
broker and database, and its plain-words functions on their own."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import httpx
import orjson
import pytest

from consent.fhir import parse_consent
from consent.model import Provision, day_end, day_start
from hub import ig
from hub.console import consent_state, describe_provision, session_csrf
from hub.directory import load_directory
from hub.pipeline import process_inbound
from hub.streams import inbound_subject
from tests.conftest import NOW, example, fit_note
from tests.test_fit_note_flow import record_consent, settled

NHS = "9434765919"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


# --- plain words ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def directory():
    return load_directory()


def test_describe_provision_reads_the_example_consent_in_plain_words(directory):
    record = parse_consent(example("consent"), consent_id="C-1", version=1)
    root = record.provision
    acme, oh = root.children
    assert describe_provision(acme, directory) == (
        "Permits Acme Logistics Ltd (EMP-ACME) to receive identity, fitness advice, adjustments "
        "for employment support, from 19 Nov 2026 until 19 Nov 2027")
    assert describe_provision(oh, directory) == (
        "Permits any organisation to receive identity, contact, fitness advice, diagnosis, referral, "
        "adjustments for occupational health")
    assert describe_provision(root, directory) == "Denies any data to any organisation for any purpose"


def test_describe_provision_denials_several_actors_and_open_periods(directory):
    from datetime import date

    deny = Provision(type="deny", purposes=frozenset({"occupational-health", "employment-support"}),
                     categories=frozenset({"diagnosis", "clinical-notes"}),
                     actors=frozenset({"OHP-HEALTHWORKS", "EMP-ACME", "EMP-GONE"}),
                     period_end=day_end(date(2027, 3, 1)), path="2")
    assert describe_provision(deny, directory) == (
        "Denies diagnosis, clinical notes to Acme Logistics Ltd (EMP-ACME), EMP-GONE (not in the directory) "
        "and HealthWorks Occupational Health (OHP-HEALTHWORKS) for employment support or occupational health, "
        "until 1 Mar 2027")
    permit = Provision(type="permit", purposes=frozenset({"access-to-work"}),
                       categories=frozenset({"atw-application"}), period_start=day_start(date(2026, 12, 3)))
    assert describe_provision(permit, directory) == (
        "Permits any organisation to receive Access to Work application for Access to Work, from 3 Dec 2026")


def test_consent_state_from_status_withdrawal_and_period():
    from dataclasses import replace

    record = parse_consent(example("consent"), consent_id="C-1", version=1)
    assert consent_state(record, NOW) == "active"
    assert consent_state(replace(record, withdrawn_at=NOW, status="inactive"), NOW) == "withdrawn"
    bounded = example("consent")
    bounded["provision"]["period"] = {"start": "2026-12-01", "end": "2027-01-31"}
    record = parse_consent(bounded, consent_id="C-2", version=1)
    assert consent_state(record, NOW) == "not yet in force"
    assert consent_state(record, datetime(2027, 2, 1, 12, tzinfo=timezone.utc)) == "expired"
    assert consent_state(record, datetime(2027, 1, 31, 23, 30, tzinfo=timezone.utc)) == "active"


# --- pages -----------------------------------------------------------------------------------

@pytest.fixture
async def http(hub):
    transport = httpx.ASGITransport(app=hub.api)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as client:
        yield client


async def sign_in(http: httpx.AsyncClient, token: str) -> httpx.Response:
    page = await http.get("/console/login")
    (csrf,) = CSRF.findall(page.text)
    return await http.post("/console/login", data={"csrf": csrf, "token": token})


@pytest.fixture
async def ig_token(creds):
    return (await creds.issue("ig-auditor"))["http_token"]


@pytest.fixture
async def signed_in(http, ig_token):
    r = await sign_in(http, ig_token)
    assert r.status_code == 303 and r.headers["location"] == "/console"
    return http


async def test_every_page_needs_a_session(http):
    for path in ("/console", "/console/break-glass", "/console/dead-letters", "/console/dead-letters/x",
                 "/console/dashboard"):
        r = await http.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/console/login?reason=required", path
    for path in ("/console/person", "/console/logout", "/console/break-glass/BG-1/review",
                 "/console/dead-letters/x/resubmit"):
        r = await http.post(path, data={"csrf": "x"})
        assert r.status_code == 303 and r.headers["location"].startswith("/console/login"), path
    r = await http.get("/console/login?reason=required")
    assert r.status_code == 200 and "Sign in with your IG token" in r.text


async def test_login_sets_a_strict_httponly_cookie_and_pages_open(http, ig_token):
    r = await sign_in(http, ig_token)
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("hub_console=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    r = await http.get("/console")
    assert r.status_code == 200 and "Person lookup" in r.text and "ig-auditor" in r.text
    assert r.headers["cache-control"] == "no-store" and "default-src 'none'" in r.headers["content-security-policy"]
    assert (await http.get("/console/login")).status_code == 303  # already signed in


async def test_wrong_token_and_wrong_role_are_refused(http, creds):
    r = await sign_in(http, "hub_not-a-real-token")
    assert r.status_code == 401 and "unknown or has been revoked" in r.text
    assert "hub_not-a-real-token" not in r.text and "hub_console=" not in r.headers.get("set-cookie", "")
    gp = await creds.issue("publisher", "B86001")
    r = await sign_in(http, gp["http_token"])
    assert r.status_code == 403 and "ig-auditor and admin" in r.text
    assert "hub_console=" not in r.headers.get("set-cookie", "")
    # a cookie holding another role's token is no session either
    http.cookies.set("hub_console", gp["http_token"])
    r = await http.get("/console")
    assert r.status_code == 303 and r.headers["location"] == "/console/login?reason=role"
    admin = await creds.issue("admin")
    assert (await sign_in(http, admin["http_token"])).status_code == 303


async def test_a_revoked_token_ends_the_session(hub, signed_in):
    from hub.credentials import revoke

    async with hub.deps.uow() as uow:
        (row,) = [r for r in await uow.credentials.active() if r.role == "ig-auditor"]
        await revoke(uow, hub.audit, row.credential_id, now=hub.clock.now())
        await uow.commit()
    r = await signed_in.get("/console/dashboard")
    assert r.status_code == 303 and r.headers["location"] == "/console/login?reason=revoked"


async def test_login_form_needs_its_csrf_token(http, ig_token):
    await http.get("/console/login")
    r = await http.post("/console/login", data={"token": ig_token})
    assert r.status_code == 403 and "hub_console=" not in r.headers.get("set-cookie", "")
    r = await http.post("/console/login", data={"token": ig_token, "csrf": "0" * 64})
    assert r.status_code == 403


async def test_posts_without_the_csrf_token_are_refused(hub, signed_in, ig_token):
    async with hub.deps.uow() as uow:
        bg = await ig.record_break_glass(uow, hub.audit, hub.directory, nhs_number=NHS, recipient_id="JCP-LEEDS",
                                         purpose="benefit-claim", justification="Claimant in crisis, urgent support",
                                         expires_at=NOW + timedelta(hours=24), actor="test", now=NOW)
        await uow.commit()
    posts = [("/console/person", {"nhs_number": NHS}),
             (f"/console/break-glass/{bg['break_glass_id']}/review", {"note": "checked"}),
             ("/console/dead-letters/x/resubmit", {"mode": "as-is"}),
             ("/console/logout", {})]
    for path, data in posts:
        r = await signed_in.post(path, data=data)
        assert r.status_code == 403 and "security token" in r.text, path
        r = await signed_in.post(path, data={**data, "csrf": session_csrf("hub_someone-else")})
        assert r.status_code == 403, path
    async with hub.deps.uow() as uow:
        assert (await uow.break_glass.get(bg["break_glass_id"])).reviewed_at is None
    # with the token, it goes through
    r = await signed_in.post(f"/console/break-glass/{bg['break_glass_id']}/review",
                             data={"note": "checked with the duty manager", "csrf": session_csrf(ig_token)})
    assert r.status_code == 303 and r.headers["location"] == "/console/break-glass"
    page = await signed_in.get("/console/break-glass")
    assert f"Break-glass {bg['break_glass_id']} marked reviewed." in page.text
    assert "Nothing waits for review." in page.text and "checked with the duty manager" in page.text
    # the flash is shown once
    assert "marked reviewed." not in (await signed_in.get("/console/break-glass")).text


async def test_person_lookup_never_echoes_an_invalid_nhs_number(signed_in, ig_token):
    for bad in ("1234567890", "94347659<b>x</b>", "98765x"):
        r = await signed_in.post("/console/person", data={"nhs_number": bad, "csrf": session_csrf(ig_token)})
        assert r.status_code == 422
        assert bad not in r.text and "<b>x</b>" not in r.text
        assert "The NHS number" in r.text


async def test_person_page_shows_consent_refusals_and_disclosures(hub, signed_in, ig_token, creds):
    await record_consent(hub, creds)
    out = await process_inbound(hub.deps, inbound_subject("fit-note", "B86001"), orjson.dumps(fit_note()))
    hub.relay.kick()
    await settled(hub, 1)
    r = await signed_in.post("/console/person", data={"nhs_number": "943 476 5919", "csrf": session_csrf(ig_token)})
    assert r.status_code == 200
    text = r.text
    assert "943 476 5919" in text
    assert ("Permits Acme Logistics Ltd (EMP-ACME) to receive identity, fitness advice, adjustments for "
            "employment support, from 19 Nov 2026 until 19 Nov 2027") in text
    assert "Denied: the issuing clinician did not allow the diagnosis to be shared with the employer" in text
    assert out.event_id[:8] in text
    assert 'action="/console/disclosures.csv"' in text
    assert text.count('class="sub decision') == 8  # 4 categories for each of the two recipients
    async with hub.deps.uow() as uow:
        assert await uow.audit.count(action="console.person-viewed") == 1
        (row,) = await uow.audit.search(action="console.person-viewed")
    assert NHS not in str(row.detail) and row.person == hub.audit.person(NHS)
    # the disclosures download, from the console itself (a CSRF-checked form post)
    r = await signed_in.post("/console/disclosures.csv", data={"nhs_number": NHS, "csrf": session_csrf(ig_token)})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert {line.split(",")[1] for line in r.text.splitlines()[1:]} == {"EMP-ACME", "OHP-HEALTHWORKS"}
    r = await signed_in.post("/console/disclosures.csv", data={"nhs_number": NHS})
    assert r.status_code == 403


async def test_text_from_the_database_is_escaped(hub, signed_in):
    async with hub.deps.uow() as uow:
        await ig.record_break_glass(uow, hub.audit, hub.directory, nhs_number=NHS, recipient_id="JCP-LEEDS",
                                    purpose="benefit-claim", justification="<script>alert('x')</script> urgent",
                                    expires_at=NOW + timedelta(hours=1), actor="test", now=NOW)
        await uow.commit()
    r = await signed_in.get("/console/break-glass")
    assert "<script>alert" not in r.text and "&lt;script&gt;alert(" in r.text


async def test_dead_letters_list_hides_payloads_and_dashboard_draws_svg(hub, signed_in):
    bad = fit_note(**{"fit_note.patient.postcode": "NOT A POSTCODE"})
    out = await process_inbound(hub.deps, inbound_subject("fit-note", "B86001"), orjson.dumps(bad))
    r = await signed_in.get("/console/dead-letters")
    assert r.status_code == 200 and "/fit_note/patient/postcode" in r.text
    assert "NOT A POSTCODE" not in r.text and "Smith" not in r.text
    r = await signed_in.get(f"/console/dead-letters/{out.dead_letter_id}")
    assert r.status_code == 200 and "NOT A POSTCODE" in r.text
    assert (await signed_in.get("/console/dead-letters/nope")).status_code == 404
    r = await signed_in.get("/console/dashboard")
    assert r.status_code == 200 and "<svg" in r.text and "dead letters" in r.text


async def test_a_withdrawn_consent_is_shown_as_withdrawn(hub, signed_in, ig_token, creds):
    from hub.consents import withdraw

    consent_id = await record_consent(hub, creds)
    async with hub.deps.uow() as uow:
        await withdraw(uow, hub.audit, consent_id, now=NOW, actor="test")
        await uow.commit()
    r = await signed_in.post("/console/person", data={"nhs_number": NHS, "csrf": session_csrf(ig_token)})
    assert r.status_code == 200
    assert re.search(rf'Consent <span class="mono">{consent_id}</span> <span class="badge bad">withdrawn</span>',
                     r.text)
    assert "<strong>withdrawn 21 Nov 2026 12:00</strong>" in r.text
