"""Record mode: the session's ``Channel`` on any Asterisk, with FastAGI's file commands.

- ``speak``: ``STREAM FILE`` with every key as an escape digit, so a key interrupts the prompt; that key
  is kept (type-ahead) as the first key of the next ``listen``. Speech cannot interrupt here: Asterisk
  does not hear the caller while it plays a file.
- ``listen``: ``RECORD FILE`` into the shared spool until ``record_silence_s`` of silence (any key ends it
  too); the recognizer decodes the file on the recognition threads (``asr_pool``) as Asterisk writes it
  (Vosk; else once it is complete), its result bounded by ``asr_timeout_s`` from the end of the
  recording; keypad only: ``WAIT FOR DIGIT``, no recording. The recording is deleted once decoded
  unless ``IVR_KEEP_RECORDINGS`` keeps it (owner-only, as ``<call_id>-<n>.wav``).
- ``transfer`` / ``finish``: the dialplan variables ``IVR_RESULT`` and ``IVR_TRANSFER_REASON`` (the
  dialplan then queues the caller, or plays its own apology for ``error``), and ``HANGUP`` when done.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ivr.agi.connection import AgiChannel
from ivr.channel import KEYS, Heard, Playback
from ivr.config import Settings
from ivr.parts import Expect, Outcome, Recognition, Recognizer, RecognizerError
from ivr.pools import PartPool

END_ENTRY_S = 1.5  # a # keyed this soon after a complete entry only ends that entry

GrammarSource = Callable[[str, Expect], Sequence[str] | None]


async def recognizer_serves(recognizer: Recognizer, locale: str, pool: PartPool, timeout_s: float) -> bool:
    """Whether ``recognizer`` has a model for ``locale`` (it may load it: on the recognition threads)."""
    available = getattr(recognizer, "available", None)
    if available is None:
        return True
    return bool(await asyncio.wait_for(pool.run(available, locale), timeout_s))


def _retrieve(future: asyncio.Future[Recognition]) -> None:
    if not future.cancelled():
        future.exception()


class RecordModeChannel:
    def __init__(
        self,
        agi: AgiChannel,
        *,
        call_id: str,
        settings: Settings,
        recognizer: Recognizer,
        grammar: GrammarSource,
        asr_pool: PartPool,
    ) -> None:
        self._agi = agi
        self._call_id = call_id
        self._settings = settings
        self._recognizer = recognizer
        self._grammar = grammar
        self._asr_pool = asr_pool
        self._typeahead = ""  # a key that interrupted a prompt: the next listen's first key
        self._hash_ends_entry_until = 0.0  # monotonic time until which # is no escape digit (see end_entry)
        self._recordings = 0
        self.end_of_speech_wait_s = float(settings.record_silence_s)

    async def answer(self) -> None:
        await self._agi.answer()

    async def can_recognize(self, locale: str) -> bool:
        return await recognizer_serves(self._recognizer, locale, self._asr_pool, self._settings.asr_timeout_s)

    async def speak(self, sound: Path, *, interruptible: bool = True) -> Playback:
        escape = KEYS if interruptible else ""
        if time.monotonic() < self._hash_ends_entry_until:
            escape = escape.replace("#", "")
        key, endpos = await self._agi.play(sound, escape)
        played_ms = None if endpos is None else endpos // 8
        if not key:
            return Playback(played_ms=played_ms)
        self._typeahead = key
        return Playback(interrupted_by="key", played_ms=played_ms)

    async def listen(self, locale: str, expect: Expect, *, keypad_only: bool = False) -> Heard:
        if self._typeahead:
            key, self._typeahead = self._typeahead, ""
            return Heard(key=key)
        if keypad_only:
            return Heard(key=await self._agi.wait_digit(self._settings.keypad_wait_s))
        self._recordings += 1
        path = self._settings.spool_dir / f"{self._call_id}-{self._recordings}.wav"
        ended = threading.Event()
        decoding = self._decode_while_recorded(path, locale, expect, ended)
        try:
            try:
                recording = await self._agi.record(
                    path, escape_digits=KEYS, max_s=self._settings.record_max_s, silence_s=self._settings.record_silence_s
                )
            finally:
                ended.set()
            if recording.digit:
                return Heard(key=recording.digit)
            started = time.monotonic()
            if decoding is None:
                recognition = await self._decode(recording.path, locale, expect)
            else:
                recognition = await self._result(decoding)
            return Heard(recognition=recognition, asr_s=time.monotonic() - started, recording=self._recordings)
        finally:
            with contextlib.suppress(OSError):
                if self._settings.keep_recordings:  # IVR_KEEP_RECORDINGS: kept owner-only until `ivr purge`
                    path.chmod(0o600)
                else:
                    path.unlink(missing_ok=True)

    async def _decode(self, wav: Path, locale: str, expect: Expect) -> Recognition:
        def decode() -> Recognition:  # the grammar too: its first build for a locale takes a while
            return self._recognizer.transcribe(wav, locale, self._grammar(locale, expect))

        return await self._result(asyncio.ensure_future(self._asr_pool.run(decode)))

    def _decode_while_recorded(
        self, wav: Path, locale: str, expect: Expect, ended: threading.Event
    ) -> asyncio.Future[Recognition] | None:
        """With a recognizer that can (Vosk), the recording is decoded while Asterisk writes it, on the
        recognition threads (``IVR_ASR_WHILE_RECORDING``): when the caller's turn ends, only its last
        half-second is left. None: decode the file once it is complete."""
        transcribe = getattr(self._recognizer, "transcribe_while_recorded", None)
        if transcribe is None or not self._settings.asr_while_recording:
            return None

        def decode() -> Recognition:
            return transcribe(wav, locale, self._grammar(locale, expect), ended)

        decoding = asyncio.ensure_future(self._asr_pool.run(decode))
        decoding.add_done_callback(_retrieve)  # a key or a hang-up ended the turn: nobody awaits it
        return decoding

    async def _result(self, decoding: asyncio.Future[Recognition]) -> Recognition:
        limit = self._settings.asr_timeout_s
        try:
            return await asyncio.wait_for(decoding, limit)
        except asyncio.TimeoutError:
            raise RecognizerError(f"the recognizer gave no answer within {limit} s") from None

    async def next_key(self, timeout_s: float) -> str:
        if self._typeahead:
            key, self._typeahead = self._typeahead, ""
            return key
        return await self._agi.wait_digit(timeout_s)

    def end_entry(self) -> None:
        """Callers often key ``#`` after the last digit although the entry was already complete; played
        with ``#`` as an escape digit, the next prompt would stop at it. For ``END_ENTRY_S``, ``#`` does
        not interrupt prompts (Asterisk drops a key that is no escape digit)."""
        self._hash_ends_entry_until = time.monotonic() + END_ENTRY_S

    async def transfer(self, reason: str) -> None:
        await self._agi.report("transfer", reason)

    async def finish(self, outcome: Outcome, reason: str = "") -> None:
        await self._agi.report(outcome.value, reason)
