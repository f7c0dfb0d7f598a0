"""Structured logs: one JSON object per line, with the ids a record carries
(event_id, delivery_id, dead_letter_id ...) as fields. Log calls name ids and
fields, never personal data."""
from __future__ import annotations

import json
import logging
import sys

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(level: str, fmt: str = "json") -> None:
    import time

    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries whose DEBUG output would carry SQL parameters or payloads (personal
    # data) stay at WARNING whatever HUB_LOG_LEVEL says.
    for library in ("aiosqlite", "asyncpg", "sqlalchemy", "faststream", "nats", "httpx", "httpcore", "alembic",
                    "uvicorn.access"):
        logging.getLogger(library).setLevel(logging.WARNING)
