"""Broker users and their permissions (contract §4, §9, §10).

Pure functions, no I/O: they decide which NATS subjects each credential role may
use and render the ``authorization { users = [...] }`` block that the embedded
nats-server reads from ``auth.conf`` (see :mod:`hub.nats_server`).

What each role may do on the broker, and why each subject is there (subjects as
used by nats-py 2.x, checked against ``nats/js/client.py`` and ``nats/aio/msg.py``):

``publisher`` (org P)
    publish  ``hub.inbound.*.P``
        ``js.publish("hub.inbound.<kind>.P", ...)`` is a request to that subject;
        JetStream answers with a PubAck on the reply subject.
    subscribe ``_INBOX.P.>``
        where that PubAck arrives: nats-py's request multiplexer subscribes to
        ``<inbox_prefix>.<nuid>.*``. The client must connect with
        ``inbox_prefix=inbox_prefix("P")``; with the default ``_INBOX`` prefix
        its replies would be refused, and a bare ``_INBOX.>`` right would let one
        org read another's replies.

``recipient`` (org R)
    publish  ``$JS.API.CONSUMER.MSG.NEXT.HUB_DELIVER.deliver-R``
        ``PullSubscription.fetch()`` (bound with ``js.pull_subscribe_bind(
        "deliver-R", stream="HUB_DELIVER")``) publishes its pull request here,
        with its own ``<inbox_prefix>.<nuid>`` as reply subject.
    publish  ``$JS.API.CONSUMER.INFO.HUB_DELIVER.deliver-R``
        ``sub.consumer_info()`` and ``js.pull_subscribe("hub.deliver.R",
        durable="deliver-R", stream="HUB_DELIVER")``, which looks the consumer
        up before binding; ``pull_subscribe_bind`` itself sends nothing.
    publish  ``$JS.ACK.HUB_DELIVER.deliver-R.>``
        ``msg.ack()/nak()/in_progress()/term()`` publish to the message's reply
        subject ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>``.
    subscribe ``_INBOX.R.>``
        the fetch deliver subject, replies to ``ack_sync`` and to consumer info.
    Nothing else: no other consumer, no consumer or stream creation, no
    ``hub.deliver.>`` (a core subscription there would bypass the consumer and
    read every org's deliveries), no ``hub.inbound.>``.

``consent-client``, ``ig-auditor``, ``admin``
    HTTP-only roles (contract §9). Their NATS users exist so that one credential
    has one shape, but they may neither publish nor subscribe to anything
    (``deny: [">"]`` both ways); they can open a connection and do nothing.

``hub`` (internal)
    the hub's own user: ``>`` both ways, i.e. everything in the account
    (rendered without a permissions block, which means the same).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import bcrypt

from hub.streams import DELIVER_STREAM, recipient_consumer
from schemas import identifiers

#: Roles a credential can carry (contract §9) plus the hub's internal user.
ROLES: tuple[str, ...] = ("publisher", "recipient", "consent-client", "ig-auditor", "admin", "hub")
#: Roles whose NATS user is tied to an organisation.
ORG_ROLES: frozenset[str] = frozenset({"publisher", "recipient"})
#: Roles that only use HTTP; their NATS users get no rights at all.
HTTP_ONLY_ROLES: frozenset[str] = frozenset({"consent-client", "ig-auditor", "admin"})


#: bcrypt cost for broker passwords. nats-server checks the hash on every
#: CONNECT; cost 10 is ~50 ms per check, which keeps connects (and reconnect
#: storms) fast while the passwords themselves are long random tokens anyway.
BCRYPT_COST = 10

# nats-server treats a password as a bcrypt hash only when it has this shape;
# anything else would be taken as a *plain-text* password, so refuse it.
_BCRYPT_HASH = re.compile(r"^\$2[abxy]\$\d{2}\$[./A-Za-z0-9]{53}$")


def _check_org_id(org_id: str | None) -> str:
    """An org id becomes one subject token (schemas.identifiers.org_id: letters,
    digits, '-' and '_'); '.', '*', '>' or spaces would widen or break the
    subject patterns built from it."""
    try:
        return identifiers.org_id(org_id)  # type: ignore[arg-type]
    except ValueError:
        raise ValueError(f"org_id {org_id!r} is not a valid subject token") from None


def inbox_prefix(org_id: str) -> str:
    """The inbox prefix an org's broker clients must connect with
    (``nats.connect(..., inbox_prefix=inbox_prefix(org_id))``)."""
    return f"_INBOX.{_check_org_id(org_id)}"


def permissions_for(role: str, org_id: str | None) -> dict[str, Any]:
    """The nats-server ``permissions`` block for a user of ``role``.

    ``publisher`` and ``recipient`` need an ``org_id``; the others ignore it.
    The internal ``hub`` role gets ``>`` both ways (the same as no block).
    See the module docstring for why each subject is needed.
    """
    if role == "hub":
        return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
    if role in HTTP_ONLY_ROLES:
        return {"publish": {"deny": [">"]}, "subscribe": {"deny": [">"]}}
    if role == "publisher":
        org = _check_org_id(org_id)
        return {
            "publish": {"allow": [f"hub.inbound.*.{org}"]},
            "subscribe": {"allow": [f"{inbox_prefix(org)}.>"]},
        }
    if role == "recipient":
        org = _check_org_id(org_id)
        consumer = recipient_consumer(org)
        return {
            "publish": {
                "allow": [
                    f"$JS.API.CONSUMER.MSG.NEXT.{DELIVER_STREAM}.{consumer}",
                    f"$JS.API.CONSUMER.INFO.{DELIVER_STREAM}.{consumer}",
                    f"$JS.ACK.{DELIVER_STREAM}.{consumer}.>",
                ]
            },
            "subscribe": {"allow": [f"{inbox_prefix(org)}.>"]},
        }
    raise ValueError(f"unknown role {role!r}")


@dataclass(frozen=True)
class NatsUser:
    """One broker user as written to ``auth.conf``."""

    user: str
    password_hash: str  # bcrypt, from hash_password()
    role: str
    org_id: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES or self.role == "hub":
            raise ValueError(f"unknown role {self.role!r}")
        if self.role in ORG_ROLES:
            _check_org_id(self.org_id)


def hash_password(plain: str) -> str:
    """bcrypt hash of a broker password, in the ``$2b$`` form nats-server
    accepts directly as ``password`` in its config (cost: :data:`BCRYPT_COST`)."""
    return bcrypt.hashpw(plain.encode(), bcrypt.gensalt(rounds=BCRYPT_COST)).decode()


def check_password(plain: str, password_hash: str) -> bool:
    """True when ``plain`` matches a hash from :func:`hash_password`."""
    try:
        return bcrypt.checkpw(plain.encode(), password_hash.encode())
    except ValueError:
        return False


def conf_string(value: str) -> str:
    """A double-quoted nats-server config string.

    Inside double quotes the config lexer resolves no ``$variables`` (bcrypt
    hashes start with ``$2b$``) and knows only the escapes ``\\\\``, ``\\"``,
    ``\\t``, ``\\n``, ``\\r`` and ``\\xXX``; every other control character is
    written as ``\\xXX``. Non-ASCII text is left as UTF-8, which the server reads.
    """
    out = ['"']
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _render_permissions(perms: dict[str, Any], indent: str) -> list[str]:
    lines = [f"{indent}permissions: {{"]
    for direction in ("publish", "subscribe"):
        rules = perms.get(direction)
        if not rules:
            continue
        lines.append(f"{indent}  {direction}: {{")
        for kind in ("allow", "deny"):
            if kind in rules:
                subjects = ", ".join(conf_string(s) for s in rules[kind])
                lines.append(f"{indent}    {kind}: [{subjects}]")
        lines.append(f"{indent}  }}")
    lines.append(f"{indent}}}")
    return lines


def _render_user(
    user: str, password_hash: str, perms: dict[str, Any] | None, comment: str
) -> list[str]:
    if not user:
        raise ValueError("a broker user needs a name")
    if not _BCRYPT_HASH.match(password_hash):
        raise ValueError(f"password for broker user {user!r} is not a bcrypt hash")
    lines = [f"    # {comment}", "    {", f"      user: {conf_string(user)}",
             f"      password: {conf_string(password_hash)}"]
    if perms is not None:
        lines += _render_permissions(perms, "      ")
    lines.append("    }")
    return lines


def render_auth_conf(hub_user: str, hub_password_hash: str, users: Sequence[NatsUser]) -> str:
    """The ``authorization`` block for ``auth.conf``: the hub user (full rights)
    followed by ``users``, each with :func:`permissions_for` its role."""
    seen = {hub_user}
    lines = [
        "# Written by the hub (hub/nats_auth.py); rewritten on credential issue/revoke.",
        "authorization {",
        "  users = [",
    ]
    lines += _render_user(hub_user, hub_password_hash, None, "role=hub (internal)")
    for u in users:
        if u.user in seen:
            raise ValueError(f"duplicate broker user {u.user!r}")
        seen.add(u.user)
        comment = f"role={u.role}" + (f" org={u.org_id}" if u.org_id else "")
        # Keep the comment on one line whatever the org id holds.
        comment = "".join(c if c.isprintable() else "?" for c in comment)
        lines += _render_user(u.user, u.password_hash, permissions_for(u.role, u.org_id), comment)
    lines += ["  ]", "}", ""]
    return "\n".join(lines)
