"""Asterisk's side of AudioSocket for the replay harness (stream mode), in real time.

When the robot sends ``EXEC AudioSocket <uuid>,<host>:<port>``, ``ScriptedAsterisk`` hands the call's
remaining caller turns to a ``MediaPeer``: it connects, sends the UUID frame, then sends a 20 ms audio
frame every 20 ms as Asterisk does (the caller's speech when a turn speaks, silence otherwise), keys as
DTMF frames, and a hang-up as EOF. It tells the robot's prompts apart in the audio it receives by
matching them against the prompt files the robot renders (the first frame that is not silence, then
frame by frame), so the report says what the robot said, whether the caller interrupted it, and how
much of it was heard.

When does the caller take a turn? When the robot has stopped talking for ``quiet_s`` (it listens then);
a turn with ``during_prompt`` starts that many seconds into the robot's current prompt instead (barge-in).
Figures: ``perceived_latencies_s`` (end of the caller's speech → the robot's next audio) and
``barge_in_stops_s`` (the caller starts speaking or keys during a prompt → that prompt's audio stops).
"""

from __future__ import annotations

import asyncio
import audioop
import contextlib
import time
import uuid
import wave
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ivr.asr.recognizer import SPEECH_RMS
from ivr.masking import mask_secret, mask_text
from ivr.media.audiosocket import (
    FRAME_MS,
    SILENCE_FRAME,
    Audio,
    AudioSocketParser,
    Eof,
    Hangup,
    Peer,
    asterisk_audio_frame,
    asterisk_dtmf_frame,
    asterisk_uuid_frame,
    hangup_frame,
    split_frames,
)
from ivr.testing.callfile import Turn

QUIET_S = 0.6  # the robot silent this long after a prompt: it is listening
ROBOT_END_NOTICE_S = 1.0  # through Asterisk: the robot's leg is known to have ended this long after its audio
REPLY_WAIT_S = 10.0  # after a turn the caller waits this long at most for the robot to answer it
KEY_GAP_S = 0.12
FRAME_S = FRAME_MS / 1000


@dataclass
class _Prompt:
    text: str
    frames: list[bytes]
    first: int  # index of the first frame that is not silence


MAX_LOST_FRAMES = 10  # a gap this long (200 ms) in a prompt's audio is frames lost, not another prompt


def _further_on(prompts: list[_Prompt], position: int, frame: bytes) -> tuple[list[_Prompt], int]:
    """The prompts that go on with ``frame`` after up to ``MAX_LOST_FRAMES`` lost frames from ``position``
    (silence matches anywhere: it is never taken as the sign), and how many frames were lost."""
    if frame == SILENCE_FRAME:
        return [], 0
    for skipped in range(1, MAX_LOST_FRAMES + 1):
        at = position + skipped
        going_on = [p for p in prompts if at < len(p.frames) and p.frames[at] == frame]
        if going_on:
            return going_on, skipped
    return [], 0


