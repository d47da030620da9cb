"""Real calls through the local Asterisk become regression tests (issue #18).

The robot (FastAGI, real Vosk in ko-KR, Rasa, pyttsx3, a demo database) keeps its recordings
(``IVR_KEEP_RECORDINGS=true``): Asterisk's ``RECORD FILE`` writes each caller turn into the shared spool.
Each call is placed through the local Asterisk (``ivr.asterisk.testcall``), exported from the robot's
transcript and the kept recordings (``ivr calls export``), filled in with the demo customer's test data
where the export left placeholders, and replayed through the harness against the same robot: the replay
must reach the original outcome with the same robot turns. One call is also recorded in stereo by
Asterisk itself (AMI ``MixMonitor`` with the ``D`` option on the robot's channel, as a production
dialplan would record the caller's line), imported (``ivr calls import``) and replayed the same way.
"""

from __future__ import annotations

import asyncio
import audioop
import dataclasses
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ivr.asterisk.ami import AmiClient
from ivr.asterisk.testcall import AsteriskCaller, AsteriskCallReport
from ivr.testing.callfile import CallFile, Expectation, Turn, load_call_file
from ivr.testing.export import export_call
from ivr.testing.harness import CallReport, ScriptedAsterisk
from ivr.testing.importer import import_recording
from ivr.testing.replay import RobotInThread, add_heard
from tests.conftest import RunningAsterisk, make_demo_db
from tests.test_zz_privacy import leaks_in_text

pytestmark = [pytest.mark.asterisk, pytest.mark.audio]

LOCALE = "ko-KR"
AUDIO = Path(__file__).parent / "calls" / "audio" / LOCALE / "audio"
DEMO_CALLER = "01012345678"  # C003, ID digits 6193
CALLER_SIDE = "left"  # MixMonitor's D option: what the channel reads (the caller, for the robot's channel) left


@dataclasses.dataclass
class Placed:
    call: CallFile
    report: AsteriskCallReport
    stereo: Path | None = None


@pytest.fixture(scope="module")
def robot(local_asterisk: RunningAsterisk, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RobotInThread]:
    root = tmp_path_factory.mktemp("export-asterisk")
    settings = dataclasses.replace(
        local_asterisk.settings, database_url=make_demo_db(root / "accounts.db"), locale=LOCALE, asr_dither=False,
        keep_recordings=True, transcripts_dir=root / "transcripts", lockout_failures=10_000,
    )
    robot = RobotInThread(settings, text_input=False).start()
    yield robot
    robot.stop()


def call_file(name: str, *turns: Turn) -> CallFile:
    return CallFile(Path(f"{name}.yaml"), DEMO_CALLER, LOCALE, tuple(turns), Expectation())


async def _record_stereo(ami: AmiClient, target: Path) -> None:
    """Start ``MixMonitor(<target>,D)`` on the robot's channel (the hotline half) as soon as it exists."""
    sub = ami.subscribe_async(lambda e: e.name == "Newchannel" and e.uniqueid.endswith("-robot"))
    try:
        event = await sub.next(60)
        await ami.aaction("MixMonitor", Channel=event.get("Channel"), File=str(target), Options="D")
    finally:
        ami.unsubscribe(sub)


@pytest.fixture(scope="module")
def placed(local_asterisk: RunningAsterisk, robot: RobotInThread) -> dict[str, Placed]:
    assert robot.robot is not None
    settings = robot.robot.settings
    calls = {
        # the four digits without '#': a '#' sent after them arrives while the robot already speaks, and
        # where it lands depends on timing, which a call file does not carry
        "balance": call_file("balance", Turn("audio", AUDIO / "balance_request.wav"), Turn("dtmf", "6193"),
                             Turn("audio", AUDIO / "thanks.wav")),
        "person": call_file("person", Turn("audio", AUDIO / "agent.wav")),
        # a noisy line (nothing heard), then goodbye: the robot ends the call
        "voice": call_file("voice", Turn("audio", AUDIO / "line_noise.wav"), Turn("audio", AUDIO / "goodbye.wav")),
    }
    stereo_dir = settings.spool_dir / "testcalls" / f"stereo-{uuid.uuid4().hex[:8]}"
    stereo_dir.mkdir(parents=True)
    os.chmod(stereo_dir, 0o777)  # Asterisk's user writes the recording

    async def place_all() -> dict[str, Placed]:
        creds = local_asterisk.local.ami_credentials()
        ami = AmiClient(creds.host, creds.port, creds.user, creds.secret)
        await ami.aconnect()
        out = {}
        try:
            async with AsteriskCaller(settings, ami=ami, agi_url=f"agi://127.0.0.1:{robot.port}/ivr") as caller:
                for name, call in calls.items():
                    stereo = stereo_dir / f"{name}.raw" if name == "voice" else None
                    placing = caller.place(call, timeout_s=150)
                    if stereo is None:
                        report = await placing
                    else:
                        report, _ = await asyncio.gather(placing, _record_stereo(ami, stereo))
                    out[name] = Placed(call, report, stereo)
        finally:
            await ami.aclose()
        return out

    result = asyncio.run(place_all())
    stereo = result["voice"].stereo
    assert stereo is not None
    deadline = time.monotonic() + 10  # MixMonitor closes its file once the channel is gone
    while time.monotonic() < deadline and not (stereo.exists() and stereo.stat().st_size > 8000):
        time.sleep(0.2)
    return result


