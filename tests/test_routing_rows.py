"""Every routing row of §8 beyond fit notes, through the real pipeline and
database: referrals (employer's OH provider, preferred provider, WorkWell,
signposting), Access to Work by nation, outcomes to employer and GP."""
from __future__ import annotations

import base64
import copy
import uuid
from datetime import datetime, timezone

import orjson
import pytest

from hub.clock import FixedClock
from hub.pipeline import process_inbound
from hub.streams import inbound_subject
from schemas.vocab import CATEGORY_SYSTEM, PURPOSE_SYSTEM
from tests.conftest import DELETE, example, fit_note, receive
from tests.test_fit_note_flow import record_consent, settled

NHS = "9434765919"


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc))  # after the outcome example
ALL = ["identity", "contact", "fitness-advice", "diagnosis", "referral", "clinical-notes", "adjustments",
       "atw-application"]


def everything_consent() -> dict:
    """A consent that permits every purpose and category: only §5's maxima limit what goes out."""
    consent = example("consent")
    consent["provision"] = {"type": "permit", "securityLabel": [{"system": CATEGORY_SYSTEM, "code": c} for c in ALL],
                            "purpose": [{"system": PURPOSE_SYSTEM, "code": p} for p in (
                                "employment-support", "occupational-health", "benefit-claim",
                                "return-to-work-support", "access-to-work", "direct-care")]}
    return consent


def referral(**changes) -> dict:
    msg = copy.deepcopy(example("oh-referral"))
    msg["message_id"] = str(uuid.uuid4())
    msg["referral"]["id"] = f"REF-{uuid.uuid4().hex[:8]}"
    msg["sent_at"] = "2026-11-21T10:00:00Z"
    msg["referral"]["created_on"] = "2026-11-21"
    for path, value in changes.items():
        node = msg
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return msg


async def run(hub, kind: str, msg: dict, org: str | None = None):
    return await process_inbound(hub.deps, inbound_subject(kind, org or msg["source"]["org_id"]), orjson.dumps(msg))


async def candidates(hub, event_id: str) -> dict[str, str]:
    async with hub.deps.uow() as uow:
        return {d.recipient_id: d.state for d in await uow.deliveries.search(event_id=event_id)}


async def test_referral_goes_to_the_employers_oh_provider(hub):
    out = await run(hub, "oh-referral", referral())
    assert out.outcome == "accepted"
    assert set(await candidates(hub, out.event_id)) == {"OHP-HEALTHWORKS"}


async def test_referral_goes_to_the_preferred_provider_when_named(hub):
    msg = referral(**{"referral.employment.employer_id": "EMP-CORNER-CAFE",
                      "referral.preferred_provider_id": "OHP-HEALTHWORKS"})
    out = await run(hub, "oh-referral", msg)
    assert set(await candidates(hub, out.event_id)) == {"OHP-HEALTHWORKS"}


@pytest.mark.parametrize("employment", [
    {"status": "employed", "employer_id": "EMP-CORNER-CAFE"},  # a micro firm with no OH provider
    {"status": "self-employed"},
    {"status": "unemployed"},
])
async def test_referral_without_oh_through_work_goes_to_workwell_for_the_area(hub, employment):
    msg = referral(**{"referral.employment": employment, "referral.patient.postcode": "BD1 1AA"})
    out = await run(hub, "oh-referral", msg)
    assert set(await candidates(hub, out.event_id)) == {"WW-WEST-YORKSHIRE"}


async def test_unknown_preferred_provider_is_unroutable_and_the_referral_still_goes(hub):
    out = await run(hub, "oh-referral", referral(**{"referral.preferred_provider_id": "OHP-UNKNOWN"}))
    assert set(await candidates(hub, out.event_id)) == {"OHP-HEALTHWORKS"}
    async with hub.deps.uow() as uow:
        (u,) = await uow.unroutable.search(event_id=out.event_id)
    assert u.org_id == "OHP-UNKNOWN" and u.role == "preferred-provider"


