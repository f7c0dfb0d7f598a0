"""Stored consents back into `ConsentRecord`s for the decision engine.

Consents are validated once, when they are written (consent.fhir.parse_consent
at the API). Reading them for every event must be cheap, so parsed records are
kept per (consent id, version): a new version (an update or a withdrawal)
is a new key, so the cache is never stale.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from consent.fhir import parse_consent
from consent.model import ConsentRecord

_CACHE: OrderedDict[tuple[str, int], ConsentRecord] = OrderedDict()
_CACHE_SIZE = 50_000


def record_from_row(row: Any) -> ConsentRecord:
    key = (row.consent_id, row.version)
    record = _CACHE.get(key)
    if record is None:
        record = parse_consent(row.resource, consent_id=row.consent_id, version=row.version, stored=True)
        if row.withdrawn_at is not None:
            record = replace(record, withdrawn_at=row.withdrawn_at)
        _CACHE[key] = record
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    return record


def records_from_rows(rows: Iterable[Any]) -> list[ConsentRecord]:
    return [record_from_row(r) for r in rows]
