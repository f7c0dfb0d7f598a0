"""The published interface documents: the AsyncAPI of the broker side (made by
FastStream from the broker the hub really runs) and the OpenAPI of the HTTP side
(made by FastAPI). `hub run` serves both (/asyncapi, /asyncapi.json,
/docs, /openapi.json); `python -m hub.docs` writes the checked-in copies under
schemas/, and a test fails when they drift from the code."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from faststream.nats import NatsBroker
from faststream.specification import AsyncAPI
from faststream.specification.base import Specification

from hub import __version__

DOCS_DIR = Path(__file__).resolve().parent.parent / "schemas"
TITLE = "Health and work integration hub"
DESCRIPTION = ("Consent-gated, minimised, audited delivery of fit notes, OH referrals, Access to Work "
               "requests and OH outcomes between the NHS, DWP and employers.")


def asyncapi(broker: NatsBroker) -> Specification:
    return AsyncAPI(broker, title=TITLE, version=__version__, description=DESCRIPTION).to_specification()


def canonical() -> dict[str, str]:
    """Both documents as the default settings describe them (stable across machines)."""
    from hub.api import create_app
    from hub.bootstrap import build_broker
    from hub.settings import Settings

    async def _noop(_msg) -> None:  # documentation only: never subscribed
        return None

    broker = build_broker(Settings(nats_url=None, nats_port=4222), None, _noop)
    return {
        "asyncapi.json": json.dumps(asyncapi(broker).to_jsonable(), indent=2, sort_keys=True) + "\n",
        "openapi.json": json.dumps(create_app(None).openapi(), indent=2, sort_keys=True) + "\n",
    }


def write(directory: Path = DOCS_DIR) -> list[Path]:
    out = []
    for name, text in canonical().items():
        path = directory / name
        path.write_text(text)
        out.append(path)
    return out


if __name__ == "__main__":
    for p in write(Path(sys.argv[1]) if len(sys.argv) > 1 else DOCS_DIR):
        print(p)
