"""Every recorded call in tests/calls/ replayed against the real robot, checked against its golden.

- ``tests/calls/text/<locale>/*.yaml``: replayed with ``--text`` (the caller's words reach the real
  Rasa dialogue as recognized text; keypad, prompts, account store and synthesis are the real path).
- ``tests/calls/audio/<locale>/*.yaml``: replayed in audio mode, with real Vosk recognition of the
  caller's synthesized or recorded speech (ko-KR: the one locale whose Vosk model installs here).

Each call must meet its own ``expect`` and produce exactly its golden transcript
(``<name>.golden.json``). After an intended change: ``IVR_UPDATE_GOLDENS=1 pytest tests/test_replay_calls.py``.
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
from ivr.testing.harness import ScriptedAsterisk
from ivr.testing.replay import RobotInThread
from tests.conftest import make_demo_db

CALLS = Path(__file__).parent / "calls"
UPDATE = os.environ.get("IVR_UPDATE_GOLDENS") == "1"


def call_files(mode: str) -> list[Path]:
    return sorted((CALLS / mode).glob("*/*.yaml"))


def robot_settings(base: Settings, root: Path) -> Settings:
    # Many calls share one database: keep the cross-call lockout out of the way here
    # (it has its own tests); the per-call limit of three attempts still applies.
    return dataclasses.replace(base, database_url=make_demo_db(root / "accounts.db"), lockout_failures=10_000)


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
    assert report.failures(call) == [], json.dumps(report.to_json(), ensure_ascii=False, indent=1)
    golden_path = path.with_suffix(".golden.json")
    actual = {k: v for k, v in report.to_json().items() if k != "call"}
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


def test_every_locale_has_recorded_calls() -> None:
    locales = {p.parent.name for p in call_files("text")}
    assert locales == {"zh-CN", "en-US", "ko-KR"}
    assert {p.parent.name for p in call_files("audio")} == {"ko-KR"}
