"""The HTTP API (contract §9): thin routes over the service functions.

Every path but /health needs `Authorization: Bearer <token>`; each route names
the roles it admits. Errors name fields (JSON pointers), never values.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response

from consent.fhir import ConsentInvalid
from hub import consents as consent_service
from hub import credentials
from hub import ig as ig_service
from hub import metrics, redelivery
from hub.fhir_audit import audit_event
from hub.credentials import Principal
from hub.pipeline import check, record_rejection
from hub.streams import INBOUND_STREAM, inbound_subject
from schemas import identifiers
from schemas.events import Rejected
from schemas.vocab import NHS_NUMBER_SYSTEM, SOURCE_KINDS

if TYPE_CHECKING:
    from hub.bootstrap import Hub

from adapters import MAX_MESSAGE_BYTES as MAX_INBOUND_BYTES  # one cap for broker and HTTP
FHIR_JSON = "application/fhir+json"


def _hub(request: Request) -> "Hub":
    return request.app.state.hub


def _json(data: Any, status: int = 200, media_type: str = "application/json", headers: dict | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=media_type, headers=headers)


def _errors(status: int, errors: list[dict]) -> Response:
    return _json({"errors": errors}, status)


def _outcome(status: int, errors: list[dict], code: str = "invalid") -> Response:
    """FHIR endpoints answer errors as an OperationOutcome."""
    issues = [{"severity": "error", "code": code, "diagnostics": e["message"],
               **({"location": [e["pointer"]]} if e.get("pointer") is not None else {})} for e in errors]
    return _json({"resourceType": "OperationOutcome", "issue": issues}, status, FHIR_JSON)


async def principal(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
    async with _hub(request).deps.uow() as uow:
        who = await credentials.authenticate(uow, token.strip())
    if who is None:
        raise HTTPException(401, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"})
    return who


async def any_credential(request: Request) -> Principal:
    """The API's own descriptions (contract §9: every path but /health needs a
    credential): any live credential, as a bearer token or as the IG console's
    session cookie, so that a browser signed in to the console can read /docs."""
    from hub.console import SESSION_COOKIE, principal_for

    if request.headers.get("authorization"):
        return await principal(request)
    token = request.cookies.get(SESSION_COOKIE)
    who = await principal_for(request, token) if token else None
    if who is None:
        raise HTTPException(401, "a bearer token (or a console session) is required",
                            headers={"WWW-Authenticate": "Bearer"})
    return who


def require(*roles: str):
    async def _check(who: Principal = Depends(principal)) -> Principal:
        if who.role not in roles:
            raise HTTPException(403, f"this needs one of the roles: {', '.join(roles)}")
        return who
    return _check


def _nhs(value: str) -> str:
    try:
        return identifiers.nhs_number(value)
    except ValueError as exc:
        raise HTTPException(422, f"nhs_number {exc}") from None


# --- inbound --------------------------------------------------------------------------

inbound = APIRouter(tags=["inbound"])


@inbound.post("/api/v1/inbound/{kind}", status_code=202,
              responses={202: {"description": "durably held; body has the event id"},
                         422: {"description": "refused: errors as JSON pointer + message"}})
async def post_inbound(kind: str, request: Request, who: Principal = Depends(require("publisher"))):
    """Same as publishing to hub.inbound.{kind}.{org_id} (§2): 202 once the
    message is durably held in JetStream, 422 with the errors of §6."""
    hub = _hub(request)
    if kind not in SOURCE_KINDS:
        raise HTTPException(404, f"unknown kind; one of {', '.join(SOURCE_KINDS)}")
    raw = await request.body()
    if len(raw) > MAX_INBOUND_BYTES:
        return _errors(413, [{"pointer": "", "message": "message larger than 256 KiB"}])
    result = check(kind, raw, org_id=None, deps=hub.deps)
    if result.source_org_id and result.source_org_id != who.org_id:
        return _errors(403, [{"pointer": "/source/org_id", "message": "does not match the credential's organisation"}])
    subject = inbound_subject(kind, who.org_id)
    if isinstance(result, Rejected):
        out = await record_rejection(hub.deps, kind, subject, raw, result, via="http")
        metrics.EVENTS_IN.labels(kind, "dead-lettered").inc()
        hub.relay.kick()
        return _json({"errors": [e.as_dict() for e in result.errors], "dead_letter_id": out.dead_letter_id}, 422)
    await hub.js.publish(subject, raw, stream=INBOUND_STREAM, timeout=10,
                         headers={"Nats-Msg-Id": f"{who.org_id}:{result.message_id}"})
    return _json({"event_id": result.event_id, "status": "accepted"}, 202)


# --- consent (FHIR) --------------------------------------------------------------------

fhir = APIRouter(tags=["consent"])
CONSENT_WRITERS = ("consent-client", "admin")
CONSENT_READERS = ("consent-client", "admin", "ig-auditor")


async def _fhir_body(request: Request) -> dict:
    try:
        data = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise _Invalid([{"pointer": "", "message": "not valid JSON"}]) from None
    if not isinstance(data, dict):
        raise _Invalid([{"pointer": "", "message": "must be a JSON object (a FHIR Consent)"}])
    return data


class _Invalid(Exception):
    def __init__(self, errors: list[dict]) -> None:
        self.errors = errors


@fhir.post("/fhir/Consent", status_code=201)
async def create_consent(request: Request, who: Principal = Depends(require(*CONSENT_WRITERS))):
    hub = _hub(request)
    data = await _fhir_body(request)
    async with hub.deps.uow() as uow:
        resource = await consent_service.create(uow, hub.deps.audit, data, now=hub.deps.clock.now(),
                                                actor=who.credential_id)
        await uow.commit()
    return _json(resource, 201, FHIR_JSON, headers={
        "Location": f"/fhir/Consent/{resource['id']}/_history/{resource['meta']['versionId']}"})


@fhir.get("/fhir/Consent")
async def search_consents(request: Request, who: Principal = Depends(require(*CONSENT_READERS))):
    """?patient:identifier=https://fhir.nhs.uk/Id/nhs-number|<nhs_number>
    (also accepted as patient.identifier, and with the bare number)."""
    q = request.query_params
    value = q.get("patient:identifier") or q.get("patient.identifier") or q.get("patient-identifier")
    if not value:
        return _outcome(400, [{"pointer": None, "message": "search needs patient:identifier"}], "required")
    system, sep, number = value.rpartition("|")
    if sep and system and system != NHS_NUMBER_SYSTEM:
        return _outcome(400, [{"pointer": None, "message": f"identifier system must be {NHS_NUMBER_SYSTEM}"}])
    nhs = _nhs(number)
    async with _hub(request).deps.uow() as uow:
        found = await consent_service.search(uow, nhs)
    return _json({"resourceType": "Bundle", "type": "searchset", "total": len(found),
                  "entry": [{"fullUrl": f"Consent/{r['id']}", "resource": r, "search": {"mode": "match"}}
                            for r in found]}, media_type=FHIR_JSON)


@fhir.get("/fhir/Consent/{consent_id}")
async def read_consent(consent_id: str, request: Request, who: Principal = Depends(require(*CONSENT_READERS))):
    async with _hub(request).deps.uow() as uow:
        try:
            return _json(await consent_service.get(uow, consent_id), media_type=FHIR_JSON)
        except consent_service.ConsentNotFound:
            return _outcome(404, [{"pointer": None, "message": "no such Consent"}], "not-found")


@fhir.put("/fhir/Consent/{consent_id}")
async def update_consent(consent_id: str, request: Request, who: Principal = Depends(require(*CONSENT_WRITERS))):
    """A new version; status `inactive` withdraws the consent."""
    hub = _hub(request)
    data = await _fhir_body(request)
    async with hub.deps.uow() as uow:
        try:
            resource = await consent_service.update(uow, hub.deps.audit, consent_id, data,
                                                    now=hub.deps.clock.now(), actor=who.credential_id)
        except consent_service.ConsentNotFound:
            return _outcome(404, [{"pointer": None, "message": "no such Consent"}], "not-found")
        await uow.commit()
    return _json(resource, media_type=FHIR_JSON)


@fhir.post("/fhir/Consent/{consent_id}/$withdraw")
async def withdraw_consent(consent_id: str, request: Request, who: Principal = Depends(require(*CONSENT_WRITERS))):
    hub = _hub(request)
    async with hub.deps.uow() as uow:
        try:
            resource = await consent_service.withdraw(uow, hub.deps.audit, consent_id, now=hub.deps.clock.now(),
                                                      actor=who.credential_id)
        except consent_service.ConsentNotFound:
            return _outcome(404, [{"pointer": None, "message": "no such Consent"}], "not-found")
        await uow.commit()
    return _json(resource, media_type=FHIR_JSON)


# --- information governance and operations ------------------------------------------------

ig = APIRouter(tags=["information governance"])
IG = ("ig-auditor", "admin")


def _row(r: Any, drop: tuple[str, ...] = ()) -> dict:
    d = {str(k): v for k, v in r._mapping.items()}
    for k in drop:
        d.pop(k, None)
    for k, v in d.items():
        if isinstance(v, datetime):
            d[k] = v.isoformat()
    return d


@ig.get("/api/v1/decisions")
async def list_decisions(request: Request, nhs_number: str | None = None, recipient: str | None = None,
                         outcome: str | None = Query(None, pattern="^(permit|deny)$"), event_id: str | None = None,
                         since: datetime | None = None, until: datetime | None = None,
                         limit: int = Query(500, ge=1, le=5000),
                         who: Principal = Depends(require(*IG))):
    """Every consent decision (permit and deny) with its reason and the consents it
    used, oldest first, at most `limit`: `truncated` says whether more match (ask
    again with a later `since`, or a larger `limit`)."""
    nhs = _nhs(nhs_number) if nhs_number else None
    async with _hub(request).deps.uow() as uow:
        rows = await uow.decisions.search(nhs_number=nhs, recipient_id=recipient, outcome=outcome,
                                          event_id=event_id, since=since, until=until, limit=limit + 1)
    return _json({"decisions": [_row(r) for r in rows[:limit]], "truncated": len(rows) > limit})


@ig.get("/api/v1/decisions/{decision_id}")
async def explain_decision(decision_id: str, request: Request, who: Principal = Depends(require(*IG))):
    """One decision, explained: the request, the outcome, the rule, the reason,
    and the consent versions (as they were then) that decided it."""
    async with _hub(request).deps.uow() as uow:
        (row,) = await uow.decisions.search(decision_id=decision_id, limit=1) or (None,)
        if row is None:
            raise HTTPException(404, "no such decision")
        consents = []
        for b in row.basis:
            version = await uow.consents.version(b["consent_id"], b["version"]) if b["version"] else None
            consents.append({**b, "resource": version.resource if version else None})
    return _json({**_row(row), "consents": consents})


@ig.get("/api/v1/deliveries")
async def list_deliveries(request: Request, nhs_number: str | None = None, recipient: str | None = None,
                          state: str | None = None, event_id: str | None = None,
                          limit: int = Query(500, ge=1, le=5000), who: Principal = Depends(require(*IG))):
    """Per candidate recipient: pending, delivered, retrying or withheld, with the categories given."""
    nhs = _nhs(nhs_number) if nhs_number else None
    async with _hub(request).deps.uow() as uow:
        rows = await uow.deliveries.search(nhs_number=nhs, recipient_id=recipient, state=state,
                                           event_id=event_id, limit=limit)
    return _json({"deliveries": [_row(r) for r in rows]})


@ig.post("/api/v1/deliveries/{delivery_id}/retry", status_code=202)
async def retry_delivery(delivery_id: str, request: Request, who: Principal = Depends(require(*IG))):
    """A dead-lettered delivery back to pending under its own id (consent is decided again)."""
    hub = _hub(request)
    async with hub.deps.uow() as uow:
        try:
            await redelivery.retry_delivery(uow, hub.deps, delivery_id, actor=who.credential_id,
                                            now=hub.deps.clock.now())
        except LookupError:
            raise HTTPException(404, "no such delivery") from None
        except redelivery.RedeliveryRefused as exc:
            raise HTTPException(409, str(exc)) from None
        await uow.commit()
    hub.relay.kick()
    return _json({"delivery_id": delivery_id, "state": "pending"}, 202)


@ig.post("/api/v1/replay", status_code=202)
async def replay(request: Request, who: Principal = Depends(require("admin", "ig-auditor"))):
    """Body: {since, nhs_number?, recipient_id?}. Re-delivers what was delivered to a
    recipient and/or about a person from `since` onward, under the original
    delivery ids, with consent decided again at replay time."""
    hub = _hub(request)
    body = await _json_body(request)
    since = _instant(body, "since")
    if since is None:
        return _errors(422, [{"pointer": "/since", "message": INSTANT_NEEDED}])
    nhs = _nhs(str(body["nhs_number"])) if body.get("nhs_number") else None
    async with hub.deps.uow() as uow:
        try:
            ids = await redelivery.replay(uow, hub.deps, nhs_number=nhs, recipient_id=body.get("recipient_id"),
                                          since=since, actor=who.credential_id, now=hub.deps.clock.now())
        except redelivery.RedeliveryRefused as exc:
            return _errors(422, [{"pointer": "", "message": str(exc)}])
        await uow.commit()
    hub.relay.kick()
    return _json({"replayed": len(ids), "delivery_ids": ids}, 202)


@ig.get("/api/v1/unroutable")
async def list_unroutable(request: Request, event_id: str | None = None, who: Principal = Depends(require(*IG))):
    """Candidates an event named that the hub cannot reach (§8)."""
    async with _hub(request).deps.uow() as uow:
        rows = await uow.unroutable.search(event_id=event_id)
    return _json({"unroutable": [_row(r) for r in rows]})


@ig.get("/api/v1/signposting")
async def list_signposting(request: Request, nhs_number: str | None = None, who: Principal = Depends(require(*IG))):
    """Referrals that had nowhere to go (§8): why, and whether the referrer was told."""
    nhs = _nhs(nhs_number) if nhs_number else None
    async with _hub(request).deps.uow() as uow:
        rows = await uow.signposting.search(nhs_number=nhs)
    return _json({"signposting": [_row(r) for r in rows]})


@ig.get("/api/v1/events")
async def list_events(request: Request, nhs_number: str, kind: str | None = None,
                      who: Principal = Depends(require(*IG))):
    """A person's events, oldest first, with what each replaces: the chain of a
    fit note and its corrections and replacements (no clinical content)."""
    async with _hub(request).deps.uow() as uow:
        rows = await uow.events.search(nhs_number=_nhs(nhs_number), kind=kind)
    keep = ("event_id", "kind", "event_type", "source_org_id", "document_id", "version", "replaces",
            "categories", "received_at")
    return _json({"events": [{k: v for k, v in _row(r).items() if k in keep} for r in rows]})


@ig.get("/api/v1/disclosures")
async def list_disclosures(request: Request, nhs_number: str, format: str = Query("json", pattern="^(json|csv)$"),
                           who: Principal = Depends(require(*IG))):
    """Every delivery made about a person: recipient, time, event type,
    categories given, and the decisions and consents that allowed it."""
    nhs = _nhs(nhs_number)
    hub = _hub(request)
    async with hub.deps.uow() as uow:
        rows = await ig_service.disclosures(uow, hub.directory, nhs)
    if format == "csv":
        return Response(ig_service.disclosures_csv(rows), media_type="text/csv", headers={
            "Content-Disposition": f'attachment; filename="disclosures-{nhs}.csv"'})
    return _json({"nhs_number": nhs, "disclosures": rows})


@ig.get("/api/v1/disclosures.csv")
async def disclosures_csv(request: Request, nhs_number: str, who: Principal = Depends(require(*IG))):
    """The disclosures as CSV, fit to send in answer to a subject access request."""
    return await list_disclosures(request, nhs_number, "csv", who)


@ig.post("/api/v1/break-glass", status_code=201)
async def create_break_glass(request: Request, who: Principal = Depends(require(*IG))):
    """Body: {nhs_number, recipient_id, purpose, justification, expires_at} (at most 72 hours)."""
    hub = _hub(request)
    body = await _json_body(request)
    expires = _instant(body, "expires_at")
    if expires is None:
        return _errors(422, [{"pointer": "/expires_at", "message": INSTANT_NEEDED}])
    try:
        nhs = identifiers.nhs_number(str(body.get("nhs_number", "")))
    except ValueError as exc:
        return _errors(422, [{"pointer": "/nhs_number", "message": str(exc)}])
    async with hub.deps.uow() as uow:
        try:
            row = await ig_service.record_break_glass(
                uow, hub.audit, hub.directory, nhs_number=nhs, recipient_id=str(body.get("recipient_id", "")),
                purpose=str(body.get("purpose", "")), justification=str(body.get("justification", "")),
                expires_at=expires, actor=who.credential_id, now=hub.deps.clock.now())
        except ig_service.IGError as exc:
            return _errors(422, [{"pointer": "", "message": str(exc)}])
        await uow.commit()
    return _json({k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}, 201)


@ig.get("/api/v1/break-glass")
async def list_break_glass(request: Request, reviewed: bool | None = None, nhs_number: str | None = None,
                           who: Principal = Depends(require(*IG))):
    """The review queue: `?reviewed=false` lists what still awaits review."""
    nhs = _nhs(nhs_number) if nhs_number else None
    async with _hub(request).deps.uow() as uow:
        rows = await uow.break_glass.search(reviewed=reviewed, nhs_number=nhs)
    return _json({"break_glass": [_row(r) for r in rows]})


@ig.post("/api/v1/break-glass/{break_glass_id}/review")
async def review_break_glass(break_glass_id: str, request: Request, who: Principal = Depends(require(*IG))):
    """Body: {note}. Marks the break-glass reviewed."""
    hub = _hub(request)
    body = await _json_body(request)
    async with hub.deps.uow() as uow:
        try:
            row = await ig_service.review_break_glass(uow, hub.audit, break_glass_id, note=str(body.get("note", "")),
                                                      actor=who.credential_id, now=hub.deps.clock.now())
        except LookupError:
            raise HTTPException(404, "no such break-glass") from None
        except ig_service.IGError as exc:
            return _errors(409 if "already" in str(exc) else 422, [{"pointer": "/note", "message": str(exc)}])
        await uow.commit()
    return _json(_row(row))


@ig.get("/fhir/AuditEvent")
async def search_audit_events(request: Request, who: Principal = Depends(require(*IG))):
    """The audit trail as FHIR R4B AuditEvents. Search: patient (NHS number, or
    https://fhir.nhs.uk/Id/nhs-number|number), agent (actor: org id, credential
    id or 'hub'), type (an action such as delivery.delivered, or its kind such
    as delivery), date (repeatable, with ge/gt/le/lt prefixes), _count."""
    hub = _hub(request)
    q = request.query_params
    person = None
    if q.get("patient"):
        person = hub.audit.person_refs(_nhs(q["patient"].rpartition("|")[2]))
    since = until = None
    for value in q.getlist("date"):
        prefix, stamp = (value[:2], value[2:]) if value[:2] in ("ge", "gt", "le", "lt") else ("ge", value)
        try:
            when = datetime.fromisoformat(stamp if "T" in stamp else stamp + "T00:00:00+00:00")
        except ValueError:
            return _outcome(400, [{"pointer": None, "message": "date must be an ISO date or instant"}])
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        if prefix in ("ge", "gt"):
            since = when
        else:
            until = when
    kind = q.get("type")
    action, prefix = (kind, None) if kind and "." in kind else (None, f"{kind}." if kind else None)
    count = min(int(q.get("_count", "500")) if q.get("_count", "500").isdigit() else 500, 5000)
    async with hub.deps.uow() as uow:
        rows = await uow.audit.search(person=person, actor=q.get("agent"), action=action, action_prefix=prefix,
                                      since=since, until=until, limit=count)
        previous = await uow.audit.previous_hashes([r.seq for r in rows])
    return _json({"resourceType": "Bundle", "type": "searchset", "total": len(rows),
                  "entry": [{"fullUrl": f"AuditEvent/audit-{r.seq}", "resource": audit_event(r, previous.get(r.seq)),
                             "search": {"mode": "match"}} for r in rows]}, media_type=FHIR_JSON)


INSTANT_NEEDED = "must be an RFC 3339 timestamp with a zone"


def _instant(body: dict, field: str) -> datetime | None:
    """An aware timestamp from a JSON body field, or None if it is not one."""
    try:
        value = datetime.fromisoformat(str(body.get(field, "")))
    except ValueError:
        return None
    return value if value.tzinfo is not None else None


async def _json_body(request: Request) -> dict:
    try:
        data = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise HTTPException(422, "the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise HTTPException(422, "the body must be a JSON object")
    return data


@ig.get("/api/v1/dead-letters")
async def list_dead_letters(request: Request, status: str | None = None, kind: str | None = None,
                            who: Principal = Depends(require(*IG))):
    async with _hub(request).deps.uow() as uow:
        rows = await uow.dead_letters.search(status=status, kind=kind)
    return _json({"dead_letters": [_row(r, drop=("payload",)) for r in rows]})


@ig.get("/api/v1/dead-letters/{dead_letter_id}")
async def get_dead_letter(dead_letter_id: str, request: Request, who: Principal = Depends(require(*IG))):
    async with _hub(request).deps.uow() as uow:
        row = await uow.dead_letters.get(dead_letter_id)
    if row is None:
        raise HTTPException(404, "no such dead letter")
    d = _row(row, drop=("payload",))
    d["payload"] = row.payload.decode("utf-8", errors="replace")
    return _json(d)


@ig.post("/api/v1/dead-letters/{dead_letter_id}/resubmit", status_code=202)
async def resubmit_dead_letter(dead_letter_id: str, request: Request, who: Principal = Depends(require(*IG))):
    """Publish the message again, or the corrected message in the request body,
    to its inbound subject: it is processed as new input under the same rules."""
    hub = _hub(request)
    fixed = await request.body()
    from hub.redelivery import RedeliveryRefused as ResubmitRefused

    try:
        await hub.resubmit_dead_letter(dead_letter_id, fixed or None, actor=who.credential_id)
    except LookupError:
        raise HTTPException(404, "no such dead letter") from None
    except ResubmitRefused as exc:
        raise HTTPException(409, str(exc)) from None
    return _json({"dead_letter_id": dead_letter_id, "status": "resubmitted"}, 202)


def create_app(hub: "Hub") -> FastAPI:
    from hub import __version__
    from hub.docs import DESCRIPTION, TITLE, asyncapi

    app = FastAPI(title=TITLE, version=__version__, description=DESCRIPTION + " (contract §9)",
                  docs_url=None, redoc_url=None, openapi_url=None)  # served below, behind a credential
    app.state.hub = hub
    credentialed = [Depends(any_credential)]

    @app.get("/openapi.json", include_in_schema=False, dependencies=credentialed)
    async def openapi_json() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=credentialed)
    async def swagger_page() -> Response:
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{TITLE} - Swagger UI")

    @app.get("/redoc", include_in_schema=False, dependencies=credentialed)
    async def redoc_page() -> Response:
        from fastapi.openapi.docs import get_redoc_html

        return get_redoc_html(openapi_url="/openapi.json", title=f"{TITLE} - ReDoc")

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def prometheus(who: Principal = Depends(require("admin", "ig-auditor"))) -> Response:
        """Prometheus metrics: events in by kind, deliveries made and by state, decisions by
        outcome and rule, dead letters, pipeline and end-to-end latency, retry queue depth,
        consumer lag."""
        from hub import metrics

        await metrics.refresh(hub)
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/asyncapi.json", tags=["operations"], include_in_schema=False, dependencies=credentialed)
    async def asyncapi_json() -> Response:
        return Response(asyncapi(hub.broker).to_json(), media_type="application/json")

    @app.get("/asyncapi", tags=["operations"], include_in_schema=False, dependencies=credentialed)
    async def asyncapi_page() -> Response:
        from faststream.specification.asyncapi.site import get_asyncapi_html

        return Response(get_asyncapi_html(asyncapi(hub.broker), try_it_out_path=None), media_type="text/html")

    @app.exception_handler(ConsentInvalid)
    async def _consent_invalid(_request: Request, exc: ConsentInvalid):
        return _outcome(422, [e.as_dict() for e in exc.errors])

    @app.exception_handler(_Invalid)
    async def _invalid(_request: Request, exc: _Invalid):
        return _outcome(422, exc.errors)

    @app.get("/health", tags=["operations"])
    async def health() -> JSONResponse:
        ok = hub.healthy()
        return JSONResponse({"status": "ok" if ok else "degraded"}, status_code=200 if ok else 503)

    app.include_router(inbound)
    app.include_router(fhir)
    app.include_router(ig)
    from hub import console

    if hub is not None:
        console.set_secret(hub.audit.key)
    app.include_router(console.router)  # the IG console, /console
    return app
