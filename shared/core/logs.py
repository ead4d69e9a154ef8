"""Structured logs as Cloud Logging reads them: one JSON object per line on stdout.

Cloud Run / Cloud Functions gen2 parse `severity` and `message` from JSON lines and keep the
other keys as `jsonPayload`. Only the fields passed explicitly are logged, so request bodies,
tokens or credentials never reach the logs by accident.
"""

from __future__ import annotations

import json
import sys
from typing import Any

_ALLOWED = {"eventId", "cluster", "function", "step", "state", "outcome", "nad", "kind", "reason",
            "attempt", "durationMs", "requests", "problems", "operation", "repairs", "error", "count"}


def log(severity: str, message: str, **fields: Any) -> None:
    entry: dict[str, Any] = {"severity": severity, "message": message}
    for key, value in fields.items():
        if key in _ALLOWED and value is not None:
            entry[key] = value if isinstance(value, (int, float, bool, list, dict)) else str(value)
    sys.stdout.write(json.dumps(entry, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def info(message: str, **fields: Any) -> None:
    log("INFO", message, **fields)


def warning(message: str, **fields: Any) -> None:
    log("WARNING", message, **fields)


def error(message: str, **fields: Any) -> None:
    log("ERROR", message, **fields)
