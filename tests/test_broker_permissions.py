"""Broker users and permissions (hub.nats_auth), proved on a real nats-server.

Every denial is shown two ways where it can be: the server's permission
violation reaches the client's error callback, and the effect that a too-wide
permission would have had (a message read, a message stored, an ack applied,
a consumer created) is checked, as the hub user, not to have happened.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import ConsumerConfig

from hub.nats_auth import (
    NatsUser,
    hash_password,
    inbox_prefix,
    permissions_for,
    render_auth_conf,
)
from hub.nats_server import EmbeddedNats
from hub.streams import DELIVER_STREAM, INBOUND_STREAM
from tests.natsutil import ErrorLog, connect, create_hub_streams, free_port, wait_until

HUB_USER, HUB_PASSWORD = "hub", "hub-secret-for-tests"
SHORT = 0.5  # seconds: how long a request waits before we call it refused
QUIET = 0.3  # seconds: how long a denied subscription is watched for messages

# user name -> (password, role, org)
ACCOUNTS: dict[str, tuple[str, str, str | None]] = {
    "rec-a": ("pw-rec-a", "recipient", "ORG-A"),
    "rec-b": ("pw-rec-b", "recipient", "ORG-B"),
    "pub-1": ("pw-pub-1", "publisher", "P1"),
    "pub-2": ("pw-pub-2", "publisher", "P2"),
    "consent": ("pw-consent", "consent-client", None),
    "auditor": ("pw-auditor", "ig-auditor", None),
    "admin": ("pw-admin", "admin", None),
    'q"uo\\te $HOME': ("pw-quote", "publisher", "P3"),  # config quoting
}
HASHES = {name: hash_password(pw) for name, (pw, _role, _org) in ACCOUNTS.items()}
USERS = [NatsUser(name, HASHES[name], role, org) for name, (_pw, role, org) in ACCOUNTS.items()]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """One real nats-server for the module, on its own free loopback port."""
    srv = EmbeddedNats(
        tmp_path_factory.mktemp("broker"),
        free_port(),
        hub_user=HUB_USER,
        hub_password=HUB_PASSWORD,
        users=USERS,
    )
    asyncio.run(srv.start())
    yield srv
    asyncio.run(srv.stop())


@pytest.fixture
async def hub(server: EmbeddedNats) -> AsyncIterator[NatsClient]:
    """Fresh streams and consumers, and one delivery waiting for each recipient."""
    nc = await server.connect_as_hub()
    if server.users != tuple(USERS):  # a failed reload test must not leak
        server.reload_users(USERS)
        await asyncio.sleep(0.2)
    await create_hub_streams(nc, ["ORG-A", "ORG-B"])
    js = nc.jetstream(timeout=2)
    await js.publish("hub.deliver.ORG-A", b"delivery for ORG-A")
    await js.publish("hub.deliver.ORG-B", b"delivery for ORG-B")
    try:
        yield nc
    finally:
        await nc.close()


async def login(server: EmbeddedNats, name: str, errors: ErrorLog | None = None) -> NatsClient:
    """Connect as one of ACCOUNTS, with its org's inbox prefix when it has an org."""
    password, _role, org = ACCOUNTS[name]
    return await connect(server.url, name, password, org=org, errors=errors)


async def consumer_state(hub: NatsClient, consumer: str):  # -> ConsumerInfo
    return await hub.jetstream(timeout=2).consumer_info(DELIVER_STREAM, consumer)


async def stream_messages(hub: NatsClient, stream: str) -> int:
    info = await hub.jetstream(timeout=2).stream_info(stream)
    return info.state.messages


async def assert_receives_nothing(sub) -> None:
    with pytest.raises(nats.errors.TimeoutError):
        msg = await sub.next_msg(timeout=QUIET)
        pytest.fail(f"denied subscription received {msg.subject}: {msg.data!r}")


# --------------------------------------------------------------------------- pure functions


def test_permission_blocks_are_exactly_the_documented_subjects() -> None:
    assert permissions_for("publisher", "P1") == {
        "publish": {"allow": ["hub.inbound.*.P1"]},
        "subscribe": {"allow": ["_INBOX.P1.>"]},
    }
    assert permissions_for("recipient", "ORG-A") == {
        "publish": {
            "allow": [
                "$JS.API.CONSUMER.MSG.NEXT.HUB_DELIVER.deliver-ORG-A",
                "$JS.API.CONSUMER.INFO.HUB_DELIVER.deliver-ORG-A",
                "$JS.ACK.HUB_DELIVER.deliver-ORG-A.>",
            ]
        },
        "subscribe": {"allow": ["_INBOX.ORG-A.>"]},
    }
    for role in ("consent-client", "ig-auditor", "admin"):
        assert permissions_for(role, None) == {"publish": {"deny": [">"]}, "subscribe": {"deny": [">"]}}
    assert inbox_prefix("ORG-A") == "_INBOX.ORG-A"