class PromptIndex:
    """The prompts the robot may play, found by their first non-silent frame (several prompts may start
    alike: the candidates are narrowed frame by frame); files rendered during the call are picked up when
    an unknown frame arrives. A file is read again when it changed since (size, time): one caught while
    the robot was still writing it, or before its text sidecar existed, is not kept half-read."""

    def __init__(self, sounds_dir: Path) -> None:
        self._dir = sounds_dir
        self._read: dict[Path, tuple[tuple[int, int, bool], _Prompt | None]] = {}
        self._by_frame: dict[bytes, list[_Prompt]] = {}
        self._anywhere: dict[bytes, list[tuple[_Prompt, int]]] | None = None  # every non-silent frame

    def candidates(self, frame: bytes) -> list[_Prompt]:
        found = self._by_frame.get(frame)
        if found is None:
            self._scan()
            found = self._by_frame.get(frame, [])
        return list(found)

    def continuing(self, heard: list[bytes], frame: bytes) -> list[_Prompt]:
        """The prompts that begin (from their first non-silent frame) with ``heard`` and go on with
        ``frame``, the folder scanned again first: a prompt rendered during the call that starts like a
        known one (e.g. "잔액라고 말씀하셨습니까?" and the apology) was not read when its first frame
        arrived, since that frame was known."""
        self._scan()
        n = len(heard)
        return [p for p in self._by_frame.get(heard[0], []) if p.frames[p.first : p.first + n] == heard
                and len(p.frames) > p.first + n and p.frames[p.first + n] == frame]

    def heard_from(self, frame: bytes) -> tuple[list[_Prompt], int]:
        """The prompts holding ``frame`` further on than their start, and where (the first such place):
        what a caller hears of a prompt whose beginning played before its leg was bridged."""
        self._scan()
        if self._anywhere is None:
            self._anywhere = {}
            for _, prompt in self._read.values():
                if prompt is not None:
                    for at, f in enumerate(prompt.frames):
                        if f != SILENCE_FRAME:
                            self._anywhere.setdefault(f, []).append((prompt, at))
        places = self._anywhere.get(frame, [])
        if not places:
            return [], 0
        at = places[0][1]
        return [p for p, pos in places if pos == at], at

    def _scan(self) -> None:
        changed = False
        for wav in self._dir.rglob("*.wav"):
            try:
                st = wav.stat()
            except OSError:
                continue
            key = (st.st_size, st.st_mtime_ns, wav.with_suffix(".txt").exists())
            if wav in self._read and self._read[wav][0] == key:
                continue
            self._read[wav] = (key, _read_prompt(wav))
            changed = True
        if changed:
            self._anywhere = None
            self._by_frame = {}
            for _, prompt in self._read.values():
                if prompt is not None:
                    self._by_frame.setdefault(prompt.frames[prompt.first], []).append(prompt)


