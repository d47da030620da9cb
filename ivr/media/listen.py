"""One caller turn in stream mode: audio frames through the endpointer into a streaming recognizer.

While the caller is quiet, frames only go through the VAD and a short pre-roll buffer: Vosk does not run,
so an idle call costs next to nothing. At the onset the recognizer is opened and fed the pre-roll (the
speech that led to the onset, from ``lead_ms`` before its first frame) and then every frame as it comes;
at the end of the turn (the endpointer's trailing silence, not Vosk's endpoint) the result is finished.

How much silence Vosk hears before the speech changes what the Korean model makes of it (its online
feature normalisation starts on that silence): ``lead_ms`` 140 ms was the best of 40-400 ms on the test
recordings; tune it on real callers' audio.

``Listener.feed`` blocks when it decodes: run it in a worker thread, one call at a time per listener
(frames in order). The events it returns tell the channel what happened: ``SpeechStarted`` (barge-in may
stop the prompt), ``Partial`` (text so far), ``TurnEnded`` (the recognition; the listener is done).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ivr.asr.recognizer import LEAD_MS
from ivr.asr.stream import StreamingRecognizer
from ivr.media.audiosocket import FRAME_BYTES, FRAME_MS
from ivr.media.vad import Endpointer, SpeechEnded, SpeechStarted
from ivr.parts import Recognition

MAX_PREROLL_MS = 1000  # audio kept while quiet (an onset is declared ~280 ms after it, more with gaps)


@dataclass(frozen=True)
class Partial:
    """The text recognized so far in this turn (may change until the turn ends)."""

    text: str


@dataclass(frozen=True)
class TurnEnded:
    """The turn is over: what was recognized, where the speech ended (stream ms), and the decoding cost."""

    recognition: Recognition
    speech: SpeechEnded | None  # None when the turn was cut by ``finish`` (a timeout, a key)
    audio: bytes  # what Vosk heard: from ``lead_ms`` before the onset to the end of the turn
    decode_s: float  # wall time inside Vosk for the whole turn

    @property
    def audio_s(self) -> float:
        return len(self.audio) / 2 / 8000


ListenEvent = SpeechStarted | Partial | TurnEnded


class Listener:
    """Frames in, turn events out; one per listen. ``open_recognizer`` is called at the onset (e.g.
    ``functools.partial(open_stream, recognizer, locale, grammar)``)."""

    def __init__(
        self,
        endpointer: Endpointer,
        open_recognizer: Callable[[], StreamingRecognizer],
        *,
        lead_ms: int = LEAD_MS,
        partials: bool = True,
    ) -> None:
        self.endpointer = endpointer
        self._open = open_recognizer
        self._lead_ms = lead_ms
        # (stream position in ms, frame) while quiet; Vosk gets the frames from lead_ms before the onset
        self._preroll: deque[tuple[int, bytes]] = deque(maxlen=(MAX_PREROLL_MS + lead_ms) // FRAME_MS)
        self._partials = partials
        self._pending = bytearray()
        self._heard = bytearray()
        self._recognizer: StreamingRecognizer | None = None
        self._last_partial = ""
        self.result: TurnEnded | None = None

    @property
    def done(self) -> bool:
        return self.result is not None

    @property
    def decoding(self) -> bool:
        """Whether Vosk has been started on this turn (an onset was declared)."""
        return self._recognizer is not None

    def feed(self, pcm: bytes) -> list[ListenEvent]:
        """Caller audio (any length). Blocking while a turn is being decoded. Audio after the turn ended
        is ignored (the next listen gets a new listener)."""
        if self.done:
            return []
        self._pending += pcm
        events: list[ListenEvent] = []
        while len(self._pending) >= FRAME_BYTES and not self.done:
            frame = bytes(self._pending[:FRAME_BYTES])
            del self._pending[:FRAME_BYTES]
            events.extend(self._frame(frame))
        return events

    def finish(self) -> TurnEnded:
        """End the turn now (no-input timeout, a key, hang-up): the result of what was heard, an empty
        recognition when no onset was declared. Blocking when a turn was being decoded."""
        if self.result is None:
            if self._recognizer is None:
                self.result = TurnEnded(Recognition(text="", confidence=0.0), None, b"", 0.0)
            else:
                self.result = self._end(None)
        return self.result

    def _frame(self, frame: bytes) -> list[ListenEvent]:
        position = self.endpointer.position_ms
        event = self.endpointer.feed_frame(frame)
        if self._recognizer is None:
            self._preroll.append((position, frame))
            if not isinstance(event, SpeechStarted):
                return []
            self._recognizer = self._open()
            first = event.at_ms - self._lead_ms
            preroll = b"".join(f for at, f in self._preroll if at >= first)
            self._preroll.clear()
            self._heard += preroll
            partial = self._recognizer.accept(preroll)
            return [event, *self._partial(partial)]
        self._heard += frame
        partial = self._recognizer.accept(frame)
        if isinstance(event, SpeechEnded):
            return [self._end(event)]
        return self._partial(partial)

    def _partial(self, text: str) -> list[ListenEvent]:
        if not self._partials or text == self._last_partial:
            return []
        self._last_partial = text
        return [Partial(text)]

    def _end(self, speech: SpeechEnded | None) -> TurnEnded:
        assert self._recognizer is not None
        recognition = self._recognizer.finish()
        self.result = TurnEnded(recognition, speech, bytes(self._heard), self._recognizer.decode_s)
        return self.result