@pytest.mark.parametrize("org", ["", "ORG.A", "*", ">", "ORG A", "ORG-A.>", None])
def test_org_ids_that_would_widen_a_subject_are_refused(org: str | None) -> None:
    for role in ("publisher", "recipient"):
        with pytest.raises(ValueError):
            permissions_for(role, org)
        with pytest.raises(ValueError):
            NatsUser("u", HASHES["rec-a"], role, org)


def test_auth_conf_refuses_plain_text_passwords_and_duplicate_users() -> None:
    # nats-server would accept a non-bcrypt string as a plain-text password.
    with pytest.raises(ValueError, match="bcrypt"):
        render_auth_conf(HUB_USER, "plain-text", [])
    with pytest.raises(ValueError, match="bcrypt"):
        render_auth_conf(HUB_USER, HASHES["rec-a"], [NatsUser("x", "plain", "admin", None)])
    with pytest.raises(ValueError, match="duplicate"):
        render_auth_conf(HUB_USER, HASHES["rec-a"], [NatsUser(HUB_USER, HASHES["rec-b"], "admin", None)])
    with pytest.raises(ValueError):
        NatsUser("x", HASHES["rec-a"], "superuser", None)


async def test_a_user_name_needing_quotes_works(server: EmbeddedNats, hub: NatsClient) -> None:
    nc = await login(server, 'q"uo\\te $HOME')
    try:
        ack = await nc.jetstream(timeout=2).publish("hub.inbound.fit-note.P3", b"{}")
        assert ack.stream == INBOUND_STREAM
    finally:
        await nc.close()


# --------------------------------------------------------------------------- recipients


async def test_recipient_fetches_and_acks_its_own_deliveries(server: EmbeddedNats, hub: NatsClient) -> None:
    errors = ErrorLog()
    nc = await login(server, "rec-a", errors)
    try:
        js = nc.jetstream(timeout=2)
        sub = await js.pull_subscribe_bind("deliver-ORG-A", stream=DELIVER_STREAM)
        [msg] = await sub.fetch(1, timeout=2)
        assert msg.data == b"delivery for ORG-A"
        assert msg.subject == "hub.deliver.ORG-A"
        seq = msg.metadata.sequence.stream
        await msg.ack()

        async def acked() -> bool:
            info = await consumer_state(hub, "deliver-ORG-A")
            return info.ack_floor.stream_seq == seq and info.num_ack_pending == 0 and info.num_pending == 0

        await wait_until(acked, 2, "the ack to reach the consumer")

        # consumer info (CONSUMER.INFO) and pull_subscribe by durable name work too,
        # and so does a synchronous ack (a request whose reply uses the org's inbox).
        assert (await sub.consumer_info()).name == "deliver-ORG-A"
        again = await js.pull_subscribe("hub.deliver.ORG-A", durable="deliver-ORG-A", stream=DELIVER_STREAM)
        await hub.jetstream(timeout=2).publish("hub.deliver.ORG-A", b"second")
        [msg2] = await again.fetch(1, timeout=2)
        assert msg2.data == b"second"
        await msg2.ack_sync(timeout=2)
        info = await consumer_state(hub, "deliver-ORG-A")
        assert info.ack_floor.stream_seq == msg2.metadata.sequence.stream and info.num_ack_pending == 0
        assert errors.errors == []
    finally:
        await nc.close()


