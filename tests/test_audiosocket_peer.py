"""The harness's AudioSocket peer names the robot's prompts by their audio: here without a robot, frames
fed as they would arrive."""

from __future__ import annotations

import wave
from pathlib import Path
from types import SimpleNamespace

from ivr.media.audiosocket import FRAME_BYTES, SILENCE_FRAME
from ivr.testing.audiosocket_peer import MediaPeer


def frame(value: int) -> bytes:
    return value.to_bytes(2, "little", signed=True) * (FRAME_BYTES // 2)


def write_prompt(path: Path, text: str, frames: list[bytes]) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"".join(frames))
    path.with_suffix(".txt").write_text(text, encoding="utf-8")


def peer(sounds: Path) -> MediaPeer:
    report = SimpleNamespace(events=[], errors=[], perceived_latencies_s=[], barge_in_stops_s=[])
    return MediaPeer(report, [], "ko-KR", sounds, None)


def test_a_prompt_rendered_during_the_call_that_starts_like_a_known_one_is_named(tmp_path: Path) -> None:
    # TTS prompts often share their first frames; the second one is rendered only when the robot says it
    shared = [SILENCE_FRAME, frame(100), frame(200), frame(300)]
    apology = [*shared, frame(400), frame(500), SILENCE_FRAME]
    confirm = [*shared, frame(-400), frame(-500), frame(-600), SILENCE_FRAME]
    write_prompt(tmp_path / "apology.wav", "apology", apology)
    media = peer(tmp_path)
    for f in confirm[:3]:
        media._robot_frame(f)
    write_prompt(tmp_path / "confirm.wav", "did you say …?", confirm)
    for f in [*confirm[3:], SILENCE_FRAME, SILENCE_FRAME]:
        media._robot_frame(f)
    assert media.report.errors == []
    assert media.report.events == [{"who": "robot", "text": "did you say …?", "interrupted": False, "heard_s": 0.16}]


def test_a_cut_prompt_is_still_a_cut_prompt(tmp_path: Path) -> None:
    apology = [SILENCE_FRAME, frame(100), frame(200), frame(300), frame(400), SILENCE_FRAME]
    write_prompt(tmp_path / "apology.wav", "apology", apology)
    media = peer(tmp_path)
    for f in [*apology[:3], SILENCE_FRAME, SILENCE_FRAME]:
        media._robot_frame(f)
    assert media.report.errors == []
    assert media.report.events == [{"who": "robot", "text": "apology", "interrupted": True, "heard_s": 0.06}]


def test_frames_lost_on_the_way_do_not_make_another_prompt(tmp_path: Path) -> None:
    """A busy Asterisk may drop a few frames of a prompt: the caller still heard that prompt, to its end."""
    greeting = [SILENCE_FRAME, *(frame(100 * i) for i in range(1, 9)), SILENCE_FRAME]
    write_prompt(tmp_path / "greeting.wav", "hello", greeting)
    media = peer(tmp_path)
    for f in [*greeting[:3], *greeting[6:], SILENCE_FRAME, SILENCE_FRAME]:  # frames 3-5 never arrived
        media._robot_frame(f)
    assert media.report.errors == [] and media.frames_lost == 3
    assert media.report.events == [{"who": "robot", "text": "hello", "interrupted": False, "heard_s": 0.2}]


def test_a_caller_bridged_late_hears_the_greeting_from_further_on_but_no_later_prompt(tmp_path: Path) -> None:
    """Through a busy Asterisk the caller's leg may join after the robot's greeting began: its first frames
    are a known prompt's middle, which is that prompt heard late, not foreign audio. Only for the first
    prompt: later, audio that starts in a prompt's middle is still no known prompt."""
    greeting = [SILENCE_FRAME, *(frame(100 * i) for i in range(1, 9)), SILENCE_FRAME]
    other = [SILENCE_FRAME, *(frame(-100 * i) for i in range(1, 9)), SILENCE_FRAME]
    write_prompt(tmp_path / "greeting.wav", "hello", greeting)
    write_prompt(tmp_path / "other.wav", "other", other)
    media = peer(tmp_path)
    for f in [*greeting[5:], SILENCE_FRAME, SILENCE_FRAME]:  # frames 0-4 played before the caller's leg joined
        media._robot_frame(f)
    assert media.report.errors == [] and media.frames_lost == 4
    assert media.report.events == [{"who": "robot", "text": "hello", "interrupted": False, "heard_s": 0.2}]
    for f in [*other[5:], SILENCE_FRAME]:
        media._robot_frame(f)
    assert media.report.errors == ["the robot played audio that is no known prompt"]