async def test_referral_with_nowhere_to_go_is_signposted_and_the_referrer_told(hub, creds):
    msg = referral(**{"source.org_id": "EMP-CORNER-CAFE",
                      "referral.referrer": {"type": "employer", "org_id": "EMP-CORNER-CAFE", "name": "Cafe owner"},
                      "referral.employment": {"status": "employed", "employer_id": "EMP-CORNER-CAFE"},
                      "referral.patient.postcode": "M1 1AE"})  # Manchester: no WorkWell in the directory
    out = await run(hub, "oh-referral", msg)
    assert out.outcome == "accepted" and await candidates(hub, out.event_id) == {"EMP-CORNER-CAFE": "pending"}
    async with hub.deps.uow() as uow:
        (record,) = await uow.signposting.search(nhs_number=NHS)
        (notice,) = await uow.deliveries.search(event_id=out.event_id)
        assert await uow.audit.count(action="routing.signposted") == 1
    assert record.reason == "Corner Cafe has no OH provider, and no WorkWell service covers postcode area M"
    assert record.notice_delivery_id == notice.delivery_id and notice.purpose == "signposting"
    assert notice.categories == [] and notice.channel == "webhook"
    from fhir.resources.R4B.bundle import Bundle

    async with hub.deps.uow() as uow:
        from sqlalchemy import select

        from hub import tables as t
        payload = (await uow.conn.execute(select(t.deliveries.c.payload).where(
            t.deliveries.c.delivery_id == notice.delivery_id))).scalar_one()
    bundle = Bundle.model_validate_json(payload)
    header = bundle.entry[0].resource
    assert header.response.identifier == out.event_id
    # not one of the six events of §3: its own code system and identifier system
    from schemas.vocab import EVENT_ID_SYSTEM, EVENT_TYPE_SYSTEM
    assert header.eventCoding.system != EVENT_TYPE_SYSTEM and bundle.identifier.system != EVENT_ID_SYSTEM
    assert NHS.encode() not in payload and b"Smith" not in payload  # the notice holds no personal data


async def test_self_referral_with_nowhere_to_go_is_still_kept_for_ig(hub):
    msg = referral(**{"referral.referrer": {"type": "self", "name": "Jane Smith"},
                      "referral.employment": {"status": "self-employed"},
                      "referral.patient.postcode": "M1 1AE"})
    out = await run(hub, "oh-referral", msg)
    assert out.outcome == "accepted" and await candidates(hub, out.event_id) == {}
    async with hub.deps.uow() as uow:
        (record,) = await uow.signposting.search(nhs_number=NHS)
    assert record.notice_delivery_id is None
    assert record.reason == ("the person is self-employed, so has no OH through work, "
                             "and no WorkWell service covers postcode area M")


async def test_access_to_work_goes_to_the_service_for_the_nation(hub):
    out = await run(hub, "access-to-work", example("access-to-work"))
    assert set(await candidates(hub, out.event_id)) == {"ATW-GB"}


async def test_access_to_work_refuses_northern_ireland_with_the_reason(hub):
    msg = example("access-to-work")
    msg["application"]["nation"] = "northern-ireland"
    out = await run(hub, "access-to-work", msg)
    assert out.outcome == "dead-lettered"
    (error,) = out.errors
    assert error.pointer == "/application/nation"
    assert "Northern Ireland" in error.message


async def test_outcome_goes_to_the_employer_cut_down_and_to_the_gp_with_clinical_notes(hub, creds):
    await record_consent(hub, creds, everything_consent())
    gp_pub = await run(hub, "fit-note", fit_note())  # the latest fit note names the GP practice B86001
    assert gp_pub.outcome == "accepted"
    await run(hub, "oh-referral", example("oh-referral"))
    outcome = example("oh-outcome")
    out = await run(hub, "oh-outcome", outcome)
    assert out.outcome == "accepted", out.errors
    assert await candidates(hub, out.event_id) == {"EMP-ACME": "pending", "B86001": "pending"}
    hub.relay.kick()
    await settled(hub, 3)
    acme = await creds.issue("recipient", "EMP-ACME")
    gp = await creds.issue("recipient", "B86001")
    employer_copy = [m for m in await receive(hub, acme, "EMP-ACME", expect=2)
                     if orjson.loads(m.data)["entry"][0]["resource"]["eventCoding"]["code"] == "oh-outcome-reported"]
    (employer_copy,) = employer_copy
    text = employer_copy.data.decode()
    assert "Sit-stand workstation" in text  # adjustments
    for withheld in ("Mechanical low back pain", NHS, "1984-03-02"):
        assert withheld not in text
    (gp_copy,) = await receive(hub, gp, "B86001", expect=1)
    (notes,) = [e["resource"] for e in orjson.loads(gp_copy.data)["entry"]
                if e["resource"]["resourceType"] == "DocumentReference"]
    assert b"Mechanical low back pain" in base64.b64decode(notes["content"][0]["attachment"]["data"])
    assert "DocumentReference" not in text  # the employer's copy has no clinical-notes resource at all