async def test_recipient_cannot_fetch_another_orgs_deliveries(server: EmbeddedNats, hub: NatsClient) -> None:
    errors = ErrorLog()
    nc = await login(server, "rec-a", errors)
    try:
        sub = await nc.jetstream(timeout=SHORT).pull_subscribe_bind("deliver-ORG-B", stream=DELIVER_STREAM)
        with pytest.raises(nats.errors.TimeoutError):
            await sub.fetch(1, timeout=SHORT)
        await errors.wait_for("permissions violation", "publish", "msg.next.hub_deliver.deliver-org-b")
        assert sub.pending_msgs == 0
    finally:
        await nc.close()

    info = await consumer_state(hub, "deliver-ORG-B")
    assert info.num_pending == 1 and info.num_ack_pending == 0 and info.delivered.stream_seq == 0
    # ... and ORG-B still gets it.
    nc_b = await login(server, "rec-b")
    try:
        sub_b = await nc_b.jetstream(timeout=2).pull_subscribe_bind("deliver-ORG-B", stream=DELIVER_STREAM)
        [msg] = await sub_b.fetch(1, timeout=2)
        assert msg.data == b"delivery for ORG-B"
    finally:
        await nc_b.close()


async def test_recipient_cannot_subscribe_to_delivery_subjects(server: EmbeddedNats, hub: NatsClient) -> None:
    errors = ErrorLog()
    nc = await login(server, "rec-a", errors)
    try:
        subs = {s: await nc.subscribe(s) for s in ("hub.deliver.>", "hub.deliver.ORG-B", "hub.deliver.ORG-A")}
        await nc.flush()
        for subject in subs:
            await errors.wait_for("permissions violation", "subscription", f'"{subject.lower()}"')
        await hub.jetstream(timeout=2).publish("hub.deliver.ORG-B", b"more for ORG-B")
        await hub.jetstream(timeout=2).publish("hub.deliver.ORG-A", b"more for ORG-A")
        for sub in subs.values():
            await assert_receives_nothing(sub)
    finally:
        await nc.close()


async def test_recipient_cannot_read_another_orgs_inbox(server: EmbeddedNats, hub: NatsClient) -> None:
    errors = ErrorLog()
    snoop = await login(server, "rec-a", errors)
    nc_b = await login(server, "rec-b")
    try:
        spy = await snoop.subscribe("_INBOX.ORG-B.>")
        await snoop.flush()
        await errors.wait_for("permissions violation", "subscription", "_inbox.org-b.>")
        sub_b = await nc_b.jetstream(timeout=2).pull_subscribe_bind("deliver-ORG-B", stream=DELIVER_STREAM)
        [msg] = await sub_b.fetch(1, timeout=2)  # delivered to _INBOX.ORG-B.<nuid>
        assert msg.data == b"delivery for ORG-B"
        await assert_receives_nothing(spy)
    finally:
        await snoop.close()
        await nc_b.close()


async def test_recipient_needs_its_org_inbox_prefix(server: EmbeddedNats, hub: NatsClient) -> None:
    """With nats-py's default ``_INBOX`` prefix even its own fetch fails: no
    recipient holds a right on the shared ``_INBOX.>``."""
    errors = ErrorLog()
    password, _role, _org = ACCOUNTS["rec-a"]
    nc = await connect(server.url, "rec-a", password, errors=errors)  # no inbox_prefix
    try:
        sub = await nc.jetstream(timeout=SHORT).pull_subscribe_bind("deliver-ORG-A", stream=DELIVER_STREAM)
        with pytest.raises(nats.errors.TimeoutError):
            await sub.fetch(1, timeout=SHORT)
        await errors.wait_for("permissions violation", "subscription", "_inbox.")
    finally:
        await nc.close()


async def test_recipient_cannot_ack_for_another_org(server: EmbeddedNats, hub: NatsClient) -> None:
    nc_b = await login(server, "rec-b")
    errors = ErrorLog()
    nc_a = await login(server, "rec-a", errors)
    try:
        sub_b = await nc_b.jetstream(timeout=2).pull_subscribe_bind("deliver-ORG-B", stream=DELIVER_STREAM)
        [msg] = await sub_b.fetch(1, timeout=2)  # fetched, not acked
        assert msg.reply.startswith("$JS.ACK.HUB_DELIVER.deliver-ORG-B.")
        await nc_a.publish(msg.reply, b"+ACK")  # forged ack from ORG-A
        await nc_a.flush()
        await errors.wait_for("permissions violation", "publish", "$js.ack.hub_deliver.deliver-org-b")
        await asyncio.sleep(0.1)
        info = await consumer_state(hub, "deliver-ORG-B")
        assert info.num_ack_pending == 1 and info.ack_floor.stream_seq == 0
    finally:
        await nc_a.close()
        await nc_b.close()


