"""The custom actions over HTTP, for the scale-out option: ``rasa run actions --actions ivr.dialogue.action_server``.

rasa_sdk imports this module, then instantiates every concrete ``Action`` subclass it can see with no
arguments. Our actions then take the account store and settings from ``server_context()``: the
settings from ``ivr.toml`` / ``IVR_*`` variables (``IVR_DATABASE_URL`` above all), one store per process.
Run it with the environment from ``ivr.dialogue.rasa_environment`` (no telemetry, no writes to $HOME).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from ivr.dialogue import actions as actions

if TYPE_CHECKING:
    from ivr.accounts.api import AccountStore
    from ivr.config import Settings


@functools.lru_cache(maxsize=1)
def server_context() -> tuple[AccountStore, Settings]:
    """This process's store and settings, built on first use (the action server's only shared state)."""
    from ivr.accounts.source import open_store
    from ivr.config import load_settings

    settings = load_settings()
    return open_store(settings), settings  # the robot's tables, or the system of record (account_source)
