"""Every recorded call in tests/calls/ replayed against the real robot, checked against its golden.

- ``tests/calls/text/<locale>/*.yaml``: replayed with ``--text`` (the caller's words reach the real
  Rasa dialogue as recognized text; keypad, prompts, account store and synthesis are the real path).
- ``tests/calls/audio/<locale>/*.yaml``: replayed in audio mode, with real Vosk recognition of the
  caller's synthesized or recorded speech (ko-KR: the one locale whose Vosk model installs here).

Each call must meet its own ``expect`` and produce exactly its golden transcript
(``<name>.golden.json``). After an intended change: ``IVR_UPDATE_GOLDENS=1 pytest tests/test_replay_calls.py``.

A golden records the intended behaviour, never a failure: every audio call states the outcome it must
reach (``expect: outcome``), so a golden regenerated from a misrecognized call fails its own ``expect``.
In audio mode each caller event also carries ``heard``: what the robot recognized, from its own masked
transcript (``ivr.testing.replay.add_heard``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ivr.config import Settings
from ivr.testing.callfile import load_call_file
from ivr.testing.harness import CallReport, ScriptedAsterisk
from ivr.testing.replay import RobotInThread, add_heard, replay_settings
from tests.conftest import make_demo_db

CALLS = Path(__file__).parent / "calls"
UPDATE = os.environ.get("IVR_UPDATE_GOLDENS") == "1"


def call_files(mode: str) -> list[Path]:
    return sorted((CALLS / mode).glob("*/*.yaml"))


def robot_settings(base: Settings, root: Path) -> Settings:
    # Many calls share one database: keep the cross-call lockout out of the way here
    # (it has its own tests); the per-call limit of three attempts still applies.
    settings = replay_settings(base)  # what `ivr replay` runs with
    return dataclasses.replace(settings, database_url=make_demo_db(root / "accounts.db"), lockout_failures=10_000)


@pytest.fixture(scope="module")
def text_robot(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RobotInThread]:
    robot = RobotInThread(robot_settings(base_settings, tmp_path_factory.mktemp("text")), text_input=True).start()
    yield robot
    robot.stop()


@pytest.fixture(scope="module")
def audio_robot(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RobotInThread]:
    robot = RobotInThread(robot_settings(base_settings, tmp_path_factory.mktemp("audio")), text_input=False).start()
    yield robot
    robot.stop()


async def replay_and_compare(path: Path, robot: RobotInThread, *, text_mode: bool) -> None:
    call = load_call_file(path)
    assert robot.robot is not None
    render = robot.robot.parts.synthesizer.render
    peer = ScriptedAsterisk(call, locale=call.locale or "zh-CN", text_mode=text_mode, speech=render)
    report = await peer.run("127.0.0.1", robot.port)
    if not text_mode:
        add_heard(report, robot.robot.settings.transcripts_dir)
        unheard = [e for e in report.events if e.get("kind") in ("audio", "say") and "heard" not in e]
        assert not unheard, "caller speech without what the robot heard"
    assert report.failures(call) == [], json.dumps(report.to_json(), ensure_ascii=False, indent=1)
    golden_path = path.with_suffix(".golden.json")
    actual = report.golden()
    if UPDATE or not golden_path.exists():
        golden_path.write_text(json.dumps(actual, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        if not UPDATE:
            pytest.fail(f"{golden_path.name} did not exist and was written: check it and commit it")
    golden = json.loads(golden_path.read_text(encoding="utf-8"))
    assert actual == golden


@pytest.mark.parametrize("path", call_files("text"), ids=lambda p: f"{p.parent.name}/{p.stem}")
async def test_text_replay(path: Path, text_robot: RobotInThread) -> None:
    await replay_and_compare(path, text_robot, text_mode=True)


@pytest.mark.audio
@pytest.mark.parametrize("path", call_files("audio"), ids=lambda p: f"{p.parent.name}/{p.stem}")
async def test_audio_replay(path: Path, audio_robot: RobotInThread) -> None:
    await replay_and_compare(path, audio_robot, text_mode=False)


@pytest.mark.parametrize("path", call_files("audio"), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_audio_call_states_its_intended_outcome(path: Path) -> None:
    # Without it, a golden of a misrecognized call (the caller asks for a person, the robot never
    # transfers) would pass as long as the robot kept misrecognizing.
    assert load_call_file(path).expect.outcome is not None, f"{path.name}: add expect: outcome"


def test_every_locale_has_recorded_calls() -> None:
    locales = {p.parent.name for p in call_files("text")}
    assert locales == {"zh-CN", "en-US", "ko-KR"}
    # ko-KR: the one speech model installed here; zh-CN: a locale without one, served by keypad
    assert {p.parent.name for p in call_files("audio")} == {"ko-KR", "zh-CN"}


def test_add_heard_pairs_each_caller_turn_with_the_robots_transcript(tmp_path: Path) -> None:
    day = tmp_path / "2026-11-28"
    day.mkdir()
    lines = [
        {"who": "robot", "text": "무엇을 도와드릴까요?"},
        {"who": "caller", "text": "잔액", "confidence": 1.0, "intent": "ask_balance"},
        {"who": "caller", "text": "****", "keypad": True},
        {"who": "system", "text": "", "outcome": "caller_hangup"},
    ]
    transcript = day / "1764300000_7-0a1b2c3d.jsonl"
    transcript.write_text("\n".join(json.dumps(e, ensure_ascii=False) for e in lines) + "\n", encoding="utf-8")
    events = [
        {"who": "robot", "text": "무엇을 도와드릴까요?"},
        {"who": "caller", "text": "", "kind": "audio", "file": "balance.wav"},
        {"who": "caller", "text": "*****", "kind": "dtmf"},
        {"who": "caller", "text": "", "kind": "hangup"},
    ]
    report = CallReport("balance", events=[dict(e) for e in events], unique_id="1764300000.7")
    add_heard(report, tmp_path)
    assert report.errors == []
    assert report.events[1] == {**events[1], "heard": "잔액", "intent": "ask_balance"}
    assert report.events[2] == {**events[2], "heard": "****"}
    assert report.events[3] == events[3]  # a hang-up is no turn the robot listened to

    # A turn the robot did not log (or one too many) is an error of the replay, not a silent shift.
    transcript.write_text("\n".join(json.dumps(e, ensure_ascii=False) for e in lines[:2]) + "\n", encoding="utf-8")
    short = CallReport("balance", events=[dict(e) for e in events], unique_id="1764300000.7")
    add_heard(short, tmp_path)
    assert short.errors == ["the robot logged 1 caller turns, the caller took 2"]
    assert all("heard" not in e for e in short.events)

    missing = CallReport("other", events=[dict(e) for e in events], unique_id="1764300000.8")
    add_heard(missing, tmp_path)
    assert missing.errors and "no transcript" in missing.errors[0]


SPEECH_FAILURES = ("asr_failed", "recording_failed", "no_speech_model")


def test_no_recorded_call_is_transferred_because_speech_failed() -> None:
    """The keypad serves when speech fails: across every recorded call's intended behaviour, no call
    ends with a person for a speech failure alone."""
    goldens = sorted(CALLS.rglob("*.golden.json"))
    assert len(goldens) >= 20
    for golden in goldens:
        data = json.loads(golden.read_text(encoding="utf-8"))
        assert not (data["outcome"] == "transfer" and data["transfer_reason"] in SPEECH_FAILURES), golden
