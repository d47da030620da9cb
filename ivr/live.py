"""The releases a running server holds, and the switch to a new one without dropping a call.

``LiveReleases`` keeps, per locale, the *current* release (what new calls get) and at most one
*draining* release (the previous current, while calls that started on it are still talking). A call
pins the current release of its locale when it starts (``pin()``) and keeps it to its end: its Rasa
agent, its prompts and its grammars all come from that release, so one call never mixes wordings.
The old release is unloaded when its last call ends.

``reload()`` (``SIGHUP``, ``POST /reload``, a publish or rollback on this machine) reads each locale's
``current.json``; a locale whose number changed gets the new release loaded in the background (files
checked against their hashes, Rasa agent loaded on its own thread, prompts rendered) while calls go on;
only a fully loaded release is switched to. One that fails to load is not: the server keeps the current
one, logs why, counts ``ivr_reload_failures_total`` and shows the failure on ``/health``. A locale never
holds more than two releases: a reload waits until the previous switch's old release has drained.

Release 0 is the working copy (``dialogs_dir`` and ``models_dir/rasa``): what is served before the
first ``ivr publish`` of a locale.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ivr.config import LOCALES, Settings
from ivr.dialogue.prompts import PromptBook
from ivr.logs import quiet_third_party
from ivr.metrics import Metrics
from ivr.parts import CallInfo, DialogueError, Expect, Reply, UserInput
from ivr.releases import GRAMMARS_FILE, ReleaseError, ReleaseStore

log = logging.getLogger(__name__)

RELOAD_WAIT_S = 60.0  # POST /reload answers when the reload is done, or after this with 202


@dataclass(eq=False)
class LoadedRelease:
    """One release of one locale, loaded: its own Rasa engine, prompt book and grammars."""

    locale: str
    number: int  # 0: the working copy
    dialogs_dir: Path
    dialogue: Any  # a RasaEngine serving only this locale, from this release's model
    prompts: PromptBook
    grammars: dict[Expect, list[str]] | None  # None: free recognition
    keypads: Any = None  # its keypad menus (ivr.dialogue.keypad.KeypadBook), when that part exists
    calls: int = 0  # calls in progress pinned to it
    loaded_s: float = 0.0

    def grammar(self, expect: Expect) -> Sequence[str] | None:
        return None if self.grammars is None else self.grammars.get(expect)


def _set_event() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


@dataclass
class LocaleState:
    current: LoadedRelease | None = None
    draining: LoadedRelease | None = None  # the previous current, until its last call ends
    drained: asyncio.Event = field(default_factory=_set_event)  # unset while a release drains
    waiting: int = 0  # a release waiting for the draining one to empty before it is loaded
    failure: str = ""  # why the last reload of this locale failed ("" after a success)
    failed_number: int = 0


class LiveReleases:
    """The releases this server serves. Lives on the server's event loop."""

    def __init__(self, settings: Settings, store: Any, metrics: Metrics, synthesizer: Any = None,
                 locales: Sequence[str] | None = None) -> None:
        self._settings = settings
        self.settings = settings
        self._account_store = store
        self._metrics = metrics
        self._synthesizer = synthesizer
        self._locales = tuple(locales or LOCALES)
        self.store = ReleaseStore(settings)
        self._state = {loc: LocaleState() for loc in self._locales}
        self._lock = threading.Lock()  # pins may be taken from recognition threads (grammar lookups)
        self._reload_lock = asyncio.Lock()
        self._pending: asyncio.Task[dict[str, str]] | None = None
        self._again = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.fallback_prompts = PromptBook(settings.dialogs_dir)
        self._call_pins: dict[str, CallPin] = {}
        self._read: dict[str, int] = {}  # locale -> the release number its last reload read from current.json

    # ------------------------------------------------------------ start and stop
    async def warm_up(self) -> None:
        """Load each locale's current release (or the working copy) before the first call."""
        self._loop = asyncio.get_running_loop()
        await self.reload()

    async def close(self, call: CallInfo | None = None) -> None:
        """Forget the call's conversation (DialogueEngine); without a call: unload everything."""
        if call is not None:
            await self.forget(call)
            return
        await self.aclose()

    async def aclose(self) -> None:
        """Stop: a reload in progress is cancelled (what it was loading is unloaded), every release unloaded."""
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pending
        for task in list(self._tasks):  # unloads of drained releases: let them finish
            with contextlib.suppress(Exception):
                await task
        with self._lock:
            loaded = [r for s in self._state.values() for r in (s.current, s.draining) if r is not None]
            for s in self._state.values():
                s.current = s.draining = None
        for release in loaded:
            await self._unload(release)

    # ------------------------------------------------------------ pinning (one call)
    def pin(self) -> CallPin:
        return CallPin(self)

    def acquire(self, locale: str) -> LoadedRelease | None:
        with self._lock:
            state = self._state.get(locale)
            release = state.current if state is not None else None
            if release is not None:
                release.calls += 1
            return release

    def release(self, loaded: LoadedRelease) -> None:
        with self._lock:
            loaded.calls -= 1
            state = self._state[loaded.locale]
            done = loaded.calls <= 0 and state.draining is loaded
            if done:
                state.draining = None
        if done:
            self._spawn(self._unload_drained(loaded))

    def loaded(self, locale: str) -> list[int]:
        """Release numbers of the locale now in memory (current first)."""
        state = self._state[locale]
        return [r.number for r in (state.current, state.draining) if r is not None]

    @property
    def locales(self) -> tuple[str, ...]:
        return self._locales

    def changed_on_disk(self) -> bool:
        """A locale's ``current.json`` names another release than its last reload read (blocking: a
        file read per locale). A server checks it once registered: a publish or pull that happened while
        it was loading notified only the servers registered then."""
        for locale in self._locales:
            try:
                if self.store.current_number(locale) != self._read.get(locale):
                    return True
            except ReleaseError:
                continue
        return False

    def current_number(self, locale: str) -> int | None:
        current = self._state[locale].current
        return None if current is None else current.number

    # ------------------------------------------------------------ reloading
    def request_reload(self) -> asyncio.Task[dict[str, str]]:
        """Start a reload in the background (coalesced: one more run if one is going on)."""
        if self._pending is not None and not self._pending.done():
            self._again = True
            return self._pending
        self._pending = asyncio.get_running_loop().create_task(self._reload_until_settled())
        return self._pending

    async def _reload_until_settled(self) -> dict[str, str]:
        while True:
            self._again = False
            result = await self.reload()
            if not self._again:
                return result

    async def reload(self) -> dict[str, str]:
        """Bring every locale to its current release; returns what happened per locale."""
        self._loop = asyncio.get_running_loop()
        async with self._reload_lock:
            return {locale: await self._reload_locale(locale) for locale in self._locales}

    async def _reload_locale(self, locale: str) -> str:
        state = self._state[locale]
        try:
            wanted = await asyncio.to_thread(self.store.current_number, locale)
        except ReleaseError as exc:
            return self._failed(locale, 0, str(exc))
        self._read[locale] = wanted
        if state.current is not None and state.current.number == wanted:
            state.failure = ""
            return f"release {wanted} (unchanged)"
        if not state.drained.is_set():  # at most two releases of a locale in memory
            log.info("%s: waiting for the %d call(s) on release %d to end before loading release %d",
                     locale, *((state.draining.calls, state.draining.number) if state.draining else (0, 0)), wanted)
            state.waiting = wanted
            try:
                await state.drained.wait()
            finally:
                state.waiting = 0
        started = time.monotonic()
        try:
            new = await self._load(locale, wanted)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if wanted == 0 and state.current is None:  # nothing published and no working model: not a reload
                log.warning("%s: nothing to serve: %s", locale, exc)
                state.failure = str(exc)
                return f"nothing to serve: {exc}"
            return self._failed(locale, wanted, f"{type(exc).__name__}: {exc}" if not isinstance(
                exc, ReleaseError | DialogueError) else str(exc))
        new.loaded_s = time.monotonic() - started
        with self._lock:
            old, state.current = state.current, new
            state.failure, state.failed_number = "", 0
            if old is not None and old.calls > 0:
                state.draining = old
                state.drained = asyncio.Event()
        if old is not None:
            with contextlib.suppress(KeyError):
                self._metrics.release.remove(locale, str(old.number))
        self._metrics.release.labels(locale=locale, number=str(new.number)).set(1)
        was = "none" if old is None else str(old.number)
        if new.number == 0:
            log.warning("%s: no release published: serving the working copy %s (`ivr publish --locale %s`)",
                        locale, self._settings.dialogs_dir / locale, locale)
        log.info("%s: now serving release %d (was %s; loaded in %.1f s)", locale, new.number, was, new.loaded_s)
        if old is not None and old.calls <= 0:
            await self._unload(old)
        return f"release {new.number} (was {was})"

    def _failed(self, locale: str, number: int, why: str) -> str:
        state = self._state[locale]
        state.failure, state.failed_number = why, number
        self._metrics.reload_failures.inc()
        keep = "none" if state.current is None else str(state.current.number)
        log.error("%s: release %d NOT loaded, still serving release %s: %s", locale, number, keep, why)
        return f"failed: release {number} not loaded, still serving {keep}: {why}"

    async def _load(self, locale: str, number: int) -> LoadedRelease:
        from ivr.dialogue.engine import RasaEngine

        if number == 0:
            dialogs_dir, models_dir = self._settings.dialogs_dir, self._settings.models_dir
        else:
            release = await asyncio.to_thread(self.store.get, locale, number)
            await asyncio.to_thread(self.store.verify, release)  # a damaged file is refused before Rasa sees it
            dialogs_dir, models_dir = release.dialogs_dir, release.models_dir
        prompts = PromptBook(dialogs_dir)
        await asyncio.to_thread(prompts.responses, locale)
        grammars = await asyncio.to_thread(self._grammars, locale, number, dialogs_dir)
        engine = RasaEngine(self._settings, self._account_store, locales=[locale], models_dir=models_dir)
        root = logging.getLogger()
        level = root.level  # the first Rasa load imports TensorFlow, which sets the root logger to WARNING
        try:
            try:
                await engine.warm_up([locale])
            finally:
                root.setLevel(level)
                quiet_third_party()
            build = getattr(self._synthesizer, "build_all", None)
            if build is not None:  # rendered by the publish already: normally only cache look-ups
                await asyncio.to_thread(build, prompts, [locale])
        except BaseException:
            await engine.aclose()
            raise
        return LoadedRelease(locale, number, dialogs_dir, engine, prompts, grammars, _keypads(dialogs_dir))

    def _grammars(self, locale: str, number: int, dialogs_dir: Path) -> dict[Expect, list[str]] | None:
        if not self._settings.asr_grammars:
            return None
        if number:
            path = dialogs_dir.parent / GRAMMARS_FILE
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                return {Expect(k): [str(p) for p in v] for k, v in data.items()}
            except (OSError, ValueError, TypeError) as exc:
                raise ReleaseError(f"{path}: unreadable grammars: {exc}") from exc
        from ivr.asr.grammar import load_grammars

        try:
            return load_grammars(self._settings, locale)
        except Exception:
            log.warning("no grammar for %s; free recognition", locale, exc_info=True)
            return {}

    async def _unload_drained(self, release: LoadedRelease) -> None:
        await self._unload(release)
        self._state[release.locale].drained.set()

    async def _unload(self, release: LoadedRelease) -> None:
        with contextlib.suppress(Exception):
            await release.dialogue.aclose()
        log.info("%s: release %d unloaded", release.locale, release.number)

    def _spawn(self, coro: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        def start() -> None:
            task = loop.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            start()
        else:
            loop.call_soon_threadsafe(start)

    # ------------------------------------------------------------ DialogueEngine (pinned per call id)
    # For code that drives the robot's parts without ``Robot.handle_call`` (which pins prompts too).
    async def start(self, call: CallInfo) -> Reply:
        pin = self._call_pins.get(call.call_id)
        if pin is None:
            pin = self._call_pins[call.call_id] = self.pin()
        return await pin.start(call)

    async def handle(self, call: CallInfo, user: UserInput) -> Reply:
        pin = self._call_pins.get(call.call_id)
        if pin is None:
            raise DialogueError("turn of a call that was not started")
        return await pin.handle(call, user)

    async def classify(self, text: str, locale: str) -> tuple[str, float]:
        release = self.acquire(locale)
        if release is None:
            raise DialogueError(f"no dialogue release is loaded for {locale}")
        try:
            result: tuple[str, float] = await release.dialogue.classify(text, locale)
            return result
        finally:
            self.release(release)

    async def forget(self, call: CallInfo) -> None:
        pin = self._call_pins.pop(call.call_id, None)
        if pin is not None:
            try:
                await pin.close(call)
            finally:
                pin.done()

    # ------------------------------------------------------------ health
    def status(self) -> dict[str, Any]:
        """For ``/health``: per locale, the release served, the one draining, the last failure."""
        out: dict[str, Any] = {}
        for locale, state in self._state.items():
            out[locale] = {
                "current": None if state.current is None else state.current.number,
                "draining": None if state.draining is None else state.draining.number,
                "waiting": state.waiting or None,
                "calls": {str(r.number): r.calls for r in (state.current, state.draining) if r is not None},
                "reload_failure": state.failure,
                "failed_release": state.failed_number or None,
            }
        return out

    async def healthy(self) -> bool:
        """Every locale has a release loaded and its dialogue parses in time."""
        for state in self._state.values():
            if state.current is None or not await state.current.dialogue.healthy():
                return False
        return True

    # ------------------------------------------------------------ the robot's own view (no call)
    def current_prompts(self) -> PromptBook:
        return _CurrentPrompts(self)

    def current_grammar(self, locale: str, expect: Expect) -> Sequence[str] | None:
        current = self._state[locale].current if locale in self._state else None
        return None if current is None else current.grammar(expect)


def _keypads(dialogs_dir: Path) -> Any:
    try:
        from ivr.dialogue.keypad import KeypadBook
    except ImportError:
        return None
    return KeypadBook(dialogs_dir)


class CallPin:
    """One call's releases: the first use of a locale pins its current release until ``done()``.

    It is the call's DialogueEngine, PromptBook and grammar source (``ivr.app`` puts them in the call's
    Parts), so the session needs no change."""

    def __init__(self, live: LiveReleases) -> None:
        self._live = live
        self._held: dict[str, LoadedRelease] = {}
        self._lock = threading.Lock()
        self.prompts = _PinnedPrompts(self)

    def get(self, locale: str) -> LoadedRelease | None:
        with self._lock:
            if locale not in self._held:
                release = self._live.acquire(locale)
                if release is None:
                    return None
                self._held[locale] = release
            return self._held[locale]

    def parts_changes(self, parts: Any) -> dict[str, Any]:
        """What the call's ``Parts`` take from its releases instead of the server's."""
        changes: dict[str, Any] = {"dialogue": self, "prompts": self.prompts, "grammar": self.grammar}
        if hasattr(parts, "keypads"):
            changes["keypads"] = _PinnedKeypads(self, parts.keypads)
        return changes

    def numbers(self) -> dict[str, int]:
        return {loc: r.number for loc, r in self._held.items()}

    def done(self) -> None:
        with self._lock:
            held, self._held = list(self._held.values()), {}
        for release in held:
            self._live.release(release)

    def _engine(self, locale: str) -> Any:
        release = self.get(locale)
        if release is None:
            raise DialogueError(f"no dialogue release is loaded for {locale} (see the server log and /health)")
        return release.dialogue

    # -- DialogueEngine
    async def start(self, call: CallInfo) -> Reply:
        reply: Reply = await self._engine(call.locale).start(call)
        return reply

    async def handle(self, call: CallInfo, user: UserInput) -> Reply:
        reply: Reply = await self._engine(call.locale).handle(call, user)
        return reply

    async def classify(self, text: str, locale: str) -> tuple[str, float]:
        result: tuple[str, float] = await self._engine(locale).classify(text, locale)
        return result

    async def close(self, call: CallInfo) -> None:
        """Forget the conversation on every agent this call used."""
        for release in list(self._held.values()):
            await release.dialogue.close(call)

    # -- grammar source
    def grammar(self, locale: str, expect: Expect) -> Sequence[str] | None:
        release = self.get(locale)
        return None if release is None else release.grammar(expect)


class _PinnedKeypads:
    """The call's keypad menus: its pinned release's, else the server's."""

    def __init__(self, pin: CallPin, fallback: Any) -> None:
        self._pin = pin
        self._fallback = fallback

    def keypad(self, locale: str) -> Any:
        release = self._pin.get(locale)
        book = release.keypads if release is not None and release.keypads is not None else self._fallback
        return book.keypad(locale)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fallback, name)


