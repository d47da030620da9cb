"""The robot's brain: one Rasa 3.6 project per locale under ``dialogs/<locale>/``, custom actions in Python.

- ``actions``: the custom actions (verification state machine, account answers), written once for all
  locales; the wording lives in each locale's domain.
- ``engine.RasaEngine``: the in-process DialogueEngine (one Rasa agent per locale, each on its own
  event loop thread; actions run in-process through rasa_sdk's ActionExecutor).
- ``remote.RemoteRasaEngine``: the same conversations against a Rasa HTTP server (scale-out option).
- ``train`` / ``validate`` / ``commands``: ``ivr train`` and ``ivr dialogs validate``.

Rasa is heavy to import (TensorFlow): modules here import it inside functions, after ``prepare_rasa``.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path

# Rasa reads these when imported or when it trains; set before the first ``import rasa...``.
RASA_ENVIRONMENT: Mapping[str, str] = {
    "RASA_TELEMETRY_ENABLED": "false",  # no phone-home
    "TF_CPP_MIN_LOG_LEVEL": "3",  # TensorFlow's C++ chatter
    "TF_ENABLE_ONEDNN_OPTS": "0",
    "SQLALCHEMY_SILENCE_UBER_WARNING": "1",  # Rasa's tracker store module warns at import
    "RASA_MAX_CACHE_SIZE": "0",  # our own fingerprint decides what to retrain; no training cache
    "LOG_LEVEL": "WARNING",  # Rasa's own level: also turns off its progress bars
    "PYTHONWARNINGS": "ignore",  # subprocesses only: library deprecation chatter
}


def rasa_state_dir(models_dir: Path) -> Path:
    """Where Rasa may write its own files (global config, cache, matplotlib), instead of ``$HOME``."""
    return models_dir / "rasa" / ".state"


def rasa_environment(models_dir: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a Rasa subprocess (``rasa run``, ``rasa run actions``): quiet, no telemetry,
    and ``HOME`` pointed at the state folder, since Rasa's CLI writes ``~/.config/rasa/global.yml``."""
    state = rasa_state_dir(models_dir)
    env = dict(os.environ if base is None else base)
    env.update(RASA_ENVIRONMENT)
    env["HOME"] = str(state / "home")
    env["RASA_CACHE_DIRECTORY"] = str(state / "cache")
    env["MPLCONFIGDIR"] = str(state / "matplotlib")
    return env


_PREPARE = threading.Lock()  # agents of several locales may load at once, each in its own thread


def prepare_rasa(models_dir: Path) -> None:
    """Make this process ready to import Rasa: no telemetry, quiet logs, no writes to ``$HOME``.

    Idempotent. Environment variables already set by the operator are kept. Rasa writes its telemetry
    consent file even when telemetry is off; ``rasa.constants.GLOBAL_USER_CONFIG_PATH`` is the documented
    patch point for that, and it is moved into the models folder. Rasa's structlog output is routed into
    the standard ``logging`` tree (capped by ``ivr.logs``) instead of stdout, which may be the AGI channel.
    """
    with _PREPARE:
        _prepare(models_dir)


def _prepare(models_dir: Path) -> None:
    state = rasa_state_dir(models_dir)
    for key, value in RASA_ENVIRONMENT.items():
        if key != "PYTHONWARNINGS":
            os.environ.setdefault(key, value)
    os.environ.setdefault("RASA_CACHE_DIRECTORY", str(state / "cache"))
    os.environ.setdefault("MPLCONFIGDIR", str(state / "matplotlib"))

    # Rasa 3.6 warns about slot auto-fill on every domain load, whatever the domain says.
    warnings.filterwarnings("ignore", message="Slot auto-fill has been removed")
    with warnings.catch_warnings():  # TensorFlow, jax and pkg_resources deprecations at import time
        warnings.simplefilter("ignore")
        import rasa.constants
        import rasa.core.agent

    rasa.constants.GLOBAL_USER_CONFIG_PATH = str(state / "global.yml")
    _route_structlog()


def _route_structlog() -> None:
    import logging

    import structlog

    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.processors.add_log_level,
            structlog.processors.KeyValueRenderer(key_order=["event"], drop_missing=True),
        ],
        context_class=dict,
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        cache_logger_on_first_use=True,
    )
