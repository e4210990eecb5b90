"""Log output for the services: the usual text lines, or one JSON object per line with stable keys.

Our log lines already read `event key=value key=value` (e.g. `netboot.decision mac=… node=…`);
the JSON form keeps that text in `msg` and lifts the event and each key into fields:

  {"ts": "2026-12-01T00:00:00.123456+00:00", "level": "info", "logger": "provisioner.netboot.service",
   "event": "netboot.decision", "mac": "52:54:00:0a:01:01", "node": "r1n01", ..., "msg": "netboot.decision …"}

ts, level, logger, event and msg are always there and never overwritten by a field of the same name.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from datetime import UTC, datetime

FORMATS = ("text", "json")
ENV = "PROVISIONER_LOG_FORMAT"
TEXT = "%(asctime)s %(levelname)s %(message)s"
_EVENT = re.compile(r"^(?P<event>[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+)(?:\s|$)")
_FIELD = re.compile(r"(?:^|\s)(?P<key>[a-z_][a-z0-9_]*)=(?P<value>'[^']*'|\"[^\"]*\"|\S*)")
_BASE = ("ts", "level", "logger", "event", "msg")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        m = _EVENT.match(msg)
        out = {"ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds"),
               "level": record.levelname.lower(), "logger": record.name, "event": m["event"] if m else None}
        for f in _FIELD.finditer(msg[m.end():] if m else msg):
            if f["key"] not in _BASE:
                out.setdefault(f["key"], f["value"].strip("'\""))
        out["msg"] = msg
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(fmt: str | None = None, level: int = logging.WARNING) -> None:
    """Send the root logger's records to stderr as `fmt` (default: $PROVISIONER_LOG_FORMAT, else text).
    The choice is exported so that child processes (the HTTP pool) log the same way."""
    fmt = (fmt or os.environ.get(ENV) or "text").lower()
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: expected one of {', '.join(FORMATS)}")
    os.environ[ENV] = fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
