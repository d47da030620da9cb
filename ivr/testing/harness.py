"""The replay harness: a scripted Asterisk that plays the AGI side of a call against the server.

It connects over real TCP, sends the ``agi_*`` environment, answers each command the way Asterisk
does, and feeds the caller's turns whenever the robot listens (``RECORD FILE``): speech as an 8 kHz
WAV written where Asterisk would write the recording, keys as the ``(dtmf)`` reply plus the keys
``WAIT FOR DIGIT`` reads next, silence as a silent recording, hang-up as the ``HANGUP`` line.
What the robot said is read from the ``.txt`` sidecar the synthesizer writes beside each prompt.
"""

from __future__ import annotations

import asyncio
import audioop
import itertools
import json
import os
import shutil
import struct
import time
import wave
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ivr.asr.recognizer import SPEECH_RMS
from ivr.masking import mask_secret, mask_text
from ivr.testing.callfile import CallFile, Turn

SpeechRenderer = Callable[[str, str], Awaitable[Path]]
_call_numbers = itertools.count(1)


@dataclass
class CallReport:
    name: str
    outcome: str = "error"
    transfer_reason: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)
    answered: bool = False
    time_to_answer_s: float | None = None
    # recording handed to the server → its next play command (seconds)
    compute_latencies_s: list[float] = field(default_factory=list)
    # silence the recorder waited after the caller's last word (seconds, realtime mode only)
    silence_waits_s: list[float] = field(default_factory=list)
    # caller's last word → the reply starts: the silence wait plus the compute latency (seconds)
    perceived_latencies_s: list[float] = field(default_factory=list)
    # stream mode: the caller starts speaking or keys during a prompt → the prompt's audio stops (seconds)
    barge_in_stops_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # agi_uniqueid the harness gave the call: the robot names the call (and its transcript) after it
    unique_id: str = ""
    # how the call's audio went: "stream" once the robot's AudioSocket leg carried it, else "record"
    media: str = "record"

    @property
    def robot_text(self) -> str:
        return "\n".join(e["text"] for e in self.events if e["who"] == "robot")

    def failures(self, call: CallFile) -> list[str]:
        """The call file's ``expect`` checks that did not hold, as readable lines."""
        out = [f"harness: {e}" for e in self.errors]
        said = self.robot_text
        for text in call.expect.said:
            if text not in said:
                out.append(f"expected the robot to say {text!r}")
        for text in call.expect.not_said:
            if text in said:
                out.append(f"the robot said {text!r}, which it must not")
        if call.expect.outcome and call.expect.outcome != self.outcome:
            out.append(f"expected outcome {call.expect.outcome}, got {self.outcome}")
        if call.expect.transfer_reason is not None and self.transfer_reason != call.expect.transfer_reason:
            out.append(f"expected the transfer reason {call.expect.transfer_reason}, got {self.transfer_reason or 'none'}")
        return out

    def golden(self, *, cut_prompts_heard: bool = True) -> dict[str, Any]:
        """What a golden transcript keeps: the behaviour. A prompt played to its end keeps no ``heard_s``
        (its length: dynamic prompts are rendered afresh each call and differ by milliseconds); an
        interrupted one keeps it unless ``cut_prompts_heard`` is False (real-time stream calls jitter)."""
        def kept(event: dict[str, Any]) -> dict[str, Any]:
            cut = event.get("interrupted") is True
            drop = "heard_s" in event and (not cut or not cut_prompts_heard)
            return {k: v for k, v in event.items() if not (drop and k == "heard_s")}

        # the media is checked by the tests of each mode, not kept: one behaviour, two transports
        kept_keys = {k: v for k, v in self.to_json().items() if k not in ("call", "media")}
        return {**kept_keys, "events": [kept(e) for e in self.events]}

    def to_json(self) -> dict[str, Any]:
        return {
            "call": self.name,
            "media": self.media,
            "outcome": self.outcome,
            "transfer_reason": self.transfer_reason,
            "answered": self.answered,
            "events": self.events,
            "errors": self.errors,
        }


