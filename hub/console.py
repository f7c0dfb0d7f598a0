"""The IG console: server-rendered pages at /console for `ig-auditor` and
`admin` users (Jinja2 templates in hub/templates, inline CSS, charts as inline
SVG drawn here; no JavaScript, no build step, nothing fetched from elsewhere).

Thin routes over the same services the HTTP API uses (hub.ig, the unit of
work's repositories, Hub.resubmit_dead_letter). What lives here is
presentation: a provision in plain words, a consent's state at a moment,
decisions grouped per event and recipient, and the dashboard's SVG.

Sessions: the login form takes the user's bearer token; the console keeps it in
an HttpOnly, SameSite=Strict cookie and checks it with credentials.authenticate
on every request (a revoked token ends the session at once). Every POST form
carries a CSRF token, an HMAC of the session token (or, on the login form, of a
one-off nonce cookie) under a secret made when the process starts. Person
lookups are POSTed, so NHS numbers never appear in URLs, browser history or
access logs; nothing here logs personal data.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import jinja2
import orjson
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup, escape
from sqlalchemy import func, select

from consent.model import ACTIVE, INACTIVE, PERMIT, ROOT, ConsentRecord, Provision, format_day
from consent.records import record_from_row
from hub import credentials
from hub import ig as ig_service
from hub import tables as t
from hub.credentials import Principal
from hub.directory import Directory
from schemas import identifiers
from schemas.ukdate import UK, day_end, day_start, uk_today
from schemas.vocab import Category, Purpose

if TYPE_CHECKING:
    from hub.bootstrap import Hub

CONSOLE_ROLES = ("ig-auditor", "admin")
SESSION_COOKIE = "hub_console"
LOGIN_COOKIE = "hub_console_login"
FLASH_COOKIE = "hub_console_flash"
SESSION_MAX_AGE = 8 * 3600
DASHBOARD_DAYS = 14
MAX_FORM_BYTES = 1024 * 1024  # a corrected dead letter (at most 256 KiB) form-encoded
MAX_INBOUND_BYTES = 256 * 1024
MAX_NOTE_CHARS = 4000
PERSON_LIMIT = 100_000  # rows per person read for the person page (as hub.ig.disclosures)

# Per process: a restart (or another worker) signs users out of their forms, not of their sessions.
_SECRET = secrets.token_bytes(32)  # replaced at start-up by set_secret (shared by every worker)


def set_secret(key: bytes) -> None:
    """Derive the console's signing key from a key every worker shares (the
    audit key), so a form shown by one worker can be submitted to another."""
    global _SECRET
    _SECRET = hmac.new(key, b"hub console csrf", hashlib.sha256).digest()

TEMPLATES = Path(__file__).with_name("templates")

router = APIRouter(prefix="/console", include_in_schema=False)


# --- plain words ----------------------------------------------------------------------------

_CATEGORY_ORDER = [c.value for c in Category]
_PURPOSE_ORDER = [p.value for p in Purpose]
_CATEGORY_WORDS = {"fitness-advice": "fitness advice", "clinical-notes": "clinical notes",
                   "atw-application": "Access to Work application"}
_PURPOSE_WORDS = {"access-to-work": "Access to Work", "return-to-work-support": "return-to-work support"}
RULE_WORDS = {
    "consent-permit": "a consent permits it",
    "consent-deny": "a consent refuses it",
    "default-deny": "the consent's default is deny",
    "no-consent": "no consent on record",
    "consent-withdrawn": "the consent was withdrawn",
    "consent-expired": "the consent has expired",
    "recipient-maximum": "never for this kind of recipient (§5)",
    "never-to-employer": "clinical notes never reach an employer",
    "issuer-withheld": "the clinician withheld the diagnosis",
    "break-glass": "break-glass override",
}


def category_words(code: str) -> str:
    return _CATEGORY_WORDS.get(code, code.replace("-", " "))


def purpose_words(code: str) -> str:
    return _PURPOSE_WORDS.get(code, code.replace("-", " "))


def rule_words(code: str) -> str:
    return RULE_WORDS.get(code, code.replace("-", " "))


def _ordered(codes: Iterable[str], order: Sequence[str]) -> list[str]:
    """The contract's order (identity first ...), unknown codes last, alphabetically."""
    rank = {c: i for i, c in enumerate(order)}
    return sorted(codes, key=lambda c: (rank.get(c, len(rank)), c))


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def org_label(org_id: str | None, directory: Directory) -> str:
    """'Acme Logistics Ltd (EMP-ACME)'; an id the directory does not know says so."""
    if not org_id:
        return "—"
    org = directory.get(org_id)
    return f"{org.name} ({org_id})" if org else f"{org_id} (not in the directory)"


