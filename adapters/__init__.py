"""Source adapters: raw inbound bytes -> `CanonicalEvent` or `Rejected` (contract §2, §3, §6).

`adapt()` is the one entry point. It is pure (no I/O): the caller passes the
directory and the clock. In order, it:

1. refuses input over `MAX_MESSAGE_BYTES` (256 KiB) before reading it, bytes that
   are not UTF-8, and JSON nested deeper than `MAX_NESTING_DEPTH` levels (so
   hostile input is refused in bounded time and nothing later can recurse too
   deeply); parses the bytes as JSON (else ``""`` "not valid JSON ..."), requires
   an object;
2. requires a known kind (`vocab.SOURCE_KINDS`);
3. validates the envelope and requires the kind's body key;
4. requires `source.org_id` to be in the directory and, when the message came
   on a subject (or with a credential) naming an organisation, to be that one;
5. validates the body with the kind's model and hands it to the kind's adapter.

Each step stops at its first failing stage and returns every error of that stage.
A `Rejected` carries `message_id` and `source.org_id` when they could be read
(well-formed), so the dead-letter store can show them.

Adding a kind is one module: a model in `schemas.sources` and an adapter
module here (``adapt_<kind>(msg, *, now) -> CanonicalEvent`` and its bundle
builder, from the parts in `schemas.fhir`), registered in `ADAPTERS`. The
kinds: `fit_note`, `oh_referral`, `access_to_work`, `oh_outcome`; the hub's own
`absence-milestone` event is not inbound and is made by `adapters.milestone`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from pydantic import ValidationError

from adapters import errors
from adapters.access_to_work import adapt_access_to_work
from adapters.fit_note import adapt_fit_note
from adapters.oh_outcome import adapt_oh_outcome
from adapters.oh_referral import adapt_oh_referral
from hub.directory import Directory
from schemas import identifiers
from schemas.events import CanonicalEvent, FieldError, Rejected
from schemas.sources import (
    AccessToWorkMessage,
    Envelope,
    FitNoteMessage,
    OhOutcomeMessage,
    OhReferralMessage,
    uk_today,
)
from schemas.vocab import SOURCE_KINDS

__all__ = ["adapt", "KindAdapter", "ADAPTERS", "MAX_MESSAGE_BYTES", "MAX_NESTING_DEPTH"]

MAX_MESSAGE_BYTES = 256 * 1024
"""The largest inbound message, in bytes, on any path (broker or HTTP)."""
MAX_NESTING_DEPTH = 64
"""The deepest nesting of arrays and objects accepted; real messages use about 4
levels, unknown fields included. orjson itself stops at 1024."""

TOO_LARGE = FieldError("", "message larger than 256 KiB")
NOT_UTF8 = "not valid JSON: not UTF-8 (invalid byte at offset {offset})"
TOO_DEEP = FieldError("", f"nested too deeply: at most {MAX_NESTING_DEPTH} levels of arrays and objects")


@dataclass(frozen=True, slots=True)
class KindAdapter:
    """How one inbound kind is validated (`model`) and turned into an event (`adapt`)."""

    model: type[Envelope]
    adapt: Callable[..., CanonicalEvent]  # (msg: model, *, now: datetime) -> CanonicalEvent


ADAPTERS: dict[str, KindAdapter] = {
    "fit-note": KindAdapter(FitNoteMessage, adapt_fit_note),
    "oh-referral": KindAdapter(OhReferralMessage, adapt_oh_referral),
    "access-to-work": KindAdapter(AccessToWorkMessage, adapt_access_to_work),
    "oh-outcome": KindAdapter(OhOutcomeMessage, adapt_oh_outcome),
}


def _too_deep(raw: bytes, data: Any) -> bool:
    """Whether the parsed value nests containers more than MAX_NESTING_DEPTH deep
    (the top level is 1). Iterative, so it cannot itself recurse too deeply."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_NESTING_DEPTH:  # a bound on the depth
        return False
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > MAX_NESTING_DEPTH:
                    return True
                stack.append((child, depth + 1))
    return False


def _parse(raw: bytes) -> Any | FieldError:
    """The JSON value of `raw`, or the one error that stops it being read at all."""
    if isinstance(raw, str):  # not what callers pass, but orjson would take it: measure it in bytes
        raw = raw.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_MESSAGE_BYTES:
        return TOO_LARGE
    raw = bytes(raw)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return FieldError("", NOT_UTF8.format(offset=exc.start))
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth" in str(getattr(exc, "msg", "")):  # orjson's own limit (1024 levels)
            return TOO_DEEP
        return errors.invalid_json(exc)
    if isinstance(data, (dict, list)) and _too_deep(raw, data):
        return TOO_DEEP
    return data


def _peek(data: dict[str, Any]) -> tuple[str | None, str | None]:
    """message_id and source.org_id when present and well-formed, for the Rejected record."""
    message_id = data.get("message_id")
    if not (isinstance(message_id, str) and 0 < len(message_id) <= 200 and message_id.strip()):
        message_id = None
    source = data.get("source")
    org_id = source.get("org_id") if isinstance(source, dict) else None
    try:
        org_id = identifiers.org_id(org_id) if org_id is not None else None
    except ValueError:
        org_id = None
    return message_id, org_id


def adapt(
    kind: str,
    raw: bytes,
    *,
    subject_org_id: str | None,
    directory: Directory,
    now: datetime,
) -> CanonicalEvent | Rejected:
    """Turn one inbound message into its canonical event, or say why it is not one.

    `kind` is the subject suffix / URL kind; `subject_org_id` the organisation named by
    the broker subject or the HTTP credential (None when there is none to compare);
    `now` (timezone-aware) fixes "today" for the no-future-dates rule (UK date) and
    the bundle timestamp.
    """
    today = uk_today(now)  # also rejects a naive `now` (a caller bug, not bad input)

    data = _parse(raw)
    if isinstance(data, FieldError):
        return Rejected(errors=(data,))
    if not isinstance(data, dict):
        return Rejected(errors=(errors.NOT_AN_OBJECT,))
    message_id, source_org_id = _peek(data)

    def rejected(errs: tuple[FieldError, ...]) -> Rejected:
        return Rejected(errors=errs, message_id=message_id, source_org_id=source_org_id)

    body_key = SOURCE_KINDS.get(kind)
    if body_key is None:
        return rejected((errors.UNKNOWN_KIND,))

    # Envelope and body presence.
    found: list[FieldError] = []
    envelope: Envelope | None = None
    try:
        envelope = Envelope.model_validate(data)
    except ValidationError as exc:
        found.extend(errors.from_validation_error(exc))
    if data.get(body_key) is None:
        found.append(errors.is_required(f"/{body_key}"))
    if found or envelope is None:
        return rejected(tuple(found))

    # Who sent it.
    org_id = envelope.source.org_id
    if not directory.knows(org_id):
        found.append(errors.UNKNOWN_SOURCE_ORG)
    elif subject_org_id is not None and subject_org_id != org_id:
        found.append(errors.SOURCE_ORG_MISMATCH)
    if found:
        return rejected(tuple(found))

    # The body, by kind.
    kind_adapter = ADAPTERS.get(kind)
    if kind_adapter is None:
        return rejected((errors.KIND_NOT_SUPPORTED,))
    try:
        msg = kind_adapter.model.model_validate(data, context={"today": today})
    except ValidationError as exc:
        return rejected(errors.from_validation_error(exc))
    return kind_adapter.adapt(msg, now=now)
