"""Call files placed as real calls through the local Asterisk (``ivr replay --asterisk``).

For each call file, AMI originates ``Local/s@ivr-test-caller``: the Local channel's ``;1`` half runs
the hotline context (answer, ``AGI(...)`` to the robot, transfer or hang-up), its ``;2`` half is the
test caller (asterisk_conf/extensions_local.conf). The caller records what it hears (MixMonitor,
``heard.wav``) and keeps sending silence between turns. Each time the robot listens (an ``AGIExecStart``
event: a ``RECORD FILE``, or a ``WAIT FOR DIGIT`` right after the robot spoke, i.e. not the wait for the
next key of an entry already begun), the runner hands the caller its next turn (AMI ``Setvar`` +
``Redirect``): ``say`` turns as speech synthesized to 8 kHz WAV beforehand, ``audio`` turns as given,
``dtmf`` as AMI ``PlayDTMF`` actions, one per key (never a dialplan step: Asterisk's verbose log shows
each step's arguments, and keys are ID digits), ``silence`` as a silence file, ``hangup`` as a hang-up;
with no turn left the caller hangs up, as in the replay harness. The dialplan's own questions are turns
too: "no agent is available: 1 a message, 2 the menu" (``UserEvent IvrNoAgent``; the caller answers once
the message has played) and the voicemail (``IvrVoicemail``). In text mode (a robot with the sidecar recognizer, ``ivr replay --asterisk
--text``) the words of each ``say`` turn are also written beside the robot's recording. What the robot
said is read from the ``.txt`` sidecar of each file it streams. The outcome comes from ``IVR_RESULT`` (``VarSet``), the dialplan's transfer to the human
queue (``UserEvent IvrHuman``), or the caller's own hang-up. The report is the harness's ``CallReport``
(plus the recordings and what the dialplan did), so ``expect`` checks work unchanged.

The turn audio and the recordings live in ``<spool_dir>/testcalls/<call>/``: the spool is mounted at
the same path inside Asterisk's chroot.
"""

from __future__ import annotations

import asyncio
import audioop
import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
import uuid
import wave
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ivr.asterisk.ami import AmiClient, AmiError, AmiEvent, AsyncSubscription
from ivr.config import Settings
from ivr.masking import mask_secret, mask_text
from ivr.testing.callfile import CallFile, Turn
from ivr.testing.harness import CallReport, copy_as_8k, parse_arguments, trailing_quiet_s, write_silence

log = logging.getLogger(__name__)

SpeechRenderer = Callable[[str, str], Awaitable[Path]]
CALLER_CONTEXT = "ivr-test-caller"
STREAM_CALLER_CONTEXT = "ivr-test-caller-stream"
UNKNOWN_AUDIO_MARGIN_S = 1.0  # AMI's AGIExecEnd arrives after the dialplan's audio has begun (by this at most)
STREAM_KEY_TONE_MS = 100  # a key's tone in a stream call (the robot hears each as one AudioSocket DTMF frame)
HOTLINE_CONTEXT = "ivr-hotline"
IDLE_SILENCE_S = 10.0
KEY_TONE_MS = 200  # each key's tone ...
KEY_GAP_S = 0.4  # ... and the pause after it (FastAGI drops keys that arrive between two AGI commands)
ESPEAK_VOICES = {"zh-CN": "cmn", "en-US": "en-us", "ko-KR": "ko"}
PLAY_COMMANDS = ("STREAM FILE", "CONTROL STREAM FILE", "GET DATA", "GET OPTION")


class TestCallError(RuntimeError):
    """A test call could not be placed (AMI down, the local Asterisk not running, bad turn audio)."""

    __test__ = False  # not a pytest test class