def describe_provision(provision: Provision, directory: Directory) -> str:
    """One provision (not its nested ones) in plain words, e.g. "Permits Acme
    Logistics Ltd (EMP-ACME) to receive identity, fitness advice, adjustments
    for employment support, from 19 Nov 2026 until 19 Nov 2027". A constraint
    the provision does not state reads as "any organisation / data / purpose"."""
    who = (_and([org_label(a, directory) for a in sorted(provision.actors)])
           if provision.actors else "any organisation")
    what = (", ".join(category_words(c) for c in _ordered(provision.categories, _CATEGORY_ORDER))
            if provision.categories else "any data")
    why = (" or ".join(purpose_words(p) for p in _ordered(provision.purposes, _PURPOSE_ORDER))
           if provision.purposes else "any purpose")
    if provision.type == PERMIT:
        text = f"Permits {who} to receive {what} for {why}"
    else:
        text = f"Denies {what} to {who} for {why}"
    start, end = provision.period_start, provision.period_end
    if start and end:
        text += f", from {format_day(start)} until {format_day(end)}"
    elif start:
        text += f", from {format_day(start)}"
    elif end:
        text += f", until {format_day(end)}"
    return text


def consent_state(record: ConsentRecord, now: datetime) -> str:
    """active, withdrawn, expired or not yet in force (else the FHIR status:
    draft, proposed, rejected, entered-in-error)."""
    if record.withdrawn_at is not None or record.status == INACTIVE:
        return "withdrawn"  # the hub withdraws a consent by making it inactive
    if record.status != ACTIVE:
        return record.status
    root = record.provision
    if root.period_end is not None and now > root.period_end:
        return "expired"
    if root.period_start is not None and now < root.period_start:
        return "not yet in force"
    return "active"


def when(at: datetime | str | None) -> str:
    """An instant for people, in UK time: '21 Nov 2026 12:00'."""
    if at is None or at == "":
        return "—"
    if isinstance(at, str):
        at = datetime.fromisoformat(at)
    local = at.astimezone(UK)
    return f"{format_day(at)} {local:%H:%M}"


def nhs_spaced(nhs: str) -> str:
    return f"{nhs[:3]} {nhs[3:6]} {nhs[6:]}" if len(nhs) == 10 else nhs


# --- the dashboard's chart --------------------------------------------------------------------

DELIVERED_COLOUR = "#2563a8"
DEAD_COLOUR = "#222222"
REFUSAL_COLOURS = ("#d9622b", "#e8a33d", "#b3456b", "#8c6d31", "#7a5aa6", "#c94c4c", "#5b8c3a", "#9c9c9c")


def _nice_step(top: int, ticks: int = 4) -> int:
    raw = max(1.0, top / ticks)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * mag >= raw:
            return int(m * mag)
    return int(10 * mag)


def _short_day(iso: str) -> str:
    d = datetime.fromisoformat(iso)
    return f"{d.day} {d:%b}"


def refusal_colours(rules: Iterable[str]) -> dict[str, str]:
    return {r: REFUSAL_COLOURS[i % len(REFUSAL_COLOURS)] for i, r in enumerate(sorted(rules))}


