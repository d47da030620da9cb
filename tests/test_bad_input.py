"""Caller input that is not what the robot asked for: a monologue, noise, an unknown locale."""

from __future__ import annotations

import random
import wave
from pathlib import Path

from ivr.config import Settings
from ivr.testing.callfile import CallFile, Expectation, Turn
from ivr.testing.harness import ScriptedAsterisk
from ivr.testing.replay import running_robot


def noise_wav(path: Path, seconds: float, seed: int = 7) -> Path:
    rng = random.Random(seed)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"".join(rng.randint(-3000, 3000).to_bytes(2, "little", signed=True) for _ in range(int(8000 * seconds))))
    return path


async def test_a_60_second_monologue_is_cut_at_the_recording_limit_and_the_call_goes_on(
    demo_settings: Settings, tmp_path: Path
) -> None:
    monologue = noise_wav(tmp_path / "monologue.wav", 60.0)
    call = CallFile(tmp_path / "m.yaml", "01012345678", "ko-KR",
                    (Turn("audio", monologue), Turn("audio", monologue), Turn("hangup", True)), Expectation())
    async with running_robot(demo_settings, text_input=False) as (host, port, _robot):
        report = await ScriptedAsterisk(call, locale="ko-KR", text_mode=False).run(host, port)
    cut = [e for e in report.events if e.get("kind") == "audio"]
    assert [e["truncated_to_s"] for e in cut] == [demo_settings.record_max_s] * 2
    assert report.answered and report.outcome == "caller_hangup"
    robot_lines = [e["text"] for e in report.events if e["who"] == "robot"]
    assert len(robot_lines) >= 3  # greeted, and answered each monologue: never silence
    assert not list(demo_settings.spool_dir.glob("*.wav"))  # recordings removed after recognition


async def test_unknown_locale_in_the_agi_url_gets_the_default_language(demo_settings: Settings) -> None:
    call = CallFile(Path("x.yaml"), "13800000001", None, (Turn("hangup", True),), Expectation())
    async with running_robot(demo_settings, text_input=True) as (host, port, robot):
        report = await ScriptedAsterisk(call, locale="xx-XX", text_mode=True).run(host, port)
        greeting = robot.parts.prompts.text("utter_greet", demo_settings.locale)
    assert report.answered
    assert (report.events[0]["who"], report.events[0]["text"]) == ("robot", greeting)