@dataclass
class AsteriskCallReport(CallReport):
    """The harness's report plus what only a real Asterisk shows.

    ``events`` has exactly the harness's shape (the robot's prompts, the caller's turns, the robot's
    hang-up), so ``failures()`` and transcript comparisons work unchanged; what the dialplan and the
    test agent did is in ``telephony`` (and under ``"asterisk"`` in ``to_json()``).
    """

    channel_id: str = ""  # the hotline half's uniqueid: the robot's call ID starts with it
    telephony: list[dict[str, Any]] = field(default_factory=list)  # dialplan apology, to the queue, agent
    agi_status: str = ""  # AGISTATUS when the dialplan got the call back ("" if the robot hung up)
    reached_human: bool = False  # the dialplan put the caller through to the human queue
    agent_answered: bool = False  # the (test) agent answered
    dialplan_prompts: list[str] = field(default_factory=list)  # e.g. the apology played by the dialplan
    heard_wav: Path | None = None  # what the caller heard (receive direction)
    call_wav: Path | None = None  # both directions, mixed
    heard_s: float = 0.0
    heard_rms: int = 0  # RMS of heard.wav (16-bit), a quick "did the caller hear anything" figure
    duration_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()
        data["asterisk"] = {
            "channel_id": self.channel_id,
            "agi_status": self.agi_status,
            "reached_human": self.reached_human,
            "agent_answered": self.agent_answered,
            "dialplan_prompts": self.dialplan_prompts,
            "telephony": self.telephony,
            "heard_wav": str(self.heard_wav) if self.heard_wav else None,
            "heard_s": round(self.heard_s, 2),
            "heard_rms": self.heard_rms,
            "duration_s": round(self.duration_s, 2),
        }
        return data


