"""``RasaEngine``: the DialogueEngine on Rasa 3.6 agents loaded in this process.

- One agent per locale, loaded once from ``models/rasa/<locale>/model.tar.gz``, each on its own event
  loop in its own thread: Rasa's CPU work (featurizing, classifying, policies) never blocks the
  server's loop. Turns are submitted with ``asyncio.run_coroutine_threadsafe`` and bounded by
  ``settings.dialogue_timeout_s``; a timeout or any failure raises ``DialogueError``.
- Custom actions run in-process: the agent's action endpoint hands Rasa's action call to rasa_sdk's
  ``ActionExecutor`` instead of posting it over HTTP (Rasa 3.6 otherwise needs an action server).
- One conversation per call, keyed by ``call_id`` (never by phone number), forgotten on ``close(call)``;
  ``{call_id, caller_id, locale}`` travel as metadata on every message.
- Keypad digits are sent as ``/inform_digits{"digits": "4821"}``, so they cannot be misclassified; so is
  speech made only of digit words while digits are awaited. Speech can never use that syntax itself
  (a leading ``/`` is dropped).
- The Reply is built from the bot's messages and the slots after the turn: ``awaiting`` gives
  expect/secret/max_digits, ``call_outcome`` / ``transfer_reason`` the outcome.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
import time
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ivr.config import LOCALES
from ivr.dialogue.train import model_path
from ivr.parts import CallInfo, DialogueError, Expect, Outcome, Reply, UserInput
from ivr.pools import PartPool

if TYPE_CHECKING:
    from rasa.core.agent import Agent
    from rasa_sdk.executor import ActionExecutor

    from ivr.accounts.api import AccountStore
    from ivr.config import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

START_MESSAGE = "/greet"
DIGITS_INTENT = "inform_digits"
ID_DIGITS = 4
PHONE_MAX_DIGITS = 15  # E.164
STATE_SLOTS = ("awaiting", "call_outcome", "transfer_reason", "verified")
HEALTH_PROBE = "hello"  # parsed by the health check: any text does, the answer's speed is what counts
HEALTH_PARSE_S = 1.0  # a parse slower than this means the dialogue cannot serve calls in time
# A locale whose dialogue answered (a call's turn, a classification, a probe) this recently needs no probe:
# in a pod each worker is asked twice a second (HAProxy, the supervisor) and a probe is one parse per
# locale (~8 ms each, 3 locales), ~5 % of a 2-core machine for two workers, taken from the calls' turns in
# a burst. The price: a dialogue that hangs right after answering is seen at most this much later.
HEALTH_FRESH_S = 1.0


# ---------------------------------------------------------------- messages and replies (shared with remote)
def message_text(user: UserInput, *, digits_expected: bool = False, locale: str = "") -> str:
    """What Rasa gets for one caller turn.

    A keypad menu choice goes as its intent (``/ask_balance``). Keypad digits, and speech made only of
    digit words while digits are awaited (what the recognizer's digits grammar produces), go as
    ``/inform_digits{"digits": "..."}``: they cannot be misclassified.
    Other speech goes as text, for the NLU.
    """
    if user.intent:  # a keypad menu choice: the intent itself, as if the caller had asked for it
        return f"/{user.intent}"
    if user.keypad:
        return _digits_message("".join(c for c in user.text if c.isascii() and c.isdigit()))
    # Rasa reads "/intent{...}" as a pre-parsed intent: speech must never be able to do that.
    text = user.text.strip().lstrip("/").strip()
    if digits_expected and locale:
        digits = spoken_digits(text, locale)
        if digits:
            return _digits_message(digits)
    return text


def _digits_message(digits: str) -> str:
    return f"/{DIGITS_INTENT}" + json.dumps({"digits": digits}, separators=(",", ":"))


def spoken_digits(text: str, locale: str) -> str:
    """The digits of ``text`` if every word of it is a digit or a digit word ("四 八 二 一", "double five"),
    else "" (then the NLU decides: "my ID ends in 4821", "I want a person")."""
    from ivr.asr.digits import REPEAT_WORDS, digit_map, digits_from_words

    words = digit_map(locale)
    repeats = REPEAT_WORDS.get(locale, {})
    by_char = locale.startswith(("zh", "ko"))
    tokens = text.split()
    if not tokens:
        return ""
    for token in tokens:
        token = token.lower()
        if (token.isascii() and token.isdigit()) or token in words or token in repeats:
            continue
        if by_char and all(c in words or (c.isascii() and c.isdigit()) for c in token):
            continue
        return ""
    return digits_from_words(text, locale)


def call_metadata(call: CallInfo) -> dict[str, str]:
    return {"call_id": call.call_id, "caller_id": call.caller_id, "locale": call.locale}


def build_reply(
    texts: Sequence[str], slots: Mapping[str, Any], intent: str, confidence: float, must_hear: Sequence[str] = ()
) -> Reply:
    """The session's view of one dialogue step (``must_hear``: those texts marked not interruptible)."""
    awaiting = slots.get("awaiting") or ""
    expect, secret, max_digits = Expect.SPEECH, False, 0
    if awaiting == "id_last4":
        expect, secret, max_digits = Expect.DIGITS, True, ID_DIGITS
    elif awaiting == "phone":
        expect, secret, max_digits = Expect.DIGITS, True, PHONE_MAX_DIGITS
    outcome = {"transfer": Outcome.TRANSFER, "completed": Outcome.COMPLETED}.get(str(slots.get("call_outcome")))
    reason = str(slots.get("transfer_reason") or "") if outcome is Outcome.TRANSFER else ""
    spoken = tuple(t for t in texts if t)
    if not spoken and outcome is None:
        # Every rule says something; silence means an action failed inside Rasa (which only logs it).
        raise DialogueError(f"the dialogue produced no answer (intent {intent or 'none'})")
    return Reply(
        texts=spoken,
        expect=expect,
        outcome=outcome,
        transfer_reason=reason,
        intent=intent,
        confidence=float(confidence or 0.0),
        secret=secret,
        max_digits=max_digits,
        verified=slots.get("verified") is True,
        must_hear=tuple(t for t in spoken if t in must_hear),
    )


def not_interruptible(message: Mapping[str, Any]) -> bool:
    """A response the domain marks ``metadata: {interruptible: false}`` (Rasa passes a response's metadata
    along with its text to the output channel)."""
    metadata = message.get("metadata")
    return isinstance(metadata, Mapping) and metadata.get("interruptible") is False


def _prompt_output() -> Any:
    """Rasa's collecting output channel that also keeps which texts must be heard in full."""
    from rasa.core.channels.channel import CollectingOutputChannel

    class PromptOutput(CollectingOutputChannel):
        def __init__(self) -> None:
            super().__init__()
            self.must_hear: list[str] = []

        async def send_response(self, recipient_id: str, message: dict[str, Any]) -> None:
            if message.get("text") and not_interruptible(message):
                self.must_hear.append(str(message["text"]))
            await super().send_response(recipient_id, message)

    return PromptOutput()


# ---------------------------------------------------------------- in-process actions
def in_process_endpoint(executor: ActionExecutor) -> Any:
    """An action endpoint whose ``request`` runs the action in this process (see Rasa's RemoteAction.run).

    An action that raises is remembered per conversation (Rasa itself only logs it) and re-raised by the
    engine after the turn, so the caller hears an apology instead of silence.
    """
    from rasa.shared.exceptions import RasaException
    from rasa.utils.endpoints import EndpointConfig
    from rasa_sdk.interfaces import ActionNotFoundException

    class InProcessActionEndpoint(EndpointConfig):
        def __init__(self) -> None:
            # Selective domain: Rasa sends the domain only to actions that ask for it (ours don't).
            super().__init__(url="in-process://rasa-sdk", enable_selective_domain=True)
            self.failures: dict[str, BaseException] = {}

        async def request(
            self,
            method: str = "post",
            subpath: str | None = None,
            content_type: str | None = "application/json",
            compress: bool = False,
            **kwargs: Any,
        ) -> Any:
            # Through JSON, exactly as over the wire: the action sees plain data, never Rasa's objects.
            call = json.loads(json.dumps(kwargs.get("json") or {}))
            try:
                return await executor.run(call)
            except ActionNotFoundException as exc:
                self.failures[str(call.get("sender_id"))] = exc
                raise RasaException(str(exc)) from exc
            except Exception as exc:
                self.failures[str(call.get("sender_id"))] = exc
                raise

    return InProcessActionEndpoint()


# ---------------------------------------------------------------- one locale
class _LocaleAgent:
    """One locale's agent on its own event loop thread. Everything touching the agent runs on that loop."""

    def __init__(
        self, locale: str, model: Path, models_dir: Path, store: AccountStore, settings: Settings, lookups: PartPool
    ) -> None:
        self.locale = locale
        self._lookups = lookups
        self.model = model
        self._models_dir = models_dir
        self._store = store
        self._settings = settings
        self.agent: Agent | None = None
        self.endpoint: Any = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name=f"rasa-{locale}", daemon=True)
        self._thread.start()

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def load(self) -> None:
        """On the agent's own loop (all of it is heavy): import Rasa, build the actions, load the model,
        then parse once (tokenizer dictionaries load lazily)."""
        from ivr.dialogue import prepare_rasa

        prepare_rasa(self._models_dir)
        from rasa.core.agent import Agent

        from ivr.dialogue.actions import build_executor
        from ivr.dialogue.lean import ObjectTrackerStore, cache_action_response_validation

        cache_action_response_validation()
        self.endpoint = in_process_endpoint(build_executor(self._store, self._settings, self._lookups))
        self.agent = Agent.load(str(self.model), action_endpoint=self.endpoint, tracker_store=ObjectTrackerStore())
        await self.agent.parse_message("hello")
        log.info("dialogue model for %s loaded from %s", self.locale, self.model)

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


