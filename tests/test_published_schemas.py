"""The JSON Schemas published in schemas/json/ stay in step with the models,
and the contract's example messages are valid against them."""
from __future__ import annotations

import json

import jsonschema
import pytest

from schemas.export import JSON_DIR, json_schemas
from tests.conftest import example


def test_checked_in_schemas_match_the_models():
    generated = json_schemas()
    on_disk = {p.name: p.read_text() for p in JSON_DIR.glob("*.schema.json")}
    assert on_disk == generated, "run `python -m schemas.export` and commit schemas/json/"


@pytest.mark.parametrize("kind", ["fit-note"])
def test_examples_validate_against_the_published_schema(kind):
    schema = json.loads((JSON_DIR / f"{kind}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(example(kind), schema)
    broken = example(kind)
    del broken["fit_note"]["assessment"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
