"""``RemoteRasaEngine``: the DialogueEngine against a Rasa HTTP server (the scale-out option).

The Rasa server runs ``rasa run --enable-api --auth-token TOKEN --credentials ... --endpoints ...`` with
our token-protected input channel ``ivr_rest`` (``ivr.dialogue.secure_channel.TokenRestInput``, the REST
channel behind a bearer token), and its custom actions run in
``rasa run actions --actions ivr.dialogue.action_server`` (see ``dialogs/server/``). One turn is two requests:

1. ``POST /webhooks/ivr_rest/webhook`` with ``{sender: call_id, message, metadata: {call_id, caller_id,
   locale}}`` and ``Authorization: Bearer TOKEN``: Rasa runs NLU, policies and actions and returns the
   bot's messages;
2. ``GET /conversations/{call_id}/tracker?include_events=NONE``: the slots (``awaiting``, ``call_outcome``,
   ``transfer_reason``) and the latest intent, which the webhook does not return.

``classify`` is ``POST /model/parse``; ``close(call)`` deletes the conversation from the server's
tracker store (``DELETE /webhooks/ivr_rest/conversations/{call_id}``, our channel's route: in Rasa 3.6,
``PUT /conversations/{call_id}/tracker/events`` with no events leaves every event in an SQL or Redis
tracker store), so what the caller said and keyed does not linger there. The HTTP API endpoints carry
the token as ``?token=`` (the only way Rasa's ``--auth-token`` accepts it); the channel's routes carry
the same token in the ``Authorization`` header, which the channel checks (the credentials file reads it
from ``IVR_DIALOGUE_TOKEN``). Rasa's built-in ``rest`` channel is not enabled.

``settings.dialogue_url`` may contain ``{locale}`` (``http://rasa-{locale}:5005``): one Rasa server
per locale, since a server serves one model. Every request is bounded by ``settings.dialogue_timeout_s``;
a timeout, a refused connection, an HTTP error (401: wrong or missing token) or an unusable answer
raises ``DialogueError``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp

from ivr.config import LOCALES
from ivr.dialogue.engine import TurnEngine, build_reply, call_metadata, not_interruptible
from ivr.parts import CallInfo, DialogueError, Reply

if TYPE_CHECKING:
    from ivr.config import Settings

log = logging.getLogger(__name__)

STATE_SLOTS = ("awaiting", "call_outcome", "transfer_reason", "verified")
# The routes of ivr.dialogue.secure_channel.TokenRestInput (name "ivr_rest"; not imported here: it needs Rasa).
CHANNEL_PATH = "/webhooks/ivr_rest"
WEBHOOK_PATH = CHANNEL_PATH + "/webhook"


class RemoteRasaEngine(TurnEngine):
    """``RemoteRasaEngine(settings)``: ``settings.dialogue_url`` and ``settings.dialogue_token`` (or the arguments)."""

    def __init__(self, settings: Settings, *, url: str | None = None, token: str | None = None) -> None:
        self._settings = settings
        self._url = (url if url is not None else settings.dialogue_url).rstrip("/")
        self._token = token if token is not None else settings.dialogue_token
        if not self._url:
            raise ValueError("setting dialogue_url: empty (the URL of the Rasa HTTP server)")
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
        super().__init__()

    # -- plumbing
    def base_url(self, locale: str) -> str:
        return self._url.replace("{locale}", locale)

    def served_locales(self) -> tuple[str, ...]:
        """One server per locale when the URL names ``{locale}``; else one server, the default locale."""
        return LOCALES if "{locale}" in self._url else (self._settings.locale,)

    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            timeout = aiohttp.ClientTimeout(total=self._settings.dialogue_timeout_s)
            session = aiohttp.ClientSession(timeout=timeout)
            self._sessions[loop] = session
        return session

    async def _request(self, method: str, locale: str, path: str, *, json: Any = None,
                       params: dict[str, str] | None = None, bearer: bool = False, what: str) -> Any:
        """One request; the token goes in ``Authorization: Bearer`` (``bearer``, the webhook) or ``?token=``."""
        query = dict(params or {})
        headers: dict[str, str] = {}
        if self._token and bearer:
            headers["Authorization"] = f"Bearer {self._token.strip()}"
        elif self._token:
            query["token"] = self._token
        url = self.base_url(locale) + path
        try:
            async with self._session().request(method, url, json=json, params=query,
                                               headers=headers) as response:
                if response.status >= 400:
                    body = (await response.text())[:200]
                    raise DialogueError(f"{what}: the Rasa server at {self.base_url(locale)} answered "
                                        f"HTTP {response.status}: {body}")
                if response.status == 204:
                    return None
                return await response.json(content_type=None)
        except DialogueError:
            raise
        except asyncio.TimeoutError:
            raise DialogueError(f"{what}: no answer from the Rasa server at {self.base_url(locale)} within "
                                f"{self._settings.dialogue_timeout_s} s") from None
        except (aiohttp.ClientError, ValueError) as exc:
            raise DialogueError(f"{what}: the Rasa server at {self.base_url(locale)} failed: "
                                f"{type(exc).__name__}: {exc}") from exc

    # -- DialogueEngine
    async def warm_up(self) -> None:
        """Check that the Rasa server of the configured locale answers and has a model."""
        status = await self._request("GET", self._settings.locale, "/status", what="status")
        if not isinstance(status, dict) or not status.get("model_file"):
            raise DialogueError(f"the Rasa server at {self.base_url(self._settings.locale)} has no model loaded")

    async def _nlu(self, text: str, locale: str) -> dict[str, Any]:
        parsed = await self._request("POST", locale, "/model/parse", json={"text": text}, what="classify")
        return parsed if isinstance(parsed, dict) else {}

    async def close(self, call: CallInfo | None = None) -> None:
        """Delete the call's conversation from the server's tracker store. Without a call: close the HTTP
        sessions. A server that cannot delete it (HTTP 501: a tracker store we cannot clean) raises."""
        if call is None:
            await self.aclose()
            return
        self._digits_awaited.discard(call.call_id)
        await self._request("DELETE", call.locale, f"{CHANNEL_PATH}/conversations/{quote(call.call_id, safe='')}",
                            bearer=True, what="close")

    async def aclose(self) -> None:
        sessions = list(self._sessions.values())
        self._sessions.clear()
        self._digits_awaited.clear()
        for session in sessions:
            if not session.closed:
                await session.close()

    async def _turn(self, call: CallInfo, text: str) -> Reply:
        body = {"sender": call.call_id, "message": text, "metadata": call_metadata(call)}
        messages = await self._request("POST", call.locale, WEBHOOK_PATH, json=body, bearer=True, what="turn")
        if not isinstance(messages, list):
            raise DialogueError("turn: the Rasa server's webhook did not return a list of messages")
        tracker = await self._request(
            "GET", call.locale, f"/conversations/{quote(call.call_id, safe='')}/tracker",
            params={"include_events": "NONE"}, what="tracker",
        )
        if not isinstance(tracker, dict):
            raise DialogueError("turn: the Rasa server returned no tracker")
        return reply_from_server(messages, tracker)


def reply_from_server(messages: list[Any], tracker: dict[str, Any]) -> Reply:
    """The reply of a turn from the webhook's messages and the conversation's tracker. The server's
    channel (``TokenRestInput``) keeps each response's metadata: ``interruptible: false`` texts must be
    heard in full, as in process."""
    slots = tracker.get("slots") or {}
    latest = (tracker.get("latest_message") or {}).get("intent") or {}
    said = [m for m in messages if isinstance(m, dict) and m.get("text")]
    must_hear = [str(m["text"]) for m in said if not_interruptible(m)]
    return build_reply([str(m["text"]) for m in said], {name: slots.get(name) for name in STATE_SLOTS},
                       str(latest.get("name") or ""), float(latest.get("confidence") or 0.0), must_hear)