class TurnEngine:
    """What the in-process and the remote engine share: a call's turns in and out, and which calls
    wait for digits (so spoken digit words go to Rasa as digits). Subclasses implement ``_turn``
    (one message to Rasa, the Reply back) and ``_nlu`` (NLU only)."""

    def __init__(self) -> None:
        self._digits_awaited: set[str] = set()  # calls whose last reply expects digits
        self._answered_at: dict[str, float] = {}  # locale -> when its dialogue last answered (monotonic)

    async def start(self, call: CallInfo) -> Reply:
        return await self._step(call, START_MESSAGE)

    async def handle(self, call: CallInfo, user: UserInput) -> Reply:
        text = message_text(user, digits_expected=call.call_id in self._digits_awaited, locale=call.locale)
        return await self._step(call, text)

    async def classify(self, text: str, locale: str) -> tuple[str, float]:
        parsed = await self._nlu(text.strip().lstrip("/").strip(), locale)
        self._answered_at[locale] = time.monotonic()
        intent = (parsed or {}).get("intent") or {}
        return str(intent.get("name") or ""), float(intent.get("confidence") or 0.0)

    async def healthy(self) -> bool:
        """Every locale this engine serves parses a probe within ``HEALTH_PARSE_S`` (for ``/health``), or
        answered within the last ``HEALTH_FRESH_S`` (a call's turn proves as much as a probe)."""
        for locale in self.served_locales():
            if time.monotonic() - self._answered_at.get(locale, -HEALTH_FRESH_S) < HEALTH_FRESH_S:
                continue
            try:
                await asyncio.wait_for(self._nlu(HEALTH_PROBE, locale), HEALTH_PARSE_S)
            except Exception:
                log.warning("health check: the %s dialogue did not parse in time", locale, exc_info=True)
                return False
            self._answered_at[locale] = time.monotonic()
        return True

    def served_locales(self) -> Sequence[str]:
        raise NotImplementedError

    async def _step(self, call: CallInfo, text: str) -> Reply:
        reply = await self._turn(call, text)
        self._answered_at[call.locale] = time.monotonic()
        if reply.expect is Expect.DIGITS:
            self._digits_awaited.add(call.call_id)
        else:
            self._digits_awaited.discard(call.call_id)
        return reply

    async def _turn(self, call: CallInfo, text: str) -> Reply:
        raise NotImplementedError

    async def _nlu(self, text: str, locale: str) -> dict[str, Any]:
        raise NotImplementedError


