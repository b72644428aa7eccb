"""One log line per event, as ``key=value`` pairs.

``log_event(logger, "report_accepted", job=..., device=..., task=..., version=...)`` writes
``event=report_accepted job=... device=... task=... version=...``; values with spaces, quotes or
``=`` are JSON-quoted so every line splits unambiguously. :func:`configure_logging` installs a
stream handler that prefixes the time and level, for the ``serve`` command; embedded servers (tests,
the simulation) leave logging configuration to their host.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO

__all__ = ["KeyValueFormatter", "configure_logging", "format_fields", "log_event", "logger"]

logger = logging.getLogger("edgefl")


def _value(value: object) -> str:
    if isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = str(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return json.dumps(text)
    return text


def format_fields(event: str, fields: dict[str, object]) -> str:
    """``event=<event> k=v ...`` with ``None`` values left out."""
    parts = [f"event={_value(event)}"]
    parts.extend(f"{k}={_value(v)}" for k, v in fields.items() if v is not None)
    return " ".join(parts)


def log_event(
    log: logging.Logger, event: str, /, *, level: int = logging.INFO, **fields: object
) -> None:
    """Log ``event`` with ``fields`` as one ``key=value`` line (cheap when ``level`` is off)."""
    if log.isEnabledFor(level):
        log.log(level, "%s", format_fields(event, fields))


class KeyValueFormatter(logging.Formatter):
    """``2026-01-02T03:04:05.678Z level=info event=... k=v`` (UTC timestamps)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"{stamp}.{int(record.msecs):03d}Z level={record.levelname.lower()} "
        message = record.getMessage()
        if not message.startswith("event="):
            message = format_fields("message", {"text": message, "logger": record.name})
        line += message
        if record.exc_info:
            line += " exception=" + json.dumps(self.formatException(record.exc_info))
        return line


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Send ``edgefl`` logs (and hypercorn's) to ``stream`` (stderr) as key=value lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    for name in ("edgefl", "hypercorn.error"):
        log = logging.getLogger(name)
        log.handlers[:] = [handler]
        log.setLevel(level.upper())
        log.propagate = False