class _PinnedPrompts(PromptBook):
    """The call's prompt book: its pinned release's, else the working copy's."""

    def __init__(self, pin: CallPin) -> None:
        super().__init__(pin._live.settings.dialogs_dir)
        self._pin = pin

    def _book(self, locale: str) -> PromptBook:
        release = self._pin.get(locale)
        return self._pin._live.fallback_prompts if release is None else release.prompts

    def responses(self, locale: str) -> dict[str, list[str]]:
        return self._book(locale).responses(locale)

    def text(self, name: str, locale: str, **values: str) -> str:
        return self._book(locale).text(name, locale, **values)

    def locale_dir(self, locale: str) -> Path:
        return self._book(locale).locale_dir(locale)


class _CurrentPrompts(PromptBook):
    """The server's prompt book outside calls (e.g. "please hold"): the current release's."""

    def __init__(self, live: LiveReleases) -> None:
        super().__init__(live.settings.dialogs_dir)
        self._live = live

    def _book(self, locale: str) -> PromptBook:
        state = self._live._state.get(locale)
        current = state.current if state is not None else None
        return self._live.fallback_prompts if current is None else current.prompts

    def responses(self, locale: str) -> dict[str, list[str]]:
        return self._book(locale).responses(locale)

    def text(self, name: str, locale: str, **values: str) -> str:
        return self._book(locale).text(name, locale, **values)

    def locale_dir(self, locale: str) -> Path:
        return self._book(locale).locale_dir(locale)