async def test_recipient_cannot_create_consumers_or_publish_inbound(
    server: EmbeddedNats, hub: NatsClient
) -> None:
    errors = ErrorLog()
    nc = await login(server, "rec-a", errors)
    try:
        js = nc.jetstream(timeout=SHORT)
        with pytest.raises(nats.errors.TimeoutError):
            await js.add_consumer(
                DELIVER_STREAM, ConsumerConfig(durable_name="sneaky", filter_subject="hub.deliver.ORG-B")
            )
        await errors.wait_for("permissions violation", "publish", "$js.api.consumer")
        with pytest.raises(nats.errors.TimeoutError):  # an ephemeral consumer: CONSUMER.CREATE
            await js.pull_subscribe("hub.deliver.ORG-B", stream=DELIVER_STREAM)
        with pytest.raises(nats.errors.TimeoutError):
            await js.publish("hub.inbound.fit-note.ORG-A", b"{}")
        await errors.wait_for("permissions violation", "publish", '"hub.inbound.fit-note.org-a"')
    finally:
        await nc.close()

    with pytest.raises(nats.js.errors.NotFoundError):
        await consumer_state(hub, "sneaky")
    consumers = await hub.jetstream(timeout=2).consumers_info(DELIVER_STREAM)
    assert sorted(c.name for c in consumers) == ["deliver-ORG-A", "deliver-ORG-B"]
    assert await stream_messages(hub, INBOUND_STREAM) == 0


# --------------------------------------------------------------------------- publishers


async def test_publisher_publishes_only_under_its_own_org(server: EmbeddedNats, hub: NatsClient) -> None:
    errors = ErrorLog()
    nc = await login(server, "pub-1", errors)
    try:
        js = nc.jetstream(timeout=SHORT)
        ack = await js.publish("hub.inbound.fit-note.P1", b"{}")
        assert ack.stream == INBOUND_STREAM and ack.seq == 1
        ack = await js.publish("hub.inbound.oh-referral.P1", b"{}")
        assert ack.seq == 2
        assert errors.errors == []

        with pytest.raises(nats.errors.TimeoutError):
            await js.publish("hub.inbound.fit-note.P2", b"{}")
        await errors.wait_for("permissions violation", "publish", '"hub.inbound.fit-note.p2"')
        with pytest.raises(nats.errors.TimeoutError):  # nor forge a delivery
            await js.publish("hub.deliver.ORG-A", b"forged")
        await errors.wait_for("permissions violation", "publish", '"hub.deliver.org-a"')
    finally:
        await nc.close()

    hjs = hub.jetstream(timeout=2)
    with pytest.raises(nats.js.errors.NotFoundError):
        await hjs.get_last_msg(INBOUND_STREAM, "hub.inbound.fit-note.P2")
    assert await stream_messages(hub, INBOUND_STREAM) == 2
    assert await stream_messages(hub, DELIVER_STREAM) == 2  # the two from the fixture
    assert (await consumer_state(hub, "deliver-ORG-A")).num_pending == 1


async def test_publisher_cannot_subscribe_or_fetch(server: EmbeddedNats, hub: NatsClient) -> None:
    errors = ErrorLog()
    nc = await login(server, "pub-1", errors)
    other = await login(server, "pub-2")
    try:
        subs = {s: await nc.subscribe(s) for s in ("hub.inbound.>", "hub.inbound.*.P1", "hub.deliver.>")}
        await nc.flush()
        for subject in subs:
            await errors.wait_for("permissions violation", "subscription", f'"{subject.lower()}"')
        await other.jetstream(timeout=2).publish("hub.inbound.fit-note.P2", b"{}")
        await hub.publish("hub.inbound.fit-note.P1", b"{}")
        await hub.jetstream(timeout=2).publish("hub.deliver.ORG-A", b"x")
        for sub in subs.values():
            await assert_receives_nothing(sub)

        sub = await nc.jetstream(timeout=SHORT).pull_subscribe_bind("deliver-ORG-A", stream=DELIVER_STREAM)
        with pytest.raises(nats.errors.TimeoutError):
            await sub.fetch(1, timeout=SHORT)
        await errors.wait_for("permissions violation", "publish", "deliver-org-a")
    finally:
        await nc.close()
        await other.close()
    assert (await consumer_state(hub, "deliver-ORG-A")).delivered.stream_seq == 0


# --------------------------------------------------------------------------- HTTP-only roles


