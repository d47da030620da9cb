"""Work Rasa 3.6 repeats at every turn that the in-process agent does not need repeated (issue #16).

Measured with ``python -m ivr.testing.turncpu`` (README, "CPU per turn"), two costs stood out:

- **The action server's answer is checked against a JSON schema with ``jsonschema.validate``**
  (``RemoteAction._validate_action_result``), which first validates the *schema itself* against the
  meta-schema and builds a new validator, at every custom action: ~40-60 ms of a ~60 ms Rasa turn.
  ``cache_action_response_validation`` replaces that one method with the same check against the same
  schema (``RemoteAction.action_response_format_spec()``) through a validator built and schema-checked
  once. An invalid answer is still refused with the same ``ValidationError`` and message. This is a
  patch of a Rasa internal, on purpose and in one place: Rasa offers no hook for it, and the HTTP
  action server path (``dialogs/server``, other processes) is left as it is. ``tests/test_dialogue.py``
  checks that the patched method still refuses what the original refuses and accepts what it accepts.
- **The in-memory tracker store serializes the whole conversation to JSON at every save and rebuilds it,
  event by event, at every read** (twice a turn, and once more when the engine reads the slots).
  ``ObjectTrackerStore`` is a Rasa ``TrackerStore`` (the documented extension point, given to
  ``Agent.load``) that keeps each conversation's tracker object. Rasa handles one message per
  conversation at a time (its lock store), and a call is one conversation, so the object Rasa saved is
  the state the next turn starts from, exactly as the JSON copy would rebuild it. One difference: a
  turn that fails half-way (an action raised, the dialogue timed out) leaves its events on the kept
  tracker, where the JSON store would have kept the state before the turn; such a turn ends the call
  (the session apologises and transfers, and ``close`` forgets the conversation), so nothing reads it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from rasa.core.tracker_store import TrackerStore

if TYPE_CHECKING:
    from rasa.shared.core.trackers import DialogueStateTracker

_PATCH = threading.Lock()
_validator: Any = None


def _cached_validate_action_result(self: Any, result: dict[str, Any]) -> bool:
    """``RemoteAction._validate_action_result`` with the validator built once (see the module doc)."""
    from jsonschema import exceptions
    from rasa.shared.constants import DOCS_BASE_URL

    error = exceptions.best_match(_response_validator().iter_errors(result))
    if error is not None:
        error.message += (  # the original's wording
            f". Failed to validate Action server response from API, "
            f"make sure your response from the Action endpoint is valid. "
            f"For more information about the format visit "
            f"{DOCS_BASE_URL}/custom-actions"
        )
        raise error
    return True


def _response_validator() -> Any:
    global _validator
    if _validator is None:
        from jsonschema import validators
        from rasa.core.actions.action import RemoteAction

        schema = RemoteAction.action_response_format_spec()
        cls = validators.validator_for(schema)
        cls.check_schema(schema)  # what jsonschema.validate does at every call, once
        _validator = cls(schema)
    return _validator


def cache_action_response_validation() -> None:
    """Install the cached check on ``RemoteAction`` (idempotent, thread-safe)."""
    from rasa.core.actions.action import RemoteAction

    with _PATCH:
        if RemoteAction.__dict__.get("_validate_action_result") is not _cached_validate_action_result:
            RemoteAction._validate_action_result = _cached_validate_action_result


class ObjectTrackerStore(TrackerStore):
    """Conversations in memory as tracker objects, not JSON (see the module doc). ``store`` maps
    conversation IDs to trackers, like ``InMemoryTrackerStore.store`` maps them to JSON."""

    def __init__(self, domain: Any = None) -> None:
        self.store: dict[str, DialogueStateTracker] = {}
        super().__init__(domain)

    async def save(self, tracker: DialogueStateTracker) -> None:
        self.store[tracker.sender_id] = tracker

    async def retrieve(self, sender_id: str) -> DialogueStateTracker | None:
        tracker = self.store.get(sender_id)
        if tracker is None or _sessions(tracker) <= 1:
            return tracker
        # As the in-memory store: only the last conversation session, counted as Rasa counts it. The
        # greeting's tracker begins with the session's metadata slot, before its session start: the
        # second turn gets the tracker without it (rebuilt once; Rasa saves that one, so every later
        # turn finds a single session and takes the fast path).
        from rasa.shared.core.trackers import get_trackers_for_conversation_sessions

        return get_trackers_for_conversation_sessions(tracker)[-1]

    async def retrieve_full_tracker(self, sender_id: str) -> DialogueStateTracker | None:
        return self.store.get(sender_id)

    async def keys(self) -> Iterable[str]:
        return self.store.keys()


def _sessions(tracker: DialogueStateTracker) -> int:
    """How many parts ``rasa.shared.core.events.split_events`` cuts the events into at session starts."""
    from rasa.shared.core.constants import ACTION_SESSION_START_NAME
    from rasa.shared.core.events import ActionExecuted

    starts = [isinstance(e, ActionExecuted) and e.action_name == ACTION_SESSION_START_NAME for e in tracker.events]
    return sum(starts) + (1 if starts and not starts[0] else 0)