def robot_lines(report: CallReport) -> list[str]:
    return [e["text"] for e in report.events if e["who"] == "robot" and e["text"]]


def replay(robot: RobotInThread, call: CallFile) -> CallReport:
    assert robot.robot is not None
    report = asyncio.run(ScriptedAsterisk(call, locale=LOCALE, text_mode=False).run("127.0.0.1", robot.port))
    add_heard(report, robot.robot.settings.transcripts_dir)
    assert not report.errors, report.errors
    return report


def transcript_id(robot: RobotInThread, report: AsteriskCallReport) -> str:
    assert robot.robot is not None
    (path,) = robot.robot.settings.transcripts_dir.glob(f"*/{report.channel_id}-*.jsonl")
    return path.stem


@pytest.mark.parametrize("name, said", [("balance", "본인 확인이 완료되었습니다"), ("person", "상담원에게 연결"),
                                        ("voice", "말씀을 듣지 못했습니다")])
def test_a_call_through_asterisk_exported_replays_to_its_outcome_and_robot_turns(
    placed: dict[str, Placed], robot: RobotInThread, tmp_path: Path, name: str, said: str
) -> None:
    """Whatever the robot made of the call (Vosk's reading of this synthetic voice through Asterisk varies
    with where a recording starts: "고마워요" came through as "고마워요 일" in one run and "또 만 라고요 일"
    in another), the export replays it: the recordings are the very audio the robot heard."""
    original = placed[name].report
    assert original.errors == [] and original.outcome != "error", original.to_json()
    assert said in "\n".join(robot_lines(original))
    outcome = original.outcome
    assert robot.robot is not None
    call_id = transcript_id(robot, original)
    result = export_call(robot.robot.settings, call_id, tmp_path)
    spoken = sum(t.kind == "audio" for t in placed[name].call.turns)
    assert len(result.audio) == spoken  # Asterisk's own recordings of the caller, kept in the spool
    text = result.call_file.read_text(encoding="utf-8")
    assert leaks_in_text(text, str(result.call_file)) == []  # neither the caller's number nor the keyed digits
    filled = re.sub(r'^caller_id: "<fill in[^"]*"', f'caller_id: "{DEMO_CALLER}"', text, flags=re.M)
    filled = re.sub(r'dtmf: "<fill in[^"]*"', 'dtmf: "6193"', filled)
    result.call_file.write_text(filled, encoding="utf-8")
    exported = load_call_file(result.call_file)
    assert exported.expect.outcome == outcome

    replayed = replay(robot, exported)
    assert replayed.outcome == original.outcome
    assert robot_lines(replayed) == robot_lines(original)
    assert replayed.failures(exported) == []


def test_a_mixmonitor_stereo_recording_is_imported_and_replays(
    placed: dict[str, Placed], robot: RobotInThread, tmp_path: Path
) -> None:
    original = placed["voice"].report
    stereo = placed["voice"].stereo
    assert stereo is not None and stereo.exists(), "MixMonitor wrote no recording"
    frames = stereo.read_bytes()
    left, right = audioop.tomono(frames, 2, 1, 0), audioop.tomono(frames, 2, 0, 1)
    assert audioop.rms(left, 2) > 100 and audioop.rms(right, 2) > 100  # both sides of the call are there

    result = import_recording(stereo, tmp_path, locale=LOCALE, caller_channel=CALLER_SIDE, caller_id=DEMO_CALLER)
    assert len(result.segments) == 2, result.segments  # the caller's two utterances, nothing of the robot
    imported = load_call_file(result.call_file)
    replayed = replay(robot, imported)
    assert replayed.outcome == original.outcome
    assert robot_lines(replayed) == robot_lines(original)
    # the robot's side is not the caller: imported from it, the turns are the robot's prompts
    other = import_recording(stereo, tmp_path / "other", locale=LOCALE,
                             caller_channel="right" if CALLER_SIDE == "left" else "left")
    assert len(other.segments) != 2 or other.segments != result.segments