def parse_arguments(line: str) -> list[str]:
    """Split an AGI command line the way Asterisk does: spaces outside quotes, ``\\`` escapes."""
    args: list[str] = []
    current: list[str] = []
    in_quotes = escaped = started = False
    for ch in line:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = started = True
        elif ch == '"':
            in_quotes = not in_quotes
            started = True
        elif ch == " " and not in_quotes:
            if started:
                args.append("".join(current))
                current, started = [], False
        else:
            current.append(ch)
            started = True
    if started:
        args.append("".join(current))
    return args


def write_silence(path: Path, seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x00" * int(8000 * seconds))


def append_silence(path: Path, seconds: float) -> None:
    with wave.open(str(path), "rb") as r:
        params, frames = r.getparams(), r.readframes(r.getnframes())
    with wave.open(str(path), "wb") as w:
        w.setparams(params)
        w.writeframes(frames + b"\x00" * params.sampwidth * int(params.framerate * seconds))


def end_as_recorded(path: Path, silence_s: float, limit_s: float | None = None) -> None:
    """Give a caller's utterance the end Asterisk's file has: ``RECORD FILE`` with ``s=silence_s`` stops
    that long into the quiet (which starts with the utterance's own quiet end), so the robot gets the
    speech and then the recorder's wait; never past the command's time limit ``limit_s``."""
    tail_s = silence_s - min(silence_s, trailing_quiet_s(path))
    if limit_s is not None:
        tail_s = min(tail_s, limit_s - wav_duration_s(path))
    if tail_s > 0:
        append_silence(path, tail_s)


REALTIME_WRITE_S = 0.1  # how much audio a real-time recording gets at a time (Asterisk's buffered writes)


async def record_in_real_time(source: Path, target: Path) -> None:
    """Write ``source`` (8 kHz mono 16-bit) to ``target`` at the pace of the audio, as Asterisk records:
    the header first, with the data size unset until the end, then the samples as they come."""
    with wave.open(str(source), "rb") as r:
        rate, pcm = r.getframerate(), r.readframes(r.getnframes())
    header = b"RIFF" + struct.pack("<I", 0) + b"WAVE" + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, 2 * rate, 2, 16)
    step = 2 * int(rate * REALTIME_WRITE_S)
    began = time.monotonic()
    f = await asyncio.to_thread(open, target, "wb")
    try:
        await asyncio.to_thread(_write_at, f, None, header + b"data" + struct.pack("<I", 0))
        for i in range(0, len(pcm), step):
            chunk = pcm[i : i + step]
            await asyncio.sleep(max(0.0, began + (i + len(chunk)) / (2 * rate) - time.monotonic()))
            await asyncio.to_thread(_write_at, f, None, chunk)
        await asyncio.to_thread(_write_at, f, 4, struct.pack("<I", 36 + len(pcm)))
        await asyncio.to_thread(_write_at, f, 40, struct.pack("<I", len(pcm)))
    finally:
        await asyncio.to_thread(f.close)


def _write_at(f: BinaryIO, offset: int | None, data: bytes) -> None:
    if offset is not None:
        f.seek(offset)
    f.write(data)
    f.flush()


def truncate_wav(path: Path, seconds: float) -> None:
    with wave.open(str(path), "rb") as w:
        params = w.getparams()
        frames = w.readframes(int(seconds * params.framerate))
    with wave.open(str(path), "wb") as w:
        w.setparams(params)
        w.writeframes(frames)


def read_prompt(sound: str) -> tuple[str, float] | None:
    """What a prompt says (its ``.txt`` sidecar) and how long it plays; None if Asterisk has no such file."""
    wav = Path(sound + ".wav")
    if not wav.exists():
        return None
    sidecar = Path(sound + ".txt")
    text = sidecar.read_text(encoding="utf-8") if sidecar.exists() else f"<{wav.name}>"
    return text, wav_duration_s(wav)


def write_text_turn(target: Path, text: str) -> None:
    """Text mode: a short silent recording, and the words beside it for the text recognizer."""
    write_silence(target, 0.5)
    Path(args_base(target) + ".txt").write_text(text, encoding="utf-8")


def wav_duration_s(path: Path) -> float:
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / float(w.getframerate())




