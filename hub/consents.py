"""Consent service: create, read, search, update and withdraw FHIR Consents
(contract §7, §9). Validation is consent.fhir's; storage is the unit of work's;
every change is versioned and audited."""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from consent.fhir import ConsentInvalid, consent_to_fhir, parse_consent, withdrawn
from hub.audit import AuditLog
from hub.store import UnitOfWork
from schemas.events import FieldError


class ConsentNotFound(LookupError):
    pass


def new_consent_id() -> str:
    return f"C-{uuid.uuid4().hex[:12]}"


def _row(record, resource: dict, now: datetime, created_at: datetime, withdrawn_at: datetime | None) -> dict:
    return {
        "consent_id": record.id, "nhs_number": record.nhs_number, "status": record.status,
        "version": record.version, "resource": resource, "created_at": created_at, "updated_at": now,
        "withdrawn_at": withdrawn_at,
    }


async def create(uow: UnitOfWork, audit: AuditLog, data: dict[str, Any], *, now: datetime, actor: str) -> dict:
    consent_id = new_consent_id()
    record = parse_consent(data, consent_id=consent_id, version=1)
    await uow.lock_persons([record.nhs_number], exclusive=True)
    resource = consent_to_fhir(record, data, last_updated=now)
    await uow.consents.add(_row(record, resource, now, now, None), recorded_by=actor)
    await uow.audit.append_many([audit.row("consent.created", actor=actor, at=now, ref=f"{consent_id}/1",
                                           person=audit.person(record.nhs_number),
                                           detail={"status": record.status})])
    return resource


async def get(uow: UnitOfWork, consent_id: str) -> dict:
    row = await uow.consents.get(consent_id)
    if row is None:
        raise ConsentNotFound(consent_id)
    return row.resource


async def search(uow: UnitOfWork, nhs_number: str) -> list[dict]:
    return [r.resource for r in await uow.consents.for_person(nhs_number)]


async def update(uow: UnitOfWork, audit: AuditLog, consent_id: str, data: dict[str, Any], *, now: datetime,
                 actor: str) -> dict:
    """PUT: a new version. Setting status to inactive is a withdrawal."""
    current = await uow.consents.get(consent_id, for_update=True)
    if current is None:
        raise ConsentNotFound(consent_id)
    await uow.lock_persons([current.nhs_number], exclusive=True)
    if data.get("id") not in (None, consent_id):
        raise ConsentInvalid([FieldError("/id", "does not match the consent in the URL")])
    record = parse_consent(data, consent_id=consent_id, version=current.version + 1)
    if record.nhs_number != current.nhs_number:
        raise ConsentInvalid([FieldError("/patient/identifier/value", "a consent cannot move to another person")])
    is_withdrawal = current.status == "active" and record.status == "inactive"
    withdrawn_at = now if is_withdrawal else current.withdrawn_at
    resource = consent_to_fhir(record, data, last_updated=now)
    await uow.consents.replace(_row(record, resource, now, current.created_at, withdrawn_at), recorded_by=actor)
    await uow.audit.append_many([audit.row(
        "consent.withdrawn" if is_withdrawal else "consent.updated", actor=actor, at=now,
        ref=f"{consent_id}/{record.version}", person=audit.person(record.nhs_number),
        detail={"status": record.status})])
    return resource


async def withdraw(uow: UnitOfWork, audit: AuditLog, consent_id: str, *, now: datetime, actor: str) -> dict:
    """$withdraw: status becomes inactive (a new version); withdrawing twice is a no-op."""
    current = await uow.consents.get(consent_id, for_update=True)
    if current is None:
        raise ConsentNotFound(consent_id)
    if current.status == "inactive":
        return current.resource
    return await update(uow, audit, consent_id, withdrawn(current.resource), now=now, actor=actor)
