"""Wiring: build the parts from the settings, and the per-call handler the FastAGI server runs.

``ivr serve``, ``ivr replay`` (in-process server) and ``ivr bench`` all start the robot through
``Robot``, so they exercise the same code as production.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import re
import secrets
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ivr.accounts.api import AccountStore
from ivr.agi.connection import AgiChannel
from ivr.agi.protocol import AgiEnvironment
from ivr.agi.record_mode import RecordModeChannel
from ivr.agi.server import FastAgiServer
from ivr.channel import Channel
from ivr.config import LOCALES, Settings
from ivr.dialogue.keypad import KeypadBook
from ivr.dialogue.prompts import PromptBook
from ivr.logs import quiet_third_party
from ivr.masking import mask_text
from ivr.media.stream import AudioSocketServer, StreamChannel, StreamUnavailable
from ivr.metrics import HealthCheck, HealthServer, Metrics
from ivr.parts import CallInfo, DialogueEngine, Expect, Recognizer, Synthesizer
from ivr.pools import PartPool
from ivr.retention import PURGE_EVERY_S, AuditStore, private_dir, purge_daily
from ivr.session import CallSession, Parts, SessionResult

ASR_NICE = 5  # decoding threads run nicer than the event loop: pacing and barge-in stay prompt under load

if TYPE_CHECKING:
    from ivr.live import LiveReleases

log = logging.getLogger(__name__)

MAX_CALLER_ID = 32


def clean_caller_id(raw: str) -> str:
    """Caller ID as the dialogue may see it: digits (and a leading +) only, bounded; "" when unusable."""
    candidate = raw.strip()[:MAX_CALLER_ID * 2]
    digits = re.sub(r"[^0-9]", "", candidate)[:MAX_CALLER_ID]
    if not digits:
        return ""
    return digits


def new_call_id(environment: AgiEnvironment) -> str:
    unique = re.sub(r"[^0-9A-Za-z_-]", "_", environment.unique_id)[:40]
    return f"{unique or 'call'}-{uuid.uuid4().hex[:8]}"


class GrammarBook:
    """Per locale and dialogue state, the phrase list for the recognizer (built once, lazily).

    None (free recognition) when ``settings.asr_grammars`` is off or the locale has no grammar."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._built: dict[str, dict[Expect, list[str]]] = {}
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        """Build every locale's grammars before the first call (blocking: ``Robot.warm_up`` runs it in a
        thread), so no caller waits for a first build."""
        for locale in LOCALES:
            self(locale, Expect.SPEECH)

    def __call__(self, locale: str, expect: Expect) -> Sequence[str] | None:
        if not self._settings.asr_grammars:
            return None
        with self._lock:  # called from recognition threads
            if locale not in self._built:
                from ivr.asr.grammar import load_grammars

                try:
                    self._built[locale] = load_grammars(self._settings, locale)
                except Exception:
                    log.warning("no grammar for %s; free recognition", locale, exc_info=True)
                    self._built[locale] = {}
            return self._built[locale].get(expect)


