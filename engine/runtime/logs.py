"""Structured logs: one JSON object per line, secrets masked, for the daemon's stderr."""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any

from engine.secrets import Masker

__all__ = ["JsonLog"]


class JsonLog:
    def __init__(
        self,
        client: str,
        masker: Masker,
        stream: IO[str] | None = None,
        *,
        level: str = "info",
        context: dict[str, Any] | None = None,
    ) -> None:
        self.client = client
        self.masker = masker
        self.stream = stream or sys.stderr
        self.context = dict(context or {})  # fields every line carries (a delivery process's number)
        self._min = _LEVELS[level]

    def event(self, event: str, level: str = "info", **fields: Any) -> None:
        if _LEVELS[level] < self._min:
            return
        record = {
            "ts": round(time.time(), 3),
            "level": level,
            "client": self.client,
            "event": event,
            **self.context,
            **fields,
        }
        line = self.masker(json.dumps(record, default=str, ensure_ascii=False))
        self.stream.write(line + "\n")
        self.stream.flush()

    def info(self, event: str, **fields: Any) -> None:
        self.event(event, "info", **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.event(event, "warning", **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.event(event, "error", **fields)

    def debug(self, event: str, **fields: Any) -> None:
        self.event(event, "debug", **fields)


_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
