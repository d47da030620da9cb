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
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from rasa.core.channels.channel import UserMessage
from rasa.core.channels.rest import RestInput
from rasa.shared.exceptions import RasaException
from sanic import Blueprint, response
from sanic.request import Request
from sanic.response import HTTPResponse

log = logging.getLogger(__name__)

CHANNEL_NAME = "ivr_rest"


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
        webhook: Blueprint = super().blueprint(on_new_message)

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

        return webhook