def dashboard_svg(data: dict) -> Markup:
    """Per day: a bar of deliveries, beside it the refusals stacked by rule, and
    the dead letters as a line. Every text is escaped; nothing is fetched."""
    days: list[str] = data["days"]
    delivered: list[int] = data["delivered"]
    refused: dict[str, list[int]] = data["refused"]
    dead: list[int] = data["dead_letters"]
    colours = refusal_colours(refused)
    n = max(1, len(days))
    refused_total = [sum(series[i] for series in refused.values()) for i in range(len(days))]
    top = max([1, *delivered, *refused_total, *dead])
    step = _nice_step(top)
    top = step * math.ceil(top / step)

    width, height = 820, 300
    left, right, upper, lower = 44, 12, 46, 34
    plot_w, plot_h = width - left - right, height - upper - lower
    slot = plot_w / n
    bar = min(18.0, slot * 0.32)

    def y(v: float) -> float:
        return upper + plot_h - plot_h * v / top

    e = escape
    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" role="img" '
        f'aria-labelledby="chart-title" class="chart" font-family="system-ui, sans-serif" font-size="11">',
        f'<title id="chart-title">Deliveries, refusals by rule and dead letters per day, '
        f'{e(_short_day(days[0])) if days else ""} to {e(_short_day(days[-1])) if days else ""}</title>',
    ]
    # legend
    lx = left
    legend = [("delivered", DELIVERED_COLOUR, "rect")] + \
             [(f"refused: {rule_words(r)}", colours[r], "rect") for r in sorted(refused)] + \
             [("dead letters", DEAD_COLOUR, "line")]
    ly = 14
    for label, colour, shape in legend:
        w = 18 + 6.2 * len(label) + 14
        if lx + w > width - right:
            lx, ly = left, ly + 16
        if shape == "rect":
            out.append(f'<rect x="{lx:.1f}" y="{ly - 8}" width="10" height="10" fill="{colour}"/>')
        else:
            out.append(f'<line x1="{lx - 2:.1f}" y1="{ly - 3}" x2="{lx + 12:.1f}" y2="{ly - 3}" '
                       f'stroke="{colour}" stroke-width="2"/><circle cx="{lx + 5:.1f}" cy="{ly - 3}" r="3" '
                       f'fill="{colour}"/>')
        out.append(f'<text x="{lx + 15:.1f}" y="{ly + 1}" fill="#333">{e(label)}</text>')
        lx += w
    # grid and y axis
    for v in range(0, top + 1, step):
        gy = y(v)
        out.append(f'<line x1="{left}" y1="{gy:.1f}" x2="{width - right}" y2="{gy:.1f}" '
                   f'stroke="{"#888" if v == 0 else "#e3e3e3"}" stroke-width="1"/>')
        out.append(f'<text x="{left - 6}" y="{gy + 4:.1f}" text-anchor="end" fill="#555">{v}</text>')
    # bars
    for i, day in enumerate(days):
        cx = left + slot * (i + 0.5)
        label = _short_day(day)
        if delivered[i]:
            out.append(f'<rect x="{cx - bar - 1:.1f}" y="{y(delivered[i]):.1f}" width="{bar:.1f}" '
                       f'height="{y(0) - y(delivered[i]):.1f}" fill="{DELIVERED_COLOUR}">'
                       f'<title>{e(label)}: {delivered[i]} delivered</title></rect>')
        base = 0
        for rule in sorted(refused):
            v = refused[rule][i]
            if v:
                out.append(f'<rect x="{cx + 1:.1f}" y="{y(base + v):.1f}" width="{bar:.1f}" '
                           f'height="{y(base) - y(base + v):.1f}" fill="{colours[rule]}">'
                           f'<title>{e(label)}: {v} refused ({e(rule_words(rule))})</title></rect>')
                base += v
        out.append(f'<text x="{cx:.1f}" y="{height - lower + 16}" text-anchor="middle" fill="#555">'
                   f'{e(label)}</text>')
    # dead letters line
    points = [(left + slot * (i + 0.5), y(v)) for i, v in enumerate(dead)]
    if points:
        out.append('<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>'.format(
            DEAD_COLOUR, " ".join(f"{px:.1f},{py:.1f}" for px, py in points)))
        for (px, py), v, day in zip(points, dead, days):
            out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{DEAD_COLOUR}">'
                       f'<title>{e(_short_day(day))}: {v} dead letters</title></circle>')
    out.append("</svg>")
    return Markup("".join(out))


# --- sessions, CSRF, flash --------------------------------------------------------------------

@dataclass(frozen=True)
class Session:
    principal: Principal
    csrf: str