@pytest.mark.parametrize("name", ["consent", "auditor", "admin"])
async def test_http_only_roles_have_no_broker_rights(server: EmbeddedNats, hub: NatsClient, name: str) -> None:
    errors = ErrorLog()
    nc = await login(server, name, errors)  # the connection itself is allowed
    try:
        sub = await nc.subscribe(">")
        inbox_sub = await nc.subscribe("_INBOX.>")
        await nc.flush()
        await errors.wait_for("permissions violation", "subscription", '">"')
        await hub.publish("probe.anything", b"x")
        await hub.publish("_INBOX.ORG-A.abc", b"x")
        await assert_receives_nothing(sub)
        await assert_receives_nothing(inbox_sub)

        await nc.publish("hub.inbound.fit-note.P1", b"{}")
        await nc.publish("$JS.API.CONSUMER.MSG.NEXT.HUB_DELIVER.deliver-ORG-A", b"{}")
        await nc.flush()
        await errors.wait_for("permissions violation", "publish", '"hub.inbound.fit-note.p1"')
        await errors.wait_for("permissions violation", "publish", "deliver-org-a")
    finally:
        await nc.close()
    await asyncio.sleep(0.1)
    assert await stream_messages(hub, INBOUND_STREAM) == 0
    assert (await consumer_state(hub, "deliver-ORG-A")).num_waiting == 0


# --------------------------------------------------------------------------- reload


async def test_reload_users_revokes_and_adds_without_restart(server: EmbeddedNats, hub: NatsClient) -> None:
    pid = server.pid
    kept = await login(server, "rec-b")
    revoked_errors = ErrorLog()
    revoked = await login(server, "rec-a", revoked_errors)
    new = NatsUser("rec-c", hash_password("pw-rec-c"), "recipient", "ORG-C")
    try:
        server.reload_users([u for u in USERS if u.user != "rec-a"] + [new])

        async def new_user_accepted() -> bool:
            try:
                nc = await connect(server.url, "rec-c", "pw-rec-c", org="ORG-C")
            except (nats.errors.Error, OSError):  # a connect racing the reload may be reset
                return False
            await nc.close()
            return True

        await wait_until(new_user_accepted, 3, "the new user to be accepted")
        # The revoked user can no longer connect ...
        with pytest.raises(nats.errors.Error, match="(?i)authorization violation"):
            await login(server, "rec-a")
        # ... and its open connection was closed by the server.
        await wait_until(lambda: revoked.is_closed, 3, "the revoked connection to be closed")
        # A user still listed keeps its connection and its rights.
        assert kept.is_connected
        sub = await kept.jetstream(timeout=2).pull_subscribe_bind("deliver-ORG-B", stream=DELIVER_STREAM)
        [msg] = await sub.fetch(1, timeout=2)
        assert msg.data == b"delivery for ORG-B"
        assert server.pid == pid  # no restart
        assert "rec-a" not in server.auth_conf_path.read_text()
    finally:
        await kept.close()
        if not revoked.is_closed:
            await revoked.close()
        server.reload_users(USERS)

    async def restored() -> bool:
        try:
            nc = await login(server, "rec-a")
        except (nats.errors.Error, OSError):  # a connect racing the reload may be reset
            return False
        await nc.close()
        return True

    await wait_until(restored, 3, "the original users to be restored")


async def test_reload_changes_rights_of_live_connections(server: EmbeddedNats, hub: NatsClient) -> None:
    """A user re-issued with another org keeps its connection but gets the new
    org's rights at once."""
    errors = ErrorLog()
    nc = await login(server, "pub-1", errors)
    moved = [u if u.user != "pub-1" else NatsUser("pub-1", HASHES["pub-1"], "publisher", "P9") for u in USERS]
    try:
        server.reload_users(moved)

        async def moved_to_p9() -> bool:
            await nc.publish("hub.inbound.fit-note.P9", b"{}")
            await nc.flush()
            return await stream_messages(hub, INBOUND_STREAM) > 0

        await wait_until(moved_to_p9, 3, "the new rights to apply")
        await nc.publish("hub.inbound.fit-note.P1", b"{}")
        await nc.flush()
        await errors.wait_for("permissions violation", "publish", '"hub.inbound.fit-note.p1"')
        assert nc.is_connected
        with pytest.raises(nats.js.errors.NotFoundError):
            await hub.jetstream(timeout=2).get_last_msg(INBOUND_STREAM, "hub.inbound.fit-note.P1")
    finally:
        await nc.close()
        server.reload_users(USERS)
        await asyncio.sleep(0.2)
