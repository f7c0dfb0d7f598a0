"""Credentials (contract §9-§10): one per role and, for publishers and
recipients, organisation. Each carries an HTTP bearer token (stored as a
SHA-256 hash; tokens are 256-bit random, so a plain hash is enough) and a NATS
user whose bcrypt hash goes into the embedded broker's auth.conf."""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from hub.audit import AuditLog
from hub.directory import Directory
from hub.nats_auth import ORG_ROLES, NatsUser, hash_password
from hub.store import UnitOfWork

ROLES = ("publisher", "recipient", "consent-client", "ig-auditor", "admin")
TOKEN_PREFIX = "hub_"


class CredentialError(ValueError):
    pass


@dataclass(frozen=True)
class Principal:
    credential_id: str
    role: str
    org_id: str | None


@dataclass(frozen=True)
class IssuedCredential:
    credential_id: str
    role: str
    org_id: str | None
    http_token: str
    nats_user: str
    nats_password: str

    def public(self) -> dict:
        """The JSON `hub credential issue --json` prints (contract §10) plus ids."""
        d = asdict(self)
        return {"http_token": d["http_token"], "nats_user": d["nats_user"], "nats_password": d["nats_password"],
                "credential_id": d["credential_id"], "role": d["role"], "org_id": d["org_id"]}


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def issue(uow: UnitOfWork, directory: Directory, audit: AuditLog, *, role: str, org_id: str | None,
                now: datetime, actor: str = "cli") -> IssuedCredential:
    if role not in ROLES:
        raise CredentialError(f"role must be one of {', '.join(ROLES)}")
    if role in ORG_ROLES:
        if not org_id:
            raise CredentialError(f"a {role} credential needs --org")
        org = directory.get(org_id)
        if org is None:
            raise CredentialError(f"organisation {org_id} is not in the directory")
        if role == "recipient" and (org.delivery is None or org.delivery.channel != "broker"):
            raise CredentialError(f"{org_id} does not receive on the broker, so it has no consumer to read")
    elif org_id:
        raise CredentialError(f"a {role} credential is not tied to an organisation")
    credential_id = f"cred-{uuid.uuid4().hex[:16]}"
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    nats_user = f"{role}-{org_id}-{credential_id[5:13]}" if org_id else f"{role}-{credential_id[5:13]}"
    nats_password = secrets.token_urlsafe(24)
    await uow.credentials.add({
        "credential_id": credential_id, "role": role, "org_id": org_id, "token_hash": token_hash(token),
        "nats_user": nats_user, "nats_password_hash": hash_password(nats_password), "created_at": now,
    })
    await uow.audit.append_many([audit.row("credential.issued", actor=actor, at=now, ref=credential_id,
                                           detail={"role": role, "org": org_id})])
    return IssuedCredential(credential_id, role, org_id, token, nats_user, nats_password)


async def revoke(uow: UnitOfWork, audit: AuditLog, key: str, *, now: datetime, actor: str = "cli") -> str:
    row = await uow.credentials.find(key)
    if row is None:
        raise CredentialError("no such credential")
    if row.revoked_at is not None:
        raise CredentialError("credential already revoked")
    await uow.credentials.revoke(row.credential_id, now)
    await uow.audit.append_many([audit.row("credential.revoked", actor=actor, at=now, ref=row.credential_id,
                                           detail={"role": row.role, "org": row.org_id})])
    return row.credential_id


async def authenticate(uow: UnitOfWork, token: str) -> Principal | None:
    if not token.startswith(TOKEN_PREFIX):
        return None
    row = await uow.credentials.by_token_hash(token_hash(token))
    if row is None:
        return None
    return Principal(row.credential_id, row.role, row.org_id)


async def broker_users(uow: UnitOfWork) -> list[NatsUser]:
    return [NatsUser(r.nats_user, r.nats_password_hash, r.role, r.org_id) for r in await uow.credentials.active()]


@dataclass(frozen=True)
class HubBrokerIdentity:
    """The hub's own NATS user on the embedded server, kept in
    <data_dir>/nats/hub-user.json (mode 0600)."""

    user: str
    password: str
    password_hash: str

    @classmethod
    def load_or_create(cls, data_dir: Path) -> "HubBrokerIdentity":
        path = data_dir / "nats" / "hub-user.json"
        if path.exists():
            return cls(**json.loads(path.read_text()))
        path.parent.mkdir(parents=True, exist_ok=True)
        password = secrets.token_urlsafe(32)
        ident = cls("hub", password, hash_password(password))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(ident), fh)
        return ident
