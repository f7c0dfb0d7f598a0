"""Readable, value-free errors for refused input (contract §6).

Everything that turns a parse or validation failure into `FieldError`s lives here:

* `from_validation_error` maps a pydantic `ValidationError` to RFC 6901 JSON pointers
  (built from each error's `loc`; array indexes as numbers; `~` and `/` escaped)
  and a message only: pydantic's "Value error, " prefix is dropped, common
  built-in errors get a plain rule message, and `input`/`ctx` are never used;
* `invalid_json` reports a JSON syntax error by position (line, column, character
  offset), never by content;
* `NOT_AN_OBJECT`, `is_required`, ... are the fixed errors the envelope checks use.

As a last guard, a message that would contain the offending input (a string of
four or more characters) is replaced by a generic one: refused messages go to a
dead-letter store that operators read, and the value may be personal data.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from pydantic import ValidationError

from schemas.events import FieldError

__all__ = [
    "json_pointer",
    "from_validation_error",
    "invalid_json",
    "NOT_AN_OBJECT",
    "UNKNOWN_KIND",
    "KIND_NOT_SUPPORTED",
    "UNKNOWN_SOURCE_ORG",
    "SOURCE_ORG_MISMATCH",
    "is_required",
]

NOT_AN_OBJECT = FieldError("", "must be a JSON object")
UNKNOWN_KIND = FieldError("", "unknown message kind")
KIND_NOT_SUPPORTED = FieldError("", "kind not yet supported by this hub")
UNKNOWN_SOURCE_ORG = FieldError("/source/org_id", "organisation is not in the directory")
SOURCE_ORG_MISMATCH = FieldError("/source/org_id", "does not match the organisation in the subject")


def is_required(pointer: str) -> FieldError:
    return FieldError(pointer, "is required")


def _escape(token: str | int) -> str:
    return str(token).replace("~", "~0").replace("/", "~1")


def json_pointer(loc: Iterable[str | int]) -> str:
    """RFC 6901 pointer for a pydantic `loc`: () -> "", ("a", 0, "b/c") -> "/a/0/b~1c"."""
    return "".join("/" + _escape(part) for part in loc)


# Plain rule messages for pydantic's built-in error types (its own wording is
# value-free too, but names Python types: "dictionary", "instance of Patient" ...).
_BUILTIN_MESSAGES: dict[str, str] = {
    "missing": "is required",
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "dict_type": "must be a JSON object",
    "list_type": "must be a JSON array",
    "tuple_type": "must be a JSON array",
    "string_type": "must be a string",
    "string_too_short": "must not be empty",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "date_type": "must be an ISO 8601 date (YYYY-MM-DD)",
    "date_parsing": "must be an ISO 8601 date (YYYY-MM-DD)",
    "date_from_datetime_parsing": "must be an ISO 8601 date (YYYY-MM-DD)",
    "date_from_datetime_inexact": "must be an ISO 8601 date (YYYY-MM-DD)",
    "datetime_type": "must be an RFC 3339 timestamp",
    "datetime_parsing": "must be an RFC 3339 timestamp",
    "datetime_from_date_parsing": "must be an RFC 3339 timestamp",
    "timezone_aware": "must be an RFC 3339 timestamp with a time zone (Z or +hh:mm)",
}
_PREFIXES = ("Value error, ", "Assertion failed, ")
_MIN_LEAK_LENGTH = 4


def _message(error: dict) -> str:
    kind = error.get("type", "")
    message = _BUILTIN_MESSAGES.get(kind)
    if message is None:
        message = str(error.get("msg", "")) or "is not valid"
        for prefix in _PREFIXES:
            if message.startswith(prefix):
                message = message[len(prefix):]
                break
    value = error.get("input")
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        text = str(value).strip()
        if len(text) >= _MIN_LEAK_LENGTH and text in message:
            message = f"is not valid ({kind})"
    return message


def from_validation_error(
    exc: ValidationError, *, prefix: Sequence[str | int] = ()
) -> tuple[FieldError, ...]:
    """One FieldError per distinct (pointer, message), in pydantic's order."""
    seen: dict[tuple[str, str], None] = {}
    for error in exc.errors(include_url=False, include_context=False):
        seen.setdefault((json_pointer((*prefix, *error["loc"])), _message(error)), None)
    return tuple(FieldError(pointer, message) for pointer, message in seen)


def invalid_json(exc: ValueError) -> FieldError:
    """A JSON syntax error, located by line, column and character offset; never by content."""
    line = getattr(exc, "lineno", None)
    column = getattr(exc, "colno", None)
    pos = getattr(exc, "pos", None)
    if isinstance(line, int) and isinstance(column, int) and isinstance(pos, int):
        return FieldError(
            "", f"not valid JSON: syntax error at line {line}, column {column} (character {pos})"
        )
    return FieldError("", "not valid JSON")