def _mac(kind: str, value: str) -> str:
    return hmac.new(_SECRET, f"{kind}\0{value}".encode(), hashlib.sha256).hexdigest()


def session_csrf(token: str) -> str:
    return _mac("session", token)


def _hub(request: Request) -> "Hub":
    return request.app.state.hub


def _cookie_args(request: Request) -> dict:
    return {"httponly": True, "samesite": "strict", "secure": request.url.scheme == "https"}


def _to_login(reason: str, *, clear: bool) -> HTTPException:
    headers = {"Location": f"/console/login?reason={reason}", "Cache-Control": "no-store"}
    if clear:
        headers["Set-Cookie"] = f"{SESSION_COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict"
    return HTTPException(303, "sign in to the IG console", headers=headers)


async def principal_for(request: Request, token: str) -> Principal | None:
    """The live credential a token names (the console's session, the API's descriptions)."""
    async with _hub(request).deps.uow() as uow:
        return await credentials.authenticate(uow, token)


async def session(request: Request) -> Session:
    """Every console page: the cookie's token must still be a live ig-auditor or admin credential."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise _to_login("required", clear=False)
    who = await principal_for(request, token)
    if who is None:
        raise _to_login("revoked", clear=True)
    if who.role not in CONSOLE_ROLES:
        raise _to_login("role", clear=True)
    return Session(who, session_csrf(token))


async def _read_form(request: Request) -> dict[str, str] | None:
    """An application/x-www-form-urlencoded body (what a plain HTML form sends), at most
    MAX_FORM_BYTES; None if it is not one."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != \
            "application/x-www-form-urlencoded":
        return None
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_FORM_BYTES:
            return None
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        return None
    return {k: v[0] for k, v in parsed.items()}


def _csrf_ok(form: dict[str, str], expected: str) -> bool:
    return hmac.compare_digest(form.get("csrf", ""), expected)


def _flash_value(kind: str, text: str) -> str:
    raw = base64.urlsafe_b64encode(json.dumps({"k": kind, "t": text}).encode()).decode()
    return f"{raw}.{_mac('flash', raw)}"


def _read_flash(request: Request) -> dict | None:
    value = request.cookies.get(FLASH_COOKIE)
    if not value or "." not in value:
        return None
    raw, mac = value.rsplit(".", 1)
    if not hmac.compare_digest(mac, _mac("flash", raw)):
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(raw.encode()))
        return {"kind": "error" if data["k"] == "error" else "ok", "text": str(data["t"])}
    except (ValueError, KeyError, TypeError):
        return None


def _redirect(request: Request, url: str, flash: tuple[str, str] | None = None) -> RedirectResponse:
    resp = RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store"})
    if flash:
        resp.set_cookie(FLASH_COOKIE, _flash_value(*flash), max_age=60, path="/console", **_cookie_args(request))
    return resp


# --- rendering ----------------------------------------------------------------------------------

_env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                          undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
_env.filters.update(when=when, day=lambda d: format_day(d) if d else "—", nhs=nhs_spaced,
                    category=category_words, purpose=purpose_words, rule=rule_words,
                    short_day=_short_day,
                    categories=lambda codes: ", ".join(category_words(c) for c in _ordered(codes, _CATEGORY_ORDER)))

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


_SECTIONS = {"lookup.html": "person", "person.html": "person", "break_glass.html": "break-glass",
             "dead_letters.html": "dead-letters", "dead_letter.html": "dead-letters", "dashboard.html": "dashboard"}


def render(request: Request, name: str, sess: Session | None = None, code: int = 200, **ctx: Any) -> HTMLResponse:
    flash = _read_flash(request)
    html = _env.get_template(name).render(
        sess=sess, role=sess.principal.role if sess else None,
        credential_id=sess.principal.credential_id if sess else None,
        csrf=sess.csrf if sess else "", flash=flash, org=lambda o: org_label(o, _hub(request).directory),
        **{"nav": None, "section": _SECTIONS.get(name), **ctx})
    resp = HTMLResponse(html, status_code=code, headers=SECURITY_HEADERS)
    if flash is not None or FLASH_COOKIE in request.cookies:
        resp.delete_cookie(FLASH_COOKIE, path="/console", **_cookie_args(request))
    return resp