# ---------------------------------------------------------------- caller speech
async def espeak_speech(text: str, locale: str, out_dir: Path) -> Path:
    """The caller's words with espeak-ng in the locale's voice, as an 8 kHz mono 16-bit WAV."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise TestCallError("espeak-ng is not installed (apt-get install espeak-ng): needed for 'say' turns")
    voice = ESPEAK_VOICES.get(locale, "en-us")
    fd, raw = tempfile.mkstemp(suffix=".wav", dir=out_dir)
    os.close(fd)
    # text goes as an argument list, never through a shell
    result = await asyncio.to_thread(
        subprocess.run, [espeak, "-v", voice, "-w", raw, "--", text], capture_output=True, check=False
    )
    if result.returncode != 0:
        raise TestCallError(f"espeak-ng failed for voice {voice}: {result.stderr.decode(errors='replace')[:200]}")
    return Path(raw)


def wav_rms(path: Path) -> tuple[float, int]:
    """Duration (s) and RMS of a 16-bit WAV."""
    with wave.open(str(path), "rb") as w:
        frames = w.readframes(w.getnframes())
        width = w.getsampwidth()
        duration = w.getnframes() / float(w.getframerate() or 8000)
    return duration, audioop.rms(frames, width) if frames else 0


# ---------------------------------------------------------------- one call
class _Call:
    """The runner's side of one test call: follows the AMI events of its two channels."""

    def __init__(self, caller: AsteriskCaller, call: CallFile, tag: str, work: Path, agi_url: str | None) -> None:
        self.caller = caller
        self.call = call
        self.agi_url = agi_url
        self.tag = tag
        self.work = work
        self.robot_uid = f"{tag}-robot"  # the ;1 half, in the hotline context
        self.caller_uid = f"{tag}-caller"  # the ;2 half, the test caller
        self.report = AsteriskCallReport(call.name, channel_id=self.robot_uid)
        self.turn_files: dict[int, Path] = {}
        self._turns = list(enumerate(call.turns))
        self._caller_hung_up = False
        self._robot_gone = False
        self._caller_done = False
        self._started = 0.0
        self._record_ended_at: float | None = None
        self._speech_ended_at: float | None = None
        self._silence_waited: float | None = None  # the last turn's silence wait, for the perceived latency
        self._quiet_tails_s: dict[int, float] = {}  # per turn audio: its quiet end (harness.trailing_quiet_s)
        self._quiet_tail_s = 0.0  # the turn being played
        self._robot_spoke = False  # since the caller's last turn: a WAIT FOR DIGIT now is a new question
        self._keys_turn = False  # the current turn is keys: the robot's WAIT FOR DIGITs read them
        self._tasks: set[asyncio.Task[None]] = set()  # keys being sent, a turn waiting for a prompt's end

    def mine(self, event: AmiEvent) -> bool:
        ids = (self.robot_uid, self.caller_uid)
        return event.uniqueid in ids or event.get("Linkedid") in ids

    async def prepare(self, speech: SpeechRenderer | None, locale: str) -> None:
        """Render every turn's audio before dialling, so the caller answers the robot without delay."""
        for index, turn in self._turns:
            target = self.work / f"turn-{index + 1}.wav"
            if turn.kind == "say":
                source = await (speech(turn.value, locale) if speech else espeak_speech(turn.value, locale, self.work))
                await asyncio.to_thread(copy_as_8k, source, target)
                if speech is None:
                    source.unlink(missing_ok=True)
            elif turn.kind == "audio":
                await asyncio.to_thread(copy_as_8k, turn.value, target)
            elif turn.kind == "silence":
                await asyncio.to_thread(write_silence, target, float(turn.value))
            else:
                continue
            os.chmod(target, 0o644)
            self.turn_files[index] = target
            self._quiet_tails_s[index] = await asyncio.to_thread(trailing_quiet_s, target)

    async def run(
        self, ami: AmiClient, sub: AsyncSubscription, timeout_s: float, extra: dict[str, str] | None = None
    ) -> AsteriskCallReport:
        self._started = time.monotonic()
        variables = {
            "IVR_TEST_DIR": str(self.work),
            "IVR_TEST_IDLE": str(self.caller.idle_file.with_suffix("")),
        }
        params = self.call.agi_params
        if self.call.locale and not ("lang" in params and params["lang"] is None):  # lang: null drops ?lang=
            variables["IVR_LOCALE"] = self.call.locale
        query = "&".join(f"{k}={v}" for k, v in params.items() if k != "lang" and v is not None)
        if query:  # e.g. input=keypad: the dialplan adds it to the AGI URL (IVR_AGI_PARAMS)
            variables["IVR_AGI_PARAMS"] = query
        if self.agi_url:  # a channel variable hides the global of the same name, for this call only
            variables["IVR_AGI_URL"] = self.agi_url
        variables.update(self.caller_variables())
        variables.update(extra or {})  # e.g. IVR_QUEUE, IVR_OPEN_HOURS for this call only
        # AMI splits an Originate variable at commas ("a=1,b=2") unless escaped (e.g. a GotoIfTime spec)
        variables = {k: v.replace("\\", "\\\\").replace(",", "\\,") for k, v in variables.items()}
        caller_id = f'"test caller" <{self.call.caller_id}>' if self.call.caller_id else ""
        try:
            await ami.aoriginate_local(
                "s", self.caller_context, context=HOTLINE_CONTEXT, caller_id=caller_id, variables=variables,
                channel_id=self.robot_uid, other_channel_id=self.caller_uid,
            )
            await asyncio.wait_for(self._follow(ami, sub), timeout_s)
            await self._caller_finished()
        except asyncio.TimeoutError:
            self.report.errors.append(f"the call did not end within {timeout_s:.0f} s")
            for channel in (self.caller_uid, self.robot_uid):
                with contextlib.suppress(AmiError):
                    await ami.aaction("Hangup", Channel=channel)
        except AmiError as exc:
            self.report.errors.append(f"AMI: {exc}")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.report.duration_s = time.monotonic() - self._started
        self._decide_outcome()
        self._measure_recordings()
        return self.report

    caller_context = CALLER_CONTEXT

    def caller_variables(self) -> dict[str, str]:
        """Channel variables the caller's half needs beyond the common ones."""
        return {}

    async def _caller_finished(self) -> None:
        """Both halves have hung up: anything of the caller's still to collect."""

    async def _follow(self, ami: AmiClient, sub: AsyncSubscription) -> None:
        while not (self._caller_done and self._robot_gone):
            event = await sub.next(3600)
            await self._handle(ami, event)

    async def _handle(self, ami: AmiClient, event: AmiEvent) -> None:
        name, uid = event.name, event.uniqueid
        if name == "OriginateResponse" and uid == self.robot_uid and event.get("Response") != "Success":
            self.report.errors.append(f"Originate failed (reason {event.get('Reason')})")
            self._caller_done = self._robot_gone = True
        elif name == "AGIExecStart" and uid == self.robot_uid:
            await self._robot_command(ami, event.get("Command"))
        elif name == "AGIExecEnd" and uid == self.robot_uid and event.get("Command").upper().startswith("RECORD FILE"):
            self._record_ended_at = time.monotonic()
            self._silence_waited = None
            if self._speech_ended_at is not None:
                self._silence_waited = self._record_ended_at - self._speech_ended_at
                self.report.silence_waits_s.append(self._silence_waited)
                self._speech_ended_at = None
        elif (
            name == "AGIExecEnd" and uid == self.robot_uid
            and (self._record_ended_at is not None or self._keys_turn)
            and event.get("Command").upper().startswith("WAIT FOR DIGIT")
        ):
            # keys after the first: the caller's input is complete with the last key read
            self._record_ended_at = time.monotonic()
            self._silence_waited = 0.0  # keys end the input at once: no silence wait
        elif name == "VarSet" and uid == self.robot_uid and event.get("Variable") in ("IVR_RESULT", "IVR_TRANSFER_REASON", "AGISTATUS"):
            self.report.variables[event.get("Variable")] = event.get("Value")
        elif name == "UserEvent":
            self._user_event(event)
        elif name == "Hangup" and uid == self.robot_uid:
            self._robot_gone = True

    def _user_event(self, event: AmiEvent) -> None:
        kind, uid = event.get("UserEvent"), event.uniqueid
        if kind == "IvrTestCaller" and uid == self.caller_uid:
            state = event.get("State")
            if state == "done":
                self._caller_done = True
            elif state == "idle":
                # the caller's last word: before the end of its audio by the audio's quiet tail
                self._speech_ended_at = time.monotonic() - self._quiet_tail_s
                self._quiet_tail_s = 0.0
            elif state == "error":
                self.report.errors.append(f"test caller: {event.get('Problem')}")
        elif kind == "IvrNoAgent" and uid == self.robot_uid:
            sound = event.get("Sound")
            self.report.telephony.append(
                {"who": "dialplan", "kind": "no_agent", "reason": event.get("Reason"), "sound": sound}
            )
            if sound != "none":
                self.report.dialplan_prompts.append(sound)
                # the caller listens to the whole message, then answers it (Read() waits 5 s after it)
                self._later(self._answer_after(Path(sound + ".wav")))
        elif kind == "IvrBackToMenu" and uid == self.robot_uid:
            self.report.telephony.append({"who": "dialplan", "kind": "back_to_menu", "reason": event.get("Reason")})
        elif kind == "IvrOutcome" and uid == self.robot_uid:
            self.report.agi_status = event.get("AgiStatus")
        elif kind == "IvrApology" and uid == self.robot_uid:
            sound = event.get("Sound")
            self.report.dialplan_prompts.append(sound)
            self.report.telephony.append(
                {"who": "dialplan", "kind": "apology", "sound": sound, "reason": event.get("Reason")}
            )
        elif kind == "IvrHuman" and uid == self.robot_uid:
            self.report.reached_human = True
            self.report.telephony.append({"who": "dialplan", "kind": "to_human", "reason": event.get("Reason")})
        elif kind == "IvrVoicemail" and uid == self.robot_uid:
            self.report.telephony.append({"who": "dialplan", "kind": "voicemail", "reason": event.get("Reason")})
            self._later(self._next_turn(self.caller.ami, None))  # the message to leave, or a hang-up
        elif kind == "IvrTestAgent":
            self.report.agent_answered = True
            self.report.telephony.append({"who": "agent", "kind": "answered"})

    def _answered(self) -> None:
        """The robot answered (its first ANSWER): how long the caller waited for it."""
        if not self.report.answered:
            self.report.answered = True
            self.report.time_to_answer_s = time.monotonic() - self._started

    async def _robot_command(self, ami: AmiClient, command: str) -> None:
        args = parse_arguments(command)
        name = " ".join(args[:2]).upper()
        if name.startswith("ANSWER"):
            self._answered()
        elif name.startswith("HANGUP"):
            self.report.events.append({"who": "robot", "text": "", "action": "hangup"})
        elif any(" ".join(args[: len(p.split())]).upper() == p for p in PLAY_COMMANDS):
            skip = 3 if name.startswith("CONTROL") else 2
            if len(args) > skip:
                self._robot_said(Path(args[skip]))
            self._robot_spoke = True
        elif name == "RECORD FILE" and len(args) > 2:
            await self._next_turn(ami, args[2])
        elif " ".join(args[:3]).upper() == "WAIT FOR DIGIT" and self._robot_spoke:
            # a question by keypad (no speech in this call); a WAIT FOR DIGIT without a prompt before it
            # waits for the next key of the entry the caller is keying: that is the current turn's
            await self._next_turn(ami, None)

    def _robot_said(self, sound: Path) -> None:
        if self._record_ended_at is not None:
            compute = time.monotonic() - self._record_ended_at
            self.report.compute_latencies_s.append(compute)
            if self._silence_waited is not None:
                self.report.perceived_latencies_s.append(self._silence_waited + compute)
            self._record_ended_at = self._silence_waited = None
        sidecar = sound.with_suffix(".txt")
        try:
            text = sidecar.read_text(encoding="utf-8")
        except OSError:
            text = f"<{sound.name}>"
        self.report.events.append({"who": "robot", "text": text})

    async def _next_turn(self, ami: AmiClient, recording: str | None) -> None:
        """The robot listens (``recording``: its RECORD FILE target, without extension; None for a WAIT FOR
        DIGIT or the dialplan's questions): give the caller its next turn; with none left the caller hangs
        up (the harness does the same, without an event)."""
        self._robot_spoke = False
        self._keys_turn = False
        if not self._turns:
            self._caller_hung_up = True
            await self._redirect(ami, "hangup", "")
            return
        index, turn = self._turns.pop(0)
        self.report.events.append(self._turn_event(turn))
        if turn.kind == "say" and self.caller.text_mode and recording is not None:
            # `ivr replay --text` through Asterisk: the words go beside the recording for the robot's
            # sidecar recognizer (ivr/testing/textinput.py); the caller still speaks them.
            await asyncio.to_thread(_write_sidecar, Path(recording + ".txt"), str(turn.value))
        if turn.kind == "hangup":
            self._caller_hung_up = True
            await self._redirect(ami, "hangup", "")
        elif turn.kind == "dtmf":
            self._keys_turn = True
            self._later(self._send_keys(ami, str(turn.value)))
        else:
            self._quiet_tail_s = self._quiet_tails_s[index]
            await self._redirect(ami, "play", str(self.turn_files[index].with_suffix("")))

    @staticmethod
    def _turn_event(turn: Turn) -> dict[str, Any]:
        if turn.kind == "say":
            return {"who": "caller", "text": mask_text(str(turn.value)), "kind": "say"}
        if turn.kind == "dtmf":
            return {"who": "caller", "text": mask_secret(str(turn.value)), "kind": "dtmf"}
        if turn.kind == "silence":
            return {"who": "caller", "text": "", "kind": "silence", "seconds": float(turn.value)}
        if turn.kind == "audio":
            return {"who": "caller", "text": "", "kind": "audio", "file": Path(turn.value).name}
        return {"who": "caller", "text": "", "kind": "hangup"}

    def _later(self, work: Awaitable[None]) -> None:
        """Run ``work`` beside the event loop of this call (keys take their time; the events go on)."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_keys(self, ami: AmiClient, keys: str) -> None:
        """The caller keys ``keys``: one AMI PlayDTMF per key, from the caller's half (which goes on playing
        its silence). No dialplan step carries them, so Asterisk's log never shows the digits."""
        try:
            for index, key in enumerate(keys):
                if index:
                    await asyncio.sleep(KEY_GAP_S)
                await ami.aaction("PlayDTMF", Channel=self.caller_uid, Digit=key, Duration=KEY_TONE_MS)
        except AmiError as exc:  # the caller may already be gone (the robot hung up meanwhile)
            log.debug("test caller %s: keys not sent: %s", self.tag, exc)
        self._speech_ended_at = time.monotonic()  # the caller's input ends with its last key

    async def _answer_after(self, sound: Path) -> None:
        """The dialplan asks the caller something with ``sound``: the next turn once it has been heard."""
        try:
            duration, _ = await asyncio.to_thread(wav_rms, sound)
        except (OSError, wave.Error, EOFError) as exc:
            self.report.errors.append(f"the dialplan's prompt {sound} is unreadable ({exc})")
            duration = 0.0
        await asyncio.sleep(duration + 0.3)
        await self._next_turn(self.caller.ami, None)

    async def _redirect(self, ami: AmiClient, exten: str, arg: str) -> None:
        try:
            if arg:
                await ami.asetvar("IVR_TEST_ARG", arg, self.caller_uid)
            await ami.aaction("Redirect", Channel=self.caller_uid, Context=CALLER_CONTEXT, Exten=exten, Priority=1)
        except AmiError as exc:  # the caller may already be gone (the robot hung up meanwhile)
            log.debug("test caller %s: redirect to %s failed: %s", self.tag, exten, exc)

    def _decide_outcome(self) -> None:
        result = self.report.variables.get("IVR_RESULT", "")
        self.report.transfer_reason = self.report.variables.get("IVR_TRANSFER_REASON", "")
        if self._caller_hung_up:
            self.report.outcome = "caller_hangup"
        elif self.report.reached_human:
            # the robot asked for it, or it could not be reached / failed and the dialplan apologised
            self.report.outcome = "transfer"
        elif result == "completed":
            self.report.outcome = "completed"
        else:
            self.report.outcome = "error"
        if result == "transfer" and not self.report.reached_human and not self.report.errors:
            self.report.errors.append("the robot asked for a transfer but the dialplan never reached the human queue")

    def _measure_recordings(self) -> None:
        heard, mixed = self.work / "heard.wav", self.work / "call.wav"
        if heard.exists():
            self.report.heard_wav = heard
            try:
                self.report.heard_s, self.report.heard_rms = wav_rms(heard)
            except (wave.Error, EOFError) as exc:
                self.report.errors.append(f"{heard}: unreadable recording ({exc})")
        elif self._caller_done:
            self.report.errors.append(f"the test caller's recording {heard} is missing")
        if mixed.exists():
            self.report.call_wav = mixed


