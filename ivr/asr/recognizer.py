"""Speech in: Vosk behind ``ivr.parts.Recognizer``.

One ``vosk.Model`` per locale per process, shared read-only by every call (loading the Korean model
takes ~2 s and ~500 MB); one ``KaldiRecognizer`` per listen, never used by two listens at once.
``transcribe`` blocks (Vosk releases the GIL while decoding), so the session runs it in a worker thread.

With ``reuse`` (the robot's recognizer, ``ivr.app.build_robot``), a grammar recognizer is kept after its
utterance and reused by a later listen with the same grammar: Vosk composes the grammar with the model's
graph lazily, and a new recognizer pays for that composition again at every utterance (a third of the
decoding of a turn, ``python -m ivr.testing.turncpu``). After ``FinalResult`` Vosk starts the next
utterance with fresh features and decoder state on the same graph, so the words and confidences are
those of a new recognizer. Only the word times differ: Vosk counts them from the recognizer's first
sample, in single precision, and ``transcribe`` shifts them back, which leaves them within a few
microseconds of a new recognizer's (a recognizer is retired after ``_REUSE_MAX_S`` of audio, so the
error stays that small).

What Vosk is fed of a recording (``SpeechFeed``): with ``settings.asr_trim_silence``, only its speech, from
``LEAD_MS`` before its first loud frame to ``endpoint_silence_ms`` after its last one (the audio stream mode
gives Vosk), since Vosk's cost is the same per second of silence as of speech; a recording with no loud
frame is not decoded. ``transcribe_while_recorded`` feeds a recording Asterisk is still writing as it
grows, in the same chunks, so its result is the finished file's and only the last chunk is left to decode
when the recording ends.

The model is loaded through a temporary copy of its folder (the large files are symlinked, only
``conf/`` is copied and edited; the installed model is never touched; the copy is removed once the
model is in memory), for two settings Vosk only reads from there:

- ``settings.asr_dither``: Kaldi dithers the audio features by default, so the same audio gives
  different words and confidences from run to run; off (tests, replays), ``conf/mfcc.conf`` gets
  ``--dither=0.0`` and results are reproducible.
- ``settings.asr_frames_per_chunk``: how many acoustic frames the network computes at once
  (``conf/model.conf``'s ``--frames-per-chunk``; 0, the default, leaves Vosk's own, which is not the
  same as writing 20). The acoustic network is most of a turn's CPU and its matrix products are small:
  51 frames cost ~20 % less CPU per utterance, but the online i-vector is applied once per chunk, and the Korean model then
  hears other words in most of the synthesized held-out phrasings and in one test recording
  (``python -m ivr.testing.asrchunks``, README "CPU per turn"). A knob to measure with a model and
  real recordings, not a free saving.
"""

from __future__ import annotations

import audioop
import contextlib
import json
import logging
import os
import re
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ivr.asr.grammar import split_in_vocabulary, splittable
from ivr.asr.models import ModelError, model_path, spec_for
from ivr.config import LOCALES, Settings
from ivr.parts import Recognition, RecognizerError, Word

logger = logging.getLogger(__name__)

UNK_WORD = "<UNK>"  # how a word outside the vocabulary or grammar appears in Recognition.words
# Tokens of the supported models that stand for unknown speech or noise, never for a word.
_UNK_TOKENS = frozenset({"<UNK>", "<unk>", "[unk]", "<SPOKEN_NOISE>", "[noise]", "<noise>", "!SIL"})
_HAN = re.compile(r"[\u3400-\u9fff]")
_CHUNK_FRAMES = 4000
_GRAMMAR_CACHE_SIZE = 32
_IDLE_PER_GRAMMAR = 8  # reused recognizers kept per grammar: enough for the decodes that run at once
_REUSE_MAX_S = 600  # audio a reused recognizer decodes before it is retired (see the module doc)
_POLL_S = 0.1  # how often a recording being written is read again
MIN_RATE_HZ = 8000
SPEECH_RMS = 256  # Asterisk's default silence threshold (dsp.conf), on 16-bit samples: quieter is not speech
# Silence kept around the speech of a recording (``settings.asr_trim_silence``): the lead stream mode
# gives Vosk (ivr/media/listen.py), the trailing silence that ends a turn in stream mode.
LEAD_MS = 140
MAX_RATE_HZ = 48000


