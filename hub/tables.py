"""The database schema (SQLAlchemy Core). Alembic migrations in hub/migrations
create it; this module is their single source. Personal data lives only in
`events.bundle`, `deliveries.payload` (only a signposting notice's, or a copy narrowed
or requeued, until delivered: other copies are cut from the event), `consents.resource`
and `dead_letters.payload`; decisions and audit rows hold references."""
from __future__ import annotations

import zlib
from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use UTC-aware values")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)

    def bind_processor(self, dialect):
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def process(value: datetime | None) -> str | None:
            # The text SQLite's DATETIME writes ("2026-11-20 09:15:00.000000"), in one
            # C call rather than process_bind_param and then a %-format of each field.
            if value is None:
                return None
            if value.tzinfo is None:
                raise ValueError("naive datetime given to the database; use UTC-aware values")
            return value.astimezone(timezone.utc).isoformat(" ", "microseconds")[:26]
        return process


class Deflated(TypeDecorator):
    """Bytes stored deflated (zlib, its fastest level) and read back as they were
    given. For an event's FHIR bundle: JSON that shrinks about fourfold (6.8 kB to
    1.8 kB for a fit note) for ~25 us, one page written less per event
    (`python -m bench.pages`, README Performance). A value stored before this type
    (JSON, so it starts with "{", never zlib's 0x78) reads as it is."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value: bytes | None, dialect):
        return None if value is None else zlib.compress(value, 1)

    def process_result_value(self, value: bytes | None, dialect):
        if value is None:
            return None
        value = bytes(value)  # (asyncpg gives bytes, SQLite bytes; a memoryview elsewhere)
        return zlib.decompress(value) if value[:1] == b"\x78" else value


UTC_TS = UTCDateTime()
ID = String(64)
ORG = String(64)
NHS = String(10)

events = Table(
    "events", metadata,
    Column("event_id", ID, primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("event_type", String(40), nullable=False),
    Column("source_org_id", ORG, nullable=False),
    Column("message_id", String(200), nullable=False),
    Column("nhs_number", NHS, nullable=False, index=True),
    Column("document_id", String(200)),
    Column("version", Integer),
    Column("replaces", String(200)),
    Column("content_hash", String(64), nullable=False),
    Column("categories", JSON, nullable=False),
    Column("facts", JSON, nullable=False),
    Column("bundle", Deflated, nullable=False),  # the event's FHIR bundle (JSON), deflated
    Column("received_at", UTC_TS, nullable=False),
    Column("person_seq", BigInteger),  # see person_seq
)

decisions = Table(
    "decisions", metadata,
    Column("decision_id", ID, primary_key=True),
    Column("event_id", ID, ForeignKey("events.event_id"), nullable=False),  # by person: store.of_events
    Column("nhs_number", NHS, nullable=False),
    Column("recipient_id", ORG, nullable=False),
    Column("purpose", String(40), nullable=False),
    Column("category", String(40), nullable=False),
    Column("outcome", String(8), nullable=False),
    Column("rule", String(40), nullable=False),
    Column("reason", Text, nullable=False),
    Column("basis", JSON, nullable=False),
    Column("decided_at", UTC_TS, nullable=False),
    Index("ix_decisions_person_time", "nhs_number", "decided_at"),
    Index("ix_decisions_recipient_time", "recipient_id", "decided_at"),
)

# The delivery outbox: one row per candidate recipient of an event. A `pending`
# row is committed with the decisions, before anything is published; the relay
# publishes it and marks it `delivered`. Refused candidates are `withheld`.
deliveries = Table(
    "deliveries", metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("delivery_id", String(140), nullable=False, unique=True),  # "<event id>:<recipient org_id>"
    Column("event_id", ID, ForeignKey("events.event_id"), nullable=False),  # by person: store.of_events
    Column("nhs_number", NHS, nullable=False, index=True),
    Column("recipient_id", ORG, nullable=False),
    Column("recipient_type", String(32), nullable=False),
    Column("purpose", String(40), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("address", String(500), nullable=False),
    Column("state", String(16), nullable=False),
    Column("categories", JSON, nullable=False),
    Column("decision_ids", JSON, nullable=False),
    Column("reason", Text),
    Column("payload", LargeBinary),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTC_TS),
    Column("last_error", Text),
    Column("created_at", UTC_TS, nullable=False),
    Column("delivered_at", UTC_TS),
    # The person's sequence number of the event (see person_seq): sent with the delivery
    # so that a recipient can put what it gets about one person in order, retries and all.
    Column("person_seq", BigInteger),
    Index("ix_deliveries_state_seq", "state", "seq"),
    Index("ix_deliveries_recipient_state", "recipient_id", "state"),
)

unroutable = Table(
    "unroutable", metadata,
    Column("id", ID, primary_key=True),
    Column("event_id", ID, ForeignKey("events.event_id"), nullable=False, index=True),
    Column("role", String(40), nullable=False),
    Column("org_id", ORG),
    Column("reason", Text, nullable=False),
    Column("recorded_at", UTC_TS, nullable=False),
)

dead_letters = Table(
    "dead_letters", metadata,
    Column("dead_letter_id", ID, primary_key=True),  # sha256 of subject + bytes: a redelivery is the same letter
    Column("kind", String(64), nullable=False),
    Column("subject", String(300), nullable=False),
    Column("via", String(8), nullable=False),
    Column("source_org_id", ORG),
    Column("message_id", String(200)),
    Column("payload", LargeBinary, nullable=False),
    Column("errors", JSON, nullable=False),
    Column("status", String(16), nullable=False),  # open | resubmitted
    Column("received_at", UTC_TS, nullable=False, index=True),
    Column("published_at", UTC_TS),  # to hub.dlq.<kind>; null until the relay has published it
    Column("resubmitted_at", UTC_TS),
)

consents = Table(
    "consents", metadata,
    Column("consent_id", ID, primary_key=True),
    Column("nhs_number", NHS, nullable=False, index=True),
    Column("status", String(20), nullable=False),
    Column("version", Integer, nullable=False),
    Column("resource", JSON, nullable=False),
    Column("created_at", UTC_TS, nullable=False),
    Column("updated_at", UTC_TS, nullable=False),
    Column("withdrawn_at", UTC_TS),
)

consent_versions = Table(
    "consent_versions", metadata,
    Column("consent_id", ID, ForeignKey("consents.consent_id"), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("resource", JSON, nullable=False),
    Column("recorded_at", UTC_TS, nullable=False),
    Column("recorded_by", String(100)),
)

credentials = Table(
    "credentials", metadata,
    Column("credential_id", ID, primary_key=True),
    Column("role", String(20), nullable=False),
    Column("org_id", ORG),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("nats_user", String(100), nullable=False, unique=True),
    Column("nats_password_hash", String(100), nullable=False),
    Column("created_at", UTC_TS, nullable=False),
    Column("revoked_at", UTC_TS),
)

# Append-only record of what the hub did. Rows name ids and hashes, never
# personal data: `person` is a keyed hash of the NHS number. Rows are
# hash-chained: `hash` = SHA-256(prev_hash || the row's canonical content), and
# audit_head holds the last one. Rows hold references (event ids, a keyed hash of
# the person), never payload copies.
audit = Table(
    "audit", metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False),
    Column("at", UTC_TS, nullable=False),
    Column("action", String(40), nullable=False),
    Column("actor", String(100), nullable=False),
    Column("ref", String(140)),
    Column("event_id", ID),
    Column("person", String(64), index=True),
    Column("detail", JSON),
    Column("hash", LargeBinary(32), nullable=False),
)

# Per person, the number of the last event accepted about them: each event gets
# the next one, in the transaction that accepts it.
person_seq = Table(
    "person_seq", metadata,
    Column("nhs_number", NHS, primary_key=True),
    Column("seq", BigInteger, nullable=False),
)

# Work one worker at a time may do (serving one webhook recipient, in order):
# held until expires_at unless renewed by its holder.
leases = Table(
    "leases", metadata,
    Column("name", String(140), primary_key=True),
    Column("holder", String(100), nullable=False),
    Column("expires_at", UTC_TS, nullable=False),
)

audit_head = Table(
    "audit_head", metadata,
    Column("id", Integer, primary_key=True),  # always 1
    Column("seq", BigInteger, nullable=False),
    Column("hash", LargeBinary(32), nullable=False),
)

# Break-glass (§7 rule 6): an IG officer's time-limited override for one
# person, recipient and purpose, with a written justification; every use is
# audited and the record waits in a review queue until an IG user reviews it.
break_glass = Table(
    "break_glass", metadata,
    Column("break_glass_id", ID, primary_key=True),
    Column("nhs_number", NHS, nullable=False, index=True),
    Column("recipient_id", ORG, nullable=False),
    Column("purpose", String(40), nullable=False),
    Column("justification", Text, nullable=False),
    Column("created_by", String(100), nullable=False),
    Column("created_at", UTC_TS, nullable=False),
    Column("expires_at", UTC_TS, nullable=False),
    Column("uses", Integer, nullable=False, default=0),
    Column("reviewed_by", String(100)),
    Column("reviewed_at", UTC_TS),
    Column("review_note", Text),
)


# A referral with nowhere to go (§8): kept for IG, and the referrer is told.
signposting = Table(
    "signposting", metadata,
    Column("id", ID, primary_key=True),
    Column("event_id", ID, ForeignKey("events.event_id"), nullable=False, unique=True),
    Column("nhs_number", NHS, nullable=False, index=True),
    Column("referrer_org_id", ORG),
    Column("referrer_type", String(32)),
    Column("postcode_area", String(4)),
    Column("reason", Text, nullable=False),
    Column("notice_delivery_id", String(140)),  # the notice sent to the referrer, if it has a channel
    Column("recorded_at", UTC_TS, nullable=False),
)

# Absence episodes (issue 3): a person's chain of not-fit notes. Each current
# not-fit note is one row of absence_notes (a replaced or corrected note is
# marked superseded); episodes are recomputed from them.
absence_notes = Table(
    "absence_notes", metadata,
    Column("note_key", String(300), primary_key=True),  # "<source org>|<fit note id>"
    Column("nhs_number", NHS, nullable=False, index=True),
    Column("version", Integer, nullable=False),
    Column("event_id", ID, nullable=False),
    Column("start_on", Date, nullable=False),
    Column("end_on", Date, nullable=False),
    Column("not_fit", Boolean, nullable=False),
    Column("superseded", Boolean, nullable=False, default=False),
    Column("episode_id", ID, index=True),
    Column("arrived_at", UTC_TS, nullable=False),
)

absence_episodes = Table(
    "absence_episodes", metadata,
    Column("episode_id", ID, primary_key=True),
    Column("nhs_number", NHS, nullable=False, index=True),
    Column("start_on", Date, nullable=False),
    Column("end_on", Date, nullable=False),
    Column("milestone_due_at", UTC_TS, index=True),  # set while the notes cover day 28
    Column("milestone_event_id", ID),  # set once, when the milestone fires
    Column("updated_at", UTC_TS, nullable=False),
)