async def _open_counts(uow) -> dict[str, int]:
    """Unreviewed break-glass and open dead letters, for the navigation bar.
    (Private: the repositories have searches but no counts.)"""
    bg = t.break_glass.c
    dl = t.dead_letters.c
    return {
        "break_glass": (await uow.conn.execute(select(func.count()).select_from(t.break_glass)
                                               .where(bg.reviewed_at.is_(None)))).scalar_one(),
        "dead_letters": (await uow.conn.execute(select(func.count()).select_from(t.dead_letters)
                                                .where(dl.status == "open"))).scalar_one(),
    }


# --- login and logout ---------------------------------------------------------------------------

LOGIN_REASONS = {
    "required": "Sign in with your IG token to use the console.",
    "revoked": "Your token is unknown or has been revoked. Sign in again.",
    "role": "This console is for the ig-auditor and admin roles.",
    "out": "You have signed out.",
}


def _login_page(request: Request, message: str | None, status: int = 200, error: bool = False) -> HTMLResponse:
    nonce = secrets.token_urlsafe(24)
    resp = render(request, "login.html", code=status, message=message, error=error,
                  login_csrf=_mac("login", nonce))
    resp.set_cookie(LOGIN_COOKIE, nonce, max_age=3600, path="/console", **_cookie_args(request))
    return resp


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, reason: str | None = None):
    token = request.cookies.get(SESSION_COOKIE)
    if token and reason is None:
        who = await principal_for(request, token)
        if who is not None and who.role in CONSOLE_ROLES:
            return _redirect(request, "/console")
    return _login_page(request, LOGIN_REASONS.get(reason or ""), error=reason in ("revoked", "role"))


@router.post("/login")
async def login(request: Request):
    form = await _read_form(request)
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    if form is None or not nonce or not _csrf_ok(form, _mac("login", nonce)):
        return _login_page(request, "The sign-in form had expired. Please try again.", 403, error=True)
    token = form.get("token", "").strip()
    who = await principal_for(request, token) if token else None
    if who is None:
        return _login_page(request, "That token is unknown or has been revoked.", 401, error=True)
    if who.role not in CONSOLE_ROLES:
        return _login_page(request, "That token's role cannot use this console: it is for the ig-auditor "
                                    "and admin roles.", 403, error=True)
    resp = _redirect(request, "/console")
    resp.set_cookie(SESSION_COOKIE, token, max_age=SESSION_MAX_AGE, path="/", **_cookie_args(request))
    resp.delete_cookie(LOGIN_COOKIE, path="/console", **_cookie_args(request))
    return resp


@router.post("/logout")
async def logout(request: Request, sess: Session = Depends(session)):
    form = await _read_form(request)
    if form is None or not _csrf_ok(form, sess.csrf):
        return _forbidden(request, sess)
    resp = _redirect(request, "/console/login?reason=out")
    resp.delete_cookie(SESSION_COOKIE, path="/", **_cookie_args(request))
    return resp


def _forbidden(request: Request, sess: Session | None) -> HTMLResponse:
    return render(request, "error.html", sess, code=403, title="Form refused",
                  message="This form could not be checked (its security token is missing or out of date). "
                          "Go back, reload the page and try again.")


async def _checked_form(request: Request, sess: Session) -> tuple[dict[str, str] | None, Response | None]:
    form = await _read_form(request)
    if form is None:
        return None, render(request, "error.html", sess, code=400, title="Form not understood",
                            message="The form could not be read (too large, or not sent by a console page).")
    if not _csrf_ok(form, sess.csrf):
        return None, _forbidden(request, sess)
    return form, None


# --- person lookup ------------------------------------------------------------------------------

@router.get("", response_class=HTMLResponse)
@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def home(request: Request, sess: Session = Depends(session)):
    async with _hub(request).deps.uow() as uow:
        nav = await _open_counts(uow)
    return render(request, "lookup.html", sess, nav=nav, error=None)


@router.get("/person")
async def person_get(request: Request, sess: Session = Depends(session)):
    return _redirect(request, "/console")


