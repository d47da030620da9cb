"""Stream mode: the session's ``Channel`` over AudioSocket, full duplex.

FastAGI stays the call's control path: ``StreamChannel.open`` answers, registers a fresh UUID with this
process's ``AudioSocketServer`` and sends ``EXEC AudioSocket <uuid>,<host>:<port>``; Asterisk connects
back, and the call's audio flows both ways until the robot sends the terminate frame and closes, when
``EXEC`` returns and the AGI session sets the dialplan variables (transfer, result) as in record mode.
If the AudioSocket leg cannot be set up, ``open`` raises ``StreamUnavailable`` and the call goes on in
record mode.

On the connection, one reader task parses Asterisk's frames: audio feeds the VAD endpointer (always, so
speech is noticed while a prompt plays), keys go to a queue (type-ahead: nothing is lost), EOF is the
caller hanging up. A ``PacedWriter`` sends prompts in real time and silence between them.

- ``speak``: the prompt is paced out; a key, or the caller starting to speak (the endpointer's onset:
  ``start_ms`` of speech, so a click or a cough does not count), stops it within a frame or two when it is
  interruptible; what the caller says while interrupting is kept as the next turn.
- ``listen``: waits for speech (``listen_timeout_s``), decodes it while it is spoken (a streaming
  Vosk recognizer, only on speech: a silent call costs next to nothing), and ends the turn on the
  endpointer's trailing silence (``endpoint_silence_ms``), not on Vosk's endpoint or whole seconds.
"""

from __future__ import annotations

import asyncio
import audioop
import contextlib
import logging
import time
import uuid
import wave
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ivr.agi.connection import AgiChannel
from ivr.agi.record_mode import recognizer_serves
from ivr.asr.recognizer import LEAD_MS, SPEECH_RMS
from ivr.channel import Heard, Playback
from ivr.config import Settings
from ivr.media.audiosocket import (
    FRAME_MS,
    Audio,
    AudioSocketParser,
    AudioSocketProtocolError,
    Dtmf,
    Eof,
    Uuid,
)
from ivr.media.playback import MediaStreamClosed, PacedWriter
from ivr.media.vad import Endpointer, SileroVad, SpeechEnded, SpeechStarted
from ivr.parts import Expect, Outcome, Recognition, Recognizer, RecognizerError
from ivr.pools import PartPool

log = logging.getLogger(__name__)

PRE_ROLL_MS = 1000  # caller audio kept while nobody speaks: the onset is declared some 200-400 ms in
QUIET_DBFS = -55.0  # frames quieter than this are never speech: the VAD model is not even run on them
#                    (an idle line costs next to nothing; speech is 20 dB and more above it)
QUIET_FRAMES_IN_SPEECH = 3  # quiet frames a word's onset may hold (stops, short pauses)
READ_CHUNK = 4096
UUID_TIMEOUT_S = 3.0
END_ENTRY_S = 1.5  # a # keyed this soon after a complete entry ends it, and is not a new input

GrammarSource = Callable[[str, Expect], Sequence[str] | None]


class StreamUnavailable(Exception):
    """The AudioSocket leg could not be set up; the call goes on in record mode."""


class AudioSocketServer:
    """This process's AudioSocket listener: pairs each connection with its call by the UUID frame."""

    def __init__(self) -> None:
        self._expected: dict[uuid.UUID, asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter, AudioSocketParser]]] = {}
        self._server: asyncio.base_events.Server | None = None
        self.rejected = 0

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._accept, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def expect(self, call_uuid: uuid.UUID) -> asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter, AudioSocketParser]]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._expected[call_uuid] = future
        return future

    def forget(self, call_uuid: uuid.UUID) -> None:
        self._expected.pop(call_uuid, None)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = AudioSocketParser()
        try:
            first = await asyncio.wait_for(_first_event(reader, parser), UUID_TIMEOUT_S)
        except (asyncio.TimeoutError, AudioSocketProtocolError, ConnectionError, OSError):
            first = None
        future = self._expected.pop(first.uuid, None) if isinstance(first, Uuid) else None
        if future is None or future.done():
            self.rejected += 1
            log.warning("refused an AudioSocket connection that belongs to no call")
            writer.close()
            return
        future.set_result((reader, writer, parser))


async def _first_event(reader: asyncio.StreamReader, parser: AudioSocketParser) -> object:
    while True:
        events = parser.events()
        if events:
            return events[0]
        data = await reader.read(READ_CHUNK)
        if not data:
            parser.feed_eof()
        else:
            parser.feed(data)


