"""Logging setup: human-readable by default, one JSON object per line with ``log_json``.

Raw ids never reach a log line (docs/privacy.md): :class:`RedactIds` strips user and item
ids passed as ``extra`` fields before any formatter sees the record, and the JSON formatter
carries only correlation fields (request and event ids, status, version).
"""

from __future__ import annotations

import json
import logging
import sys
import time

#: ``extra`` fields that would put a subject's raw id into a log line
ID_FIELDS = ("user_id", "item_id", "item_ids", "user", "item")


class RedactIds(logging.Filter):
    """Drops raw user/item ids given as ``extra`` fields from every record it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key in ID_FIELDS:
            if key in record.__dict__:
                del record.__dict__[key]
        return True


class JsonFormatter(logging.Formatter):
    """Structured log lines; ``extra={"request_id": ...}`` fields are carried through so an
    event, its receipt and its recommendations can be tied together (never user ids)."""

    KEYS = ("request_id", "event_id", "status", "version")

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in self.KEYS:
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def configure_logging(as_json: bool = False, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactIds())
    handler.setFormatter(
        JsonFormatter()
        if as_json
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