async def test_outcome_from_a_provider_about_another_provider_is_refused(hub):
    msg = example("oh-outcome")
    msg["outcome"]["provider_id"] = "OHP-OTHER"
    out = await run(hub, "oh-outcome", msg)
    assert out.outcome == "dead-lettered" and [e.pointer for e in out.errors] == ["/outcome/provider_id"]


async def test_outcome_goes_to_the_employer_of_this_persons_referral_only(hub, creds):
    """Another person's referral, from another employer, under the same referral
    id (ids are the referrers' own): the outcome still goes to the employer that
    referred this person, and nothing to the other one."""
    await record_consent(hub, creds, everything_consent())
    other = referral(**{"referral.id": example("oh-referral")["referral"]["id"],
                        "referral.patient.nhs_number": "9434765870",
                        "source.org_id": "EMP-CORNER-CAFE", "referral.referrer.org_id": "EMP-CORNER-CAFE",
                        "referral.employment.employer_id": "EMP-CORNER-CAFE"})
    assert (await run(hub, "oh-referral", example("oh-referral"))).outcome == "accepted"
    assert (await run(hub, "oh-referral", other)).outcome == "accepted"  # the newer of the two
    out = await run(hub, "oh-outcome", example("oh-outcome"))
    assert out.outcome == "accepted", out.errors
    assert set(await candidates(hub, out.event_id)) == {"EMP-ACME"}  # no fit note, so no GP


async def test_a_note_replacing_another_persons_note_is_not_their_replacement(hub, creds):
    """A note that names, as the note it replaces, one of the same GP's notes about
    someone else: that person's note stays current and their recipients get nothing."""
    await record_consent(hub, creds, everything_consent())
    jane = fit_note(**{"fit_note.assessment": "not-fit", "fit_note.may_be_fit_advice": DELETE})
    assert (await run(hub, "fit-note", jane)).outcome == "accepted"
    johns = {"fit_note.patient.nhs_number": "9434765870", "fit_note.employment.employer_id": "EMP-CORNER-CAFE"}
    control = await run(hub, "fit-note", fit_note(**johns))
    out = await run(hub, "fit-note", fit_note(**johns, **{"fit_note.replaces": jane["fit_note"]["id"]}))
    assert out.outcome == control.outcome == "accepted", out.errors
    assert set(await candidates(hub, out.event_id)) == set(await candidates(hub, control.event_id))
    assert not {"EMP-ACME", "OHP-HEALTHWORKS"} & set(await candidates(hub, out.event_id))  # Jane's recipients
    async with hub.deps.uow() as uow:
        (note,) = await uow.absence.current_not_fit(NHS) or [None]
    assert note is not None and note.superseded is False


def _route_with(edit_directory, **changes):
    """The example referral (with `changes`) routed against the demo directory as
    `edit_directory` changed it: the routing rules alone, no hub."""
    import yaml

    from adapters import adapt
    from hub.directory import DEMO_DIRECTORY, parse_directory
    from hub.routing import route

    data = yaml.safe_load(DEMO_DIRECTORY.read_text())
    edit_directory({o["id"]: o for o in data["organisations"]}, data["organisations"])
    directory = parse_directory(data)
    msg = referral(**changes)
    event = adapt("oh-referral", orjson.dumps(msg), subject_org_id=msg["source"]["org_id"], directory=directory,
                  now=datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc))
    return route(event, directory)


def test_a_preferred_provider_that_cannot_be_reached_falls_back_to_the_employers():
    def offline_provider(orgs, listed):
        listed.append({"id": "OHP-OFFLINE", "type": "oh-provider", "name": "Offline OH"})  # no delivery channel
    r = _route_with(offline_provider, **{"referral.preferred_provider_id": "OHP-OFFLINE"})
    assert [c.org.id for c in r.candidates] == ["OHP-HEALTHWORKS"] and r.signpost is None
    assert [(u.role, u.org_id, u.reason) for u in r.unroutable] == [
        ("preferred-provider", "OHP-OFFLINE", "Offline OH has no delivery channel")]


def test_a_referral_no_one_can_be_reached_for_is_signposted():
    def nobody_reachable(orgs, listed):
        del orgs["OHP-HEALTHWORKS"]["delivery"]
        orgs["WW-WEST-YORKSHIRE"]["areas"] = ["BD"]  # the person's area (LS) has no WorkWell service
    r = _route_with(nobody_reachable)
    assert r.candidates == ()
    assert r.signpost == ("Acme Logistics Ltd's OH provider HealthWorks Occupational Health cannot be reached, "
                          "and no WorkWell service covers postcode area LS")
