"""Call files: a malformed one gets a clear error naming the file and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from ivr.testing.callfile import CallFileError, load_call_file
from ivr.testing.harness import write_silence

CALLS = Path(__file__).parent / "calls"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "call.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("caller_id: [1\n", "not valid YAML"),
        ("- a list\n", "top level"),
        ("caller_id: '1'\nturns: {say: hi}\n", "turns: must be a list"),
        ("turns:\n  - shout: hi\n", "turn 1: unknown turn 'shout'"),
        ("turns:\n  - say: ''\n", "turn 1: say needs non-empty text"),
        ("turns:\n  - dtmf: '12x'\n", "turn 1: dtmf keys"),
        ("turns:\n  - silence: -1\n", "turn 1: silence needs seconds"),
        ("turns:\n  - hangup: false\n", "turn 1: hangup must be true"),
        ("turns:\n  - audio: missing.wav\n", "turn 1: audio file"),
        ("turns:\n  - {say: a, dtmf: '1'}\n", "turn 1: must be exactly one"),
        ("locale: fr-FR\nturns: []\n", "locale: 'fr-FR' is not one of"),
        ("turns: []\nexpect: {outcome: maybe}\n", "expect.outcome"),
        ("turns: []\nexpect: {said: hello}\n", "expect.said: must be a list"),
        ("turns: []\nexpect: {sayd: [x]}\n", "expect: unknown keys"),
        ("turns: []\nextra: 1\n", "top level: unknown keys"),
        ("caller_id: '" + "1" * 100 + "'\nturns: []\n", "caller_id: longer than"),
    ],
)
def test_malformed_call_file(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(CallFileError) as error:
        load_call_file(path)
    assert str(error.value).startswith(str(path))
    assert problem in str(error.value)


def test_audio_must_be_8k_mono_16bit(tmp_path: Path) -> None:
    import wave

    wav = tmp_path / "loud.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\x00" * 400)
    with pytest.raises(CallFileError, match="16000 Hz, 2 channel"):
        load_call_file(write(tmp_path, "turns:\n  - audio: loud.wav\n"))
    write_silence(tmp_path / "ok.wav", 0.1)
    call = load_call_file(write(tmp_path, "caller_id: 138\nturns:\n  - audio: ok.wav\n  - silence: 2\n"))
    assert [t.kind for t in call.turns] == ["audio", "silence"]
    assert call.caller_id == "138"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "call.yaml"
    path.write_bytes(b"caller_id: \xff\xfe\n")
    with pytest.raises(CallFileError, match="not UTF-8"):
        load_call_file(path)


def test_every_shipped_call_file_loads() -> None:
    files = sorted(CALLS.rglob("*.yaml"))
    assert len(files) >= 15
    for path in files:
        assert load_call_file(path).turns
