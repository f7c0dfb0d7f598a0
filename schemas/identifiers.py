"""Identifier rules shared by every adapter and the consent API (DOMAIN.md, §2).

Each check returns the normalised value or raises ValueError with a message
that names the rule broken and never repeats the value (it is personal data).
"""
from __future__ import annotations

import re

_NHS_WEIGHTS = (10, 9, 8, 7, 6, 5, 4, 3, 2)


def nhs_number(value: str) -> str:
    """10 digits (spaces allowed on input) with a valid modulus-11 check digit."""
    if not isinstance(value, str):
        raise ValueError("must be a string of 10 digits")
    digits = value.replace(" ", "")
    if len(digits) != 10 or not digits.isascii() or not digits.isdigit():
        raise ValueError("must be 10 digits (spaces allowed)")
    total = sum(int(d) * w for d, w in zip(digits[:9], _NHS_WEIGHTS))
    check = 11 - total % 11
    if check == 11:
        check = 0
    if check == 10 or check != int(digits[9]):
        raise ValueError("is not a valid NHS number: the check digit does not match")
    return digits


# A UK postcode: outward code (area letters, district) and inward code (sector digit, unit letters).
_POSTCODE = re.compile(r"^([A-Z]{1,2})([0-9][0-9A-Z]?) ?([0-9][A-Z]{2})$")


def postcode(value: str) -> str:
    """A UK postcode, normalised to upper case with one space (LS1 4AP)."""
    if not isinstance(value, str):
        raise ValueError("must be a UK postcode")
    compact = " ".join(value.upper().split())
    m = _POSTCODE.match(compact)
    if not m:
        raise ValueError("is not a UK postcode")
    return f"{m.group(1)}{m.group(2)} {m.group(3)}"


def postcode_area(normalised_postcode: str) -> str:
    """The area letters of the outward code: LS of LS1 4AP, M of M1 1AE."""
    m = _POSTCODE.match(normalised_postcode)
    if not m:
        raise ValueError("is not a UK postcode")
    return m.group(1)


_NI = re.compile(r"^([A-Z])([A-Z])([0-9]{6})([A-D])$")
_NI_BAD_FIRST = set("DFIQUV")
_NI_BAD_SECOND = set("DFIQUVO")
_NI_NEVER_ISSUED = {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}


def ni_number(value: str) -> str:
    """Two prefix letters, six digits, a suffix A-D; prefixes HMRC never issues refused."""
    if not isinstance(value, str):
        raise ValueError("must be a National Insurance number")
    compact = value.replace(" ", "").upper()
    m = _NI.match(compact)
    if not m:
        raise ValueError("must be two letters, six digits and a final letter A-D")
    first, second = m.group(1), m.group(2)
    if first in _NI_BAD_FIRST or second in _NI_BAD_SECOND or first + second in _NI_NEVER_ISSUED:
        raise ValueError("has a prefix that is never issued")
    return compact


_ORG_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def org_id(value: str) -> str:
    """A directory id or ODS code: letters, digits, '-' and '_' (usable as a subject token)."""
    if not isinstance(value, str) or not _ORG_ID.match(value):
        raise ValueError("must be an organisation id: letters, digits, '-' or '_'")
    return value
