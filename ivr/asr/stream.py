"""Streaming speech recognition for stream mode: decode the caller's turn while it is spoken.

A ``StreamingRecognizer`` is one listen: one ``KaldiRecognizer`` on the locale's shared model (loaded
once per process by ``VoskRecognizer``, dither off when its settings say so, so results are
reproducible), with the dialogue state's grammar (ending with the unknown-word token, split words joined
again) and word results. Audio is fed as it arrives (``accept``) and decoded in batches of
``batch_ms``; ``finish`` is called when the VAD endpointer says the turn is over — Vosk's own
endpointing lags by 0.5-2 s, so a Vosk "final" inside the turn is only kept, never acted on.

``accept`` and ``finish`` block (Vosk decodes in C++ and releases the GIL): callers run them in a worker
thread, one call at a time per recognizer (it is not thread-safe), never on the event loop.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from ivr.asr.recognizer import CompiledGrammar, VoskRecognizer, recognition_from_results
from ivr.parts import Recognition, RecognizerError

logger = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 8000
BATCH_MS = 100


class StreamingRecognizer:
    """One caller turn, decoded as it arrives. Not thread-safe; blocking (see the module doc)."""

    def __init__(
        self,
        model: Any,
        *,
        grammar: CompiledGrammar | None = None,
        sample_rate_hz: int = SAMPLE_RATE_HZ,
        batch_ms: int = BATCH_MS,
        label: str = "",
    ) -> None:
        import vosk

        self._label = label or "stream"
        try:
            if grammar is None:
                self._rec = vosk.KaldiRecognizer(model, float(sample_rate_hz))
            else:
                self._rec = vosk.KaldiRecognizer(model, float(sample_rate_hz), grammar.json)
            self._rec.SetWords(True)
        except Exception as exc:  # vosk raises bare Exceptions
            raise RecognizerError(f"{self._label}: cannot create a recognizer: {exc}") from exc
        self._joins = grammar.joins if grammar is not None else {}
        self._batch_bytes = max(2, sample_rate_hz * batch_ms // 1000 * 2)
        self._rate = sample_rate_hz
        self._pending = bytearray()
        self._raw: list[dict[str, Any]] = []  # words of Vosk's finals inside the turn
        self._partial = ""
        self._finished = False
        self.audio_bytes = 0
        self.decode_s = 0.0  # wall time spent inside Vosk

    @property
    def audio_s(self) -> float:
        return self.audio_bytes / 2 / self._rate

    def accept(self, pcm: bytes) -> str:
        """Feed caller audio (16-bit little-endian mono at the recognizer's rate, any length); decodes
        whenever a batch is complete. Returns the text so far (finals inside the turn and the current
        partial, unknown words left out). Blocking."""
        if self._finished:
            raise RecognizerError(f"{self._label}: audio after finish()")
        self._pending += pcm
        self.audio_bytes += len(pcm)
        while len(self._pending) >= self._batch_bytes:  # whole batches: the same chunks however fed
            self._decode(bytes(self._pending[: self._batch_bytes]))
            del self._pending[: self._batch_bytes]
        return self._partial

    def finish(self) -> Recognition:
        """The turn is over: decode what is left and return the result (text, mean word confidence with
        unknown words counting 0, words with times from the first byte fed). Blocking."""
        if self._finished:
            raise RecognizerError(f"{self._label}: finish() called twice")
        self._finished = True
        started = time.perf_counter()
        try:
            rest = bytes(self._pending[: len(self._pending) // 2 * 2])
            self._pending.clear()
            if rest and self._rec.AcceptWaveform(rest):  # an endpoint in the last batch, as in ``_decode``
                self._raw.extend(json.loads(self._rec.Result()).get("result", []))
            self._raw.extend(json.loads(self._rec.FinalResult()).get("result", []))
        except Exception as exc:
            raise RecognizerError(f"{self._label}: decoding failed: {exc}") from exc
        finally:
            self.decode_s += time.perf_counter() - started
        result = recognition_from_results(self._raw, self._joins)
        logger.debug(
            "%s: %.2f s of audio decoded in %.3f s while streaming", self._label, self.audio_s, self.decode_s
        )
        return result

    def _decode(self, data: bytes) -> None:
        started = time.perf_counter()
        try:
            if self._rec.AcceptWaveform(data):  # Vosk's endpoint inside the turn: keep its words
                self._raw.extend(json.loads(self._rec.Result()).get("result", []))
                partial = ""
            else:
                partial = str(json.loads(self._rec.PartialResult()).get("partial", ""))
        except Exception as exc:
            raise RecognizerError(f"{self._label}: decoding failed: {exc}") from exc
        finally:
            self.decode_s += time.perf_counter() - started
        words = [*(str(w.get("word", "")) for w in self._raw), *partial.split()]
        self._partial = recognition_from_results([{"word": w, "conf": 1.0} for w in words], self._joins).text


def open_stream(
    recognizer: VoskRecognizer,
    locale: str,
    grammar: Sequence[str] | None = None,
    *,
    batch_ms: int = BATCH_MS,
    label: str = "",
) -> StreamingRecognizer:
    """A streaming recognizer on ``recognizer``'s shared model for ``locale`` with ``grammar`` (None or
    empty: free recognition). Blocking the first time (loads the model, compiles the grammar): call it in
    a worker thread. Raises RecognizerError."""
    model = recognizer.model(locale)
    compiled = recognizer.compiled_grammar(locale, grammar)
    return StreamingRecognizer(model, grammar=compiled, batch_ms=batch_ms, label=label or locale)
