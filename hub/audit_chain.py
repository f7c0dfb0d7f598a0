"""The audit trail's hash chain: plain functions.

Each row's hash is SHA-256 over the previous row's hash and the row's own
canonical content (seq, time, action, actor, references, detail), so editing,
removing or reordering any row breaks every link after it. `verify` walks the
rows and names the first broken link."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

GENESIS = hashlib.sha256(b"health-work-hub audit genesis").digest()
FIELDS = ("seq", "at", "action", "actor", "ref", "event_id", "person", "detail")


def _canonical(row: dict[str, Any]) -> bytes:
    at: datetime = row["at"]
    content = {k: row.get(k) for k in FIELDS}
    content["at"] = at.astimezone(UTC).isoformat(timespec="microseconds")
    return orjson.dumps(content, option=orjson.OPT_SORT_KEYS)


def chain_hash(prev: bytes, row: dict[str, Any]) -> bytes:
    return hashlib.sha256(prev + _canonical(row)).digest()


@dataclass(frozen=True)
class Broken:
    seq: int
    problem: str

    def __str__(self) -> str:
        return f"audit row {self.seq}: {self.problem}"


def verify(rows: Iterable[Any], *, start_seq: int = 0, start_hash: bytes = GENESIS) -> tuple[int, bytes, Broken | None]:
    """Walk rows in seq order from (start_seq, start_hash); returns the last good
    (seq, hash) and the first broken link, if any."""
    seq, prev = start_seq, start_hash
    for row in rows:
        d = dict(row._mapping) if hasattr(row, "_mapping") else dict(row)
        if d["seq"] != seq + 1:
            return seq, prev, Broken(seq + 1, f"missing (the next row is {d['seq']}): rows were removed")
        if chain_hash(prev, d) != bytes(d["hash"]):
            return seq, prev, Broken(d["seq"], "its content does not match its hash: it was altered")
        seq, prev = d["seq"], bytes(d["hash"])
    return seq, prev, None
