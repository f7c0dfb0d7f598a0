"""The edge between FHIR R4B `Consent` JSON and the consent model (§7).

`parse_consent` validates a Consent twice: structurally against FHIR R4B (with
fhir.resources) and then against the hub's own rules, and reports every problem
as a `FieldError` (RFC 6901 JSON pointer + message). Messages never repeat the
offending value: consents carry personal data.

The hub's rules, beyond FHIR's:

- `resourceType` is Consent; `status` is a FHIR consent-state code;
- `scope` has the coding consentscope|patient-privacy;
- `patient.identifier` is an NHS number (system https://fhir.nhs.uk/Id/nhs-number,
  valid check digit), stored normalised to 10 digits;
- there is a `provision`, and it and every nested provision:
  - has `type` permit or deny;
  - names purposes only from the hub's purpose system and vocabulary;
  - names data categories (`securityLabel`) only from the hub's category
    system and vocabulary;
  - names actors only as `Organization/<org id>` with role IRCP (recipient);
  - has a period whose end is not before its start;
  - states no constraint the hub cannot enforce (`data`, `class`, `code`,
    `dataPeriod`): ignoring one would widen what the person agreed to;
  - has no empty list (an empty list would read as "no constraint").

How dates become instants is described in `consent.model`.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

from fhir.resources.R4B.consent import Consent
from pydantic import ValidationError

from consent.model import (
    CONSENT_STATUSES,
    INACTIVE,
    PROVISION_TYPES,
    ROOT,
    ConsentRecord,
    Provision,
    day_end,
    day_start,
)
from schemas import identifiers
from schemas.events import FieldError
from schemas.vocab import (
    CATEGORY_SYSTEM,
    NHS_NUMBER_SYSTEM,
    PURPOSE_SYSTEM,
    Category,
    Purpose,
)

SCOPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentscope"
SCOPE_CODE = "patient-privacy"
ROLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ROLE_CODE = "IRCP"
ORGANIZATION_PREFIX = "Organization/"

_PURPOSES = frozenset(p.value for p in Purpose)
_CATEGORIES = frozenset(c.value for c in Category)
_UNSUPPORTED_PROVISION_ELEMENTS = ("data", "class", "code", "dataPeriod")
_LIST_ELEMENTS = ("purpose", "securityLabel", "actor", "provision")
_SPEC_REGEX = re.compile(r"^(\w+) value string does not match spec regex")
_DATE_EXAMPLE = " (e.g. 2027-11-19 or 2027-11-19T09:00:00Z)"
_ONE_MICROSECOND = timedelta(microseconds=1)
_PARTIAL_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")

# Readable messages for pydantic's error types; its own message is used otherwise.
_MESSAGES = {
    "missing": "is required",
    "model_field_validation.missing": "is required",
    "extra_forbidden": "is not an element of a FHIR R4B Consent here",
    "string_type": "must be a string",
    "string_pattern_mismatch": "is not in the format FHIR requires for this element",
    "list_type": "must be a list",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "float_type": "must be a number",
    "decimal_type": "must be a number",
    "date_type": "must be a FHIR date",
    "datetime_type": "must be a FHIR dateTime",
}


class ConsentInvalid(ValueError):
    """A Consent the hub refuses, with every reason as a FieldError."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__(f"invalid Consent: {len(errors)} error(s)")
        self.errors = errors


# --- parsing -------------------------------------------------------------------