@dataclass
class Robot:
    """The running robot: its parts, the FastAGI server and the health endpoint."""

    settings: Settings
    parts: Parts
    store: AccountStore
    closers: list[object] = field(default_factory=list)
    server: FastAgiServer | None = None
    health: HealthServer | None = None
    # Set by the benchmark to collect each call's per-turn timings; None in production.
    results: list[SessionResult] | None = None
    http_port: int = 0
    purger: asyncio.Task[None] | None = None
    # stream mode's AudioSocket listener: started at the first stream call (audiosocket_port: its port)
    _audiosocket: AudioSocketServer = field(default_factory=AudioSocketServer)
    _audiosocket_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    audiosocket_port: int = 0
    # Published releases (``ivr serve``): each call keeps the release current when it started; None:
    # the working copy, loaded once (replays, the benchmark, most tests).
    releases: LiveReleases | None = None
    reload_token: str = ""
    registration: Path | None = None
    # pulls the releases published from other models folders (ivr.releases_pull; ``start_pulling``)
    release_puller: Any = None
    pulling: asyncio.Task[None] | None = None

    async def handle_call(self, environment: AgiEnvironment, channel: AgiChannel) -> None:
        locale = environment.params.get("lang") or self.settings.locale
        if locale not in LOCALES:
            log.warning("unknown locale %r in the AGI request; using %s", locale[:20], self.settings.locale)
            locale = self.settings.locale
        call = CallInfo(new_call_id(environment), clean_caller_id(environment.caller_id), locale)
        # ?input=keypad: a number that serves by keypad only; no ?lang=: the caller may pick the language
        keypad_only = environment.params.get("input") == "keypad"
        language_menu = self.settings.language_menu and not environment.params.get("lang")
        channel.call_id = mask_text(call.call_id)  # Asterisk logs it: only what the robot's own logs show
        parts, pin = self.parts, None
        if self.releases is not None:  # the call's dialogue, prompts, grammars, keypad: one release, to its end
            pin = self.releases.pin()
            pin.get(locale)
            parts = dataclasses.replace(self.parts, **pin.parts_changes(self.parts))
        media = environment.params.get("media") or self.settings.media
        conversation: Channel | None = None
        try:
            if media == "stream":
                conversation = await self._stream_channel(channel, parts)
            if conversation is None:
                conversation = RecordModeChannel(
                    channel, call_id=call.call_id, settings=self.settings, recognizer=parts.recognizer,
                    grammar=parts.grammar, asr_pool=parts.asr_pool,
                )
            session = CallSession(parts, conversation, call, keypad_only=keypad_only, language_menu=language_menu)
            result = await session.run()
        finally:
            if isinstance(conversation, StreamChannel):
                await conversation.close()
            if pin is not None:
                pin.done()
        if self.results is not None:
            self.results.append(result)

    async def _stream_channel(self, channel: AgiChannel, parts: Parts) -> StreamChannel | None:
        """The call's AudioSocket leg (stream mode), or None when it cannot be had: record mode then."""
        try:
            address = await self._audiosocket_address(channel)
            return await StreamChannel.open(
                channel, self._audiosocket, address, settings=self.settings, recognizer=parts.recognizer,
                grammar=parts.grammar, asr_pool=parts.asr_pool,
            )
        except (StreamUnavailable, OSError) as exc:
            log.warning("stream mode unavailable, the call goes on in record mode: %s", exc)
            return None

    async def _audiosocket_address(self, channel: AgiChannel) -> tuple[str, int]:
        """Start this process's AudioSocket listener at the first stream call; the address Asterisk
        reaches it on (the address it reached the FastAGI server on, when listening on every address)."""
        async with self._audiosocket_lock:
            if not self.audiosocket_port:
                self.audiosocket_port = await self._audiosocket.start(
                    self.settings.audiosocket_host, self.settings.audiosocket_port)
        host = self.settings.audiosocket_host
        if host in ("0.0.0.0", "::", ""):
            host = channel.local_address[0]
        return host, self.audiosocket_port

    async def over_capacity(self, environment: AgiEnvironment, channel: AgiChannel) -> None:
        """Beyond the admission limit: a spoken "please hold", then the human queue."""
        self.parts.metrics.calls_over_capacity.inc()
        locale = environment.params.get("lang") or self.settings.locale
        locale = locale if locale in LOCALES else self.settings.locale
        await channel.answer()
        sound = self.parts.synthesizer.fallback("hold", locale)
        if sound is None:
            with contextlib.suppress(Exception):
                text = self.parts.prompts.text("utter_hold", locale)
                sound = await asyncio.wait_for(self.parts.synthesizer.render(text, locale), 2.0)
        if sound is not None:
            await channel.play(sound)
        await channel.set_variable("IVR_TRANSFER_REASON", "capacity")
        await channel.set_variable("IVR_RESULT", "transfer")
        self.parts.metrics.calls_transferred.labels(reason="capacity").inc()

    async def warm_up(self) -> None:
        """Load the models before the first call (Rasa per locale, Vosk where installed), off the loop."""
        # Importing TensorFlow pulls in numpy.distutils, whose logger *is* the root logger and is set
        # to WARNING on import: that would silence our INFO lines. Keep the level we were given.
        root = logging.getLogger()
        level = root.level
        with contextlib.suppress(ImportError):
            import jieba  # noqa: F401  (it sets its logger to DEBUG and adds a handler on import)
        quiet_third_party()
        try:
            await self._load_parts()
        finally:
            root.setLevel(level)
            quiet_third_party()

    async def _load_parts(self) -> None:
        for part in (self.parts.dialogue, self.parts.recognizer, self.parts.synthesizer, self.parts.grammar):
            warm = getattr(part, "warm_up", None)
            if warm is None:
                continue
            try:
                if inspect.iscoroutinefunction(warm):
                    await warm()
                else:
                    await asyncio.to_thread(warm)
            except Exception:
                # The server still starts and answers: calls that need this part get the apology.
                log.exception("could not load %s; calls needing it will be transferred", type(part).__name__)

    async def start(self, host: str | None = None, port: int | None = None, *, http: bool = True) -> None:
        self.server = FastAgiServer(self.settings, self.handle_call, self.over_capacity)
        await self.server.start(host, port)
        if http:
            checks: dict[str, HealthCheck] = {"database": self._database_ok}
            dialogue_ok = getattr(self.parts.dialogue, "healthy", None)
            if dialogue_ok is not None:  # engines wrapped by fault tests may not have one
                checks["dialogue"] = dialogue_ok
            if self.releases is None:
                self.health = HealthServer(self.parts.metrics, checks)
            else:
                from ivr.releases import register_server

                self.reload_token = self.settings.reload_token or secrets.token_urlsafe(24)
                self.health = HealthServer(self.parts.metrics, checks, reload=self._reload_http,
                                           reload_token=self.reload_token, info=self._release_info)
            self.http_port = await self.health.start(self.settings.http_host, self.settings.http_port)
            if self.releases is not None:  # so that `ivr publish` / `ivr rollback` here can notify it
                try:
                    self.registration = await asyncio.to_thread(
                        register_server, self.settings.models_dir, self.settings.http_host, self.http_port,
                        self.reload_token)
                except OSError as exc:
                    log.warning("cannot register for publish notifications (SIGHUP and /reload still work): %s", exc)
                if await asyncio.to_thread(self.releases.changed_on_disk):
                    log.info("a release was made current while this server was loading: reloading")
                    self.releases.request_reload()

    def request_reload(self) -> None:
        """Load the current releases in the background (``SIGHUP``); calls in progress keep theirs."""
        if self.releases is not None:
            log.info("reload requested")
            self.releases.request_reload()

    async def _reload_http(self) -> tuple[int, dict[str, Any]]:
        from ivr.live import RELOAD_WAIT_S

        assert self.releases is not None
        task = self.releases.request_reload()
        try:
            result = await asyncio.wait_for(asyncio.shield(task), RELOAD_WAIT_S)
        except asyncio.TimeoutError:
            return 202, {"reload": "in progress", "releases": self.releases.status()}
        return 200, {"reload": result, "releases": self.releases.status()}

    def _release_info(self) -> dict[str, Any]:
        if self.releases is None:
            return {}
        info: dict[str, Any] = {"releases": self.releases.status()}
        if self.release_puller is not None:
            info["release_pull"] = self.release_puller.status()
        return info

    def _puller(self) -> Any:
        if self.releases is None or self.settings.release_pull_s <= 0:
            return None
        if self.release_puller is None:
            from ivr.releases_pull import ReleasePuller

            self.release_puller = ReleasePuller(self.settings, self.releases.locales)
        return self.release_puller

    async def pull_releases_once(self) -> None:
        """Before loading (``ivr serve``): one pull (below), so that a server that starts, e.g. a new pod
        with an empty models folder, loads the current releases at once instead of switching later."""
        puller = self._puller()
        if puller is not None:
            from ivr.releases_pull import pull_round

            await pull_round(puller, self.parts.metrics)

    def start_pulling(self) -> None:
        """Releases published from another models folder (issue #16): every ``release_pull_s`` the one the
        account database names as current is pulled into this models folder and the servers registered
        here (this one included) reload (ivr.releases_pull); stopped by ``stop``. 0: never."""
        puller = self._puller()
        if puller is None or self.pulling is not None:
            return
        from ivr.releases_pull import pull_releases

        self.pulling = asyncio.create_task(pull_releases(puller, self.parts.metrics))

    def start_purging(self, every_s: float = PURGE_EVERY_S) -> None:
        """Retention (``ivr serve``): purge now and then daily, in a worker thread; stopped by ``stop``."""
        if self.purger is None and self.settings.retention_days > 0:
            audit = cast(AuditStore, self.store) if hasattr(self.store, "purge_audit") else None
            self.purger = asyncio.create_task(purge_daily(self.settings, audit, every_s=every_s))

    def _database_ok(self) -> bool:
        return self.store.healthy()

    async def stop(self, grace_s: float | None = None) -> None:
        await self._audiosocket.stop()
        if self.registration is not None:
            self.registration.unlink(missing_ok=True)
        if self.purger is not None:
            self.purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.purger
        if self.pulling is not None:
            self.pulling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.pulling
        if self.release_puller is not None:
            await asyncio.to_thread(self.release_puller.close)
        if self.server is not None:
            await self.server.stop(grace_s)
        if self.health is not None:
            await self.health.stop()
        for closer in self.closers:
            close = getattr(closer, "close", None)
            if close is None:
                continue
            with contextlib.suppress(Exception):
                if inspect.iscoroutinefunction(close):
                    await close()
                else:
                    await asyncio.to_thread(close)  # e.g. the TTS worker process: blocking