def trailing_quiet_s(path: Path, frame_s: float = 0.02) -> float:
    """How long a 16-bit WAV ends quietly (below Asterisk's silence threshold): the recorder's silence
    detector counts this as silence already, so the caller's last word is this long before the file ends."""
    with wave.open(str(path), "rb") as w:
        width, rate = w.getsampwidth(), w.getframerate()
        frames = w.readframes(w.getnframes())
    step = max(1, int(rate * frame_s)) * width
    quiet = 0
    for end in range(len(frames), 0, -step):
        if audioop.rms(frames[max(0, end - step):end], width) >= SPEECH_RMS:
            break
        quiet += 1
    return min(quiet * frame_s, len(frames) / width / rate)


def copy_as_8k(source: Path, target: Path) -> None:
    """Put a caller utterance where Asterisk would have recorded it (8 kHz mono 16-bit)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(source), "rb") as w:
        params = w.getparams()
        frames = w.readframes(w.getnframes())
    if (params.nchannels, params.sampwidth, params.framerate) == (1, 2, 8000):
        shutil.copyfile(source, target)
        return
    if params.nchannels == 2:
        frames = audioop.tomono(frames, params.sampwidth, 0.5, 0.5)
    if params.sampwidth != 2:
        frames = audioop.lin2lin(frames, params.sampwidth, 2)
    frames, _ = audioop.ratecv(frames, 2, 1, params.framerate, 8000, None)
    with wave.open(str(target), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(frames)


class ScriptedAsterisk:
    """One call: the Asterisk side of the FastAGI conversation, following a call file."""

    def __init__(
        self,
        call: CallFile,
        *,
        locale: str,
        text_mode: bool,
        speech: SpeechRenderer | None = None,
        realtime: bool = False,
        timeout_s: float = 120.0,
        sounds_dir: Path | None = None,
    ) -> None:
        self.call = call
        self.locale = locale
        self.text_mode = text_mode
        self.speech = speech
        self.realtime = realtime
        self.timeout_s = timeout_s
        self.sounds_dir = sounds_dir  # stream mode: where the robot's prompts are, to tell them apart
        self.report = CallReport(call.name)
        self._turns = list(call.turns)
        self._keys = ""  # keys the caller pressed that WAIT FOR DIGIT has not read yet
        self._collecting = False  # WAIT FOR DIGIT reads the keys being typed, not a new turn
        self._hung_up = False
        self._recorded_at: float | None = None
        self._silence_waited = 0.0  # the recorder's silence wait before the last recording was handed over
        self._record_limit_s: float | None = None  # RECORD FILE's timeout: Asterisk stops recording there
        self._number = next(_call_numbers)

    def environment(self, host: str, port: int) -> bytes:
        caller = self.call.caller_id or "unknown"
        unique = f"{time.time():.0f}.{self._number}"
        params = {k: v for k, v in {"lang": self.locale, **self.call.agi_params}.items() if v}
        query = "&".join(f"{k}={v}" for k, v in params.items())
        self.report.unique_id = unique
        variables = {
            "agi_network": "yes",
            "agi_network_script": f"ivr?{query}",
            "agi_request": f"agi://{host}:{port}/ivr?{query}",
            "agi_channel": f"Local/replay-{self._number}@hotline-0000;2",
            "agi_language": "en",
            "agi_type": "Local",
            "agi_uniqueid": unique,
            "agi_version": "22.0.0",
            "agi_callerid": caller.replace("\n", " "),
            "agi_calleridname": "replay",
            "agi_callingpres": "0",
            "agi_dnid": "unknown",
            "agi_context": "hotline",
            "agi_extension": "s",
            "agi_priority": "2",
            "agi_enhanced": "0.0",
            "agi_accountcode": "",
            "agi_threadid": str(140000000 + self._number),
        }
        return ("".join(f"{k}: {v}\n" for k, v in variables.items()) + "\n").encode()

    async def run(self, host: str, port: int) -> CallReport:
        started = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            self.report.errors.append(f"cannot connect to the FastAGI server at {host}:{port}: {exc}")
            return self.report
        try:
            writer.write(self.environment(host, port))
            await writer.drain()
            await asyncio.wait_for(self._converse(reader, writer, started), self.timeout_s)
        except asyncio.TimeoutError:
            self.report.errors.append(f"the call did not end within {self.timeout_s} s")
        except (ConnectionError, OSError) as exc:
            self.report.errors.append(f"connection error: {exc}")
        finally:
            writer.close()
        self._decide_outcome()
        return self.report

    def _decide_outcome(self) -> None:
        result = self.report.variables.get("IVR_RESULT", "")
        self.report.transfer_reason = self.report.variables.get("IVR_TRANSFER_REASON", "")
        if self._hung_up:
            self.report.outcome = "caller_hangup"
        elif result in ("transfer", "completed"):
            self.report.outcome = result
        else:
            self.report.outcome = "error"

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, started: float) -> None:
        while True:
            raw = await reader.readline()
            if not raw:
                return  # the server ended the AGI session: back to the dialplan
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            reply = await self._answer(line, started)
            if reply is None:
                return
            writer.write(reply.encode())
            await writer.drain()

    async def _answer(self, line: str, started: float) -> str | None:
        if self._hung_up:
            return "511 Command Not Permitted on a dead channel or intercepted\n"
        args = parse_arguments(line)
        name = " ".join(args[:2]).upper() if len(args) >= 2 else (args[0].upper() if args else "")
        if name != "WAIT FOR":
            # The robot does something else: keys typed on are lost (Asterisk keeps no type-ahead buffer
            # for a command without escape digits), and the next keys are a new turn.
            self._keys, self._collecting = "", False
        if name.startswith("ANSWER"):
            if not self.report.answered:
                self.report.answered = True
                self.report.time_to_answer_s = time.monotonic() - started
            return "200 result=0\n"
        if name == "STREAM FILE":
            return await self._stream_file(args)
        if name == "RECORD FILE":
            try:
                return await self._record_file(args)
            except OSError:  # the recording could not be written: what Asterisk answers then
                return "200 result=-1 (writefile)\n"
        if name == "WAIT FOR":  # WAIT FOR DIGIT
            return self._wait_digit()
        if name == "SET VARIABLE" and len(args) >= 4:
            self.report.variables[args[2]] = args[3]
            return "200 result=1\n"
        if name.startswith("HANGUP"):
            self.report.events.append({"who": "robot", "text": "", "action": "hangup"})
            return "200 result=1\n"
        if name.startswith("VERBOSE") or name.startswith("NOOP"):
            return "200 result=1\n"
        if name == "GET VARIABLE":
            return "200 result=0\n"
        if name == "EXEC AUDIOSOCKET" and len(args) >= 3:
            return await self._audiosocket(args[2])
        if name == "CHANNEL STATUS":
            return "200 result=6\n"  # 6: the line is up
        return "510 Invalid or unknown command\n"

    async def _audiosocket(self, options: str) -> str:
        """Stream mode: the call's audio over AudioSocket until the robot ends it (``EXEC`` returns)."""
        from ivr.testing.audiosocket_peer import MediaPeer

        if self.sounds_dir is None or self.speech is None or self.text_mode:
            self.report.errors.append("stream mode needs audio (not --text) and the robot's sounds folder")
            return "200 result=-1\n"
        call_uuid, _, address = options.partition(",")
        host, _, port = address.rpartition(":")
        peer = MediaPeer(self.report, self._turns, self.locale, self.sounds_dir, self.speech)
        self.report.media = "stream"
        try:
            reply = await peer.run(call_uuid, host, int(port))
        except (OSError, ValueError) as exc:
            self.report.media = "record"  # the leg never carried the call
            self.report.errors.append(f"AudioSocket: {exc}")
            return "200 result=-1\n"
        if peer.hung_up:
            self._hung_up = True
        return reply

    async def _stream_file(self, args: list[str]) -> str:
        if len(args) < 3:
            return "520-Invalid command syntax.  Proper usage follows:\nUsage: STREAM FILE\n520 End of proper usage.\n"
        if self._recorded_at is not None:  # the robot's reply starts now
            compute = time.monotonic() - self._recorded_at
            self.report.compute_latencies_s.append(compute)
            self.report.perceived_latencies_s.append(compute + self._silence_waited)
            self._recorded_at = None
        prompt = await asyncio.to_thread(read_prompt, args[2])
        if prompt is None:
            self.report.errors.append(f"the robot played a prompt that does not exist: {args[2]}.wav")
            return "200 result=-1 endpos=0\n"
        text, duration_s = prompt
        event: dict[str, Any] = {"who": "robot", "text": text, "interrupted": False, "heard_s": round(duration_s, 2)}
        self.report.events.append(event)
        escape = args[3] if len(args) > 3 else ""
        barge = self._turns[0] if self._turns else None
        if barge is not None and barge.kind == "hangup" and barge.during_prompt is not None:
            # Hung up mid-prompt: Asterisk answers -1 and only then notices; later commands get 511.
            self._turns.pop(0)
            event.update(interrupted=True, heard_s=round(min(barge.during_prompt, duration_s), 2))
            self.report.events.append({"who": "caller", "text": "", "kind": "hangup",
                                       "during_prompt": barge.during_prompt})
            self._hung_up = True
            return f"200 result=-1 endpos={int(min(barge.during_prompt, duration_s) * 8000)}\n"
        if (barge is not None and barge.kind == "dtmf" and barge.during_prompt is not None
                and barge.during_prompt < duration_s and barge.value[0] not in escape):
            # Keys that are no escape digit of the playing prompt: Asterisk drops them.
            self._turns.pop(0)
            self.report.events.append({"who": "caller", "text": mask_secret(barge.value), "kind": "dtmf",
                                       "during_prompt": barge.during_prompt, "dropped": True})
            barge = self._turns[0] if self._turns else None
        if (barge is not None and barge.kind == "dtmf" and barge.during_prompt is not None
                and barge.during_prompt < duration_s and barge.value[0] in escape):
            # The caller keys while the prompt plays: the first key stops it (an escape digit), the rest
            # are read by WAIT FOR DIGIT as the robot takes the entry.
            self._turns.pop(0)
            if self.realtime:
                await asyncio.sleep(barge.during_prompt)
            event.update(interrupted=True, heard_s=round(barge.during_prompt, 2))
            self.report.events.append({"who": "caller", "text": mask_secret(barge.value), "kind": "dtmf",
                                       "during_prompt": barge.during_prompt})
            self._keys, self._collecting = barge.value[1:], True
            self._recorded_at = time.monotonic()
            return f"200 result={ord(barge.value[0])} endpos={int(barge.during_prompt * 8000)}\n"
        if self.realtime:
            await asyncio.sleep(duration_s)  # the caller listens to the whole prompt, as on a real call
        return f"200 result=0 endpos={int(duration_s * 8000)}\n"

    async def _record_file(self, args: list[str]) -> str:
        if len(args) < 6:
            return "520-Invalid command syntax.  Proper usage follows:\nUsage: RECORD FILE\n520 End of proper usage.\n"
        target = Path(f"{args[2]}.{args[3]}")
        silence_s = next((float(a[2:]) for a in args[6:] if a.startswith("s=")), 0.0)
        self._record_limit_s = int(args[5]) / 1000 if args[5].lstrip("-").isdigit() and int(args[5]) > 0 else None
        if not target.parent.is_dir() or not os.access(target.parent, os.W_OK):
            raise OSError(f"cannot write {target}")
        if not self._turns:  # the script is over: the caller hangs up
            return self._hangup()
        turn = self._turns.pop(0)
        if turn.kind == "hangup":
            self.report.events.append({"who": "caller", "text": "", "kind": "hangup"})
            return self._hangup()
        if turn.kind == "dtmf":
            keys: str = turn.value
            self.report.events.append({"who": "caller", "text": mask_secret(keys), "kind": "dtmf"})
            await asyncio.to_thread(write_silence, target, 0.2)
            self._keys, self._collecting = keys[1:], True
            self._silence_waited = 0.0
            self._recorded_at = time.monotonic()
            return f"200 result={ord(keys[0])} (dtmf) endpos=1600\n"
        if turn.kind == "silence":
            seconds = float(turn.value)
            self.report.events.append({"who": "caller", "text": "", "kind": "silence", "seconds": seconds})
            # With s=N, Asterisk ends the recording after N seconds of silence even before speech.
            recorded = min(seconds, silence_s) if silence_s else seconds
            if self.realtime:
                await asyncio.sleep(recorded)
            await asyncio.to_thread(write_silence, target, recorded)
            self._silence_waited = 0.0  # nobody spoke: there is no "last word" to measure from
            self._recorded_at = time.monotonic()
            return f"200 result=0 (timeout) endpos={int(recorded * 8000)}\n"
        return await self._speech(turn, target, silence_s)

    async def _speech(self, turn: Turn, target: Path, silence_s: float) -> str:
        # In real time the caller's audio reaches Asterisk's file as it is spoken (the robot may read the
        # file while it grows): it is prepared beside it first.
        streamed = self.realtime and not self.text_mode
        spoken = target.with_name(target.stem + ".caller.wav") if streamed else target
        if turn.kind == "say":
            text: str = turn.value
            self.report.events.append({"who": "caller", "text": mask_text(text), "kind": "say"})
            if self.text_mode:
                await asyncio.to_thread(write_text_turn, target, text)
            else:
                if self.speech is None:
                    raise RuntimeError("audio mode needs a speech renderer for say turns")
                await asyncio.to_thread(copy_as_8k, await self.speech(text, self.locale), spoken)
        else:
            source: Path = turn.value
            self.report.events.append({"who": "caller", "text": "", "kind": "audio", "file": source.name})
            await asyncio.to_thread(copy_as_8k, source, spoken)
        if self._record_limit_s is not None and wav_duration_s(spoken) > self._record_limit_s:
            # Asterisk ends the recording at RECORD FILE's timeout, however long the caller talks on.
            await asyncio.to_thread(truncate_wav, spoken, self._record_limit_s)
            self.report.events[-1]["truncated_to_s"] = self._record_limit_s
        if streamed:
            # The caller speaks at the pace of speech, then the recorder waits for the silence, which
            # starts with the quiet end of the caller's audio (as Asterisk's silence detector counts it);
            # Asterisk's file holds that wait too.
            await asyncio.to_thread(end_as_recorded, spoken, silence_s, self._record_limit_s)
            await record_in_real_time(spoken, target)
            spoken.unlink()
            self.report.silence_waits_s.append(silence_s)
            self._silence_waited = silence_s
        elif self.realtime:  # text mode: the words are in the sidecar, the recording is a placeholder
            await asyncio.sleep(silence_s)
            self.report.silence_waits_s.append(silence_s)
            self._silence_waited = silence_s
        self._recorded_at = time.monotonic()
        return f"200 result=0 (timeout) endpos={int(wav_duration_s(target) * 8000)}\n"

    def _wait_digit(self) -> str:
        """The next key being typed; or, when the robot waits for a new input by keypad (no recording:
        a keypad-only call, the language menu), the caller's next turn: keys, else no key."""
        if not self._keys and not self._collecting and self._turns:
            turn = self._turns.pop(0)
            if turn.kind == "hangup":
                self.report.events.append({"who": "caller", "text": "", "kind": "hangup"})
                return self._hangup()
            if turn.kind != "dtmf":  # silence, or words nobody records
                self.report.events.append({"who": "caller", "text": "", "kind": turn.kind})
                return "200 result=0\n"
            self.report.events.append({"who": "caller", "text": mask_secret(turn.value), "kind": "dtmf"})
            self._keys = turn.value
        if not self._keys:
            self._collecting = False
            return "200 result=0\n"
        key, self._keys = self._keys[0], self._keys[1:]
        self._collecting = True
        self._recorded_at = time.monotonic()  # the caller's input is complete with the last key read
        return f"200 result={ord(key)}\n"

    def _hangup(self) -> str:
        self._hung_up = True
        return "HANGUP\n200 result=-1 (hangup) endpos=0\n"


def args_base(path: Path) -> str:
    """The recording's name without its format extension (``/spool/a.b-1.wav`` → ``/spool/a.b-1``)."""
    return str(path)[: -len(path.suffix)]


def report_json(reports: list[CallReport]) -> str:
    return json.dumps([r.to_json() for r in reports], ensure_ascii=False, indent=2)
