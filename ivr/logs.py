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

_NOISY = ("rasa", "tensorflow", "absl", "sanic", "apscheduler", "matplotlib", "jieba", "urllib3", "asyncio",
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
        for key in ("event", "outcome", "reason", "part", "intent"):
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


def configure_logging(level: str = "INFO", stream: Any = None) -> None:
    """JSON lines on stderr (stdout may be a protocol channel). Third-party chatter capped at WARNING."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.set_name("ivr-json-stderr")
    root = logging.getLogger()
    # Replace our own handler from an earlier call; leave handlers others installed (test harnesses).
    root.handlers[:] = [h for h in root.handlers if h.get_name() != "ivr-json-stderr"] + [handler]
    root.setLevel(level.upper())
    quiet_third_party()


def quiet_third_party() -> None:
    """Cap the chatty libraries at WARNING. Call again after loading models: jieba, for one, sets its
    logger to DEBUG and adds its own stderr handler when it is first imported."""
    for name in _NOISY:
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        if name == "jieba":
            logger.handlers[:] = []  # its own plain-text stderr handler; ours formats JSON
