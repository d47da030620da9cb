"""``TokenRestInput``: Rasa's REST input channel behind a bearer token (the scale-out option).

Rasa's built-in ``rest`` channel (``/webhooks/rest/webhook``) is not covered by ``--auth-token``: anyone
who reaches the server could talk to it as any conversation. This channel is the same channel (same
JSON in and out, ``metadata`` passed through to the tracker, ``?stream=true`` too) under its own name,
``ivr_rest`` (``/webhooks/ivr_rest/webhook``), and every request to it must carry
``Authorization: Bearer <token>``; anything else gets HTTP 401 before Rasa sees the message, so no
conversation is created or touched.

The Rasa server loads it by module path from ``dialogs/server/credentials.yml``::

    ivr.dialogue.secure_channel.TokenRestInput:
      token: ${IVR_DIALOGUE_TOKEN}

``ivr.dialogue.remote.RemoteRasaEngine`` sends ``settings.dialogue_token`` as that header. This module
is imported by the Rasa server process only (it imports Rasa and Sanic at the top).

The channel has a second route, behind the same token: ``DELETE /webhooks/ivr_rest/conversations/<id>``
deletes every stored event of that conversation from the server's tracker store, which the robot calls
when the call ends. Rasa's own API cannot do it: ``PUT /conversations/<id>/tracker/events`` with no
events "replaces" the tracker by calling the store's ``save``, and in Rasa 3.6 the SQL store's ``save``
only appends the events it has not stored yet, and the Redis store's merges the stored tracker back in:
the caller's ID digits (``/inform_digits``) and caller ID (metadata) would stay in the database. The
deletion is written per store (``forget_conversation``): in-memory, SQL (any SQLAlchemy dialect:
PostgreSQL, SQLite, ...) and Redis, the ones ``dialogs/server/`` documents; any other store is refused
with HTTP 501 naming it, so nobody believes a conversation was wiped when it was not.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from rasa.core.channels.channel import CollectingOutputChannel, UserMessage
from rasa.core.channels.rest import RestInput
from rasa.core.tracker_store import (
    AwaitableTrackerStore,
    FailSafeTrackerStore,
    InMemoryTrackerStore,
    RedisTrackerStore,
    SQLTrackerStore,
    TrackerStore,
)
from rasa.shared.exceptions import RasaException
from sanic import Blueprint, response
from sanic.request import Request
from sanic.response import HTTPResponse

log = logging.getLogger(__name__)

CHANNEL_NAME = "ivr_rest"
FORGET_PATH = "/conversations/<conversation_id:path>"  # DELETE, under /webhooks/ivr_rest


class UnsupportedTrackerStore(RasaException):
    """A tracker store this module cannot delete a conversation from."""


def _stores(store: TrackerStore) -> list[TrackerStore]:
    """The stores that may hold a conversation: the configured one inside Rasa's wrappers, and the
    in-memory fallback that ``FailSafeTrackerStore`` saves to when the configured one fails."""
    if isinstance(store, AwaitableTrackerStore | FailSafeTrackerStore):
        found = _stores(store._tracker_store)
        fallback = getattr(store, "_fallback_tracker_store", None)
        if fallback is not None:
            found += _stores(fallback)
        return found
    return [store]


def forget_conversation(store: TrackerStore, conversation_id: str) -> int:
    """Delete everything ``store`` holds of the conversation; returns how many events (SQL) or records
    (in-memory, Redis) were deleted. Raises ``UnsupportedTrackerStore`` for a store it cannot clean,
    before touching any store."""
    stores = _stores(store)
    for inner in stores:
        if not isinstance(inner, InMemoryTrackerStore | SQLTrackerStore | RedisTrackerStore):
            raise UnsupportedTrackerStore(
                f"cannot delete conversations from the tracker store {type(inner).__module__}."
                f"{type(inner).__name__}; use the in-memory, SQL or Redis tracker store (dialogs/server/)"
            )
    deleted = 0
    for inner in stores:
        if isinstance(inner, InMemoryTrackerStore):
            deleted += inner.store.pop(conversation_id, None) is not None
        elif isinstance(inner, SQLTrackerStore):
            with inner.session_scope() as session:
                deleted += session.query(inner.SQLEvent).filter(
                    inner.SQLEvent.sender_id == conversation_id
                ).delete(synchronize_session=False)
                session.commit()
        elif isinstance(inner, RedisTrackerStore):
            deleted += int(inner.red.delete(inner.key_prefix + conversation_id))
    return deleted


class MetadataCollectingOutputChannel(CollectingOutputChannel):
    """Rasa's collecting channel, keeping each response's ``metadata`` (domain.yml) in the message it
    collects: Rasa's own drops it, and the robot needs ``interruptible: false`` (a prompt that must be
    heard in full) over HTTP as it has it in process. Collects into ``messages`` it is given."""

    def __init__(self, messages: list[dict[str, Any]]) -> None:
        super().__init__()
        self.messages = messages

    async def send_response(self, recipient_id: str, message: dict[str, Any]) -> None:
        before = len(self.messages)
        await super().send_response(recipient_id, message)
        metadata = message.get("metadata")
        if isinstance(metadata, dict) and metadata and len(self.messages) > before:
            self.messages[before]["metadata"] = metadata  # the message the response's text became


def _with_response_metadata(
    on_new_message: Callable[[UserMessage], Awaitable[Any]],
) -> Callable[[UserMessage], Awaitable[Any]]:
    """The REST webhook answers with its collector's messages: let them carry each response's metadata."""
    async def handle(message: UserMessage) -> Any:
        collector = message.output_channel
        if type(collector) is CollectingOutputChannel:  # the webhook's own (not ?stream=true's queue)
            message.output_channel = MetadataCollectingOutputChannel(collector.messages)
        return await on_new_message(message)

    return handle


class TokenRestInput(RestInput):
    """The REST channel, answering only requests with ``Authorization: Bearer <token>``."""

    def __init__(self, token: str) -> None:
        if not isinstance(token, str) or not token.strip():
            raise RasaException(
                f"input channel {CHANNEL_NAME} ({__name__}.TokenRestInput): the 'token' in the credentials "
                "file is empty or missing; set it (e.g. 'token: ${IVR_DIALOGUE_TOKEN}' with that variable set)"
            )
        self._token = token.strip().encode("utf-8")

    @classmethod
    def name(cls) -> str:
        return CHANNEL_NAME

    @classmethod
    def from_credentials(cls, credentials: dict[str, Any] | None) -> TokenRestInput:
        token = (credentials or {}).get("token")
        return cls(token if isinstance(token, str) else "")

    def authorized(self, request: Request) -> bool:
        """``Authorization: Bearer <token>`` with exactly the configured token (constant-time comparison)."""
        scheme, _, supplied = str(request.headers.get("Authorization", "")).strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(supplied.strip().encode("utf-8"), self._token)

    def blueprint(self, on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> Blueprint:
        """The REST channel's routes, with a request middleware that refuses unauthenticated requests.

        Sanic applies a blueprint's middleware to that blueprint's routes only, so the rest of the Rasa
        server (its HTTP API with its own ``--auth-token``) is unaffected.
        """
        webhook: Blueprint = super().blueprint(_with_response_metadata(on_new_message))

        @webhook.middleware("request")
        async def require_token(request: Request) -> HTTPResponse | None:
            if self.authorized(request):
                return None
            log.warning("%s: refused %s %s from %s: no valid bearer token",
                        CHANNEL_NAME, request.method, request.path, request.ip)
            return response.json(
                {"status": "failure", "reason": "NotAuthenticated",
                 "message": "This webhook requires 'Authorization: Bearer <token>'.", "code": 401},
                status=401,
                headers={"WWW-Authenticate": f'Bearer realm="{CHANNEL_NAME}"'},
            )

        @webhook.route(FORGET_PATH, methods=["DELETE"])
        async def forget(request: Request, conversation_id: str) -> HTTPResponse:
            """Delete the conversation from the tracker store, after any turn still running on it
            (the turn holds the conversation's lock; a turn saved after the deletion would bring it back)."""
            agent = request.app.ctx.agent
            try:
                async with agent.lock_store.lock(conversation_id):
                    deleted = forget_conversation(agent.tracker_store, conversation_id)
            except UnsupportedTrackerStore as exc:
                log.error("%s", exc)
                return response.json({"status": "failure", "reason": "UnsupportedTrackerStore",
                                      "message": str(exc), "code": 501}, status=501)
            return response.json({"status": "deleted", "deleted": deleted})

        return webhook