@router.post("/person", response_class=HTMLResponse)
async def person(request: Request, sess: Session = Depends(session)):
    """POSTed so the NHS number stays out of URLs and logs."""
    form, refused = await _checked_form(request, sess)
    if refused:
        return refused
    hub = _hub(request)
    try:
        nhs = identifiers.nhs_number(form.get("nhs_number", ""))
    except ValueError as exc:
        async with hub.deps.uow() as uow:
            nav = await _open_counts(uow)
        # the message names the rule broken, never the value typed
        return render(request, "lookup.html", sess, code=422, nav=nav, error=f"The NHS number {exc}.")
    now = hub.deps.clock.now()
    directory = hub.directory
    async with hub.deps.uow() as uow:
        nav = await _open_counts(uow)
        consent_rows = await uow.consents.for_person(nhs)
        decisions = await uow.decisions.search(nhs_number=nhs, limit=PERSON_LIMIT)
        deliveries = await uow.deliveries.search(nhs_number=nhs, limit=PERSON_LIMIT)
        events = await uow.events.search(nhs_number=nhs, limit=PERSON_LIMIT)
        disclosures = await ig_service.disclosures(uow, directory, nhs)
        signposting = await uow.signposting.search(nhs_number=nhs)
        break_glass = await uow.break_glass.search(nhs_number=nhs)
        # who looked at whom: an IG user's view of a person is itself audited (ids and a keyed hash only)
        await uow.audit.append_many([hub.audit.row("console.person-viewed", actor=sess.principal.credential_id,
                                                   at=now, person=hub.audit.person(nhs))])
        await uow.commit()
    return render(request, "person.html", sess, nav=nav, nhs=nhs, now=now,
                  consents=[_consent_view(r, now, directory) for r in reversed(consent_rows)],
                  timeline=decision_timeline(decisions, deliveries, events, directory),
                  truncated=len(decisions) >= PERSON_LIMIT,
                  disclosures=disclosures, signposting=signposting, break_glass=break_glass,
                  )


@router.post("/disclosures.csv")
async def disclosures_csv(request: Request, sess: Session = Depends(session)):
    """The person's disclosures as CSV (a form POST, so the NHS number stays out of URLs)."""
    form, refused = await _checked_form(request, sess)
    if refused:
        return refused
    hub = _hub(request)
    try:
        nhs = identifiers.nhs_number(form.get("nhs_number", ""))
    except ValueError:
        return Response("invalid NHS number", status_code=422, media_type="text/plain")
    async with hub.deps.uow() as uow:
        rows = await ig_service.disclosures(uow, hub.directory, nhs)
        await uow.audit.append_many([hub.audit.row("console.disclosures-exported", actor=sess.principal.credential_id,
                                                   at=hub.deps.clock.now(), person=hub.audit.person(nhs))])
        await uow.commit()
    return Response(ig_service.disclosures_csv(rows), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="disclosures-{nhs}.csv"',
                             "Cache-Control": "no-store"})


def _consent_view(row: Any, now: datetime, directory: Directory) -> dict:
    record = record_from_row(row)
    provisions = []
    for p in record.provision.walk():
        depth = 0 if p.path == ROOT else p.path.count(".") + 1
        provisions.append({"path": "default" if p.path == ROOT else p.path, "depth": depth, "type": p.type,
                           "text": describe_provision(p, directory),
                           "in_period": p.covers(now)})
    return {"id": record.id, "version": record.version, "state": consent_state(record, now),
            "status": record.status, "given": record.date_time, "withdrawn_at": record.withdrawn_at,
            "created_at": row.created_at, "updated_at": row.updated_at, "provisions": provisions}