class _StreamCall(_Call):
    """A stream-mode call (the call file's ``agi_params.media: stream``). The robot's half runs the hotline
    as always (the robot sends ``EXEC AudioSocket`` to its own media server); the caller's half is in
    [ivr-test-caller-stream]: its audio goes both ways over AudioSocket to this runner's ``MediaPeer``,
    which speaks the turns in real time (``during_prompt`` too) and hears the robot after Asterisk's
    bridging. So what the robot said, which prompts were cut, the perceived latency and the barge-in stop
    are measured at the caller's ear; keys go by AMI ``PlayDTMF``."""

    caller_context = STREAM_CALLER_CONTEXT

    def __init__(self, caller: AsteriskCaller, call: CallFile, tag: str, work: Path, agi_url: str | None) -> None:
        from ivr.testing.audiosocket_peer import MediaPeer

        super().__init__(caller, call, tag, work, agi_url)
        if caller.media is None or caller.sounds_dir is None or caller.speech is None:
            raise TestCallError("a stream-mode test call needs the caller's media server, the robot's sounds and speech")
        self.media_uuid = uuid.uuid4()
        self._connected = caller.media.server.expect(self.media_uuid)
        self._robot_media_up = asyncio.Event()
        self._robot_media_ended_at: float | None = None
        self.report.media = "stream"
        self.peer = MediaPeer(
            self.report, [t for _, t in self._turns], call.locale or caller.settings.locale, caller.sounds_dir,
            caller.speech, send_key=self._send_key, media_up=self._robot_media_up,
        )
        self._peer_task = asyncio.ensure_future(self._serve_media())

    async def prepare(self, speech: SpeechRenderer | None, locale: str) -> None:
        """The peer renders each turn as it takes it (with the robot's synthesizer, cached)."""

    def caller_variables(self) -> dict[str, str]:
        assert self.caller.media is not None
        return {"IVR_TEST_UUID": str(self.media_uuid), "IVR_TEST_MEDIA": self.caller.media.address}

    async def _serve_media(self) -> None:
        reader, writer, parser = await self._connected
        try:
            await self.peer.serve(reader, writer, parser)
        finally:
            writer.close()
        self._caller_hung_up = self.peer.hung_up

    async def _caller_finished(self) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self._peer_task), 5.0)
        except asyncio.TimeoutError:
            self.report.errors.append("the caller's AudioSocket did not end with the call")
        else:
            # Audio that is no prompt of the robot's is the dialplan's once the robot's leg has ended (the
            # queue, the agent); AMI tells that end a little late, so only audio well before it counts.
            ended = self._robot_media_ended_at or float("inf")
            early = [note for at, note in zip(self.peer.unknown_audio_at, self.peer.unknown_audio_notes, strict=True)
                     if at < ended - UNKNOWN_AUDIO_MARGIN_S]
            if early:
                self.report.errors.append(f"the robot played audio that is no known prompt ({early[0]})")
        finally:
            self._peer_task.cancel()
            assert self.caller.media is not None
            self.caller.media.server.forget(self.media_uuid)

    async def _send_key(self, key: str) -> None:
        try:
            await self.caller.ami.aaction("PlayDTMF", Channel=self.caller_uid, Digit=key, Duration=STREAM_KEY_TONE_MS)
        except AmiError as exc:  # the caller may already be gone (the robot hung up meanwhile)
            log.debug("test caller %s: key not sent: %s", self.tag, exc)
        await asyncio.sleep(STREAM_KEY_TONE_MS / 1000)

    async def _robot_command(self, ami: AmiClient, command: str) -> None:
        args = parse_arguments(command)
        name = " ".join(args[:2]).upper()
        if name.startswith("ANSWER"):
            self._answered()
        elif name == "EXEC AUDIOSOCKET":
            self._robot_media_up.set()
        elif name.startswith("HANGUP"):
            self.peer.robot_ended()
            self.report.events.append({"who": "robot", "text": "", "action": "hangup"})
        elif name.startswith("RECORD FILE") or any(name.startswith(c) for c in PLAY_COMMANDS):
            if self.report.media == "stream":
                self.report.media = "record"
                self.report.errors.append("the robot fell back to record mode (its AudioSocket leg did not come up)")

    async def _handle(self, ami: AmiClient, event: AmiEvent) -> None:
        if event.name == "AGIExecEnd" and event.uniqueid == self.robot_uid:
            if " ".join(parse_arguments(event.get("Command"))[:2]).upper() == "EXEC AUDIOSOCKET":
                self._robot_media_ended_at = time.monotonic()
                self.peer.robot_ended()  # later audio is the dialplan's (the queue, the agent)
            return
        await super()._handle(ami, event)