# ---------------------------------------------------------------- the engine
class RasaEngine(TurnEngine):
    """The in-process DialogueEngine. ``RasaEngine(settings, store)``; ``await warm_up()`` before calls."""

    def __init__(
        self,
        settings: Settings,
        store: AccountStore,
        *,
        locales: Sequence[str] | None = None,
        models_dir: Path | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._models_dir = models_dir or settings.models_dir
        self._locales = tuple(locales or LOCALES)
        self._agents: dict[str, _LocaleAgent] = {}
        self._lookups = PartPool("lookup", settings.max_calls)  # shared by the locales' agents
        self._loading: dict[str, concurrent.futures.Future[None]] = {}
        self._lock = threading.Lock()
        super().__init__()

    # -- loading
    async def warm_up(self, locales: Sequence[str] | None = None) -> None:
        """Load the agents (default: every configured locale with a trained model) before the first call."""
        wanted = tuple(locales or self._locales)
        missing = [loc for loc in wanted if not model_path(self._models_dir, loc).is_file()]
        for loc in missing:
            log.warning("no trained dialogue model for %s at %s (run `ivr train --locale %s`)",
                        loc, model_path(self._models_dir, loc), loc)
        present = [loc for loc in wanted if loc not in missing]
        if not present:
            raise DialogueError(f"{self._models_dir / 'rasa'}: no trained dialogue model (run `ivr train`)")
        for loc in present:  # one at a time: loading is CPU-bound
            await self._agent(loc)

    async def _agent(self, locale: str) -> _LocaleAgent:
        if locale not in self._locales:
            raise DialogueError(f"locale {locale!r} is not served by this engine ({', '.join(self._locales)})")
        with self._lock:
            future = self._loading.get(locale)
            if future is None:
                future = self._start_loading(locale)
                self._loading[locale] = future
        try:
            await asyncio.wrap_future(future)
        except Exception as exc:
            # Forget the failure, so that a model trained (or fixed) later is loaded by the next call.
            with self._lock:
                if self._loading.get(locale) is future:
                    del self._loading[locale]
                runner = self._agents.pop(locale, None)
            if runner is not None:
                await asyncio.to_thread(runner.stop)
            if isinstance(exc, DialogueError):
                raise
            raise DialogueError(f"{model_path(self._models_dir, locale)}: cannot load the model: {exc}") from exc
        return self._agents[locale]

    def _start_loading(self, locale: str) -> concurrent.futures.Future[None]:
        model = model_path(self._models_dir, locale)
        if not model.is_file():
            failed: concurrent.futures.Future[None] = concurrent.futures.Future()
            failed.set_exception(DialogueError(
                f"{model}: no trained dialogue model for {locale} (run `ivr train --locale {locale}`)"))
            return failed
        runner = _LocaleAgent(locale, model, self._models_dir, self._store, self._settings, self._lookups)
        self._agents[locale] = runner
        return runner.submit(runner.load())

    async def _run(self, runner: _LocaleAgent, coro: Coroutine[Any, Any, T], what: str) -> T:
        future = runner.submit(coro)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self._settings.dialogue_timeout_s)
        except asyncio.TimeoutError:
            future.cancel()
            raise DialogueError(
                f"{what}: no answer from the {runner.locale} dialogue within {self._settings.dialogue_timeout_s} s"
            ) from None
        except DialogueError:
            raise
        except Exception as exc:
            raise DialogueError(f"{what}: the {runner.locale} dialogue failed: {type(exc).__name__}: {exc}") from exc

    def served_locales(self) -> Sequence[str]:
        return self._locales

    async def healthy(self) -> bool:
        """A model is loaded for every locale and each one parses in time; never loads one itself."""
        with self._lock:
            loaded = [loc for loc in self._locales if (r := self._agents.get(loc)) is not None and r.agent]
        if len(loaded) < len(self._locales):
            return False
        return await super().healthy()

    # -- DialogueEngine (start, handle, classify: TurnEngine)
    async def _nlu(self, text: str, locale: str) -> dict[str, Any]:
        runner = await self._agent(locale)
        return await self._run(runner, _parse(runner, text), "classify")

    async def close(self, call: CallInfo | None = None) -> None:
        """Forget the call's conversation. Without a call: shut the engine down (``ivr.app`` closes it so)."""
        if call is None:
            await self.aclose()
            return
        self._digits_awaited.discard(call.call_id)
        runner = self._agents.get(call.locale)
        if runner is None or runner.agent is None:
            return
        await self._run(runner, _forget(runner, call.call_id), "close")

    async def aclose(self) -> None:
        """Stop every locale's loop and thread (loaded agents are dropped)."""
        with self._lock:
            runners = list(self._agents.values())
            self._agents.clear()
            self._loading.clear()
            self._digits_awaited.clear()
        for runner in runners:
            await asyncio.to_thread(runner.stop)
        self._lookups.close()

    def conversations(self, locale: str) -> int:
        """How many conversations the locale's agent holds (tests check that closed calls are forgotten)."""
        runner = self._agents.get(locale)
        if runner is None or runner.agent is None:
            return 0
        return len(_memory_store(runner).store)

    async def _turn(self, call: CallInfo, text: str) -> Reply:
        runner = await self._agent(call.locale)
        return await self._run(runner, _process(runner, call, text), "turn")


