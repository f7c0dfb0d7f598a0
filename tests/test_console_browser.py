"""The IG console in a real browser: the hub runs (embedded nats-server, SQLite
file), uvicorn serves its app on a loopback port, data arrives through the real
pipeline, and Debian's Chromium, driven by Playwright, does what an IG officer
does. Screenshots of each step go to test-artifacts/console/."""
from __future__ import annotations

import asyncio
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
import uvicorn

from hub import ig
from hub.pipeline import process_inbound
from hub.streams import inbound_subject
from tests.conftest import NOW, fit_note
from tests.natsutil import free_port
from tests.test_fit_note_flow import record_consent, settled
from tests.test_routing_rows import referral

playwright_api = pytest.importorskip("playwright.async_api", reason="playwright is in the test extras")
async_playwright, expect = playwright_api.async_playwright, playwright_api.expect

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "console"
NHS = "9434765919"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"{CHROMIUM} is missing: `make test` installs Debian's chromium")


@pytest.fixture
async def served(hub):
    """hub.api on a free loopback port, by uvicorn, in this event loop."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(hub.api, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, lifespan="off"))
    task = asyncio.create_task(server.serve())
    for _ in range(250):
        if server.started or task.done():
            break
        await asyncio.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def page():
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-GB")
            yield await context.new_page()
        finally:
            await browser.close()


def at(day: int, hour: int = 10) -> datetime:
    return datetime(2026, 11, day, hour, 0, tzinfo=timezone.utc)


async def inbound(hub, msg: dict, kind: str = "fit-note", org: str = "B86001"):
    out = await process_inbound(hub.deps, inbound_subject(kind, org), orjson.dumps(msg))
    hub.relay.kick()
    return out


async def seed(hub, creds) -> dict:
    """A few days of traffic through the real pipeline: dead letters, deliveries and
    refusals, a signposted referral, a break-glass that a later note relies on."""
    clock = hub.clock
    clock.set(at(12))
    await inbound(hub, fit_note(**{"fit_note.patient.postcode": "NOT A POSTCODE"}))
    clock.set(at(16, 15))
    await inbound(hub, fit_note(**{"fit_note.assessment": "maybe"}))
    clock.set(at(20))
    consent_id = await record_consent(hub, creds)
    await inbound(hub, fit_note())  # may-be-fit at Acme: Acme (cut down) and its OH provider
    await settled(hub, 1)
    clock.set(NOW)
    unemployed = fit_note(**{"fit_note.employment": {"status": "unemployed"}, "fit_note.assessment": "not-fit"})
    unemployed["fit_note"].pop("may_be_fit_advice")
    await inbound(hub, unemployed)  # the Jobcentre: refused, the consent does not cover benefit-claim
    await inbound(hub, referral(**{"referral.referrer": {"type": "self", "name": "Jane Smith"},
                                   "referral.employment": {"status": "self-employed"},
                                   "referral.patient.postcode": "M1 1AE"}), kind="oh-referral", org="EMP-ACME")
    await settled(hub, 3)
    async with hub.deps.uow() as uow:
        bg = await ig.record_break_glass(
            uow, hub.audit, hub.directory, nhs_number=NHS, recipient_id="JCP-LEEDS", purpose="benefit-claim",
            justification="Claimant at risk of losing benefit; DWP duty manager asked by phone",
            expires_at=NOW + timedelta(hours=48), actor="cred-ig-officer", now=NOW)
        await uow.commit()
    second = fit_note(**{"fit_note.employment": {"status": "unemployed"}, "fit_note.assessment": "not-fit"})
    second["fit_note"].pop("may_be_fit_advice")
    await inbound(hub, second)  # under the break-glass: delivered to the Jobcentre
    dentist = fit_note(**{"fit_note.issuer.profession": "dentist"})
    dead = await inbound(hub, dentist)
    await settled(hub, 4)
    return {"consent_id": consent_id, "break_glass_id": bg["break_glass_id"], "dead_letter_id": dead.dead_letter_id}


async def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


@pytest.mark.timeout(240)
async def test_an_ig_officer_works_through_the_console(hub, creds, served, page):
    if SHOTS.exists():
        shutil.rmtree(SHOTS)
    seeded = await seed(hub, creds)
    token = (await creds.issue("ig-auditor"))["http_token"]
    base = served

    # 1. every page sends a stranger to the login form; a wrong token is refused
    await page.goto(f"{base}/console/dead-letters")
    await expect(page).to_have_url(f"{base}/console/login?reason=required")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Sign in to the IG console")
    await shot(page, "01-login")
    await page.get_by_label("Bearer token").fill("hub_not-a-real-token")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_have_text("That token is unknown or has been revoked.")
    await shot(page, "02-login-refused")
    await page.get_by_label("Bearer token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(f"{base}/console")
    cookie = next(c for c in await page.context.cookies() if c["name"] == "hub_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    # 2. person lookup: an invalid number is refused without being repeated
    await page.get_by_label("NHS number").fill("943 476 5918")
    await page.get_by_role("button", name="Look up").click()
    await expect(page.get_by_role("alert")).to_contain_text("The NHS number is not a valid NHS number")
    assert "5918" not in await page.content()
    await shot(page, "03-lookup-invalid")
    await page.get_by_label("NHS number").fill("943 476 5919")
    await page.get_by_role("button", name="Look up").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Person 943 476 5919")
    consent = page.locator(".consent")
    await expect(consent).to_contain_text(
        "Permits Acme Logistics Ltd (EMP-ACME) to receive identity, fitness advice, adjustments for employment "
        "support, from 19 Nov 2026 until 19 Nov 2027")
    await expect(consent.locator(".badge").first).to_have_text("active")
    newest = page.locator("tr.group").first  # the note that went out under the break-glass
    await expect(newest).to_contain_text("Leeds City Jobcentre (JCP-LEEDS)")
    await expect(newest.locator(".badge")).to_have_text("delivered")
    await expect(page.locator("tr.decision.deny").first).to_be_visible()
    reason = f"Denied: consent {seeded['consent_id']} does not allow benefit-claim / identity (its default is deny)"
    await expect(page.locator("table.timeline")).to_contain_text(reason)
    await expect(page.locator("table.timeline")).to_contain_text(
        "Denied: the issuing clinician did not allow the diagnosis to be shared with the employer")
    await expect(page.locator("table.timeline")).to_contain_text("Permitted by break-glass")
    async with page.expect_download() as download_info:
        await page.get_by_role("button", name="Download the disclosures as CSV").click()
    download = await download_info.value
    assert download.suggested_filename == f"disclosures-{NHS}.csv"
    csv_text = Path(await download.path()).read_text()
    assert csv_text.splitlines()[0].startswith("delivered_at,recipient_id,recipient_name")
    assert "Leeds City Jobcentre" in csv_text
    await expect(page.locator("span.badge", has_text=f"break-glass {seeded['break_glass_id']}")).to_be_visible()
    await expect(page.locator("body")).to_contain_text(
        "the person is self-employed, so has no OH through work, and no WorkWell service covers postcode area M")
    assert NHS not in page.url
    await shot(page, "04-person")

    # 3. the break-glass review queue
    await page.get_by_role("link", name="Break-glass review").click()
    card = page.locator(f"#{seeded['break_glass_id']}")
    await expect(card).to_contain_text("Claimant at risk of losing benefit")
    await expect(card).to_contain_text("Leeds City Jobcentre (JCP-LEEDS)")
    await expect(card).to_contain_text("relied on for 1 event")
    await shot(page, "05-break-glass-queue")
    await card.get_by_label("Review note").fill("Checked with the DWP duty manager: justified, one delivery made.")
    await card.get_by_role("button", name="Mark reviewed").click()
    await expect(page.locator(".flash.ok")).to_have_text(f"Break-glass {seeded['break_glass_id']} marked reviewed.")
    await expect(page.locator(f"#{seeded['break_glass_id']}")).to_have_count(0)
    await expect(page.locator("tr.reviewed")).to_contain_text("Checked with the DWP duty manager")
    await expect(page.locator("#waiting")).to_have_text("Waiting for review (0)")
    await shot(page, "06-break-glass-reviewed")

    # 4. dead letters: the list names what was wrong, never the message; the detail view resubmits
    await page.get_by_role("link", name="Dead letters").click()
    rows = page.locator("tr.dead-letter")
    await expect(rows).to_have_count(3)
    await expect(page.locator("table")).not_to_contain_text("NOT A POSTCODE")
    await shot(page, "07-dead-letters")
    await rows.filter(has_text="/fit_note/issuer/profession").get_by_role("link", name="View").click()
    await expect(page).to_have_url(f"{base}/console/dead-letters/{seeded['dead_letter_id']}")
    await expect(page.locator("pre.payload")).to_contain_text('"profession":"dentist"')
    await expect(page.locator("#status")).to_have_text("open")
    await shot(page, "08-dead-letter")
    corrected = (await page.get_by_label("Or correct it").input_value()).replace('"dentist"', '"gp"')
    await page.get_by_label("Or correct it").fill(corrected)
    await page.get_by_role("button", name="Resubmit the corrected message").click()
    await expect(page.locator(".flash.ok")).to_contain_text("Resubmitted with your correction")
    await expect(page.locator("#status")).to_have_text("resubmitted")
    await shot(page, "09-dead-letter-resubmitted")
    await settled(hub, 5)  # the corrected note became an event
    await page.goto(f"{base}/console/dead-letters")
    await expect(page.locator("tr.dead-letter")).to_have_count(2)

    # 5. the dashboard
    await page.get_by_role("link", name="Dashboard").click()
    chart = page.locator("svg.chart")
    await expect(chart).to_be_visible()
    assert await chart.locator("rect").count() >= 4
    await expect(page.locator(".totals")).to_contain_text("Break-glass waiting for review")
    await shot(page, "10-dashboard")

    # 6. signing out ends the session
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("alert")).to_have_text("You have signed out.")
    await page.goto(f"{base}/console/dashboard")
    await expect(page).to_have_url(f"{base}/console/login?reason=required")
    await shot(page, "11-signed-out")
