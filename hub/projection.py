"""Projection (contract §4, §5): cut a canonical event bundle down to what one
recipient may see, and address it to that recipient.

`project()` is on the hot path (once per event and recipient) and its input is
shared by every recipient of the event, so it never mutates the input and copies
only what changes: the Bundle dict, its entry list, the MessageHeader (new
destination and focus) and any resource cut element by element (Patient).
Untouched entries are shared with the input bundle: treat both as read-only.

What a recipient gets:

* ``allowed`` = ``permitted`` ∩ the recipient type's maximum (`vocab.RECIPIENT_MAXIMUM`),
  as a second line of defence behind the consent gate;
* an employer never gets clinical-notes or contact, and gets identity as the
  person's *name only* (no NHS number, birth date or address): only the Patient's
  `name` is kept and any other resource labelled identity is withheld - enforced
  here whatever ``permitted`` says (§5);
* a delivery needs identity and the event's core category: without them
  `ProjectionRefused` is raised (the caller must not deliver anything);
* a resource is kept when every category it is labelled with is allowed; a
  resource with no category label is dropped (fail closed);
* resources listed in `ELEMENT_CATEGORIES` (Patient) are instead cut element by
  element: identifier (NHS and NI numbers) / name / birthDate are identity,
  address / telecom (phone, email) are contact; elements not listed are dropped;
  the kept resource is relabelled with the categories it still carries;
* `MessageHeader.destination` names the recipient; `focus` keeps only references
  to kept entries; `Bundle.timestamp` is the time of this projection.

It returns the new bundle and the set of categories actually given (the union
of the kept resources' labels), which is what the disclosure record must say.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from hub.directory import Organisation
from schemas.fhir import (
    PATIENT_ELEMENT_CATEGORIES,
    instant,
    org_identifier,
    resource_categories,
    security_labels,
)
from schemas.vocab import (
    CORE_CATEGORY,
    RECIPIENT_MAXIMUM,
    Category,
    EventType,
    RecipientType,
)

__all__ = ["project", "ProjectionRefused", "ELEMENT_CATEGORIES"]


class ProjectionRefused(ValueError):
    """The recipient may not receive this event at all (no identity or no core category)."""


# Resources cut element by element: element -> data category. A Patient's
# identifiers (NHS number, NI number), name and birth date are identity; its
# address and telecom (phone, email) contact - the same map its builder labels by.
ELEMENT_CATEGORIES: dict[str, dict[str, Category]] = {
    "Patient": PATIENT_ELEMENT_CATEGORIES,
}
# Elements of those resources that carry no personal data and are always kept.
_STRUCTURAL = ("resourceType", "id")

# Per recipient type, the only elements of element-cut resources it may ever see.
_ELEMENT_LIMITS: dict[RecipientType, dict[str, frozenset[str]]] = {
    RecipientType.EMPLOYER: {"Patient": frozenset({"name"})},
}
# Recipient types that get identity only through element-cut resources (the Patient's
# name): any other resource labelled identity is withheld from them.
_IDENTITY_BY_ELEMENT_ONLY = frozenset(_ELEMENT_LIMITS)
# Per recipient type, categories it never gets, whatever `permitted` says.
_NEVER: dict[RecipientType, frozenset[Category]] = {
    RecipientType.EMPLOYER: frozenset({Category.CLINICAL_NOTES, Category.CONTACT}),
}


def _allowed(recipient: Organisation, permitted: frozenset[str]) -> tuple[RecipientType, frozenset[str]]:
    try:
        rtype = RecipientType(recipient.type)
    except ValueError:
        raise ProjectionRefused(f"organisation type {recipient.type!r} receives no deliveries") from None
    allowed = frozenset(permitted) & RECIPIENT_MAXIMUM[rtype]
    return rtype, allowed - _NEVER.get(rtype, frozenset())


def _cut_elements(
    resource: dict[str, Any], element_categories: dict[str, Category],
    allowed: frozenset[str], limit: frozenset[str] | None,
) -> dict[str, Any] | None:
    """A copy of `resource` holding only the allowed elements, relabelled; None if none is left."""
    out: dict[str, Any] = {k: resource[k] for k in _STRUCTURAL if k in resource}
    out["meta"] = None  # filled below; keeps meta ahead of the data elements
    carried: set[str] = set()
    for element, category in element_categories.items():
        if element in resource and category in allowed and (limit is None or element in limit):
            out[element] = resource[element]
            carried.add(category)
    if not carried:
        return None
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k != "security"}
    meta["security"] = security_labels(*sorted(carried))
    out["meta"] = meta
    return out


def project(
    bundle: dict[str, Any],
    *,
    recipient: Organisation,
    permitted: frozenset[str],
    delivery_endpoint: str,
    now: datetime,
) -> tuple[dict[str, Any], frozenset[str]]:
    """The delivery of `bundle` for `recipient`, and the categories it actually holds.

    `permitted` is what the consent gate allowed (for an employer, diagnosis only when
    the issuer allowed sharing and consent permits). Raises `ProjectionRefused` when
    the recipient may not have identity or the event's core category.
    """
    entries = bundle.get("entry") or []
    if not entries or (entries[0].get("resource") or {}).get("resourceType") != "MessageHeader":
        raise ValueError("not a message bundle: the first entry must be a MessageHeader")
    header = entries[0]["resource"]
    core = CORE_CATEGORY[EventType(header["eventCoding"]["code"])]

    rtype, allowed = _allowed(recipient, permitted)
    if Category.IDENTITY not in allowed or core not in allowed:
        raise ProjectionRefused("a delivery needs both identity and the event's core category")
    limits = _ELEMENT_LIMITS.get(rtype, {})

    kept: list[dict[str, Any] | None] = [None]  # slot 0: the MessageHeader, built below
    kept_urls: set[str] = set()
    given: set[str] = set(resource_categories(header))
    for entry in entries[1:]:
        resource = entry.get("resource")
        if not resource:
            continue
        rt = resource.get("resourceType")
        element_categories = ELEMENT_CATEGORIES.get(rt)
        if element_categories is not None:
            cut = _cut_elements(resource, element_categories, allowed, limits.get(rt))
            if cut is None:
                continue
            entry = {**entry, "resource": cut}
            cats = resource_categories(cut)
        else:
            cats = resource_categories(resource)
            if not cats or not cats <= allowed:
                continue
            if Category.IDENTITY in cats and rtype in _IDENTITY_BY_ELEMENT_ONLY:
                continue
        kept.append(entry)
        given |= cats
        if "fullUrl" in entry:
            kept_urls.add(entry["fullUrl"])

    new_header = {
        k: v for k, v in header.items() if k not in ("destination", "focus")
    }
    focus = [ref for ref in header.get("focus") or () if ref.get("reference") in kept_urls]
    if focus:
        new_header["focus"] = focus
    new_header["destination"] = [
        {
            "name": recipient.name,
            "endpoint": delivery_endpoint,
            "receiver": {
                "identifier": org_identifier(recipient.id, nhs=recipient.type == RecipientType.GP),
                "display": recipient.name,
            },
        }
    ]
    kept[0] = {**entries[0], "resource": new_header}

    projected = {**bundle, "timestamp": instant(now), "entry": kept}
    return projected, frozenset(Category(c) for c in given)