class StreamChannel:
    def __init__(
        self,
        agi: AgiChannel,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        parser: AudioSocketParser,
        exec_task: asyncio.Task[Any],
        *,
        settings: Settings,
        recognizer: Recognizer,
        grammar: GrammarSource,
        asr_pool: PartPool,
        vad: Any,
    ) -> None:
        self._agi = agi
        self._reader = reader
        self._writer = writer
        self._parser = parser
        self._exec = exec_task
        self._settings = settings
        self._recognizer = recognizer
        self._grammar = grammar
        self._asr_pool = asr_pool
        self._endpointer = Endpointer(
            vad, start_ms=settings.speech_start_ms, stop_ms=settings.endpoint_silence_ms, min_dbfs=QUIET_DBFS
        )
        self._player = PacedWriter(writer)
        self._keys: asyncio.Queue[str] = asyncio.Queue()
        self._key_event = asyncio.Event()  # set when a key arrives (a prompt playing stops for it)
        self._drop_hash_until = 0.0  # a # arriving before this (monotonic) ends an entry: dropped
        self._gone = asyncio.Event()
        self._onset = asyncio.Event()  # the caller started speaking (and the turn is not consumed yet)
        self._ended = asyncio.Event()  # that turn ended (trailing silence)
        self._pre_roll: deque[tuple[float, bytes]] = deque(maxlen=PRE_ROLL_MS // FRAME_MS)  # (start ms, audio)
        self._fed_ms = 0.0  # caller audio fed to the endpointer since its last reset
        self._utterance: asyncio.Queue[bytes | None] | None = None  # frames of the turn being spoken
        self._turn_end_at: float | None = None
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._play())]
        self.speech_onsets = 0
        self.end_of_speech_wait_s = settings.endpoint_silence_ms / 1000

    # ------------------------------------------------------------ setting up
    @classmethod
    async def open(
        cls,
        agi: AgiChannel,
        server: AudioSocketServer,
        address: tuple[str, int],
        *,
        settings: Settings,
        recognizer: Recognizer,
        grammar: GrammarSource,
        asr_pool: PartPool,
    ) -> StreamChannel:
        """Answer, ask Asterisk for the AudioSocket leg and wait for it; ``StreamUnavailable`` if it does
        not come (the caller is answered either way)."""
        if not hasattr(recognizer, "model"):
            raise StreamUnavailable("stream mode needs the Vosk recognizer")
        vad = await asyncio.to_thread(SileroVad)  # loads a small model session: off the loop
        call_uuid = uuid.uuid4()
        connected = server.expect(call_uuid)
        await agi.answer()
        host, port = address
        exec_task = asyncio.create_task(
            agi.exec_app("AudioSocket", f"{call_uuid},{host}:{port}", timeout_s=settings.stream_max_call_s)
        )
        pending: set[asyncio.Future[Any]] = {connected, exec_task}
        done, _ = await asyncio.wait(pending, timeout=UUID_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        if connected not in done:
            server.forget(call_uuid)
            connected.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(exec_task, UUID_TIMEOUT_S)  # the AGI connection must be free again
            if not exec_task.done():
                exec_task.cancel()
                raise StreamUnavailable("Asterisk neither connected the AudioSocket leg nor gave up")
            raise StreamUnavailable("Asterisk did not connect the AudioSocket leg")
        reader, writer, parser = connected.result()
        return cls(agi, reader, writer, parser, exec_task, settings=settings, recognizer=recognizer,
                   grammar=grammar, asr_pool=asr_pool, vad=vad)

    # ------------------------------------------------------------ the media tasks
    async def _play(self) -> None:
        try:
            await self._player.run()
        except MediaStreamClosed:
            self._gone.set()

    async def _read(self) -> None:
        try:
            while True:
                for event in self._parser.events():
                    if isinstance(event, Audio):
                        self._heard(event.pcm)
                    elif isinstance(event, Dtmf):
                        if event.key == "#" and time.monotonic() < self._drop_hash_until:
                            self._drop_hash_until = 0.0  # the # that ends a complete entry
                            continue
                        self._keys.put_nowait(event.key)
                        self._key_event.set()
                    elif isinstance(event, Eof):
                        return
                data = await self._reader.read(READ_CHUNK)
                if data:
                    self._parser.feed(data)
                else:
                    self._parser.feed_eof()
        except (AudioSocketProtocolError, ConnectionError, OSError) as exc:
            log.warning("the AudioSocket stream broke: %s", exc)
        finally:
            self._gone.set()
            if self._utterance is not None:
                self._utterance.put_nowait(None)

    def _heard(self, pcm: bytes) -> None:
        """One audio frame from the caller: the endpointer always hears it; during a turn it is also
        queued for the recognizer (with the pre-roll from before the onset)."""
        start_ms = self._fed_ms
        self._fed_ms += len(pcm) / 16  # 16 bytes a millisecond at 8 kHz, 16-bit
        for event in self._endpointer.feed(pcm):
            if isinstance(event, SpeechStarted) and self._utterance is None:
                self.speech_onsets += 1
                self._utterance = asyncio.Queue()
                begins_ms = _loud_run_start_ms(self._pre_roll, event.at_ms)
                for at_ms, frame in self._pre_roll:
                    if at_ms + len(frame) / 16 > begins_ms - LEAD_MS:
                        self._utterance.put_nowait(frame)
                self._pre_roll.clear()
                self._ended.clear()
                self._onset.set()
            elif isinstance(event, SpeechEnded) and self._utterance is not None:
                self._utterance.put_nowait(pcm)
                self._utterance.put_nowait(None)
                self._turn_end_at = time.monotonic()
                self._ended.set()
                return
        if self._utterance is not None and not self._ended.is_set():
            self._utterance.put_nowait(pcm)
        else:
            self._pre_roll.append((start_ms, pcm))

    # ------------------------------------------------------------ Channel
    async def answer(self) -> None:
        """Answered in ``open``, before the AudioSocket leg."""

    async def can_recognize(self, locale: str) -> bool:
        return await recognizer_serves(self._recognizer, locale, self._asr_pool, self._settings.asr_timeout_s)

    async def speak(self, sound: Path, *, interruptible: bool = True) -> Playback:
        self._check_gone()
        if self._keys.empty():
            self._key_event.clear()  # keys already taken do not stop this prompt
        if interruptible and (not self._keys.empty() or self._onset.is_set()):
            return Playback(interrupted_by="key" if not self._keys.empty() else "speech", played_ms=0)
        pcm = await asyncio.to_thread(_read_pcm, sound)
        playing = asyncio.create_task(self._player.play(pcm))
        waits: set[asyncio.Future[Any]] = {playing, asyncio.ensure_future(self._gone.wait())}
        key_wait = asyncio.ensure_future(self._key_arrived()) if interruptible else None
        onset_wait = asyncio.ensure_future(self._onset.wait()) if interruptible else None
        waits |= {w for w in (key_wait, onset_wait) if w is not None}
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                if w is not playing:
                    w.cancel()
        if playing in done:
            result = playing.result()
            return Playback(played_ms=result.played_ms)
        played_ms = self._player.stop()
        with contextlib.suppress(Exception):
            await playing
        self._check_gone()
        by = "key" if key_wait is not None and key_wait in done else "speech"
        return Playback(interrupted_by=by, played_ms=played_ms)

    async def _key_arrived(self) -> None:
        await self._key_event.wait()

    async def listen(self, locale: str, expect: Expect, *, keypad_only: bool = False) -> Heard:
        self._check_gone()
        if not self._keys.empty():
            return Heard(key=self._keys.get_nowait())
        if keypad_only:
            return Heard(key=await self._next_key_or_gone(self._settings.keypad_wait_s))
        key_wait = asyncio.ensure_future(self._keys.get())
        onset_wait = asyncio.ensure_future(self._onset.wait())
        gone_wait = asyncio.ensure_future(self._gone.wait())
        try:
            done, _ = await asyncio.wait({key_wait, onset_wait, gone_wait}, timeout=self._settings.listen_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            onset_wait.cancel()
            gone_wait.cancel()
            if not key_wait.done():
                key_wait.cancel()
        if key_wait in done:
            return Heard(key=key_wait.result())
        self._check_gone()
        if onset_wait not in done:
            return Heard(recognition=Recognition("", 0.0))  # nobody spoke: no input
        return await self._decode_turn(locale, expect)

    async def _decode_turn(self, locale: str, expect: Expect) -> Heard:
        """Decode the turn being spoken while it is spoken; the result once the endpointer ends it."""
        utterance = self._utterance
        assert utterance is not None
        from ivr.asr.stream import open_stream

        grammar = self._grammar(locale, expect)
        try:
            stream = await self._asr_pool.run(open_stream, self._recognizer, locale, grammar)
            deadline = time.monotonic() + self._settings.record_max_s
            while True:
                frame = await asyncio.wait_for(utterance.get(), max(0.0, deadline - time.monotonic()) + 0.5)
                if frame is None:
                    break
                batch = [frame]
                while not utterance.empty():
                    more = utterance.get_nowait()
                    if more is None:
                        utterance.put_nowait(None)
                        break
                    batch.append(more)
                await self._asr_pool.run(stream.accept, b"".join(batch))
                if time.monotonic() > deadline:
                    break
            self._check_gone()
            ended_at = self._turn_end_at or time.monotonic()
            recognition = await asyncio.wait_for(self._asr_pool.run(stream.finish), self._settings.asr_timeout_s)
        except asyncio.TimeoutError:
            raise RecognizerError("the streaming recognizer gave no answer in time") from None
        finally:
            self._consume_turn()
        return Heard(recognition=recognition, asr_s=max(0.0, time.monotonic() - ended_at))

    def _consume_turn(self) -> None:
        self._utterance = None
        self._onset.clear()
        self._ended.clear()
        self._turn_end_at = None
        self._endpointer.reset()
        self._fed_ms = 0.0
        self._pre_roll.clear()

    async def next_key(self, timeout_s: float) -> str:
        return await self._next_key_or_gone(timeout_s)

    async def _next_key_or_gone(self, timeout_s: float) -> str:
        self._check_gone()
        key_wait = asyncio.ensure_future(self._keys.get())
        gone_wait = asyncio.ensure_future(self._gone.wait())
        try:
            done, _ = await asyncio.wait({key_wait, gone_wait}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone_wait.cancel()
            if not key_wait.done():
                key_wait.cancel()
        if key_wait in done:
            return str(key_wait.result())
        self._check_gone()
        return ""

    def end_entry(self) -> None:
        if not self._keys.empty() and self._keys._queue[0] == "#":  # type: ignore[attr-defined]
            self._keys.get_nowait()
        else:
            self._drop_hash_until = time.monotonic() + END_ENTRY_S

    async def transfer(self, reason: str) -> None:
        await self.finish(Outcome.TRANSFER, reason)

    async def finish(self, outcome: Outcome, reason: str = "") -> None:
        await self._end_media()
        await self._agi.report(outcome.value, reason)

    # ------------------------------------------------------------ ending
    async def _end_media(self) -> None:
        """Let the last prompt be heard, send the terminate frame, and wait for ``EXEC`` to return: the
        AGI session then goes on (dialplan variables). A caller gone by then is a hang-up. (``speak``
        returns once the caller has heard the prompt: nothing is left playing here.)"""
        await self.close()
        response = await self._exec
        if getattr(response, "result", "0") == "-1":
            raise MediaStreamClosed("the caller hung up as the robot finished")

    async def close(self) -> None:
        """Stop the media tasks and close the connection (idempotent)."""
        self._player.close()
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await asyncio.wait_for(self._tasks[1], 1.0)
        self._writer.close()
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _check_gone(self) -> None:
        if self._gone.is_set():
            raise MediaStreamClosed("the caller hung up")


def _loud_run_start_ms(pre_roll: deque[tuple[float, bytes]], onset_ms: float) -> float:
    """Where the speech the VAD found at ``onset_ms`` begins: the first frame of the run of frames above
    the silence level that leads up to the onset. The VAD decides on windows of its own size, so its onset
    moves by a frame or two with the phase of the caller's audio; the recognizer's lead must not (the
    Korean model reads the same words differently when their leading silence changes by 20 ms)."""
    begins, quiet = onset_ms, 0
    for at_ms, frame in reversed(pre_roll):  # from the declaration back; short pauses stay inside the run
        if audioop.rms(frame, 2) >= SPEECH_RMS:
            begins, quiet = min(begins, at_ms), 0
        else:
            quiet += 1
            if quiet > QUIET_FRAMES_IN_SPEECH:
                break
    return begins


def _read_pcm(sound: Path) -> bytes:
    """The 8 kHz 16-bit mono samples of a prompt WAV (the synthesizer writes exactly that format)."""
    with wave.open(str(sound), "rb") as w:
        if w.getframerate() != 8000 or w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError(f"{sound}: not 8 kHz 16-bit mono")
        return w.readframes(w.getnframes())