def build_robot(
    settings: Settings,
    *,
    text_input: bool = False,
    dialogue: DialogueEngine | None = None,
    recognizer: Recognizer | None = None,
    synthesizer: Synthesizer | None = None,
    store: AccountStore | None = None,
    releases: bool = False,
) -> Robot:
    """The robot on real parts, unless a part is given (tests inject faults this way).

    ``releases``: serve the published releases and reload them live (``ivr serve``); else the working
    copy (``dialogs_dir``, ``models_dir/rasa``) as loaded at start. Not with a remote Rasa server."""
    for folder in (settings.spool_dir, settings.sounds_dir, settings.transcripts_dir):
        try:
            if folder == settings.sounds_dir:  # Asterisk's user reads the prompts
                folder.mkdir(parents=True, exist_ok=True)
            else:  # recordings and transcripts: owner-only (0700) when created here
                private_dir(folder)
        except OSError as exc:
            # Still start and answer: calls that need the folder are apologised for and transferred.
            log.error("cannot create %s: %s", folder, exc)
    closers: list[object] = []
    if store is None:
        from ivr.accounts.source import open_store

        own = open_store(settings)  # the robot's tables, or the system of record (account_source)
        if releases:  # `ivr serve`: refuse a schema this code does not know, or hashes under a lost key
            own.start_check()
        store = own
        closers.append(store)
    if synthesizer is None:
        from ivr.tts.synth import PromptSynthesizer

        synthesizer = PromptSynthesizer(settings)
        closers.append(synthesizer)
    if recognizer is None:
        if text_input:
            from ivr.testing.textinput import SidecarTextRecognizer

            recognizer = SidecarTextRecognizer()
        else:
            from ivr.asr.recognizer import VoskRecognizer

            recognizer = VoskRecognizer(settings, reuse=True)  # grammar recognizers kept for the next turn
    metrics = Metrics()
    live: LiveReleases | None = None
    prompts = PromptBook(settings.dialogs_dir)
    grammar: Any = GrammarBook(settings)
    if dialogue is None and releases and not settings.dialogue_url:
        from ivr.live import LiveReleases

        live = LiveReleases(settings, store, metrics, synthesizer)
        dialogue, prompts, grammar = live, live.current_prompts(), live.current_grammar
        closers.append(live)
    elif releases and settings.dialogue_url:
        log.warning("IVR_DIALOGUE_URL is set: the remote Rasa server's model is served, not the published "
                    "releases (ivr publish / reload do not apply to it)")
    if dialogue is None:
        dialogue = build_dialogue(settings, store)
        closers.append(dialogue)
    parts = Parts(
        settings=settings,
        dialogue=dialogue,
        recognizer=recognizer,
        synthesizer=synthesizer,
        prompts=prompts,
        metrics=metrics,
        keypads=KeypadBook(settings.dialogs_dir),
        grammar=grammar,
        asr_pool=PartPool("asr", settings.max_calls, nice=ASR_NICE),
        file_pool=PartPool("files", settings.max_calls),
    )
    closers += [parts.asr_pool, parts.file_pool]
    return Robot(settings, parts, store, closers, releases=live)


def build_dialogue(settings: Settings, store: AccountStore) -> DialogueEngine:
    """In-process Rasa by default; a Rasa HTTP server when ``dialogue_url`` is set."""
    if settings.dialogue_url:
        from ivr.dialogue.remote import RemoteRasaEngine

        return RemoteRasaEngine(settings)
    from ivr.dialogue.engine import RasaEngine

    return RasaEngine(settings, store)
