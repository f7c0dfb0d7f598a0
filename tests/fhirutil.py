"""Helpers for tests that look inside FHIR JSON."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def walk(node: Any) -> Iterator[tuple[str | None, Any]]:
    """Every (key, value) pair in a JSON tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield None, v
            yield from walk(v)