def parse_consent(data: dict[str, Any], *, consent_id: str, version: int, stored: bool = False) -> ConsentRecord:
    """Validate a FHIR R4B Consent and turn it into a `ConsentRecord`.

    Raises `ConsentInvalid` listing every structural (FHIR) and hub-rule error
    found. `consent_id` and `version` are the hub's, not the resource's own.
    `stored`: the resource is one the hub validated when it was written, read
    back from its own database; it is not validated again (on the hot path).
    """
    if stored:
        return _record(data, consent_id, version)
    if not isinstance(data, dict):
        raise ConsentInvalid([FieldError("", "must be a JSON object (a FHIR Consent)")])
    if data.get("resourceType") != "Consent":
        raise ConsentInvalid([FieldError("/resourceType", "must be Consent")])

    structural = _fhir_errors(data)
    hub = [e for e in _hub_errors(data) if not _covered(e.pointer, structural)]
    errors = structural + hub
    if errors:
        raise ConsentInvalid(errors)
    return _record(data, consent_id, version)


def _record(data: dict[str, Any], consent_id: str, version: int) -> ConsentRecord:
    patient_id = data["patient"]["identifier"]
    return ConsentRecord(
        id=consent_id,
        version=version,
        status=data["status"],
        nhs_number=identifiers.nhs_number(patient_id["value"]),
        date_time=_start(data["dateTime"]) if "dateTime" in data else None,
        provision=_provision(data["provision"], ROOT),
    )


def _provision(node: dict[str, Any], path: str) -> Provision:
    period = node.get("period") or {}
    start = period.get("start")
    end = period.get("end")
    children = node.get("provision") or []
    return Provision(
        type=node["type"],
        purposes=frozenset(c["code"] for c in node.get("purpose") or ()),
        categories=frozenset(c["code"] for c in node.get("securityLabel") or ()),
        actors=frozenset(
            a["reference"]["reference"][len(ORGANIZATION_PREFIX):] for a in node.get("actor") or ()
        ),
        period_start=_start(start) if start is not None else None,
        period_end=_end(end) if end is not None else None,
        children=tuple(
            _provision(child, str(i) if path == ROOT else f"{path}.{i}")
            for i, child in enumerate(children, start=1)
        ),
        path=path,
    )


# --- FHIR dates -> instants (see consent.model) ---------------------------------


def _bounds(value: object) -> tuple[datetime, datetime] | None:
    """The first and last instant a FHIR date/dateTime string denotes, or None
    if it is not one (FHIR validation reports that)."""
    if not isinstance(value, str):
        return None
    m = _PARTIAL_DATE.match(value)
    try:
        if m is None:
            instant = datetime.fromisoformat(value)
            if instant.tzinfo is None:
                return None
            instant = instant.astimezone(UTC)
            return instant, instant
        year, month, day = int(m.group(1)), m.group(2), m.group(3)
        if day is not None:
            d = date(year, int(month), int(day))
            return day_start(d), day_end(d)
        if month is not None:
            first = date(year, int(month), 1)
            after = date(year + 1, 1, 1) if int(month) == 12 else date(year, int(month) + 1, 1)
        else:
            first, after = date(year, 1, 1), date(year + 1, 1, 1)
        return day_start(first), day_start(after) - _ONE_MICROSECOND
    except ValueError:
        return None


def _start(value: str) -> datetime:
    bounds = _bounds(value)
    assert bounds is not None  # validated before
    return bounds[0]


def _end(value: str) -> datetime:
    bounds = _bounds(value)
    assert bounds is not None  # validated before
    return bounds[1]


# --- structural validation ---------------------------------------------------------