def decision_timeline(decisions: Sequence[Any], deliveries: Sequence[Any], events: Sequence[Any],
                      directory: Directory) -> list[dict]:
    """Decisions grouped per event and recipient, newest first; within a group,
    one line per data category (contract order) with its outcome and reason."""
    event_types = {e.event_id: e.event_type for e in events}
    states = {(d.event_id, d.recipient_id): d for d in deliveries}
    groups: dict[tuple[str, str], dict] = {}
    for d in decisions:
        key = (d.event_id, d.recipient_id)
        g = groups.get(key)
        if g is None:
            delivery = states.get(key)
            g = groups[key] = {
                "event_id": d.event_id, "event_type": event_types.get(d.event_id, "—"),
                "recipient": org_label(d.recipient_id, directory), "purpose": d.purpose,
                "decided_at": d.decided_at, "state": delivery.state if delivery else "—",
                "seq": delivery.seq if delivery else 0,
                "delivery_reason": delivery.reason if delivery else None, "items": {},
            }
        g["decided_at"] = max(g["decided_at"], d.decided_at)
        g["items"][d.category] = d  # a later decision for the same category (at delivery) replaces it
    out = []
    # newest first; for one instant, the later delivery (outbox order) first
    for g in sorted(groups.values(), key=lambda g: (g["decided_at"], g["seq"]), reverse=True):
        items = [g["items"][c] for c in _ordered(g["items"], _CATEGORY_ORDER)]
        g["items"] = items
        g["permitted"] = [i.category for i in items if i.outcome == "permit"]
        g["refused"] = [i.category for i in items if i.outcome != "permit"]
        out.append(g)
    return out


# --- break-glass review -------------------------------------------------------------------------

@router.get("/break-glass", response_class=HTMLResponse)
async def break_glass_queue(request: Request, sess: Session = Depends(session)):
    hub = _hub(request)
    async with hub.deps.uow() as uow:
        nav = await _open_counts(uow)
        waiting = await uow.break_glass.search(reviewed=False)
        reviewed = await uow.break_glass.search(reviewed=True)
    return render(request, "break_glass.html", sess, nav=nav, waiting=waiting,
                  reviewed=sorted(reviewed, key=lambda r: r.reviewed_at, reverse=True),
                  now=hub.deps.clock.now())


@router.post("/break-glass/{break_glass_id}/review")
async def review_break_glass(break_glass_id: str, request: Request, sess: Session = Depends(session)):
    form, refused = await _checked_form(request, sess)
    if refused:
        return refused
    hub = _hub(request)
    note = form.get("note", "")
    if len(note) > MAX_NOTE_CHARS:
        return _redirect(request, "/console/break-glass",
                         ("error", f"A review note holds at most {MAX_NOTE_CHARS} characters."))
    async with hub.deps.uow() as uow:
        try:
            await ig_service.review_break_glass(uow, hub.audit, break_glass_id, note=note,
                                                actor=sess.principal.credential_id, now=hub.deps.clock.now())
        except LookupError:
            return _redirect(request, "/console/break-glass", ("error", "There is no such break-glass record."))
        except ig_service.IGError as exc:
            return _redirect(request, "/console/break-glass", ("error", f"Not reviewed: {exc}."))
        await uow.commit()
    return _redirect(request, "/console/break-glass", ("ok", f"Break-glass {break_glass_id} marked reviewed."))


# --- dead letters -------------------------------------------------------------------------------

DEAD_LETTER_STATUSES = ("open", "resubmitted")


@router.get("/dead-letters", response_class=HTMLResponse)
async def dead_letters(request: Request, status: str = "open", sess: Session = Depends(session)):
    status = status if status in (*DEAD_LETTER_STATUSES, "all") else "open"
    async with _hub(request).deps.uow() as uow:
        nav = await _open_counts(uow)
        rows = await uow.dead_letters.search(status=None if status == "all" else status)
        failed = await uow.deliveries.search(state="dead-lettered")
    # the list never shows payloads: only what was wrong, by pointer
    letters = [{"id": r.dead_letter_id, "kind": r.kind, "received_at": r.received_at, "via": r.via,
                "source_org_id": r.source_org_id, "status": r.status, "resubmitted_at": r.resubmitted_at,
                "errors": r.errors} for r in rows]
    return render(request, "dead_letters.html", sess, nav=nav, letters=letters, status=status,
                  statuses=(*DEAD_LETTER_STATUSES, "all"), failed=failed)


