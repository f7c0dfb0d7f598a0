"""The JSON Schemas of the source messages, generated from the pydantic models
and checked in under schemas/json/ for publishers. `python -m schemas.export`
rewrites them; a test fails when they drift from the models."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from adapters import ADAPTERS
from schemas.vocab import HUB

JSON_DIR = Path(__file__).with_name("json")


def json_schemas() -> dict[str, str]:
    """file name -> schema text, one per implemented source kind."""
    out = {}
    for kind, adapter in sorted(ADAPTERS.items()):
        schema = adapter.model.model_json_schema()
        schema = {"$schema": "https://json-schema.org/draft/2020-12/schema",
                  "$id": f"{HUB}/schemas/{kind}.schema.json", **schema}
        out[f"{kind}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def write(directory: Path = JSON_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in json_schemas().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write(Path(sys.argv[1]) if len(sys.argv) > 1 else JSON_DIR):
        print(p)