def pointer(*parts: str | int) -> str:
    """An RFC 6901 JSON pointer from path parts."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _fhir_errors(data: dict[str, Any]) -> list[FieldError]:
    """FHIR R4B's own validation, as FieldErrors. Only each error's location and
    type/message are used, never its input."""
    try:
        Consent.model_validate(data)
    except ValidationError as exc:
        out: list[FieldError] = []
        for err in exc.errors(include_input=False, include_url=False):
            loc = tuple(p for p in err["loc"] if p != "root")
            message = _MESSAGES.get(err["type"]) or _clean(err["msg"])
            out.append(FieldError(pointer(*loc), message))
        return out
    return []


def _clean(msg: str) -> str:
    """pydantic/fhir.resources message -> hub style ("must be ...")."""
    msg = msg.removeprefix("Value error, ").strip()
    m = _SPEC_REGEX.match(msg)
    if m:
        fhir_type = m.group(1)[:1].lower() + m.group(1)[1:]
        example = _DATE_EXAMPLE if fhir_type in ("date", "dateTime") else ""
        return f"must be a FHIR {fhir_type}{example}"
    return msg[:1].lower() + msg[1:] if msg else "is not valid FHIR"


def _covered(ptr: str, errors: list[FieldError]) -> bool:
    """True if a structural error already reports `ptr`, an element inside it
    or the element holding it (avoid reporting one fault twice)."""
    return any(
        ptr == e.pointer or ptr.startswith(e.pointer + "/") or e.pointer.startswith(ptr + "/")
        for e in errors
        if e.pointer
    )


# --- the hub's rules ---------------------------------------------------------------


def _hub_errors(data: dict[str, Any]) -> list[FieldError]:
    """The hub's rules, checked defensively on the raw JSON (shapes FHIR
    validation rejects are skipped here: it reports them)."""
    return list(_check_document(data))


def _check_document(data: dict[str, Any]) -> Iterator[FieldError]:
    status = data.get("status")
    if status is None:
        yield FieldError("/status", "is required")
    elif status not in CONSENT_STATUSES:
        yield FieldError("/status", "must be one of " + ", ".join(sorted(CONSENT_STATUSES)))

    scope = data.get("scope")
    if scope is None:
        yield FieldError("/scope", "is required")
    elif not _has_coding(scope, SCOPE_SYSTEM, SCOPE_CODE):
        yield FieldError("/scope", f"must be {SCOPE_SYSTEM} code {SCOPE_CODE}")

    yield from _check_patient(data.get("patient"))

    provision = data.get("provision")
    if provision is None:
        yield FieldError("/provision", "is required: a Consent must say what it permits or denies")
    elif isinstance(provision, dict):
        yield from _check_provision(provision, "/provision")


def _check_patient(patient: Any) -> Iterator[FieldError]:
    if patient is None:
        yield FieldError("/patient", "is required: the person's NHS number")
        return
    if not isinstance(patient, dict):
        return
    ident = patient.get("identifier")
    if ident is None:
        yield FieldError("/patient/identifier", "is required: the person's NHS number")
        return
    if not isinstance(ident, dict):
        return
    if ident.get("system") != NHS_NUMBER_SYSTEM:
        yield FieldError("/patient/identifier/system", f"must be {NHS_NUMBER_SYSTEM}")
    value = ident.get("value")
    if value is None:
        yield FieldError("/patient/identifier/value", "is required: the person's NHS number")
    elif isinstance(value, str):
        try:
            identifiers.nhs_number(value)
        except ValueError as exc:
            yield FieldError("/patient/identifier/value", str(exc))


def _check_provision(node: dict[str, Any], at: str) -> Iterator[FieldError]:
    ptype = node.get("type")
    if ptype is None:
        yield FieldError(f"{at}/type", "is required: permit or deny")
    elif ptype not in PROVISION_TYPES:
        yield FieldError(f"{at}/type", "must be permit or deny")

    for name in _UNSUPPORTED_PROVISION_ELEMENTS:
        if name in node:
            yield FieldError(
                f"{at}/{name}",
                "is not supported by the hub: state purpose, securityLabel, actor and period only",
            )
    for name in _LIST_ELEMENTS:
        if node.get(name) == []:
            yield FieldError(f"{at}/{name}", "must not be empty: leave it out instead")

    yield from _check_codes(node.get("purpose"), f"{at}/purpose", PURPOSE_SYSTEM, _PURPOSES, "purpose")
    yield from _check_codes(
        node.get("securityLabel"), f"{at}/securityLabel", CATEGORY_SYSTEM, _CATEGORIES, "data category"
    )
    yield from _check_actors(node.get("actor"), f"{at}/actor")
    yield from _check_period(node.get("period"), f"{at}/period")

    children = node.get("provision")
    if isinstance(children, list):
        for i, child in enumerate(children):
            if isinstance(child, dict):
                yield from _check_provision(child, f"{at}/provision/{i}")


def _check_codes(
    codings: Any, at: str, system: str, allowed: frozenset[str], what: str
) -> Iterator[FieldError]:
    if not isinstance(codings, list):
        return
    for i, coding in enumerate(codings):
        if not isinstance(coding, dict):
            continue
        if coding.get("system") != system:
            yield FieldError(f"{at}/{i}/system", f"must be {system}")
        code = coding.get("code")
        if code is None:
            yield FieldError(f"{at}/{i}/code", f"is required: a {what} code")
        elif code not in allowed:
            yield FieldError(f"{at}/{i}/code", f"must be a {what} code: " + ", ".join(sorted(allowed)))


def _check_actors(actors: Any, at: str) -> Iterator[FieldError]:
    if not isinstance(actors, list):
        return
    for i, actor in enumerate(actors):
        if not isinstance(actor, dict):
            continue
        role = actor.get("role")
        if isinstance(role, dict) and not _has_coding(role, ROLE_SYSTEM, ROLE_CODE):
            yield FieldError(f"{at}/{i}/role", f"must be {ROLE_SYSTEM} code {ROLE_CODE} (recipient)")
        ref = actor.get("reference")
        if not isinstance(ref, dict):
            continue
        target = ref.get("reference")
        if target is None:
            yield FieldError(f"{at}/{i}/reference/reference", "is required: Organization/<org id>")
        elif isinstance(target, str) and not _is_org_reference(target):
            yield FieldError(
                f"{at}/{i}/reference/reference",
                "must be Organization/<org id>, the id made of letters, digits, '-' or '_'",
            )


def _is_org_reference(target: str) -> bool:
    if not target.startswith(ORGANIZATION_PREFIX):
        return False
    try:
        identifiers.org_id(target[len(ORGANIZATION_PREFIX):])
    except ValueError:
        return False
    return True


def _check_period(period: Any, at: str) -> Iterator[FieldError]:
    if not isinstance(period, dict):
        return
    start, end = period.get("start"), period.get("end")
    if start is None or end is None:
        return
    start_bounds, end_bounds = _bounds(start), _bounds(end)
    if start_bounds is None or end_bounds is None:
        return  # not a FHIR dateTime: FHIR validation says so
    if end_bounds[1] < start_bounds[0]:
        yield FieldError(f"{at}/end", "must not be before the period's start")


def _has_coding(concept: Any, system: str, code: str) -> bool:
    if not isinstance(concept, dict):
        return False
    codings = concept.get("coding")
    if not isinstance(codings, list):
        return False
    return any(
        isinstance(c, dict) and c.get("system") == system and c.get("code") == code for c in codings
    )


# --- back to FHIR ----------------------------------------------------------------


def consent_to_fhir(record: ConsentRecord, original: dict[str, Any], *, last_updated: datetime) -> dict[str, Any]:
    """The stored FHIR JSON: `original` (as the client sent it) with the hub's
    `id`, `meta.versionId`, `meta.lastUpdated` and the record's current `status`."""
    out = copy.deepcopy(original)
    out["id"] = record.id
    meta = dict(out.get("meta") or {})
    meta["versionId"] = str(record.version)
    meta["lastUpdated"] = _instant(last_updated)
    out["meta"] = meta
    out["status"] = record.status
    return out


def withdrawn(original: dict[str, Any]) -> dict[str, Any]:
    """A copy of a stored Consent with status inactive (the person withdrew it)."""
    out = copy.deepcopy(original)
    out["status"] = INACTIVE
    return out


def _instant(value: datetime) -> str:
    """A FHIR instant: UTC, with a Z."""
    if value.tzinfo is None:
        raise ValueError("last_updated must be timezone-aware")
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
