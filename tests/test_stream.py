"""Stream mode (AudioSocket, full duplex) on the real robot: real Vosk (ko-KR), the Silero VAD, paced
audio both ways in real time; the harness plays Asterisk's side of AudioSocket (ivr/testing/audiosocket_peer.py).

The recorded calls in tests/calls/stream/ show barge-in by speech and by keys, noise that must not stop a
prompt, and a hang-up mid-prompt. Their goldens keep everything but how much of an interrupted prompt
the caller heard (real-time jitter): that is checked against when the caller started instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ivr.config import Settings
from ivr.testing.callfile import load_call_file
from ivr.testing.harness import ScriptedAsterisk
from ivr.testing.replay import RobotInThread, add_heard, replay_settings
from tests.conftest import make_demo_db

CALLS = Path(__file__).parent / "calls" / "stream"
AUDIO_CALLS = Path(__file__).parent / "calls" / "audio" / "ko-KR"
UPDATE = os.environ.get("IVR_UPDATE_GOLDENS") == "1"
STOP_WITHIN_S = 0.6  # a barge-in stops the prompt within this of the caller starting (frames + VAD onset)

pytestmark = [pytest.mark.audio, pytest.mark.slow, pytest.mark.realtime]


@pytest.fixture(scope="module")
def stream_robot(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RobotInThread]:
    root = tmp_path_factory.mktemp("stream")
    settings = dataclasses.replace(
        replay_settings(base_settings), database_url=make_demo_db(root / "accounts.db"), lockout_failures=10_000,
        media="stream", audiosocket_port=0,
    )
    robot = RobotInThread(settings, text_input=False).start()
    yield robot
    robot.stop()


@pytest.mark.parametrize("path", sorted(CALLS.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.stem}")
async def test_stream_call(path: Path, stream_robot: RobotInThread) -> None:
    call = load_call_file(path)
    robot = stream_robot.robot
    assert robot is not None
    peer = ScriptedAsterisk(call, locale=call.locale or "ko-KR", text_mode=False, speech=robot.parts.synthesizer.render,
                            sounds_dir=robot.settings.sounds_dir, timeout_s=120)
    report = await peer.run("127.0.0.1", stream_robot.port)
    assert report.failures(call) == [], json.dumps(report.to_json(), ensure_ascii=False, indent=1)
    # every caller turn started during a prompt stopped that prompt soon after, or the turn is noise
    barges = [t.during_prompt for t in call.turns if t.during_prompt is not None and t.kind != "hangup"]
    interrupted = [e for e in report.events if e["who"] == "robot" and e.get("interrupted")]
    for event, during in zip(interrupted, barges, strict=False):
        assert during <= event["heard_s"] <= during + STOP_WITHIN_S, event
    assert all(s <= STOP_WITHIN_S for s in report.barge_in_stops_s), report.barge_in_stops_s
    golden_path = path.with_suffix(".golden.json")
    actual = report.golden(cut_prompts_heard=False)
    if UPDATE or not golden_path.exists():
        golden_path.write_text(json.dumps(actual, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        if not UPDATE:
            pytest.fail(f"{golden_path.name} did not exist and was written: check it and commit it")
    assert actual == json.loads(golden_path.read_text(encoding="utf-8"))


def test_every_stream_call_states_its_intended_outcome() -> None:
    paths = sorted(CALLS.glob("*/*.yaml"))
    assert len(paths) >= 4
    for path in paths:
        call = load_call_file(path)
        assert call.expect.outcome and call.agi_params.get("media") == "stream", path


# Every record-mode audio golden holds in stream mode. The Korean model reads most espeak-ng recordings
# differently when 20 ms more or less of silence precede the speech; the recordings it would otherwise
# read differently start with the stream path's lead-in, so both modes hear the same audio
# (tests/calls/audio/ko-KR/audio/record.sh).
AUDIO_GOLDENS = sorted(p.stem for p in AUDIO_CALLS.glob("*.yaml"))


def behaviour(golden: dict[str, Any]) -> dict[str, Any]:
    """What must be the same in both modes: the outcome, what the robot said (and whether it was cut),
    how each caller turn was understood."""
    events = [
        (e["who"], e.get("text", "") if e["who"] == "robot" else e.get("kind"), e.get("interrupted"), e.get("intent"))
        for e in golden["events"]
    ]
    return {"outcome": golden["outcome"], "transfer_reason": golden["transfer_reason"], "events": events}


@pytest.mark.parametrize("name", AUDIO_GOLDENS)
async def test_record_mode_audio_golden_holds_in_stream_mode(name: str, stream_robot: RobotInThread) -> None:
    path = AUDIO_CALLS / f"{name}.yaml"
    call = dataclasses.replace(load_call_file(path), agi_params={"media": "stream"})
    robot = stream_robot.robot
    assert robot is not None
    peer = ScriptedAsterisk(call, locale="ko-KR", text_mode=False, speech=robot.parts.synthesizer.render,
                            sounds_dir=robot.settings.sounds_dir, timeout_s=120)
    report = await peer.run("127.0.0.1", stream_robot.port)
    add_heard(report, robot.settings.transcripts_dir)
    assert report.media == "stream" and report.failures(call) == [], report.to_json()
    golden = json.loads(path.with_suffix(".golden.json").read_text(encoding="utf-8"))
    assert behaviour(report.golden()) == behaviour(golden)