def _write_sidecar(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    os.chmod(path, 0o644)


@dataclass
class _CallerMedia:
    """The test callers' AudioSocket server: Asterisk connects each stream-mode caller's half to it."""

    server: Any  # ivr.media.stream.AudioSocketServer
    address: str  # host:port, as the caller's dialplan gives it to AudioSocket()


class AsteriskCaller:
    """Places test calls through the local Asterisk over one AMI session; calls may run concurrently.

    ``agi_url``: the FastAGI server the calls reach (default: the one the local Asterisk was configured
    with); it is set on each call's channels, so callers with different robots may run side by side.
    ``text_mode``: for a robot started with ``text_input=True`` (as ``ivr replay --text``): each ``say``
    turn's words are also written beside the robot's recording as ``<recording>.txt``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        ami: AmiClient | None = None,
        speech: SpeechRenderer | None = None,
        agi_url: str | None = None,
        text_mode: bool = False,
    ) -> None:
        self.settings = settings
        self.speech = speech
        self.agi_url = agi_url
        self.text_mode = text_mode
        self.base = settings.spool_dir.resolve() / "testcalls"
        self.idle_file = self.base / "idle-10s.wav"
        self.sounds_dir: Path | None = settings.sounds_dir  # stream calls: the robot's prompts, to tell them apart
        self.media: _CallerMedia | None = None  # stream calls: the callers' AudioSocket server (started on first use)
        self._ami = ami
        self._own_ami = ami is None

    @property
    def ami(self) -> AmiClient:
        if self._ami is None:
            raise TestCallError("the test caller is not connected (use it as `async with`)")
        return self._ami

    async def __aenter__(self) -> AsteriskCaller:
        if self._ami is None:
            from ivr.asterisk.local import AsteriskError, LocalAsterisk

            try:
                creds = LocalAsterisk(self.settings).ami_credentials()
            except AsteriskError as exc:
                raise TestCallError(str(exc)) from exc
            self._ami = AmiClient(creds.host, creds.port, creds.user, creds.secret)
            try:
                await self._ami.aconnect()
            except AmiError as exc:
                self._ami = None
                raise TestCallError(f"{exc} (is the local Asterisk up? `ivr asterisk up`)") from exc
        self.base.mkdir(parents=True, exist_ok=True)
        if not self.idle_file.exists():
            await asyncio.to_thread(write_silence, self.idle_file, IDLE_SILENCE_S)
            os.chmod(self.idle_file, 0o644)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.media is not None:
            await self.media.server.stop()
            self.media = None
        if self._ami is None:
            return
        if self._own_ami:
            await self._ami.aclose()
            self._ami = None

    async def place(
        self, call: CallFile, *, timeout_s: float = 180.0, agi_url: str | None = None,
        variables: dict[str, str] | None = None,
    ) -> AsteriskCallReport:
        """Place one call file as a real call and report what happened (``agi_url``: this call's robot;
        ``variables``: channel variables for this call, e.g. ``IVR_QUEUE`` or ``IVR_OPEN_HOURS``, which
        hide the dialplan's globals of the same name)."""
        tag = f"ivrtest-{uuid.uuid4().hex[:12]}"
        work = self.base / tag
        work.mkdir(parents=True)
        os.chmod(work, 0o777)  # Asterisk's user writes the recordings here
        if call.agi_params.get("media") == "stream":
            if self.media is None:
                from ivr.media.stream import AudioSocketServer

                server = AudioSocketServer()
                port = await server.start("127.0.0.1", 0)  # Asterisk (chroot) shares this machine's network
                self.media = _CallerMedia(server, f"127.0.0.1:{port}")
            one: _Call = _StreamCall(self, call, tag, work, agi_url or self.agi_url)
        else:
            one = _Call(self, call, tag, work, agi_url or self.agi_url)
        await one.prepare(self.speech, call.locale or self.settings.locale)
        sub = self.ami.subscribe_async(one.mine)
        try:
            return await one.run(self.ami, sub, timeout_s, variables)
        finally:
            self.ami.unsubscribe(sub)


async def run_call_via_asterisk(
    call_file: CallFile,
    settings: Settings,
    *,
    speech: SpeechRenderer | None = None,
    agi_url: str | None = None,
    text_mode: bool = False,
    timeout_s: float = 180.0,
) -> AsteriskCallReport:
    """One call file as a real call through the local Asterisk (its own AMI session)."""
    async with AsteriskCaller(settings, speech=speech, agi_url=agi_url, text_mode=text_mode) as caller:
        return await caller.place(call_file, timeout_s=timeout_s)


async def replay_via_asterisk(
    settings: Settings,
    calls: list[CallFile],
    *,
    speech: SpeechRenderer | None = None,
    agi_url: str | None = None,
    text_mode: bool = False,
    concurrent: bool = False,
    timeout_s: float = 180.0,
) -> list[CallReport]:
    """Each call file as a real call (one after the other, or all at once), in the given order.

    The reports are ``AsteriskCallReport``s (typed as the harness's ``CallReport`` for the replay CLI).

    ``agi_url`` points these calls at another FastAGI server; by default they reach the robot the local
    Asterisk was configured with.
    ``text_mode`` is for a robot with the sidecar recognizer (``text_input=True``), see ``AsteriskCaller``.
    """
    async with AsteriskCaller(settings, speech=speech, agi_url=agi_url, text_mode=text_mode) as caller:
        if concurrent:
            return list(await asyncio.gather(*(caller.place(c, timeout_s=timeout_s) for c in calls)))
        reports: list[CallReport] = [await caller.place(c, timeout_s=timeout_s) for c in calls]
        return reports