def _read_prompt(wav: Path) -> _Prompt | None:
    try:
        with wave.open(str(wav), "rb") as w:
            if w.getframerate() != 8000 or w.getsampwidth() != 2 or w.getnchannels() != 1:
                return None
            pcm = w.readframes(w.getnframes())
    except (OSError, wave.Error, EOFError):
        return None
    frames = list(split_frames(pcm[: len(pcm) // 2 * 2])) if pcm else []
    first = next((i for i, f in enumerate(frames) if f != SILENCE_FRAME), None)
    if first is None:
        return None
    sidecar = wav.with_suffix(".txt")
    try:
        text = sidecar.read_text(encoding="utf-8")
    except OSError:
        text = f"<{wav.name}>"
    return _Prompt(text, frames, first)


KeySender = Callable[[str], Awaitable[None]]


class MediaPeer:
    """The caller's side of a stream-mode call. In the harness it plays Asterisk (``run``: it connects to
    the robot and sends the UUID). Through the real Asterisk it is the test caller's own AudioSocket
    server (``serve``): Asterisk connects, the robot's audio arrives as Asterisk passed it on, keys go
    by ``send_key`` (AMI PlayDTMF: AudioSocket carries no keys towards Asterisk), and ``media_up`` says
    when the robot's leg is up (the caller waits for the robot before its first turn)."""

    def __init__(
        self, report: Any, turns: list[Turn], locale: str, sounds_dir: Path, speech: Any,
        *, send_key: KeySender | None = None, media_up: asyncio.Event | None = None,
    ) -> None:
        self.report = report
        self.turns = turns
        self.locale = locale
        self.prompts = PromptIndex(sounds_dir)
        self.speech = speech  # renders a ``say`` turn to a WAV (the robot's own synthesizer)
        self.hung_up = False
        self.robot_gone = False  # the robot's leg ended: later audio is the dialplan's (queue, agent)
        self.unknown_audio_at: list[float] = []  # when audio that is no known prompt began (monotonic)
        self.unknown_audio_notes: list[str] = []  # what came before it, one per unknown_audio_at (diagnosis)
        self.frames_lost = 0  # frames of the robot's prompts that never arrived (skipped over)
        self._send_key = send_key
        self._media_up = media_up
        self._outgoing: list[bytes] = []  # the caller's frames (audio or keys), encoded, waiting to be sent
        self._current: list[_Prompt] = []  # the prompt the robot is playing: those it may still be
        self._position = 0  # next expected frame index of the current prompt
        self._prompt_started = 0.0
        self._event: dict[str, Any] | None = None
        self._robot_quiet_since = time.monotonic()
        self._speech_ended_at: float | None = None
        self._unknown = False  # inside audio that matches no prompt (reported once)
        self._barge_at: float | None = None
        self._playing = asyncio.Event()  # the robot is playing a prompt
        self._prompts_started = 0  # prompts the robot has begun so far
        self._reply_after = -1  # the caller's last turn came after this many prompts (-1: no turn yet)
        self._quiet = asyncio.Event()  # the robot is not playing a prompt
        self._quiet.set()

    async def run(self, call_uuid: str, host: str, port: int) -> str:
        """The whole AudioSocket session; returns EXEC's reply for the AGI side."""
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(asterisk_uuid_frame(uuid.UUID(call_uuid)))
        await writer.drain()
        return await self.serve(reader, writer, AudioSocketParser(peer=Peer.SERVER))

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, parser: AudioSocketParser) -> str:
        """The session on an open connection (the UUID already exchanged); "200 result=-1" when the caller
        hung up, "200 result=0" when the other side ended it."""
        receiving = asyncio.create_task(self._receive(reader, parser))
        sending = asyncio.create_task(self._send(writer))
        caller = asyncio.create_task(self._caller())
        try:
            await asyncio.wait({receiving, caller}, return_when=asyncio.FIRST_COMPLETED)
            if caller.done() and self.hung_up:
                self._barge_at = None  # a hang-up is no barge-in
                self._close_prompt()  # the prompt the caller hung up on: how much of it was heard
                if self._send_key is not None:  # towards Asterisk: its AudioSocket() returns, the caller hangs up
                    with contextlib.suppress(OSError):
                        writer.write(hangup_frame())
                return "200 result=-1\n"
            await receiving
        finally:
            for task in (sending, caller, receiving):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(sending, caller, receiving, return_exceptions=True)
            writer.close()
        self._close_prompt()
        return "200 result=0\n"

    # ------------------------------------------------------------ the robot's audio
    async def _receive(self, reader: asyncio.StreamReader, parser: AudioSocketParser) -> None:
        while True:
            try:
                data = await reader.read(4096)
            except ConnectionError:  # Asterisk may reset the connection as the call ends: an EOF
                data = b""
            if data:
                parser.feed(data)
            else:
                parser.feed_eof()
            for event in parser.events():
                if isinstance(event, Audio):
                    self._robot_frame(event.pcm)
                elif isinstance(event, Hangup | Eof):
                    return

    def robot_ended(self) -> None:
        """The robot's leg ended (through Asterisk: its ``EXEC AudioSocket`` returned)."""
        self._close_prompt()
        self.robot_gone = True

    def _robot_frame(self, frame: bytes) -> None:
        if self.robot_gone:
            return
        now = time.monotonic()
        if self._current:
            going_on = [p for p in self._current if self._position < len(p.frames) and p.frames[self._position] == frame]
            if not going_on:  # a prompt rendered meanwhile that started alike, if any
                playing = self._current[0]
                going_on = self.prompts.continuing(playing.frames[playing.first : self._position], frame)
                if going_on:
                    self._position = going_on[0].first + self._position - playing.first
            if not going_on:  # frames lost on the way (a busy Asterisk drops some): the same prompt, further on
                going_on, skipped = _further_on(self._current, self._position, frame)
                if going_on:
                    self._position += skipped
                    self.frames_lost += skipped
            if going_on:
                self._current = going_on
                self._position += 1
                if self._event is not None:
                    self._event["text"] = going_on[0].text
                return
            self._close_prompt()
        if frame == SILENCE_FRAME:
            return
        found = self.prompts.candidates(frame)
        first = found[0].first if found else 0
        if not found and not self._prompts_started:
            # Through a busy Asterisk the caller's leg may be bridged after the robot's greeting began:
            # the caller hears it from further on.
            found, first = self.prompts.heard_from(frame)
            if found:
                self.frames_lost += first - found[0].first
        if not found:
            if not self._unknown:
                self.unknown_audio_at.append(now)
                last = self._event["text"] if self._event is not None else "no prompt"
                self.unknown_audio_notes.append(
                    f"frame rms {audioop.rms(frame, 2)}, after {last!r} (its frame {self._position}), "
                    f"{self.frames_lost} frames lost before, {self._prompts_started} prompts heard"
                )
                if self._send_key is None:  # through Asterisk it may be the dialplan's: see robot_ended_at
                    self.report.errors.append("the robot played audio that is no known prompt")
            self._unknown = True
            return
        self._unknown = False
        prompt = found[0]
        self._current, self._position = found, first + 1
        self._prompt_started = now - first * FRAME_S
        if self._speech_ended_at is not None:  # the reply starts: the caller waited this long
            self.report.perceived_latencies_s.append(now - self._speech_ended_at)
            self._speech_ended_at = None
        self._event = {"who": "robot", "text": prompt.text, "interrupted": False, "heard_s": 0.0}
        self.report.events.append(self._event)
        self._prompts_started += 1
        self._quiet.clear()
        self._playing.set()

    def _close_prompt(self) -> None:
        event = self._event
        if not self._current or event is None:
            return
        # A prompt that played to its end, if one did; else the cut one (all alike so far).
        prompt = next((p for p in self._current if len(p.frames) == self._position), self._current[0])
        event["text"] = prompt.text
        rest = prompt.frames[self._position:]
        interrupted = any(f != SILENCE_FRAME for f in rest)
        event.update(interrupted=interrupted, heard_s=round(self._position * FRAME_S, 2))
        if interrupted and self._barge_at is not None:
            self.report.barge_in_stops_s.append(time.monotonic() - self._barge_at)
        self._barge_at = None
        self._current, self._event = [], None
        self._robot_quiet_since = time.monotonic()
        self._playing.clear()
        self._quiet.set()

    # ------------------------------------------------------------ the caller's audio, every 20 ms
    async def _send(self, writer: asyncio.StreamWriter) -> None:
        next_at = time.monotonic()
        silence = asterisk_audio_frame(SILENCE_FRAME)
        while True:
            writer.write(self._outgoing.pop(0) if self._outgoing else silence)
            await writer.drain()
            next_at += FRAME_S
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def _caller(self) -> None:
        if self._media_up is not None:
            await self._media_up.wait()
            self._robot_quiet_since = time.monotonic()
        while self.turns:
            turn = self.turns[0]
            if turn.during_prompt is not None:
                await self._wait_for_prompt()
                await asyncio.sleep(max(0.0, self._prompt_started + turn.during_prompt - time.monotonic()))
                self._barge_at = time.monotonic()
            else:
                await self._wait_until_robot_listens()
            self.turns.pop(0)
            if turn.kind == "hangup":
                self.report.events.append({"who": "caller", "text": "", "kind": "hangup"})
                self.hung_up = True
                return
            await self._take(turn)
            if not self._playing.is_set():
                self._reply_after = self._prompts_started  # the robot answers this turn before the next
            elif turn.during_prompt is not None and self.report.events[-1].get("who") == "caller":
                self.report.events[-1]["taken"] = False  # the prompt played on: the robot did not take it (noise)
        # With no turn left the caller hangs up once the robot listens (as in record mode: no event) -
        # unless the robot has ended its leg meanwhile (through Asterisk: the dialplan goes on, e.g. to a
        # person, and the caller stays on; AMI tells that end a moment after the audio stops).
        await self._wait_until_robot_listens()
        if self._send_key is not None:
            await asyncio.sleep(ROBOT_END_NOTICE_S)
        if self.robot_gone:
            await asyncio.Event().wait()  # until the call ends (the receiving side returns)
        self.hung_up = True

    async def _take(self, turn: Turn) -> None:
        if turn.kind == "dtmf":
            keys: str = turn.value
            self.report.events.append({"who": "caller", "text": mask_secret(keys), "kind": "dtmf"})
            for key in keys:
                if self._send_key is not None:
                    await self._send_key(key)
                else:
                    self._outgoing.append(asterisk_dtmf_frame(key))
                await asyncio.sleep(KEY_GAP_S)
            return
        if turn.kind == "silence":
            self.report.events.append({"who": "caller", "text": "", "kind": "silence", "seconds": turn.value})
            await asyncio.sleep(float(turn.value))
            return
        if turn.kind == "say":
            self.report.events.append({"who": "caller", "text": mask_text(turn.value), "kind": "say"})
            wav = await self.speech(turn.value, self.locale)
        else:
            self.report.events.append({"who": "caller", "text": "", "kind": "audio", "file": turn.value.name})
            wav = turn.value
        pcm = await asyncio.to_thread(_pcm_8k, Path(wav))
        frames = list(split_frames(pcm))
        lead, tail = quiet_edges(frames)
        if self._barge_at is not None:  # the interruption begins with the first word, not the file
            self._barge_at += lead * FRAME_S
        self._outgoing.extend(asterisk_audio_frame(f) for f in frames)
        await asyncio.sleep(len(frames) * FRAME_S)
        self._speech_ended_at = time.monotonic() - tail * FRAME_S  # the last word, not the file's quiet end

    async def _wait_for_prompt(self) -> None:
        await self._playing.wait()

    async def _wait_until_robot_listens(self) -> None:
        """The robot has answered the caller's last turn (a prompt began since; at most ``REPLY_WAIT_S``)
        and has been quiet for ``QUIET_S`` since (a prompt starting meanwhile starts the wait again)."""
        waited_until = time.monotonic() + REPLY_WAIT_S
        while self._prompts_started <= self._reply_after and time.monotonic() < waited_until:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._playing.wait(), max(0.0, waited_until - time.monotonic()))
            if self._prompts_started <= self._reply_after:
                await asyncio.sleep(FRAME_S)  # a prompt began and ended between two looks
        while True:
            await self._quiet.wait()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._playing.wait(), max(0.0, self._robot_quiet_since + QUIET_S - time.monotonic()))
            if not self._playing.is_set():
                return


def quiet_edges(frames: list[bytes]) -> tuple[int, int]:
    """How many frames the audio starts and ends with below Asterisk's silence threshold (the recordings
    and espeak-ng's speech have quiet edges: the caller's speech starts after them and ends before them)."""
    loud = [i for i, f in enumerate(frames) if audioop.rms(f, 2) >= SPEECH_RMS]
    if not loud:
        return len(frames), 0
    return loud[0], len(frames) - 1 - loud[-1]


def _pcm_8k(path: Path) -> bytes:
    """The WAV's samples at 8 kHz 16-bit mono (the rate Asterisk's AudioSocket carries), resampled if need be."""
    with wave.open(str(path), "rb") as w:
        rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        pcm = w.readframes(w.getnframes())
    if channels != 1 or width != 2:
        raise ValueError(f"{path}: the harness streams 16-bit mono audio")
    if rate != 8000:
        pcm, _ = audioop.ratecv(pcm, 2, 1, rate, 8000, None)
    return pcm[: len(pcm) // 2 * 2]
