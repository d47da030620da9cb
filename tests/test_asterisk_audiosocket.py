"""The AudioSocket facts, checked against the real local Asterisk (22.x) with this project's protocol code.

A FastAGI session (``ivr.agi.protocol``) sends ``EXEC AudioSocket <uuid>,127.0.0.1:<port>``; a TCP server
(``ivr.media.audiosocket`` + ``PacedWriter``) takes the call's media. The caller is the other half of a
Local channel: it plays a Korean test recording, keys ``1 2 #`` and records what it hears. Checked:
the UUID frame comes first (the same UUID); then 320-byte audio frames at 50 per second; DTMF frames per
key; the paced audio sent back reaches the caller; after the server's terminate frame and close,
``EXEC`` returns ``200 result=0`` and the AGI session goes on; a caller who hangs up is an EOF.

The dialplan is a throw-away context added through the CLI (``dialplan add extension``) and removed at
the end; the AudioSocket modules are loaded through the CLI when the configuration does not load them.
``run_checks`` can also be pointed at an Asterisk that is already running (see ``main``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import shutil
import statistics
import sys
import time
import uuid
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from ivr.agi.protocol import AgiEnvironment, AgiParser, AgiResponse, Eof, command
from ivr.asterisk.ami import AmiClient
from ivr.asterisk.local import LocalAsterisk
from ivr.media.audiosocket import Audio, AudioSocketParser, Dtmf, Uuid
from ivr.media.audiosocket import Eof as MediaEof
from ivr.media.playback import PacedWriter
from tests.conftest import RunningAsterisk

AUDIO = Path(__file__).parent / "calls" / "audio" / "ko-KR" / "audio"
ROBOT_CONTEXT = "ivr-audiosocket-check"
CALLER_CONTEXT = "ivr-audiosocket-check-caller"
TONE_HZ = 1000
TONE_S = 6.0  # longer than the caller takes to press 1: the key stops it


@dataclass(frozen=True)
class Scenario:
    name: str
    caller: str  # "speaks": plays a recording, keys 1 2, plays it again; "waits": silent (Wait), then #
    hangs_up: bool  # the caller hangs up instead of keying #
    robot: str  # "prompt": a tone and idle silence; "idle": idle silence only; "nothing": sends nothing


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("robot-ends", "speaks", False, "prompt"),  # key 1 stops the tone, # ends the stream
        Scenario("caller-hangs-up", "speaks", True, "prompt"),
        Scenario("robot-sends-nothing", "speaks", False, "nothing"),  # the caller's audio keeps it up
        # a quiet caller still sends frames (digital silence here), so AudioSocket's 2 s inactivity limit
        # could not be provoked with a Local channel; the robot's idle silence frames are accepted
        Scenario("caller-waits-robot-idle", "waits", False, "idle"),
    )
}


@dataclass
class Findings:
    scenario: Scenario
    sent_uuid: uuid.UUID
    media: list[tuple[float, object]] = field(default_factory=list)  # (arrival, event)
    exec_reply: AgiResponse | None = None
    after_exec: list[AgiResponse] = field(default_factory=list)
    agi_events: list[object] = field(default_factory=list)
    heard: Path | None = None
    played_ms: int = 0

    @property
    def audio(self) -> list[tuple[float, bytes]]:
        return [(t, e.pcm) for t, e in self.media if isinstance(e, Audio)]

    @property
    def keys(self) -> str:
        return "".join(e.key for _, e in self.media if isinstance(e, Dtmf))


def tone(seconds: float, hz: int = TONE_HZ, dbfs: float = -12.0) -> bytes:
    t = np.arange(int(seconds * 8000)) / 8000
    return (np.sin(2 * math.pi * hz * t) * 32768 * 10 ** (dbfs / 20)).astype("<i2").tobytes()


def tone_ms(path: Path, hz: int = TONE_HZ) -> int:
    """How long the tone was heard in ``path``: 20 ms frames where it carries most of the energy."""
    with wave.open(str(path)) as w:
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    frames = x[: len(x) // 160 * 160].reshape(-1, 160)
    spectra = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # 50 Hz bins: 1000 Hz is bin 20
    share = spectra[:, hz // 50] / (spectra.sum(axis=1) + 1e-9)
    return int((share > 0.5).sum()) * 20


def tone_level_db(path: Path, hz: int = TONE_HZ) -> tuple[float, float]:
    """Level of the tone's frequency and of everything else in the loudest second of ``path`` (dB)."""
    with wave.open(str(path)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    if len(x) < rate:
        return -math.inf, -math.inf
    spectrum = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    near = np.abs(freqs - hz) < 20
    return 10 * np.log10(spectrum[near].sum() + 1e-9), 10 * np.log10(spectrum[~near].sum() + 1e-9)


async def media_server(findings: Findings) -> tuple[asyncio.Server, asyncio.Event]:
    """The robot's media side: reads frames; plays a tone paced (``prompt``), stops it on key ``1``
    (barge-in), ends the stream (0x00, close) on key ``#``."""
    done = asyncio.Event()
    mode = findings.scenario.robot

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = AudioSocketParser()
        player = PacedWriter(writer, idle_silence=mode != "nothing")
        playing = asyncio.create_task(player.run())
        prompt = asyncio.create_task(player.play(tone(TONE_S) if mode == "prompt" else b""))
        try:
            while True:
                data = await reader.read(65536)
                now = time.monotonic()
                if data:
                    parser.feed(data)
                else:
                    parser.feed_eof()
                for event in parser.events():
                    findings.media.append((now, event))
                    if isinstance(event, Dtmf) and event.key == "1":
                        findings.played_ms = player.stop()
                    if isinstance(event, Dtmf) and event.key == "#":
                        player.close(hangup=True)  # the terminate frame, then close
                        with contextlib.suppress(Exception):
                            await playing
                        writer.close()
                        return
                    if isinstance(event, MediaEof):
                        return
        finally:
            player.close(hangup=False)
            for task in (playing, prompt):
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            writer.close()
            done.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, done


async def agi_server(findings: Findings, media_port: int) -> tuple[asyncio.Server, asyncio.Event]:
    """The FastAGI side: EXEC AudioSocket, then (when the call is still there) SET VARIABLE and VERBOSE."""
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = AgiParser()

        async def reply() -> AgiResponse | None:
            while True:
                for event in parser.events():
                    findings.agi_events.append(event)
                    if isinstance(event, AgiResponse):
                        return event
                    if isinstance(event, Eof):
                        return None
                data = await reader.read(4096)
                if data:
                    parser.feed(data)
                else:
                    parser.feed_eof()

        try:
            while not any(isinstance(e, AgiEnvironment) for e in findings.agi_events):
                data = await reader.read(4096)
                if not data:
                    return
                parser.feed(data)
                findings.agi_events.extend(parser.events())
            target = f"{findings.sent_uuid},127.0.0.1:{media_port}"
            writer.write(command("EXEC", "AudioSocket", target))
            findings.exec_reply = await reply()
            for line in (command("SET VARIABLE", "IVR_AS_CHECK", "went-on"), command("VERBOSE", "after", 1)):
                writer.write(line)
                answer = await reply()
                if answer is None:
                    break
                findings.after_exec.append(answer)
        finally:
            writer.close()
            done.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, done


def add_dialplan(cli: Callable[[str], str], agi_port: int, work: str, scenario: Scenario) -> None:
    robot = [
        "Answer()",
        f"AGI(agi://127.0.0.1:{agi_port}/check)",
        "UserEvent(IvrAudioSocketCheck,AGISTATUS: ${AGISTATUS},Var: ${IVR_AS_CHECK})",
        "Hangup()",
    ]
    caller = ["Answer()", f"MixMonitor({work}/call.wav,r({work}/heard.wav))"]
    if scenario.caller == "speaks":
        caller += [f"Playback({work}/speech)", "SendDTMF(12,250,200)", f"Playback({work}/speech)"]
    else:
        caller += ["Wait(5)"]
    if scenario.hangs_up:
        caller += ["Hangup()"]
    else:
        caller += [
            "SendDTMF(#,250,200)",
            "Wait(2)" if scenario.caller == "waits" else f"Playback({work}/speech)",
        ]
        caller += ["Hangup()"]
    for context, steps in ((ROBOT_CONTEXT, robot), (CALLER_CONTEXT, caller)):
        for priority, step in enumerate(steps, 1):
            added(cli(f'dialplan add extension "s,{priority},{step}" into {context} replace'))
    added(cli(f"dialplan add extension h,1,StopMixMonitor() into {CALLER_CONTEXT} replace"))


def added(out: str) -> None:
    assert "added" in out or "replace by" in out, out


def remove_dialplan(cli: Callable[[str], str]) -> None:
    for context in (ROBOT_CONTEXT, CALLER_CONTEXT):
        cli(f"dialplan remove context {context}")


def ensure_modules(cli: Callable[[str], str]) -> list[str]:
    loaded = []
    for module in ("res_audiosocket.so", "app_audiosocket.so"):
        if module.removesuffix(".so") not in cli(f"module show like {module.removesuffix('.so')}"):
            out = cli(f"module load {module}")
            assert "loaded" in out.lower(), out
            loaded.append(module)
    return loaded


async def one_call(local: LocalAsterisk, scenario: Scenario) -> Findings:
    """Place one call of ``scenario`` and collect what the AGI and media servers saw."""
    findings = Findings(scenario, uuid.uuid4())

    def cli(line: str) -> str:
        result = local.cli(line)
        return result.stdout + result.stderr

    media, media_done = await media_server(findings)
    agi, agi_done = await agi_server(findings, media.sockets[0].getsockname()[1])
    inside = f"/tmp/ivr-audiosocket-check-{os.getpid()}-{scenario.name}"
    work = local.root / inside.lstrip("/")
    work.mkdir(parents=True, exist_ok=True)
    uid, gid = local.chroot_ids()
    os.chown(work, uid, gid)
    shutil.copy(AUDIO / "balance_request.wav", work / "speech.wav")
    os.chown(work / "speech.wav", uid, gid)
    creds = local.ami_credentials()
    ami = AmiClient(creds.host, creds.port, creds.user, creds.secret)
    try:
        await asyncio.to_thread(ensure_modules, cli)
        await asyncio.to_thread(add_dialplan, cli, agi.sockets[0].getsockname()[1], inside, scenario)
        await ami.aconnect()
        ended = ami.subscribe_async(
            lambda e: e.name == "UserEvent" and e.get("UserEvent") == "IvrAudioSocketCheck"
        )
        await asyncio.to_thread(ami.originate_local, "s", CALLER_CONTEXT, context=ROBOT_CONTEXT)
        await asyncio.wait_for(agi_done.wait(), 30)
        await asyncio.wait_for(media_done.wait(), 10)
        if not scenario.hangs_up:  # the dialplan goes on after the AGI script
            event = await ended.next(15)
            findings.agi_events.append(("UserEvent", event.get("AGISTATUS"), event.get("Var")))
        for _ in range(50):  # the caller's recording is complete once its h extension ran
            if (work / "heard.wav").exists() and not await asyncio.to_thread(
                lambda: "ivr-audiosocket-check-caller" in cli("core show channels")
            ):
                break
            await asyncio.sleep(0.2)
        heard = Path(f"/tmp/heard-{os.getpid()}-{scenario.name}.wav")
        shutil.copy(work / "heard.wav", heard)
        findings.heard = heard
    finally:
        with contextlib.suppress(Exception):
            await ami.aclose()
        await asyncio.to_thread(remove_dialplan, cli)
        shutil.rmtree(work, ignore_errors=True)
        media.close()
        agi.close()
    return findings


def check(findings: Findings) -> list[str]:
    """The facts, as assertion messages that failed ([] when all hold)."""
    failures: list[str] = []
    scenario = findings.scenario
    events = [e for _, e in findings.media]
    if not events or events[0] != Uuid(findings.sent_uuid):
        failures.append(f"the first frame is not the UUID {findings.sent_uuid}: {events[:1]}")
    if any(type(e).__name__ in ("Hangup", "Error") for e in events):
        failures.append("Asterisk sent a hang-up or error frame")
    audio = findings.audio
    sizes = [len(pcm) for _, pcm in audio]
    # 320 bytes (20 ms), except a short frame where the caller's audio source ends (a played file); a
    # caller who waits sends frames of digital silence
    if not sizes or sizes.count(320) < 0.95 * len(sizes) or any(n % 2 or n > 320 for n in sizes):
        failures.append(f"audio frame sizes {sorted(set(sizes))}, expected 320 (a few shorter)")
    span = audio[-1][0] - audio[0][0] if len(audio) > 10 else 0.0
    rate = (len(audio) - 1) / span if span else 0
    if not 45 <= rate <= 55:
        failures.append(f"{rate:.1f} audio frames per second, expected 50")
    reply = findings.exec_reply
    expected_keys = ("12" if scenario.caller == "speaks" else "") + ("" if scenario.hangs_up else "#")
    if findings.keys != expected_keys:
        failures.append(f"keys {findings.keys!r}, expected {expected_keys!r}")
    if scenario.hangs_up:
        if reply is None or (reply.code, reply.result) != (200, "-1"):
            failures.append(
                f"EXEC AudioSocket returned {reply} after the caller hung up, expected 200 result=-1"
            )
        if not isinstance(events[-1], MediaEof):
            failures.append(f"the caller's hang-up did not end the stream with EOF: {events[-1:]}")
    else:
        if reply is None or (reply.code, reply.result) != (200, "0"):
            failures.append(f"EXEC AudioSocket returned {reply}, expected 200 result=0")
        if [r.code for r in findings.after_exec] != [200, 200]:
            failures.append(f"the AGI session did not go on after EXEC: {findings.after_exec}")
        if ("UserEvent", "SUCCESS", "went-on") not in findings.agi_events:
            failures.append(
                f"the dialplan did not see the variable set after EXEC: {findings.agi_events[-1:]}"
            )
    if scenario.robot == "prompt":
        if findings.heard is None:
            failures.append("no recording of what the caller heard")
            return failures
        tone_db, rest_db = tone_level_db(findings.heard)
        if not tone_db > rest_db + 10:
            failures.append(
                f"the caller did not hear the tone: {tone_db:.1f} dB at {TONE_HZ} Hz vs {rest_db:.1f}"
            )
        heard_ms = tone_ms(
            findings.heard
        )  # key 1 stopped the prompt: the caller heard what was sent, no more
        if not 1000 <= findings.played_ms < TONE_S * 1000 or abs(heard_ms - findings.played_ms) > 60:
            failures.append(
                f"the caller heard {heard_ms} ms of the prompt, the writer sent {findings.played_ms} ms"
            )
    return failures


def summary(findings: Findings) -> str:
    audio = findings.audio
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(audio)]
    tone_db, rest_db = tone_level_db(findings.heard) if findings.heard else (math.nan, math.nan)
    return (
        f"{findings.scenario.name}: first {type(findings.media[0][1]).__name__ if findings.media else None}, "
        f"{len(audio)} audio frames {sorted({len(p) for _, p in audio})} bytes, median gap "
        f"{1000 * statistics.median(gaps) if gaps else math.nan:.1f} ms, keys {findings.keys!r}, last "
        f"{type(findings.media[-1][1]).__name__ if findings.media else None}; EXEC -> "
        f"{findings.exec_reply.text if findings.exec_reply else None}; after: "
        f"{[r.text for r in findings.after_exec]}; tone heard {tone_db:.1f} dB vs rest {rest_db:.1f} dB; "
        f"prompt sent {findings.played_ms} ms, heard {tone_ms(findings.heard) if findings.heard else None} ms"
    )


def run_checks(local: LocalAsterisk) -> dict[str, list[str]]:
    out = {}
    for scenario in SCENARIOS.values():
        findings = asyncio.run(one_call(local, scenario))
        print(summary(findings))
        out[scenario.name] = check(findings)
    return out


@pytest.mark.asterisk
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_audiosocket_facts_on_the_real_asterisk(local_asterisk: RunningAsterisk, scenario: str) -> None:
    findings = asyncio.run(one_call(local_asterisk.local, SCENARIOS[scenario]))
    assert check(findings) == [], summary(findings)


def main() -> int:
    """Check an Asterisk that is already running (``ivr asterisk up``) without restarting it."""
    from ivr.config import load_settings

    local = LocalAsterisk(load_settings())
    if local.pid() is None:
        print("the local Asterisk is not running (ivr asterisk up)")
        return 2
    results = run_checks(local)
    for scenario, failures in results.items():
        print(scenario, "OK" if not failures else failures)
    return 0 if not any(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