@router.post("/deliveries/{delivery_id}/retry")
async def retry_delivery(delivery_id: str, request: Request, sess: Session = Depends(session)):
    """A dead-lettered delivery back to pending under its own id (consent is decided again)."""
    from hub.redelivery import RedeliveryRefused, retry_delivery as do_retry

    form, refused = await _checked_form(request, sess)
    if refused:
        return refused
    hub = _hub(request)
    async with hub.deps.uow() as uow:
        try:
            await do_retry(uow, hub.deps, delivery_id, actor=sess.principal.credential_id, now=hub.deps.clock.now())
        except (LookupError, RedeliveryRefused) as exc:
            return _redirect(request, "/console/dead-letters", ("error", f"Not retried: {exc}"))
        await uow.commit()
    hub.relay.kick()
    return _redirect(request, "/console/dead-letters", ("ok", "Delivery queued again; consent is decided again "
                                                              "before it is sent."))


@router.get("/dead-letters/{dead_letter_id}", response_class=HTMLResponse)
async def dead_letter(dead_letter_id: str, request: Request, sess: Session = Depends(session)):
    async with _hub(request).deps.uow() as uow:
        nav = await _open_counts(uow)
        row = await uow.dead_letters.get(dead_letter_id)
    if row is None:
        return render(request, "error.html", sess, code=404, nav=nav, title="No such dead letter",
                      message="There is no dead letter with that id.")
    raw = bytes(row.payload).decode("utf-8", errors="replace")
    try:
        editable = json.dumps(orjson.loads(row.payload), indent=2, ensure_ascii=False)
    except orjson.JSONDecodeError:
        editable = raw
    return render(request, "dead_letter.html", sess, nav=nav, letter=row, payload=raw, editable=editable,
                  max_bytes=MAX_INBOUND_BYTES)


@router.post("/dead-letters/{dead_letter_id}/resubmit")
async def resubmit(dead_letter_id: str, request: Request, sess: Session = Depends(session)):
    from hub.redelivery import RedeliveryRefused as ResubmitRefused

    form, refused = await _checked_form(request, sess)
    if refused:
        return refused
    back = f"/console/dead-letters/{dead_letter_id}"
    hub = _hub(request)
    async with hub.deps.uow() as uow:
        row = await uow.dead_letters.get(dead_letter_id)
    if row is None:
        return render(request, "error.html", sess, code=404, title="No such dead letter",
                      message="There is no dead letter with that id.")
    if row.status != "open":
        return _redirect(request, back, ("error", "This dead letter has already been resubmitted."))
    fixed: bytes | None = None
    if form.get("mode") == "corrected":
        fixed = form.get("corrected", "").replace("\r\n", "\n").encode("utf-8")
        if not fixed.strip():
            return _redirect(request, back, ("error", "The corrected message is empty."))
        if len(fixed) > MAX_INBOUND_BYTES:
            return _redirect(request, back, ("error", f"The corrected message is larger than "
                                                      f"{MAX_INBOUND_BYTES} bytes."))
    try:
        await hub.resubmit_dead_letter(dead_letter_id, fixed, actor=sess.principal.credential_id)
    except LookupError:
        return _redirect(request, back, ("error", "There is no such dead letter."))
    except ResubmitRefused as exc:
        return _redirect(request, back, ("error", f"Not resubmitted: {exc}."))
    how = "with your correction" if fixed is not None else "as it was"
    return _redirect(request, back, ("ok", f"Resubmitted {how}; it is processed as new input. If it fails "
                                           f"again it comes back as a dead letter."))


# --- dashboard ----------------------------------------------------------------------------------

@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard(request: Request, sess: Session = Depends(session)):
    hub = _hub(request)
    today = uk_today(hub.deps.clock.now())
    since, until = day_start(today - timedelta(days=DASHBOARD_DAYS - 1)), day_end(today)
    async with hub.deps.uow() as uow:
        nav = await _open_counts(uow)
        data = await ig_service.dashboard(uow, since=since, until=until)
    rules = sorted(data["refused"])
    rows = [{"day": day, "delivered": data["delivered"][i],
             "refused": {r: data["refused"][r][i] for r in rules},
             "refused_total": sum(data["refused"][r][i] for r in rules),
             "dead_letters": data["dead_letters"][i]} for i, day in enumerate(data["days"])]
    return render(request, "dashboard.html", sess, nav=nav, data=data, rows=list(reversed(rows)), rules=rules,
                  colours=refusal_colours(rules), chart=dashboard_svg(data), since=since, until=until,
                  days=DASHBOARD_DAYS)