# ---------------------------------------------------------------- on the agent's loop
async def _process(runner: _LocaleAgent, call: CallInfo, text: str) -> Reply:
    from rasa.core.channels.channel import UserMessage

    agent = runner.agent
    assert agent is not None
    output = _prompt_output()
    message = UserMessage(text, output, sender_id=call.call_id, input_channel="ivr", metadata=call_metadata(call))
    await agent.handle_message(message)
    failure = runner.endpoint.failures.pop(call.call_id, None)
    if failure is not None:
        raise DialogueError(f"a custom action failed: {type(failure).__name__}: {failure}") from failure
    tracker = await agent.tracker_store.retrieve(call.call_id)
    if tracker is None:
        raise DialogueError("the conversation was not saved")
    latest = tracker.latest_message.intent if tracker.latest_message else {}
    slots = {name: tracker.get_slot(name) for name in STATE_SLOTS}
    texts = [str(m["text"]) for m in output.messages if m.get("text")]
    return build_reply(
        texts, slots, str(latest.get("name") or ""), float(latest.get("confidence") or 0.0), output.must_hear
    )


async def _parse(runner: _LocaleAgent, text: str) -> dict[str, Any]:
    assert runner.agent is not None
    return await runner.agent.parse_message(text)


def _memory_store(runner: _LocaleAgent) -> Any:
    assert runner.agent is not None
    store = runner.agent.tracker_store
    return getattr(store, "_tracker_store", store)  # FailSafeTrackerStore wraps the ObjectTrackerStore


async def _forget(runner: _LocaleAgent, call_id: str) -> None:
    inner = _memory_store(runner)
    held = getattr(inner, "store", None)
    if isinstance(held, dict):
        held.pop(call_id, None)
    runner.endpoint.failures.pop(call_id, None)