def heard_nothing(result: Recognition) -> bool:
    """True when the caller said nothing at all (silence): the session's no-input case. A result with
    an empty text but some words is speech the model could not place (only unknown words): the
    not-understood case."""
    return not result.text and not result.words


class _Loaded:
    """One locale's model, or the reason it could not be loaded."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.model: Any = None
        self.unk_token = UNK_WORD
        self.error: str = ""
        self.load_s = 0.0


class VoskRecognizer:
    """``ivr.parts.Recognizer`` on Vosk. Thread-safe; create one per process and share it.

    ``model_dirs`` overrides where a locale's model is (tests, ``ivr asr transcribe --model``);
    ``dither`` overrides ``settings.asr_dither``; ``reuse`` keeps grammar recognizers for later
    utterances (see the module doc).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        model_dirs: Mapping[str, Path] | None = None,
        dither: bool | None = None,
        reuse: bool = False,
    ) -> None:
        self._settings = settings
        self._reuse = reuse
        self._model_dirs = dict(model_dirs or {})
        self.dither = settings.asr_dither if dither is None else dither
        self._lock = threading.Lock()
        self._loaded: dict[str, _Loaded] = {}
        self._grammars: dict[tuple[str, tuple[str, ...]], _Grammar | None] = {}
        # Recognizers that finished an utterance, per (locale, grammar, rate), for the next one (see
        # ``transcribe``); never shared by two decodes at once.
        self._idle: dict[tuple[str, str, int], list[_Reusable]] = {}

    # ------------------------------------------------------------ models
    def load(self, locale: str) -> None:
        """Load the locale's model now (at server start) instead of at the first call. Raises RecognizerError."""
        self._model(locale)

    def warm_up(self) -> None:
        """At server start: load every locale's model that is installed (one shared model per locale
        per process); a locale without a model is logged, and its calls get the apology and a transfer."""
        for locale in LOCALES:
            try:
                self.load(locale)
            except RecognizerError as exc:
                logger.warning("no speech model for %s: %s", locale, exc)

    def loaded_locales(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(k for k, v in self._loaded.items() if v.model is not None)

    def available(self, locale: str) -> bool:
        """Whether calls in ``locale`` can be recognized (loads the model; blocking). False: the call
        is served by keypad."""
        try:
            self._model(locale)
        except RecognizerError:
            return False
        return True

    def model(self, locale: str) -> Any:
        """The locale's shared, loaded ``vosk.Model`` (loads it; blocking). Read-only: create one
        ``KaldiRecognizer`` per listen on it (``ivr.asr.stream``). Raises RecognizerError."""
        return self._model(locale)

    def compiled_grammar(self, locale: str, grammar: Sequence[str] | None) -> CompiledGrammar | None:
        """``grammar`` as Vosk takes it (cached), None for free recognition (loads the model)."""
        return self._grammar(locale, grammar) if grammar else None

    def has_word(self, locale: str, word: str) -> bool:
        """Whether the locale's model knows ``word`` (loads the model)."""
        return int(self._model(locale).vosk_model_find_word(word)) >= 0

    def model_dir(self, locale: str) -> Path:
        if locale in self._model_dirs:
            return self._model_dirs[locale]
        try:
            return model_path(locale, self._settings)
        except ModelError as exc:
            raise RecognizerError(str(exc)) from exc

    def _model(self, locale: str) -> Any:
        with self._lock:
            entry = self._loaded.setdefault(locale, _Loaded())
        with entry.lock:  # one loader per locale; other locales load in parallel
            if entry.model is None and not entry.error:
                try:
                    entry.model, entry.unk_token, entry.load_s = self._load_model(locale)
                except RecognizerError as exc:
                    entry.error = str(exc)
            if entry.error:
                raise RecognizerError(entry.error)
            return entry.model

    def _load_model(self, locale: str) -> tuple[Any, str, float]:
        try:
            unk = spec_for(locale).unk_token
        except ModelError as exc:
            raise RecognizerError(str(exc)) from exc
        path = self.model_dir(locale)
        if not path.is_dir():
            raise RecognizerError(
                f"{path}: the {locale} speech model is not there (run: ivr models pull {locale})"
            )
        import vosk

        # Kaldi writes to stderr, outside our logs: its warnings (e.g. grammar words missing from the
        # vocabulary) only when debugging, never its LOG lines (they echo every grammar).
        vosk.SetLogLevel(-1 if logger.isEnabledFor(logging.DEBUG) else -2)
        started = time.perf_counter()
        copy: Path | None = None
        try:
            copy = _tuned_copy(path, dither=self.dither, frames_per_chunk=self._settings.asr_frames_per_chunk)
            try:
                model = vosk.Model(str(copy))
            except Exception as exc:  # vosk raises a bare Exception("Failed to create a model")
                raise RecognizerError(f"{path}: the {locale} speech model failed to load: {exc}") from exc
        except OSError as exc:
            raise RecognizerError(f"{path}: cannot prepare the {locale} speech model: {exc}") from exc
        finally:
            if copy is not None:
                shutil.rmtree(copy, ignore_errors=True)
        elapsed = time.perf_counter() - started
        logger.info(
            "loaded the %s speech model from %s in %.1f s (dither %s, frames per chunk: %s)",
            locale,
            path,
            elapsed,
            "on" if self.dither else "off",
            self._settings.asr_frames_per_chunk or "Vosk's own",
        )
        return model, unk, elapsed

    # ------------------------------------------------------------ decoding
    def transcribe(self, wav: Path, locale: str, grammar: Sequence[str] | None = None) -> Recognition:
        """Decode one mono 16-bit PCM WAV (any rate from 8 kHz; Vosk resamples to the model's rate).

        ``grammar``: phrases the caller may say (None or empty: free recognition). The text holds the
        recognized words without unknown-word tokens; ``words`` keeps those as ``UNK_WORD``; the
        confidence is the mean over all words, unknown ones counting as 0. Raises RecognizerError.
        """
        model = self._model(locale)
        compiled = self._grammar(locale, grammar) if grammar else None
        with _open_wav(wav) as wf:
            feed = self._feed(wf.rate)
            try:
                chunks = [*feed.add(wf.read(wf.frames)), *feed.finish()]
            except OSError as exc:
                raise RecognizerError(f"{wav}: the audio data is unreadable: {exc}") from exc
        return self._decode(wav, locale, model, compiled, feed, chunks)

    def transcribe_while_recorded(
        self, wav: Path, locale: str, grammar: Sequence[str] | None, ended: threading.Event
    ) -> Recognition:
        """``transcribe`` for a recording Asterisk is still writing (``RECORD FILE``): the audio is decoded
        as it reaches the file, so when ``ended`` is set (the command returned, the file is complete) only
        its last half-second is left to decode. The same samples in the same chunks as ``transcribe`` of
        the finished file, so the same result. Blocks until then: run it beside the recording."""
        model = self._model(locale)
        compiled = self._grammar(locale, grammar) if grammar else None
        with self._growing(wav, ended) as (rate, data):
            feed = self._feed(rate)

            def arriving() -> Iterator[bytes]:
                for part in data:
                    yield from feed.add(part)
                yield from feed.finish()

            result = self._decode(wav, locale, model, compiled, feed, arriving())
        if feed.samples_in != self._samples_in_finished(wav):
            # Asterisk cut the file back after we read it (its silence detection with s > 1 truncates the
            # silence it waited for): decode what it kept.
            return self.transcribe(wav, locale, grammar)
        return result

    def _feed(self, rate: int) -> SpeechFeed:
        trim = self._settings.asr_trim_silence
        return SpeechFeed(rate, lead_ms=LEAD_MS if trim else None, trail_ms=self._settings.endpoint_silence_ms)

    @contextlib.contextmanager
    def _growing(self, wav: Path, ended: threading.Event) -> Iterator[tuple[int, Iterator[bytes]]]:
        """The rate of a WAV being written and its data as it arrives, until ``ended`` and the end of the file."""
        while True:
            done = ended.is_set()
            try:
                with _open_wav(wav) as wf:
                    rate, start = wf.rate, wf.data_start
                break
            except RecognizerError:  # not there yet, or its header is not written yet
                if done:
                    raise
            time.sleep(_POLL_S)
        try:
            f = open(wav, "rb")
        except OSError as exc:
            raise RecognizerError(f"{wav}: cannot read the audio file: {exc}") from exc
        try:
            f.seek(start)

            def data() -> Iterator[bytes]:
                while True:
                    done = ended.is_set()  # read before the file: what follows the flag is complete
                    part = f.read()
                    if part:
                        yield part
                    if done:
                        return
                    time.sleep(_POLL_S)

            yield rate, data()
        except OSError as exc:
            raise RecognizerError(f"{wav}: the audio data is unreadable: {exc}") from exc
        finally:
            f.close()

    @staticmethod
    def _samples_in_finished(wav: Path) -> int:
        with _open_wav(wav) as wf:
            return wf.frames

    def _decode(
        self, wav: Path, locale: str, model: Any, compiled: _Grammar | None, feed: SpeechFeed, chunks: Iterable[bytes]
    ) -> Recognition:
        """Feed ``chunks`` to a recognizer (a reused one when it can), made at the first chunk: a recording
        with nothing to decode (``feed`` found no loud frame) makes none and is silence."""
        import vosk

        rate = feed.rate
        key = (locale, compiled.json, rate) if compiled is not None and self._reuse else None
        reused: _Reusable | None = None
        raw: list[dict[str, Any]] = []
        fed = 0
        started = time.perf_counter()
        try:
            for data in chunks:
                if reused is None:
                    reused = self._take(key)
                if reused is None:
                    try:
                        rec = vosk.KaldiRecognizer(model, float(rate), *([compiled.json] if compiled else []))
                        rec.SetWords(True)
                    except Exception as exc:
                        raise RecognizerError(f"{wav}: cannot create a {locale} recognizer: {exc}") from exc
                    reused = _Reusable(rec)
                fed += len(data) // 2
                if reused.rec.AcceptWaveform(data):  # an endpoint: a pause inside the recording
                    raw.extend(json.loads(reused.rec.Result()).get("result", []))
            if reused is None:
                logger.debug("%.2f s of audio, none of it loud: not decoded", feed.samples_in / rate)
                return Recognition(text="", confidence=0.0)
            raw.extend(json.loads(reused.rec.FinalResult()).get("result", []))
        except RecognizerError:
            raise
        except Exception as exc:
            raise RecognizerError(f"{wav}: decoding failed: {exc}") from exc
        # Word times count from the file's first sample: Vosk's from what this recognizer was fed.
        _shift_times(raw, (reused.fed_samples - feed.first) / rate)
        reused.fed_samples += fed
        if key is not None and reused.fed_samples < _REUSE_MAX_S * rate:
            self._give_back(key, reused)
        elapsed = time.perf_counter() - started
        logger.debug(
            "decoded %.2f of %.2f s of audio, the last part in %.3f s (%s)",
            fed / rate,
            feed.samples_in / rate,
            elapsed,
            "grammar" if compiled else "free",
        )
        return _recognition(raw, compiled.joins if compiled else None)

    def _take(self, key: tuple[str, str, int] | None) -> _Reusable | None:
        """An idle recognizer for this grammar and rate, or None (then a new one is made)."""
        if key is None:
            return None
        with self._lock:
            idle = self._idle.get(key)
            return idle.pop() if idle else None

    def _give_back(self, key: tuple[str, str, int], reused: _Reusable) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < _IDLE_PER_GRAMMAR:
                idle.append(reused)

    def _grammar(self, locale: str, grammar: Sequence[str]) -> _Grammar | None:
        """The compiled grammar, cached: a dialogue has a handful, used again at every turn."""
        key = (locale, tuple(grammar))
        with self._lock:
            if key in self._grammars:
                return self._grammars[key]
            unk = self._loaded[locale].unk_token
        model = self._model(locale)
        compiled = _compile_grammar(grammar, unk, lambda w: int(model.vosk_model_find_word(w)) >= 0)
        with self._lock:
            if len(self._grammars) >= _GRAMMAR_CACHE_SIZE:
                self._grammars.clear()
                self._idle.clear()
            self._grammars[key] = compiled
        return compiled


@dataclass
class _Reusable:
    """A grammar recognizer kept for the next utterance, and how much audio it has been fed so far:
    Vosk counts its word times from the recognizer's first sample, ``transcribe`` from the file's."""

    rec: Any
    fed_samples: int = 0


class SpeechFeed:
    """A recording's samples in, as they come; out, the chunks Vosk decodes (``_CHUNK_FRAMES`` samples):
    with ``lead_ms``, only from ``lead_ms`` before its first loud 20 ms frame (RMS >= ``SPEECH_RMS``) to
    ``trail_ms`` after its last one; with None, everything. The same chunks however the samples arrive
    (a finished file at once, or a file Asterisk is still writing), so the same words."""

    def __init__(self, rate: int, *, lead_ms: int | None, trail_ms: int) -> None:
        self.rate = rate
        self._bytes_in = 0
        self.first = 0  # the file's sample the first chunk starts at
        self._step = 2 * max(1, rate * 20 // 1000)  # bytes per frame
        self._lead = None if lead_ms is None else 2 * (rate * lead_ms // 1000)
        self._trail = 2 * (rate * trail_ms // 1000)
        self._partial = bytearray()  # the frame being filled
        self._quiet = bytearray()  # quiet audio not decoded yet: before the speech (its last lead), or after it
        self._speaking = False
        self._framed = 0  # bytes of the recording gone through _frame
        self._out = bytearray()

    @property
    def samples_in(self) -> int:
        return self._bytes_in // 2

    def add(self, data: bytes) -> list[bytes]:
        self._bytes_in += len(data)
        if self._lead is None:
            self._out += data
            return self._full_chunks()
        self._partial += data
        while len(self._partial) >= self._step:
            self._frame(bytes(self._partial[: self._step]))
            del self._partial[: self._step]
        return self._full_chunks()

    def finish(self) -> list[bytes]:
        """The last chunks, once the recording is complete."""
        if self._lead is not None:
            if self._partial:
                self._frame(bytes(self._partial[: len(self._partial) - len(self._partial) % 2]))
                self._partial.clear()
            if self._speaking:
                self._out += self._quiet[: self._trail]
        chunks = self._full_chunks()
        if len(self._out) > 1:
            chunks.append(bytes(self._out[: len(self._out) - len(self._out) % 2]))
        self._out.clear()
        return chunks

    def _frame(self, frame: bytes) -> None:
        assert self._lead is not None
        start = self._framed
        self._framed += len(frame)
        if audioop.rms(frame, 2) >= SPEECH_RMS:
            if not self._speaking:
                self._speaking = True
                self.first = (start - len(self._quiet)) // 2
            self._out += self._quiet
            self._out += frame
            self._quiet = bytearray()
        else:
            self._quiet += frame
            if not self._speaking and len(self._quiet) > self._lead:
                del self._quiet[: len(self._quiet) - self._lead]

    def _full_chunks(self) -> list[bytes]:
        size = 2 * _CHUNK_FRAMES
        chunks = [bytes(self._out[i : i + size]) for i in range(0, len(self._out) - size + 1, size)]
        del self._out[: size * len(chunks)]
        return chunks


def _shift_times(raw: list[dict[str, Any]], offset_s: float) -> None:
    if not offset_s:
        return
    for item in raw:
        for field in ("start", "end"):
            if field in item:
                item[field] = round(float(item[field]) - offset_s, 6)  # Vosk writes 6 decimals


@dataclass(frozen=True)
class _Grammar:
    """A grammar as Vosk takes it, and how to join back the words it had to split."""

    json: str
    joins: Mapping[tuple[str, ...], str]  # pieces -> the grammar word they were split from


def _compile_grammar(grammar: Sequence[str], unk: str, known: Callable[[str], bool]) -> _Grammar | None:
    """Phrases → Vosk's JSON list. Unknown-word spellings become the model's token; a Chinese or Korean
    word the model lacks is split into words it has (Vosk would drop it otherwise), remembered in
    ``joins`` so the result shows the word as the grammar wrote it."""
    phrases: list[str] = []
    joins: dict[tuple[str, ...], str] = {}
    for item in grammar:
        words: list[str] = []
        for w in str(item).split():
            if w in _UNK_TOKENS:
                words.append(unk)
            elif not known(w) and splittable(w) and (pieces := split_in_vocabulary(w, known)):
                words.extend(pieces)
                joins.setdefault(tuple(pieces), w)
            else:
                words.append(w)
        text = " ".join(words)
        if text and text not in phrases:
            phrases.append(text)
    if not phrases:
        return None
    if unk not in phrases:
        phrases.append(unk)
    return _Grammar(json.dumps(phrases, ensure_ascii=False), joins)


def _join_pieces(words: list[Word], joins: Mapping[tuple[str, ...], str]) -> list[Word]:
    """Recognized runs of pieces of a split grammar word become that word (its least confident piece's
    confidence, the run's timing). Longest runs first."""
    if not joins:
        return words
    longest = max(len(k) for k in joins)
    out: list[Word] = []
    i = 0
    while i < len(words):
        for n in range(min(longest, len(words) - i), 1, -1):
            run = words[i : i + n]
            original = joins.get(tuple(w.word for w in run))
            if original is not None:
                conf = min(w.confidence for w in run)
                out.append(Word(original, conf, run[0].start_s, run[-1].end_s))
                i += n
                break
        else:
            out.append(words[i])
            i += 1
    return out


CompiledGrammar = _Grammar  # public name: ``json`` for KaldiRecognizer, ``joins`` for the results


def recognition_from_results(
    raw: list[dict[str, Any]], joins: Mapping[tuple[str, ...], str] | None = None
) -> Recognition:
    """Vosk's word results (``SetWords``) as a Recognition, exactly as ``transcribe`` makes them."""
    return _recognition(raw, joins)


def _recognition(
    raw: list[dict[str, Any]], joins: Mapping[tuple[str, ...], str] | None = None
) -> Recognition:
    words: list[Word] = []
    for item in raw:
        token = str(item.get("word", ""))
        if not token:
            continue
        conf = min(max(float(item.get("conf", 0.0)), 0.0), 1.0)
        start, end = float(item.get("start", 0.0)), float(item.get("end", 0.0))
        if token in _UNK_TOKENS:
            words.append(Word(UNK_WORD, conf, start, end))
        else:
            words.append(Word(_unbracket(token), conf, start, end))
    words = _join_pieces(words, joins or {})
    if not words:
        return Recognition(text="", confidence=0.0)
    known = [w for w in words if w.word != UNK_WORD]
    confidence = sum(w.confidence for w in known) / len(words)
    return Recognition(
        text=join_words(w.word for w in known), confidence=round(confidence, 6), words=tuple(words)
    )


def join_words(words: Iterable[str]) -> str:
    """Words as text: spaces between them, except between two Chinese characters (Chinese is written
    without spaces, and the Chinese NLU reads character n-grams)."""
    text = ""
    for word in words:
        if text and not (_HAN.match(text[-1]) and _HAN.match(word[0])):
            text += " "
        text += word
    return text


def _unbracket(token: str) -> str:
    """The Korean model spells some number readings ``[일]``, ``[12]``, ``(백)``: keep the reading."""
    if len(token) > 2 and token[0] + token[-1] in ("[]", "()"):
        return token[1:-1]
    return token


_FORMATS = {
    1: "PCM",
    3: "IEEE float",
    6: "A-law",
    7: "mu-law",
    0x11: "IMA ADPCM",
    0x31: "GSM 6.10",
    0x55: "MP3",
    0xFFFE: "extensible",
}


class _WavReader:
    """A mono 16-bit PCM WAV's header and samples. Unlike ``wave`` (Python 3.10) it also takes
    WAVE_FORMAT_EXTENSIBLE files holding PCM, and a data size left unset by a recorder that was stopped
    (the samples are then read up to the end of the file)."""

    def __init__(self, path: Path, f: BinaryIO) -> None:
        self.path = path
        self._f = f
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise RecognizerError(f"{path}: not a WAV file (no RIFF/WAVE header)")
        fmt: bytes | None = None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                raise RecognizerError(
                    f"{path}: not a readable WAV file: " + ("no data chunk" if fmt else "no fmt chunk")
                )
            cid, size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if cid == b"fmt ":
                fmt = f.read(size)
                if size % 2:
                    f.read(1)
            elif cid == b"data":
                if fmt is None:
                    raise RecognizerError(f"{path}: not a readable WAV file: data before the fmt chunk")
                self.data_start = f.tell()
                f.seek(0, os.SEEK_END)
                available = f.tell() - self.data_start
                f.seek(self.data_start)
                self._remaining = available if size in (0, 0xFFFFFFFF) else min(size, available)
                break
            else:
                f.seek(size + size % 2, os.SEEK_CUR)
        if len(fmt) < 16:
            raise RecognizerError(f"{path}: not a readable WAV file: short fmt chunk")
        tag, self.channels, self.rate = struct.unpack("<HHI", fmt[:8])
        self.sample_width = (struct.unpack("<H", fmt[14:16])[0] + 7) // 8
        if tag == 0xFFFE and len(fmt) >= 26:
            tag = struct.unpack("<H", fmt[24:26])[0]  # the sub-format GUID starts with the real tag
        problems = []
        if tag != 1:
            problems.append(f"format {_FORMATS.get(tag, tag)}")
        if self.channels != 1:
            problems.append(f"{self.channels} channels")
        if self.sample_width != 2:
            problems.append(f"{8 * self.sample_width}-bit samples")
        if not MIN_RATE_HZ <= self.rate <= MAX_RATE_HZ:
            problems.append(f"{self.rate} Hz")
        if problems:
            raise RecognizerError(
                f"{path}: expected a mono 16-bit PCM WAV at 8-48 kHz, got " + ", ".join(problems)
            )
        self.frames = self._remaining // 2

    def read(self, frames: int) -> bytes:
        n = min(frames * 2, self._remaining - self._remaining % 2)
        data = self._f.read(n) if n > 0 else b""
        self._remaining -= len(data)
        return data


@contextlib.contextmanager
def _open_wav(path: Path) -> Iterator[_WavReader]:
    try:
        f = open(path, "rb")
    except FileNotFoundError as exc:
        raise RecognizerError(f"{path}: no such audio file") from exc
    except OSError as exc:
        raise RecognizerError(f"{path}: cannot read the audio file: {exc}") from exc
    try:
        try:
            reader = _WavReader(path, f)
        except (OSError, struct.error) as exc:
            raise RecognizerError(f"{path}: not a readable WAV file: {exc}") from exc
        yield reader
    finally:
        f.close()


def _tuned_copy(model_dir: Path, *, dither: bool, frames_per_chunk: int) -> Path:
    """A temporary folder that looks like ``model_dir`` but whose ``conf/`` carries the settings (see the
    module doc): ``--dither=0.0`` in ``mfcc.conf`` when ``dither`` is off, ``--frames-per-chunk`` in
    ``model.conf`` unless ``frames_per_chunk`` is 0 (a model without one, Vosk's old layout, is left as it is)."""
    copy = Path(tempfile.mkdtemp(prefix="ivr-vosk-model-"))
    try:
        for entry in model_dir.iterdir():
            if entry.name != "conf":
                os.symlink(entry.resolve(), copy / entry.name, target_is_directory=entry.is_dir())
        conf = model_dir / "conf"
        if conf.is_dir():
            shutil.copytree(conf, copy / "conf", symlinks=False)
        else:
            (copy / "conf").mkdir()  # not a model: let Vosk say so
        if not dither:
            _set_option(copy / "conf" / "mfcc.conf", "--dither", "0.0")
        if frames_per_chunk and (copy / "conf" / "model.conf").exists():
            _set_option(copy / "conf" / "model.conf", "--frames-per-chunk", str(frames_per_chunk))
    except OSError:
        shutil.rmtree(copy, ignore_errors=True)
        raise
    return copy


def _set_option(conf: Path, option: str, value: str) -> None:
    """``option=value`` as the last line of a Kaldi config file, replacing any earlier setting of it."""
    lines = conf.read_text(encoding="utf-8").splitlines() if conf.exists() else []
    lines = [line for line in lines if not line.strip().startswith(option + "=")]
    conf.write_text("\n".join([*lines, f"{option}={value}"]) + "\n", encoding="utf-8")
