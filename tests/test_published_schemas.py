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


# kind -> (body key, a required field of the body, a value its enum refuses)
KINDS = {
    "fit-note": ("fit_note", "assessment", "signed-off"),
    "oh-referral": ("referral", "reason", None),
    "access-to-work": ("application", "support_requested", None),
    "oh-outcome": ("outcome", "fitness", "unfit"),
}


def test_every_inbound_kind_is_published():
    assert set(json_schemas()) == {f"{kind}.schema.json" for kind in KINDS}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_examples_validate_against_the_published_schema(kind):
    body, required, refused = KINDS[kind]
    schema = json.loads((JSON_DIR / f"{kind}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(example(kind), schema)
    broken = example(kind)
    del broken[body][required]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    if refused is not None:
        wrong = example(kind)
        wrong[body][required] = refused
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, schema)


def test_published_schemas_state_the_new_kinds_rules():
    atw = json.loads((JSON_DIR / "access-to-work.schema.json").read_text())
    for nation, ok in (("england", True), ("wales", True), ("northern-ireland", False)):
        msg = example("access-to-work")
        msg["application"]["nation"] = nation
        assert jsonschema.Draft202012Validator(atw).is_valid(msg) is ok, nation
    msg = example("access-to-work")
    msg["application"]["support_requested"] = ["support-worker", "support-worker"]
    assert not jsonschema.Draft202012Validator(atw).is_valid(msg)
    msg["application"]["support_requested"] = []
    assert not jsonschema.Draft202012Validator(atw).is_valid(msg)

    referral = json.loads((JSON_DIR / "oh-referral.schema.json").read_text())
    msg = example("oh-referral")
    del msg["referral"]["referrer"]["org_id"]
    assert not jsonschema.Draft202012Validator(referral).is_valid(msg)  # an employer names itself
    msg["referral"]["referrer"]["type"] = "self"
    assert jsonschema.Draft202012Validator(referral).is_valid(msg)  # a person need not
