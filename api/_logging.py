"""The daemon's log: one line per record on stderr, as text or as JSON, at a level.

The standard library's ``logging`` all the way: every layer logs with ``logging`` and
puts what a record is about in its ``extra`` (``plugin``, ``supervisor``, ``child``,
``reason``, ``backoff``...), so a small formatter is all JSON lines need; structlog would
add a dependency and a second way to log for no gain here. The loggers, by layer:

- ``supervision``: crashes (with their reason), restarts (with their backoff) and
  quarantines at WARNING; a supervisor that gives up at ERROR.
- ``cws.plugins``: install, load, unload, update, enable, disable, remove at INFO; a
  plugin that cannot load at ERROR. ``cws.plugin.<name>``: a subprocess plugin's stderr.
- ``providers``: circuit-breaker changes at WARNING.
- ``cws.daemon``, ``cws.http`` (errors), ``cws.http.access`` (the access log, off unless
  asked for: it then logs at INFO whatever the level).

A JSON line: ``{"time": "2026-12-06T00:55:12.123Z", "level": "WARNING", "logger":
"supervision", "event": "restarting /plugins/aws in 0.21 s (restart 3)", "fields":
{"supervisor": "/plugins", "child": "aws", "backoff": 0.207, ...}}`` (and ``exception``
with the traceback when there is one).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("text", "json")
ACCESS_LOGGER = "cws.http.access"

_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",  # Python 3.12 adds it to every record
}


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra`` values of a record (what is not a standard LogRecord attribute)."""
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _RESERVED and not key.startswith("_")
    }


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...``. The fields the message already
    says word for word are left out, so that a reason is not printed twice."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        message = record.getMessage()
        extras = []
        for key, value in record_fields(record).items():
            if value is None or (isinstance(value, str) and value and value in message):
                continue
            extras.append(f"{key}={_text(value)}")
        return f"{line} {' '.join(extras)}" if extras else line


def _text(value: Any) -> str:
    if isinstance(value, str):
        plain = value and not any(c.isspace() or c in "\"'=" for c in value)
        return value if plain else json.dumps(value)
    if isinstance(value, int | float | bool):
        return json.dumps(value)
    return json.dumps(value, default=str, separators=(",", ":"))


class JSONFormatter(logging.Formatter):
    """One JSON object a line: time (ISO-8601 UTC), level, logger, event, fields."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        line: dict[str, Any] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
            "fields": record_fields(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, default=str, ensure_ascii=False)


class OperatorHints(logging.Filter):
    """Adds what only the daemon knows to the supervision layer's records: the actor's
    path (``actor``; the runtime names each supervisor by its path) and, under
    ``/plugins``, the ``plugin``; for a quarantine, how to clear it (``clear_with``:
    the HTTP route and the CLI command)."""

    def filter(self, record: logging.LogRecord) -> bool:
        supervisor = getattr(record, "supervisor", None)
        child = getattr(record, "child", None)
        if record.name != "supervision" or not isinstance(supervisor, str) or child is None:
            return True
        if not supervisor.startswith("/"):
            return True
        path = f"{supervisor.rstrip('/')}/{child}"
        record.actor = path
        if supervisor == "/plugins":
            record.plugin = child
        if getattr(record, "state", None) == "quarantined":
            record.clear_with = (
                f"POST /api/v1/actors{path}/clear-quarantine or cws actors clear-quarantine {path}"
            )
        return True


class AccessFields(logging.Filter):
    """On hypercorn's access records: puts the request's ``method``, ``path``,
    ``status``, ``duration_ms`` and ``client`` in the record's fields (only these: its
    atoms also hold the whole environment), and drops the records without a response.

    Hypercorn logs a request a second time, with no response, when the client closes
    the connection as the response ends (pgjones/hypercorn#357, open); the price of
    dropping those is that a request abandoned before any response is not logged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.args, Mapping) or "s" not in record.args:
            return True
        atoms: Mapping[str, Any] = record.args
        status = str(atoms["s"])
        if status == "-":
            return False
        record.method, record.path = atoms.get("m"), atoms.get("Uq")
        record.status = int(status) if status.isdigit() else status
        record.duration_ms = round(int(atoms.get("D", 0)) / 1000, 3)
        record.client = atoms.get("h")
        return True


class _DaemonHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The daemon's handler; a second ``daemon_logging`` replaces it, never stacks."""


@contextlib.contextmanager
def daemon_logging(
    *,
    level: str = "INFO",
    log_format: str = "text",
    access_log: bool = False,
    stream: TextIO | None = None,
) -> Iterator[logging.Handler]:
    """Log to ``stream`` (stderr) in ``log_format`` at ``level`` until the block ends;
    the root logger's level and handlers are then as they were.

    Raises:
        ValueError: an unknown level or format.
    """
    if level.upper() not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {log_format!r}")
    handler = _DaemonHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JSONFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(OperatorHints())
    root = logging.getLogger()
    access = logging.getLogger(ACCESS_LOGGER)
    saved = (root.level, access.level, [h for h in root.handlers if isinstance(h, _DaemonHandler)])
    for old in saved[2]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Asked for, the access log shows whatever the level; hypercorn logs it at INFO.
    access.setLevel(logging.INFO if access_log else logging.NOTSET)
    access_fields = AccessFields()
    access.addFilter(access_fields)
    try:
        yield handler
    finally:
        access.removeFilter(access_fields)
        root.removeHandler(handler)
        for old in saved[2]:
            root.addHandler(old)
        root.setLevel(saved[0])
        access.setLevel(saved[1])
