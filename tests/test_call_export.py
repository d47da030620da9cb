"""Finished calls as regression tests (issue #18): `ivr calls list/export/import`, the release check.

The calls here go through the replay harness to real robots (ko-KR: real Vosk, real Rasa, real prompts,
a demo SQLite database) that keep their recordings (``IVR_KEEP_RECORDINGS=true``) in a spool and write
transcripts to folders of this module's own; the Asterisk versions are in tests/test_call_export_asterisk.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import stat
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ivr.cli import main
from ivr.config import Settings
from ivr.testing.callfile import CallFile, CallFileError, load_call_file
from ivr.testing.export import CALL_DATA_HEADER, ExportError, export_call, find_call, list_calls
from ivr.testing.harness import CallReport, ScriptedAsterisk
from ivr.testing.importer import RecordingImportError, import_recording, speech_segments
from ivr.testing.replay import RobotInThread, add_heard, replay_settings
from tests.conftest import make_demo_db
from tests.test_zz_privacy import leaks_in_text

CALLS = Path(__file__).parent / "calls"
KO_AUDIO = CALLS / "audio" / "ko-KR"
DEMO_CALLER = "01012345678"  # C003, ID digits 6193
ID_DIGITS = "6193"


def keeping_settings(base: Settings, root: Path) -> Settings:
    """A robot that keeps its recordings, with spool and transcripts of its own."""
    return dataclasses.replace(
        replay_settings(base), database_url=make_demo_db(root / "accounts.db"), spool_dir=root / "spool",
        transcripts_dir=root / "transcripts", keep_recordings=True, lockout_failures=10_000,
    )


@pytest.fixture(scope="module")
def audio_robot(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RobotInThread]:
    robot = RobotInThread(keeping_settings(base_settings, tmp_path_factory.mktemp("audio")), text_input=False)
    yield robot.start()
    robot.stop()


@pytest.fixture(scope="module")
def text_robot(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RobotInThread]:
    robot = RobotInThread(keeping_settings(base_settings, tmp_path_factory.mktemp("text")), text_input=True)
    yield robot.start()
    robot.stop()


def place(robot: RobotInThread, call: CallFile, *, text_mode: bool) -> CallReport:
    assert robot.robot is not None
    peer = ScriptedAsterisk(call, locale=call.locale or "ko-KR", text_mode=text_mode)
    report = asyncio.run(peer.run("127.0.0.1", robot.port))
    add_heard(report, robot.robot.settings.transcripts_dir)
    assert not report.errors, report.errors
    return report


def robot_lines(report: CallReport) -> list[str]:
    return [e["text"] for e in report.events if e["who"] == "robot"]


def call_id_of(robot: RobotInThread, report: CallReport) -> str:
    assert robot.robot is not None
    stem = re.sub(r"[^0-9A-Za-z_-]", "_", report.unique_id)
    (path,) = robot.robot.settings.transcripts_dir.glob(f"*/{stem}-*.jsonl")
    return path.stem


def fill_in(path: Path, *, caller_id: str = DEMO_CALLER, keys: str = ID_DIGITS) -> CallFile:
    """What the developer does with an export: test data in place of each placeholder."""
    text = path.read_text(encoding="utf-8")
    text = re.sub(r'^caller_id: "<fill in[^"]*"', f'caller_id: "{caller_id}"', text, flags=re.M)
    text = re.sub(r'dtmf: "<fill in[^"]*"', f'dtmf: "{keys}"', text)
    path.write_text(text, encoding="utf-8")
    return load_call_file(path)


def assert_owner_only(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is readable by others ({oct(mode)})"


# ---------------------------------------------------------------- export, then replay
def test_an_exported_audio_call_replays_to_the_same_outcome_and_robot_turns(
    audio_robot: RobotInThread, tmp_path: Path
) -> None:
    original = place(audio_robot, load_call_file(KO_AUDIO / "balance_keypad.yaml"), text_mode=False)
    assert original.outcome == "completed"
    assert audio_robot.robot is not None
    settings = audio_robot.robot.settings
    call_id = call_id_of(audio_robot, original)

    result = export_call(settings, call_id, tmp_path / "export")
    text = result.call_file.read_text(encoding="utf-8")
    assert text.splitlines()[0] == CALL_DATA_HEADER
    assert_owner_only(tmp_path / "export")
    assert len(result.audio) == 2  # the two spoken turns; the keys are a placeholder
    with pytest.raises(CallFileError, match="placeholder left by `ivr calls export`"):
        load_call_file(result.call_file)  # not replayable before the placeholders are filled in
    assert DEMO_CALLER not in text and ID_DIGITS not in text
    for wav in result.audio:
        with wave.open(str(wav)) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)

    exported = fill_in(result.call_file)
    assert [t.kind for t in exported.turns] == ["audio", "dtmf", "audio"]
    assert exported.expect.outcome == "completed"
    replayed = place(audio_robot, exported, text_mode=False)
    assert replayed.outcome == original.outcome
    assert robot_lines(replayed) == robot_lines(original)
    assert [e.get("heard") for e in replayed.events if e["who"] == "caller"] == \
        [e.get("heard") for e in original.events if e["who"] == "caller"]
    assert replayed.failures(exported) == []  # the export's own expect holds


def test_spoken_id_digits_are_never_exported_as_audio_or_text(text_robot: RobotInThread, tmp_path: Path) -> None:
    """The caller says the ID digits ("육 일 구 삼"): its recording is kept in the spool, but the export
    holds a placeholder turn in its place, never the recording nor the words, and says so."""
    call = load_call_file(CALLS / "text" / "ko-KR" / "transactions_voice_digits.yaml")
    original = place(text_robot, call, text_mode=True)
    assert original.outcome == "completed"
    assert text_robot.robot is not None
    settings = text_robot.robot.settings
    call_id = call_id_of(text_robot, original)
    assert (settings.spool_dir / f"{call_id}-2.wav").is_file()  # the spoken digits' recording was kept

    for text_only in (False, True):
        out = tmp_path / f"export-{text_only}"
        result = export_call(settings, call_id, out, text_only=text_only)
        assert not (out / "audio" / f"{call_id}-2.wav").exists()
        assert len(result.audio) == (0 if text_only else 3)
        for path in out.rglob("*"):
            if path.is_file():
                # ID digits and phone numbers of the demo customers, however written ("육 일 구 삼" too)
                assert leaks_in_text(path.read_bytes().decode("utf-8", errors="replace"), str(path)) == []
        turn2 = yaml.safe_load(result.call_file.read_text(encoding="utf-8"))["turns"][1]
        assert turn2 == {"dtmf": "<fill in: the secret the caller said (its recording is not exported)>"}
        assert any("secret" in note for note in result.notes), result.notes  # and the export says so

    # the anonymized (text-only) export, filled in with the test customer's digits, is the same call
    exported = fill_in(tmp_path / "export-True" / f"{call_id}.yaml")
    assert [t.kind for t in exported.turns] == ["say", "dtmf", "say", "say"]
    replayed = place(text_robot, exported, text_mode=True)
    assert (replayed.outcome, robot_lines(replayed)) == (original.outcome, robot_lines(original))


def test_calls_list_filters_and_the_masked_id_from_asterisks_log_finds_the_call(
    text_robot: RobotInThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    human = place(text_robot, load_call_file(CALLS / "text" / "ko-KR" / "human.yaml"), text_mode=True)
    assert human.outcome == "transfer"
    assert text_robot.robot is not None
    settings = text_robot.robot.settings
    call_id = call_id_of(text_robot, human)
    transfers = list_calls(settings.transcripts_dir, outcome="transfer")
    assert call_id in [c.call_id for c in transfers]
    assert all(c.outcome == "transfer" for c in transfers)
    (summary,) = [c for c in transfers if c.call_id == call_id]
    assert summary.locale == "ko-KR" and summary.intents
    assert call_id in [c.call_id for c in list_calls(settings.transcripts_dir, intent=summary.intents[0])]
    assert call_id not in [c.call_id for c in list_calls(settings.transcripts_dir, intent="no_such_intent")]
    masked = re.sub(r"\d(?=\d{4})", "*", call_id)  # how Asterisk's log and the robot's logs show it
    assert masked != call_id and find_call(settings.transcripts_dir, masked).stem == call_id
    with pytest.raises(ExportError, match="no transcript of a call"):
        find_call(settings.transcripts_dir, "nosuchcall")

    env = {"IVR_TRANSCRIPTS_DIR": str(settings.transcripts_dir), "IVR_SPOOL_DIR": str(settings.spool_dir)}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        assert main(["calls", "list", "--outcome", "transfer", "--json"]) == 0
        listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert call_id in [c["call_id"] for c in listed]
        out = tmp_path / "cli"
        assert main(["calls", "export", masked, "--out", str(out), "--caller-id", DEMO_CALLER]) == 0
    exported = load_call_file(out / f"{call_id}.yaml")  # no placeholder left: the human call has no secret
    assert exported.caller_id == DEMO_CALLER and exported.expect.outcome == "transfer"


# ---------------------------------------------------------------- import a recording
def write_wav(path: Path, frames: bytes, *, channels: int = 1, rate: int = 8000) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)


def read_frames(path: Path) -> bytes:
    with wave.open(str(path)) as w:
        return w.readframes(w.getnframes())


def test_voice_activity_splits_the_callers_channel_into_turns(tmp_path: Path) -> None:
    """A stereo recording built from two real utterances on the right channel, with the robot's loud
    prompt on the left: only the caller's side is cut, at its pauses."""
    import audioop

    a = read_frames(KO_AUDIO / "audio" / "balance_request.wav")
    b = read_frames(KO_AUDIO / "audio" / "thanks.wav")
    robot = read_frames(KO_AUDIO / "audio" / "agent.wav")
    pause = b"\x00\x00" * 8000 * 2
    caller = pause + a + pause + b + pause
    other = (robot + b"\x00\x00" * len(caller))[: len(caller)]
    stereo = audioop.add(audioop.tostereo(other, 2, 1, 0), audioop.tostereo(caller, 2, 0, 1), 2)
    write_wav(tmp_path / "call.wav", stereo, channels=2)

    with pytest.raises(RecordingImportError, match="--caller-channel"):
        import_recording(tmp_path / "call.wav", tmp_path / "out", locale="ko-KR")
    result = import_recording(tmp_path / "call.wav", tmp_path / "out", locale="ko-KR", caller_channel="right")
    assert len(result.segments) == 2
    assert abs(result.segments[0].start_s - 2.0) < 0.4 and abs(result.segments[1].start_s - (4.0 + len(a) / 16000)) < 0.4
    call = load_call_file(result.call_file)
    assert [t.kind for t in call.turns] == ["audio", "audio"] and call.locale == "ko-KR"
    assert result.call_file.read_text(encoding="utf-8").splitlines()[0] == CALL_DATA_HEADER
    assert_owner_only(tmp_path / "out")
    # mono, the caller alone: the same turns
    write_wav(tmp_path / "mono.wav", caller)
    mono = import_recording(tmp_path / "mono.wav", tmp_path / "mono", locale="ko-KR")
    assert mono.segments == result.segments
    # a pause shorter than the recorder's silence wait (here the utterances' own quiet ends, ~0.6 s) stays
    # inside one turn; with a shorter wait it splits
    assert len(speech_segments(a + b)) == 1
    assert len(speech_segments(a + b, gap_s=0.3)) == 2


def test_an_imported_recording_replays(audio_robot: RobotInThread, tmp_path: Path) -> None:
    """Mono at 16 kHz (resampled), two utterances the robot understands: the import replays as the
    original call file does."""
    import audioop

    pause = b"\x00\x00" * 8000 * 2
    frames = pause + read_frames(KO_AUDIO / "audio" / "agent.wav") + pause
    up, _ = audioop.ratecv(frames, 2, 1, 8000, 16000, None)
    write_wav(tmp_path / "agent16k.wav", up, rate=16000)
    result = import_recording(tmp_path / "agent16k.wav", tmp_path / "out", locale="ko-KR", caller_id=DEMO_CALLER)
    report = place(audio_robot, load_call_file(result.call_file), text_mode=False)
    original = place(audio_robot, load_call_file(KO_AUDIO / "human.yaml"), text_mode=False)
    assert report.outcome == original.outcome == "transfer", report.events
    assert robot_lines(report) == robot_lines(original)
