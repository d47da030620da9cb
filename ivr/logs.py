"""Structured JSON logs with the call ID on every line; configured only by the entry point."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any

from ivr.masking import mask_text

# Set by the call session for the duration of a call; asyncio tasks inherit it.
call_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("call_id", default="-")

_NOISY = ("rasa", "rasa_sdk", "alembic", "tensorflow", "absl", "sanic", "apscheduler", "matplotlib", "jieba", "urllib3", "asyncio",
          "filelock", "h5py", "numexpr", "aiohttp", "pydub", "comtypes", "py.warnings", "sqlalchemy")


UNMASKED_FIELDS = frozenset({"ts", "level", "logger"})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "call_id": getattr(record, "call_id", None) or call_id_var.get(),
            "msg": record.getMessage(),
        }
        for key in ("event", "outcome", "reason", "part", "intent", "worker"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        # Last line of defence: long digit runs never reach a log in clear, in any field but the time
        # stamp and the names. The call ID is masked too (it comes from the caller's side: Asterisk's
        # uniqueid, or a remote channel's sender); the end of its random suffix still matches its transcript's name.
        masked = {
            k: mask_text(v) if isinstance(v, str) and k not in UNMASKED_FIELDS else v for k, v in entry.items()
        }
        return json.dumps(masked, ensure_ascii=False)


class TextFormatter(JsonFormatter):
    """One readable line per record for a person at a terminal: the same fields, masked the same way."""

    def format(self, record: logging.LogRecord) -> str:
        entry = json.loads(super().format(record))
        when = entry.pop("ts")[11:19]
        head = f"{when} {entry.pop('level'):<7} {entry.pop('logger')}"
        call_id = entry.pop("call_id", "-")
        msg = entry.pop("msg")
        exc = entry.pop("exc", "")
        fields = " ".join(f"{k}={v}" for k, v in entry.items())
        line = f"{head} [{call_id}] {msg}" if call_id != "-" else f"{head}: {msg}"
        return "\n".join(part for part in (f"{line} {fields}".rstrip(), exc) if part)


LOG_FORMATS = ("auto", "json", "text")


def configure_logging(level: str = "INFO", stream: Any = None, log_format: str = "auto") -> None:
    """Log lines on stderr (stdout may be a protocol channel): readable text on a terminal, JSON lines
    otherwise (``log_format`` "json" or "text" forces one). Third-party chatter capped at WARNING."""
    out = stream or sys.stderr
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    readable = log_format == "text" or (log_format == "auto" and out.isatty())
    handler = logging.StreamHandler(out)
    handler.setFormatter(TextFormatter() if readable else JsonFormatter())
    handler.set_name("ivr-json-stderr")
    root = logging.getLogger()
    # Replace our own handler from an earlier call; leave handlers others installed (test harnesses).
    root.handlers[:] = [h for h in root.handlers if h.get_name() != "ivr-json-stderr"] + [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # libraries' DeprecationWarnings become log records, capped below
    quiet_third_party()


def quiet_third_party() -> None:
    """Cap the chatty libraries at WARNING. Call again after loading models: jieba, for one, sets its
    logger to DEBUG and adds its own stderr handler when it is first imported."""
    for name in _NOISY:
        logger = logging.getLogger(name)
        # A library's warning about its own dependencies is no news to whoever runs the robot.
        logger.setLevel(logging.ERROR if name == "py.warnings" else logging.WARNING)
        if name == "jieba":
            logger.handlers[:] = []  # its own plain-text stderr handler; ours formats JSON
