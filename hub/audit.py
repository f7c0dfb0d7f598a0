"""Audit records: what the hub did, by whom, to which reference. Rows hold ids
and a keyed hash of the person's NHS number, never personal data itself."""
from __future__ import annotations

import os
import secrets
from datetime import datetime
from pathlib import Path
from typing import Any

from hub.store import legacy_person_ref, person_ref


class AuditLog:
    def __init__(self, key: bytes) -> None:
        self._key = key

    @property
    def key(self) -> bytes:
        return self._key

    def person(self, nhs_number: str) -> str:
        return person_ref(self._key, nhs_number)

    def person_refs(self, nhs_number: str) -> list[str]:
        """Every form of the person's keyed hash that audit rows may carry (to search by)."""
        return [person_ref(self._key, nhs_number), legacy_person_ref(self._key, nhs_number)]

    def row(self, action: str, *, actor: str, at: datetime, ref: str | None = None,
            event_id: str | None = None, person: str | None = None,
            detail: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"action": action, "actor": actor, "at": at, "ref": ref, "event_id": event_id,
                "person": person, "detail": detail}


def load_audit_key(data_dir: Path, env_value: str | None = None) -> bytes:
    """HUB_AUDIT_KEY if set (every worker of a cluster must share it), else a
    random key kept in <data_dir>/audit.key (created on first start, mode 0600)."""
    if env_value:
        return env_value.encode()
    path = data_dir / "audit.key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return path.read_text().strip().encode()
