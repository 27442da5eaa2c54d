"""Structured logging: one JSON object per line, with the ``extra=`` fields as keys.

Python warnings (numpy's among them) are routed into the same log, so nothing reaches
stderr outside a JSON line; ``LogThrottle`` keeps a flood of alike refusals to one line
per interval.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import orjson

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # warnings.warn would otherwise print its own two lines to stderr, outside the JSON.
    logging.captureWarnings(True)


class LogThrottle:
    """At most one line per key per ``interval_s``; the next line let through carries
    ``suppressed``, the number held back since the last. Keys must come from a small set
    (an RPC and an error code), never from what a client sent."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[Hashable, tuple[float, int]] = {}

    def log(self, level: int, key: Hashable, msg: str, extra: Mapping[str, Any]) -> bool:
        """Log ``msg`` unless a line with ``key`` went out less than ``interval_s`` ago."""
        if not self.logger.isEnabledFor(level):
            return False
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self._last[key] = (last[0], last[1] + 1)
            return False
        held = last[1] if last is not None else 0
        self._last[key] = (now, 0)
        self.logger.log(level, msg, extra={**extra, "suppressed": held} if held else dict(extra))
        return True
