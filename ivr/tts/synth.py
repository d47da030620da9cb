"""The robot's voice: text -> number reading -> pyttsx3 (espeak-ng) -> 8 kHz mono 16-bit WAV, cached.

Layout under ``settings.sounds_dir`` (Asterisk plays each file by its path without ``.wav``)::

    <locale>/prompts/<name>.wav   fixed prompts (the domain's responses without placeholders), kept
    <locale>/prompts/<name>.txt   the display text, so a test peer can tell what was said
    <locale>/prompts/manifest.json  response name -> file names, written by ``ivr prompts build``
    <locale>/dynamic/<name>.wav   everything else (amounts, dates, "did you say …"): deleted when the
                                  last call that played it ends (``end_call``), least recently used
                                  evicted beyond ``tts_dynamic_cache_mb`` otherwise
    <locale>/dynamic/<name>.txt   its text, only with ``tts_dynamic_sidecars`` (tests and replays, whose
                                  peers read what the robot said from it): a caller's balance or words
                                  are not kept on disk in clear beyond the call

``<name>`` is a hash of (locale, voice, rate, output format, display text, spoken text), so a change of
any of them is a new file and a cached file is never stale.

Synthesis runs in ONE long-lived child process (``ivr.tts.worker``) fed by ONE thread of this
synthesizer: pyttsx3 is not thread-safe and prints on stdout, so it gets its own process whose
stdin/stdout are /dev/null; the event loop only awaits a future. A worker that dies or hangs is
killed and restarted once, and that request raises SynthesisError.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ivr.config import LOCALES, Settings
from ivr.dialogue.prompts import PromptBook, PromptError
from ivr.logs import call_id_var
from ivr.parts import SynthesisError
from ivr.tts.numbers import speakable

logger = logging.getLogger(__name__)

# zh-CN: espeak-ng's Mandarin. Its plain ``cmn`` voice (1.51, Debian 12) reads the tone digit of every
# character in English ("您好" -> "nin two hao three", espeak-ng issue #1028); ``cmn-latn-pinyin`` is the
# same voice, dictionary and phonemes with Latin text taken as pinyin, and reads hanzi correctly.
DEFAULT_VOICES = {"zh-CN": "cmn-latn-pinyin", "en-US": "en-us", "ko-KR": "ko"}
SAMPLE_RATE_HZ = 8000
CACHE_FORMAT = 1  # bump when the audio pipeline changes in a way the key does not capture
PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
WORKER_START_TIMEOUT_S = 30.0
MIN_RATE_WPM = 80
MAX_RATE_WPM = 450
# responses published under <sounds_dir>/fallback/<locale>/<key>.wav for the dialplan to play
DIALPLAN_PROMPTS = ("apology", "hold", "no_agent")
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


def asterisk_name(wav: Path) -> str:
    """What ``STREAM FILE`` / ``Playback`` take: the path without its extension."""
    return str(wav.with_suffix(""))


def parse_voices(spec: str) -> dict[str, str]:
    """``tts_voice``: empty (each locale's default), one voice for every locale, or ``zh-CN=cmn,ko-KR=ko``."""
    voices = dict(DEFAULT_VOICES)
    spec = spec.strip()
    if not spec:
        return voices
    if "=" not in spec:
        return dict.fromkeys(voices, spec)
    for item in spec.split(","):
        locale, _, voice = (part.strip() for part in item.partition("="))
        if locale not in LOCALES or not voice:
            raise ValueError(
                f"setting tts_voice: {item.strip()!r} is not LOCALE=VOICE with LOCALE one of {', '.join(LOCALES)}"
            )
        voices[locale] = voice
    return voices


class SynthStats:
    """Counters for the caller (metrics, the benchmark, tests). Thread-safe; read with ``snapshot()``."""

    FIELDS = (
        "renders", "hits", "misses", "joined", "syntheses", "synthesis_s", "conversion_s", "errors",
        "worker_starts", "evictions", "forgotten",
    )  # fmt: skip

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.renders = 0  # render() calls, plus prompts build_all went through
        self.hits = 0  # served from a cached file: no synthesis
        self.misses = 0  # asked the worker to synthesize
        self.joined = 0  # waited for an identical render already in progress
        self.syntheses = 0  # the worker's successful syntheses
        self.synthesis_s = 0.0  # total engine time (pyttsx3 / espeak-ng)
        self.conversion_s = 0.0  # total 22.05 kHz -> 8 kHz conversion time (pydub)
        self.errors = 0
        self.worker_starts = 0
        self.evictions = 0  # dynamic files removed to stay within tts_dynamic_cache_mb
        self.forgotten = 0  # dynamic files removed when the last call that played them ended

    def add(self, **deltas: float) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return {name: getattr(self, name) for name in self.FIELDS}

    def __repr__(self) -> str:
        return f"SynthStats({self.snapshot()})"


@dataclasses.dataclass(frozen=True)
class _Job:
    text: str  # display text (the sidecar)
    spoken: str  # after number reading
    locale: str
    voice: str
    name: str


class _WorkerGone(Exception):
    """The worker could not start, died, hung or broke the protocol."""


class _Worker:
    """The client end of one ``ivr.tts.worker`` process. Used by one thread at a time."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._stream: Any = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def alive(self) -> bool:
        return self.pid is not None

    def start(self) -> None:
        self.stop()
        parent, child = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "ivr.tts.worker", str(child.fileno())],
                stdin=subprocess.DEVNULL,  # never read the parent's stdin (an AGI channel in stdio mode)
                stdout=subprocess.DEVNULL,  # pyttsx3 prints "Audio saved to ..." for every file
                pass_fds=(child.fileno(),),
                env=env,
            )
        except OSError as exc:
            parent.close()
            raise _WorkerGone(f"could not start {sys.executable} -m ivr.tts.worker: {exc}") from exc
        finally:
            child.close()
        self._sock = parent
        self._stream = parent.makefile("rwb")
        hello = self._read(WORKER_START_TIMEOUT_S)
        if not hello.get("ready"):
            error = hello.get("error", "no greeting")
            self.stop()
            raise _WorkerGone(str(error))
        logger.info("TTS worker started (pid %s)", self._proc.pid)

    def _read(self, timeout_s: float) -> dict[str, Any]:
        assert self._sock is not None
        self._sock.settimeout(timeout_s)
        try:
            line = self._stream.readline()
        except TimeoutError as exc:
            raise _WorkerGone(f"no answer within {timeout_s:g} s") from exc
        except OSError as exc:
            raise _WorkerGone(f"connection lost: {exc}") from exc
        if not line:
            code = self._proc.poll() if self._proc is not None else None
            raise _WorkerGone("it exited" + (f" with code {code}" if code is not None else ""))
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise _WorkerGone(f"unreadable answer: {line[:80]!r}") from exc
        if not isinstance(message, dict):
            raise _WorkerGone(f"unreadable answer: {line[:80]!r}")
        return message

    def request(self, payload: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        if self._stream is None:
            raise _WorkerGone("not running")
        try:
            self._stream.write(json.dumps(payload, ensure_ascii=False).encode("utf-8") + b"\n")
            self._stream.flush()
        except OSError as exc:
            raise _WorkerGone(f"connection lost: {exc}") from exc
        return self._read(timeout_s)

    def stop(self, kill: bool = False) -> None:
        """Close the pipe (the worker exits at EOF); kill it if ``kill`` or if it does not go at once."""
        for closable in (self._stream, self._sock):
            if closable is not None:
                try:
                    closable.close()
                except OSError:
                    pass
        self._stream = self._sock = None
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if kill:
            proc.kill()
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class PromptSynthesizer:
    """ivr.parts.Synthesizer over pyttsx3/espeak-ng, with a prompt cache in ``settings.sounds_dir``."""

    def __init__(self, settings: Settings, prompt_book: PromptBook | None = None, *, cache: bool = True) -> None:
        """``cache=False`` synthesizes every render anew (still written atomically to the cache path, so
        a file being played is never half-written): only for ``ivr bench --compare``'s "uncached prompts"."""
        if not MIN_RATE_WPM <= settings.tts_rate_wpm <= MAX_RATE_WPM:
            raise ValueError(
                f"setting tts_rate_wpm: {settings.tts_rate_wpm} is outside espeak-ng's "
                f"{MIN_RATE_WPM}..{MAX_RATE_WPM} words per minute"
            )
        if settings.tts_dynamic_cache_mb < 0:
            raise ValueError(f"setting tts_dynamic_cache_mb: {settings.tts_dynamic_cache_mb} is negative")
        self._settings = settings
        self._root = settings.sounds_dir
        self._dynamic_subfolder = settings.tts_dynamic_subfolder  # "": dynamic/ itself
        self._voices = parse_voices(settings.tts_voice)
        self._rate_wpm = settings.tts_rate_wpm
        self._book = prompt_book if prompt_book is not None else PromptBook(settings.dialogs_dir)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tts")
        self._worker = _Worker()
        self._lock = threading.RLock()
        self._inflight: dict[str, concurrent.futures.Future[Path]] = {}
        self._fixed_texts: dict[str, frozenset[str]] = {}
        self._manifests: dict[str, tuple[float, dict[str, list[str]]]] = {}
        self._dynamic_bytes: int | None = None
        self._closed = False
        self._cache = cache
        self._dynamic_sidecars = settings.tts_dynamic_sidecars
        # the dynamic files each live call has rendered, and the live calls using each file
        self._call_files: dict[str, set[Path]] = {}
        self._users: dict[Path, set[str]] = {}
        self.stats = SynthStats()

    # ------------------------------------------------------------ public API
    def voice(self, locale: str) -> str:
        """The espeak-ng voice this synthesizer speaks ``locale`` with."""
        try:
            return self._voices[locale]
        except KeyError:
            raise SynthesisError(f"no voice for locale {locale!r} (one of {', '.join(LOCALES)})") from None

    def spoken_text(self, text: str, locale: str) -> str:
        """What the robot says for ``text``: numbers read per locale (what ``ivr say --dry-run`` prints)."""
        self.voice(locale)
        return speakable(text, locale)

    def path_for(self, text: str, locale: str, fixed: bool) -> Path:
        """Where ``text`` is (or would be) cached; it need not exist."""
        job = self._job(text, locale)
        return self._target(job, fixed)

    async def render(self, text: str, locale: str) -> Path:
        """The 8 kHz mono 16-bit WAV for ``text``: a cached file, or synthesized now. Raises SynthesisError."""
        job = self._job(text, locale)
        self.stats.add(renders=1)
        self._hold(job)
        hit = self._lookup(job) if self._cache else None  # two stat() calls: cheaper than a hop to the thread
        if hit is not None:
            self.stats.add(hits=1)
            return hit
        inner = asyncio.wrap_future(self._submit(job, fixed=None))
        inner.add_done_callback(_consume_result)
        # shield: a caller who hangs up mid-render must not cancel the render others may be waiting on
        return await asyncio.shield(inner)

    def render_blocking(self, text: str, locale: str) -> Path:
        """render() for code without an event loop (the CLI). Do not call it on an event loop."""
        job = self._job(text, locale)
        self.stats.add(renders=1)
        hit = self._lookup(job) if self._cache else None
        if hit is not None:
            self.stats.add(hits=1)
            return hit
        return self._submit(job, fixed=None).result()

    def end_call(self, call_id: str) -> None:
        """The call is over: delete the dynamic renders it played (WAV and sidecar) that no other live
        call uses; a render still in progress goes when it is done. Fixed prompts stay. Never raises."""
        with self._lock:
            for wav in self._call_files.pop(call_id, set()):
                users = self._users.get(wav)
                if users is not None:
                    users.discard(call_id)
                    if users:
                        continue
                    del self._users[wav]
                inflight = self._inflight.get(wav.stem)
                if inflight is not None and not inflight.done():
                    inflight.add_done_callback(functools.partial(self._drop_unused, wav))
                else:
                    self._drop_unused(wav)

    def _hold(self, job: _Job) -> None:
        """Within a call (the session sets ``call_id_var``), note that the call uses ``job``'s dynamic file."""
        call_id = call_id_var.get()
        if call_id == "-":  # no call: the CLI, the prompts build, a test caller's speech
            return
        wav = self._target(job, False)
        with self._lock:
            self._call_files.setdefault(call_id, set()).add(wav)
            self._users.setdefault(wav, set()).add(call_id)

    def _drop_unused(self, wav: Path, _done: object = None) -> None:
        with self._lock:
            if wav in self._users:  # a new call took it meanwhile
                return
            removed = 0
            for path in (wav, wav.with_suffix(".txt")):
                try:
                    size = path.stat().st_size
                    path.unlink()
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    logger.warning("could not delete %s: %s", path.name, exc.strerror or type(exc).__name__)
                    continue
                removed += size
            if removed:
                self.stats.add(forgotten=1)
                if self._dynamic_bytes is not None:
                    self._dynamic_bytes = max(0, self._dynamic_bytes - removed)

    def fallback(self, key: str, locale: str) -> Path | None:
        """The pre-rendered domain response ``utter_<key>`` (``apology``, ``hold``), or None if never built."""
        name = key if key.startswith("utter_") else f"utter_{key}"
        files = self._manifest(locale).get(name)
        if not files:
            return None
        wav = self._dir(locale, "prompts") / f"{files[0]}.wav"
        return wav if wav.is_file() else None

    def build_all(self, prompt_book: PromptBook, locales: Iterable[str] = LOCALES) -> int:
        """Render every fixed response (no ``{slot}``) of each locale and write its manifest.

        Returns how many prompt files are now in place (synthesized now or already cached; see ``stats``).
        A locale without a readable domain is skipped with a warning. Blocking: call it off the loop.
        """
        count = 0
        for locale in locales:
            try:
                responses = prompt_book.responses(locale)
            except PromptError as exc:
                logger.warning("prompts build: skipping %s: %s", locale, exc.args[0] if exc.args else exc)
                continue
            manifest: dict[str, list[str]] = {}
            for response, texts in responses.items():
                names = []
                for text in texts:
                    if PLACEHOLDER.search(text):
                        continue
                    job = self._job(text, locale)
                    self.stats.add(renders=1)
                    hit = self._lookup(job, fixed_only=True)
                    if hit is not None:
                        self.stats.add(hits=1)
                    else:
                        hit = self._submit(job, fixed=True).result()
                        if hit.parent.name != "prompts":  # joined a render that took it for dynamic
                            hit = self._submit(job, fixed=True).result()
                    names.append(hit.stem)
                    count += 1
                if names:
                    manifest[response] = names
            self._write_manifest(locale, manifest)
            self._publish_dialplan_prompts(locale)
        return count

    def _publish_dialplan_prompts(self, locale: str) -> None:
        """Copy the prompts the dialplan plays itself to stable names: the apology and hold (the robot is
        down) and "no agent is available: 1 a message, 2 the menu" (asterisk_conf/extensions.conf,
        [ivr-no-agent]): ``<sounds_dir>/fallback/<locale>/apology.wav``, ``hold.wav``, ``no_agent.wav``."""
        target = self._settings.sounds_dir / "fallback" / locale
        for key in DIALPLAN_PROMPTS:
            source = self.fallback(key, locale)
            if source is None:
                continue
            target.mkdir(parents=True, exist_ok=True)
            tmp = target / f".{key}.{os.getpid()}.tmp"
            shutil.copyfile(source, tmp)
            os.replace(tmp, target / f"{key}.wav")

    def warm_up(self) -> None:
        """Before the first call: start the engine and make sure every fixed prompt is rendered, so no
        caller waits for the engine's start or a first synthesis. Blocking (the robot runs it in a thread)."""
        self.start()
        self.build_all(self._book)

    def start(self) -> None:
        """Start the worker now rather than at the first miss (~0.15 s). Blocking: from a running event
        loop, ``await asyncio.to_thread(synth.start)``. Raises SynthesisError if the engine cannot start."""
        self._executor.submit(self._ensure_worker).result()

    @property
    def worker_pid(self) -> int | None:
        return self._worker.pid

    def close(self) -> None:
        """Wait for renders in progress, then stop the worker. Idempotent. Blocking: from a running
        event loop, ``await asyncio.to_thread(synth.close)``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._executor.shutdown(wait=True)
        self._worker.stop()

    def __enter__(self) -> PromptSynthesizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ cache
    def _job(self, text: str, locale: str) -> _Job:
        voice = self.voice(locale)
        try:
            spoken = speakable(text, locale)
        except ValueError as exc:
            raise SynthesisError(f"cannot read the numbers for {locale}: {exc}") from exc
        if not spoken.strip():
            raise SynthesisError(f"nothing to say ({locale}: empty text)")
        key = json.dumps(
            [CACHE_FORMAT, locale, voice, self._rate_wpm, SAMPLE_RATE_HZ, text, spoken], ensure_ascii=False
        )
        name = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
        return _Job(text=text, spoken=spoken, locale=locale, voice=voice, name=name)

    def _dir(self, locale: str, kind: str) -> Path:
        return self._root / locale / kind

    def _target(self, job: _Job, fixed: bool) -> Path:
        if fixed:
            return self._dir(job.locale, "prompts") / f"{job.name}.wav"
        return self._dir(job.locale, "dynamic") / self._dynamic_subfolder / f"{job.name}.wav"

    def _lookup(self, job: _Job, fixed_only: bool = False) -> Path | None:
        fixed = self._target(job, True)
        if fixed.is_file():
            return fixed
        if fixed_only:
            return None
        dynamic = self._target(job, False)
        try:
            os.utime(dynamic)  # a use: least recently used files are evicted first
        except FileNotFoundError:
            return None
        except OSError:  # a read-only sounds folder still serves its files
            return dynamic if dynamic.is_file() else None
        return dynamic

    def _is_fixed(self, text: str, locale: str) -> bool:
        if locale not in self._fixed_texts:
            try:
                responses = self._book.responses(locale)
            except PromptError as exc:
                logger.debug("no fixed prompts for %s: %s", locale, exc)
                responses = {}
            self._fixed_texts[locale] = frozenset(
                t for texts in responses.values() for t in texts if not PLACEHOLDER.search(t)
            )
        return text in self._fixed_texts[locale]

    def _submit(self, job: _Job, fixed: bool | None) -> concurrent.futures.Future[Path]:
        with self._lock:
            if self._closed:
                raise SynthesisError("the synthesizer is closed")
            future = self._inflight.get(job.name) if self._cache else None
            if future is not None:
                self.stats.add(joined=1)
                return future
            future = self._executor.submit(self._produce, job, fixed)
            self._inflight[job.name] = future
        future.add_done_callback(functools.partial(self._forget, job.name))
        return future

    def _forget(self, name: str, future: concurrent.futures.Future[Path]) -> None:
        with self._lock:
            if self._inflight.get(name) is future:
                del self._inflight[name]

    # ------------------------------------------------------------ the synthesis thread
    def _produce(self, job: _Job, fixed: bool | None) -> Path:
        """Runs on the single synthesis thread: synthesize ``job`` into the cache, atomically."""
        if fixed is None:
            fixed = self._is_fixed(job.text, job.locale)
        target = self._target(job, fixed)
        existing = self._lookup(job) if self._cache else None
        if existing is not None:  # made meanwhile (by another process, or before a prompts build)
            if existing != target and fixed:  # a fixed prompt found in the dynamic cache: promote it
                target.parent.mkdir(parents=True, exist_ok=True)
                self._write_sidecar(target, job.text)
                os.replace(existing, target)
                existing.with_suffix(".txt").unlink(missing_ok=True)
                existing = target
            self.stats.add(hits=1)
            return existing
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{job.name}.{os.getpid()}.tmp.wav")
        self.stats.add(misses=1)
        try:
            reply = self._call_worker(
                {"text": job.spoken, "voice": job.voice, "rate_wpm": self._rate_wpm, "out": str(tmp)}, job
            )
            size = self._check_wav(tmp, job)
            if fixed or self._dynamic_sidecars:
                self._write_sidecar(target, job.text)
            else:  # never a caller's balance or words in clear beside a dynamic render
                target.with_suffix(".txt").unlink(missing_ok=True)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        self.stats.add(
            syntheses=1,
            synthesis_s=float(reply.get("synth_s", 0.0)),
            conversion_s=float(reply.get("convert_s", 0.0)),
        )
        logger.debug(
            "synthesized %s/%s: %.1f ms engine, %.1f ms conversion, %d frames",
            job.locale, job.name, 1000 * reply.get("synth_s", 0.0), 1000 * reply.get("convert_s", 0.0),
            reply.get("frames", 0),
        )  # fmt: skip
        if not fixed:
            sidecar = len(job.text.encode("utf-8")) if self._dynamic_sidecars else 0
            self._account_dynamic(size + sidecar, keep=target)
        return target

    def _ensure_worker(self) -> None:
        if self._worker.alive:
            return
        self.stats.add(worker_starts=1)
        try:
            self._worker.start()
        except _WorkerGone as exc:
            self.stats.add(errors=1)
            raise SynthesisError(f"the TTS worker (pyttsx3/espeak-ng) could not start: {exc}") from exc

    def _call_worker(self, payload: dict[str, Any], job: _Job) -> dict[str, Any]:
        """One request to the engine process. A worker that gives no answer (pyttsx3's espeak driver used
        to cancel an utterance now and then, see ``Engine._wait_until_idle`` in ivr.tts.worker; any other
        hang alike) is replaced after a third of the TTS timeout, a sentence taking ~30 ms, and the request
        tried once more, within the caller's timeout."""
        attempt_timeout_s = max(0.5, self._settings.tts_timeout_s / 3)
        for attempt in (1, 2):
            self._ensure_worker()
            try:
                reply = self._worker.request(payload, attempt_timeout_s)
                break
            except _WorkerGone as exc:
                self.stats.add(errors=1)
                logger.warning("TTS worker failed (%s); restarting it", exc)
                self._worker.stop(kill=True)
                if attempt == 2:
                    try:
                        self._ensure_worker()
                    except SynthesisError:
                        logger.exception("TTS worker restart failed")
                    raise SynthesisError(
                        f"the TTS worker failed while rendering {job.locale}/{job.name}: {exc}"
                    ) from exc
        if not reply.get("ok"):
            self.stats.add(errors=1)
            if reply.get("restart"):
                logger.warning("TTS worker misbehaved (%s); replacing it", reply.get("error"))
                self._worker.stop(kill=True)
            raise SynthesisError(
                f"espeak-ng could not render {job.locale}/{job.name} with voice {job.voice!r}: {reply.get('error')}"
            )
        return reply

    @staticmethod
    def _check_wav(path: Path, job: _Job) -> int:
        try:
            with wave.open(str(path), "rb") as wav:
                shape = (wav.getframerate(), wav.getnchannels(), wav.getsampwidth())
                frames = wav.getnframes()
        except (OSError, EOFError, wave.Error) as exc:
            raise SynthesisError(
                f"the TTS worker wrote no valid WAV for {job.locale}/{job.name}: {exc}"
            ) from exc
        if shape != (SAMPLE_RATE_HZ, 1, 2) or frames == 0:
            raise SynthesisError(
                f"the TTS worker wrote {shape} with {frames} frames for {job.locale}/{job.name}, "
                f"not ({SAMPLE_RATE_HZ}, 1, 2) audio"
            )
        return path.stat().st_size

    @staticmethod
    def _write_sidecar(target: Path, text: str) -> None:
        sidecar = target.with_suffix(".txt")
        tmp = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, sidecar)

    # ------------------------------------------------------------ the dynamic cache's bound
    def _account_dynamic(self, added: int, keep: Path) -> None:
        limit = self._settings.tts_dynamic_cache_mb * 1024 * 1024
        if self._dynamic_bytes is None:
            self._dynamic_bytes = sum(size for _, _, size in self._dynamic_files())
        else:
            self._dynamic_bytes += added
        if self._dynamic_bytes > limit:
            self._evict(int(limit * 0.9), keep)

    def _dynamic_files(self) -> list[tuple[float, Path, int]]:
        """(last use, wav, bytes with its sidecar) of every dynamic file of every locale; stale temps go."""
        files = []
        now = time.time()
        for wav in self._root.glob(str(Path("*", "dynamic", self._dynamic_subfolder, "*.wav"))):
            try:
                st = wav.stat()
            except FileNotFoundError:
                continue
            if wav.name.startswith("."):
                if now - st.st_mtime > 600:  # left by a process that died mid-write
                    wav.unlink(missing_ok=True)
                continue
            try:
                size = st.st_size + wav.with_suffix(".txt").stat().st_size
            except FileNotFoundError:
                size = st.st_size
            files.append((st.st_mtime, wav, size))
        return files

    def _evict(self, target_bytes: int, keep: Path) -> None:
        files = sorted(self._dynamic_files(), key=lambda entry: entry[0])
        total = sum(size for _, _, size in files)
        removed = 0
        for _, wav, size in files:
            if total <= target_bytes:
                break
            if wav == keep:
                continue
            with self._lock:
                in_use = wav in self._users
            if in_use:  # a live call is about to play it; end_call removes it
                continue
            wav.unlink(missing_ok=True)
            wav.with_suffix(".txt").unlink(missing_ok=True)
            total -= size
            removed += 1
        self._dynamic_bytes = total
        if removed:
            self.stats.add(evictions=removed)
            logger.info("TTS dynamic cache: evicted %d least recently used files", removed)

    # ------------------------------------------------------------ manifests (for fallback)
    def _manifest_path(self, locale: str) -> Path:
        return self._dir(locale, "prompts") / "manifest.json"

    def _write_manifest(self, locale: str, responses: dict[str, list[str]]) -> None:
        path = self._manifest_path(locale)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "locale": locale,
            "voice": self.voice(locale),
            "rate_wpm": self._rate_wpm,
            "responses": responses,
        }
        tmp = path.with_name(f".manifest.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
        with self._lock:
            self._manifests.pop(locale, None)

    def _manifest(self, locale: str) -> dict[str, list[str]]:
        path = self._manifest_path(locale)
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return {}
        with self._lock:
            cached = self._manifests.get(locale)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            responses = json.loads(path.read_text(encoding="utf-8")).get("responses", {})
        except (OSError, ValueError, AttributeError) as exc:
            logger.warning("%s: unreadable prompt manifest: %s", path, exc)
            return {}
        with self._lock:
            self._manifests[locale] = (mtime, responses)
        return dict(responses)


def _consume_result(future: asyncio.Future[Path]) -> None:
    """Retrieve a shielded render's outcome, so an abandoned failure is not logged as never retrieved."""
    if not future.cancelled():
        future.exception()
