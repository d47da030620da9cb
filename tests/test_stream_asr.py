"""Streaming recognition with the real Korean model: the same results as the file recognizer, turns found
by the VAD in padded and noisy recordings, and Vosk kept idle while nobody speaks."""

from __future__ import annotations

import functools
import wave
from collections import deque
from pathlib import Path

import numpy as np
import pytest

from ivr.asr.grammar import load_grammars
from ivr.asr.recognizer import LEAD_MS, VoskRecognizer
from ivr.asr.stream import StreamingRecognizer, open_stream
from ivr.config import Settings
from ivr.media.audiosocket import split_frames
from ivr.media.listen import Listener, Partial, TurnEnded
from ivr.media.stream import _loud_run_start_ms
from ivr.media.vad import Endpointer, SileroVad, SpeechStarted
from ivr.media.vad_bench import sox_noise
from ivr.parts import Expect, Recognition, RecognizerError

pytestmark = pytest.mark.audio

AUDIO = Path(__file__).parent / "calls" / "audio" / "ko-KR" / "audio"
SPEECH = sorted(p.stem for p in AUDIO.glob("*.wav") if p.with_suffix(".txt").exists())


@pytest.fixture(scope="module")
def recognizer() -> VoskRecognizer:
    """The Korean model, dither off (reproducible), loaded once for this module. It decodes every sample of
    a file (no trimming of its quiet ends): the reference for what Vosk makes of exactly that audio."""
    rec = VoskRecognizer(Settings(asr_dither=False, asr_trim_silence=False))
    rec.load("ko-KR")
    return rec


@pytest.fixture(scope="module")
def grammar(base_settings: Settings) -> list[str]:
    return load_grammars(base_settings, "ko-KR")[Expect.SPEECH]


def pcm_of(name: str) -> bytes:
    with wave.open(str(AUDIO / f"{name}.wav")) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
        return w.readframes(w.getnframes())


def reference(name: str) -> str:
    return (AUDIO / f"{name}.txt").read_text(encoding="utf-8").strip()


def stream(rec: StreamingRecognizer, pcm: bytes, frame_bytes: int = 320) -> tuple[Recognition, list[str]]:
    partials = [rec.accept(pcm[i : i + frame_bytes]) for i in range(0, len(pcm), frame_bytes)]
    return rec.finish(), partials


@pytest.mark.parametrize("name", SPEECH)
def test_streamed_in_the_file_recognizers_chunks_the_result_is_identical(
    recognizer: VoskRecognizer, grammar: list[str], name: str
) -> None:
    expected = recognizer.transcribe(AUDIO / f"{name}.wav", "ko-KR", grammar)
    assert expected.words
    # 20 ms frames as AudioSocket delivers them, decoded in 500 ms batches like the file recognizer
    result, _ = stream(open_stream(recognizer, "ko-KR", grammar, batch_ms=500), pcm_of(name))
    assert result == expected


@pytest.mark.parametrize("name", SPEECH)
def test_streamed_in_100_ms_batches_it_is_as_good_and_reproducible(
    recognizer: VoskRecognizer, grammar: list[str], name: str
) -> None:
    by_file = recognizer.transcribe(AUDIO / f"{name}.wav", "ko-KR", grammar)
    first, partials = stream(open_stream(recognizer, "ko-KR", grammar), pcm_of(name))
    again, _ = stream(open_stream(recognizer, "ko-KR", grammar), pcm_of(name))
    assert first == again  # dither off: the same audio, the same words and confidences
    # batch boundaries move Kaldi's decisions a little: the text is the file result's or the reference
    assert first.text in (by_file.text, reference(name)), (first, by_file)
    if by_file.text == reference(name):
        assert first.text == reference(name)
    assert abs(first.confidence - by_file.confidence) <= 0.2 or first.text == reference(name)
    assert all("<UNK>" not in p and "[unk]" not in p for p in partials)


def test_placed_recordings_reach_vosk_whole_in_stream_mode() -> None:
    """record.sh places these so that the stream path's lead-in (LEAD_MS before the first loud frame) is
    the file's own start: both modes decode the same audio, and the audio goldens agree."""
    placed = [line.split()[1] for line in (AUDIO / "record.sh").read_text(encoding="utf-8").splitlines()
              if line.startswith("placed ")]
    assert len(placed) >= 4
    for name in placed:
        frames = list(split_frames(pcm_of(name)))
        first_loud = LEAD_MS // 20
        pre_roll = deque((i * 20.0, f) for i, f in enumerate(frames[: first_loud + 10]))  # the onset 10 frames in
        assert _loud_run_start_ms(pre_roll, (first_loud + 10) * 20.0) - LEAD_MS == 0, name
        assert all(f == bytes(len(f)) for f in frames[:first_loud]), name  # digital silence before


def test_partials_grow_while_the_caller_speaks(recognizer: VoskRecognizer, grammar: list[str]) -> None:
    _, partials = stream(open_stream(recognizer, "ko-KR", grammar), pcm_of("balance_request"))
    distinct = [p for i, p in enumerate(partials) if p and (i == 0 or p != partials[i - 1])]
    assert len(distinct) >= 2
    assert distinct[-1] == reference("balance_request")


def test_a_stream_is_used_once(recognizer: VoskRecognizer, grammar: list[str]) -> None:
    rec = open_stream(recognizer, "ko-KR", grammar)
    rec.accept(bytes(3200))
    assert rec.finish() == Recognition(text="", confidence=0.0)
    with pytest.raises(RecognizerError):
        rec.accept(bytes(320))
    with pytest.raises(RecognizerError):
        rec.finish()


def test_free_recognition_streams_too(recognizer: VoskRecognizer) -> None:
    result, _ = stream(open_stream(recognizer, "ko-KR", None, batch_ms=500), pcm_of("agent"))
    assert result == recognizer.transcribe(AUDIO / "agent.wav", "ko-KR")


def test_a_missing_model_is_a_recognizer_error(tmp_path: Path) -> None:
    rec = VoskRecognizer(Settings(asr_dither=False), model_dirs={"ko-KR": tmp_path / "nothing"})
    with pytest.raises(RecognizerError, match="not there"):
        open_stream(rec, "ko-KR", ["네"])


# ---------------------------------------------------------------- the turn: VAD + pre-roll + Vosk
@pytest.fixture(scope="module")
def pink_10db() -> np.ndarray:
    return sox_noise("pink", 8.0) * 10 ** (-27 / 20) * 32768  # ~10 dB under the recordings' speech


def padded(name: str, noise: np.ndarray | None, lead_s: float = 1.5, tail_s: float = 1.5) -> bytes:
    clip = np.frombuffer(pcm_of(name), dtype="<i2").astype(np.float64)
    signal = np.concatenate([np.zeros(int(lead_s * 8000)), clip, np.zeros(int(tail_s * 8000))])
    if noise is not None:
        signal = signal + np.resize(noise, len(signal))
    return np.clip(np.round(signal), -32768, 32767).astype("<i2").tobytes()


def listener(recognizer: VoskRecognizer, grammar: list[str], batch_ms: int = 100) -> Listener:
    opener = functools.partial(open_stream, recognizer, "ko-KR", grammar, batch_ms=batch_ms)
    return Listener(Endpointer(SileroVad()), opener)


def as_wav(pcm: bytes, path: Path) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(pcm)
    return path


def run_turn(turn: Listener, pcm: bytes, lead_s: float) -> list[object]:
    events: list[object] = []
    for i in range(0, len(pcm), 320):
        if i + 320 <= (lead_s - 0.3) * 16000:
            assert not turn.decoding, "Vosk ran before the caller spoke"
        events.extend(turn.feed(pcm[i : i + 320]))
    return events


@pytest.mark.parametrize("name", ["agent", "balance_request", "goodbye", "no", "thanks"])
@pytest.mark.parametrize("noisy", [False, True], ids=["silence", "pink 10 dB"])
def test_a_padded_turn_is_found_and_decoded_as_the_file_recognizer_decodes_what_vosk_heard(
    recognizer: VoskRecognizer,
    grammar: list[str],
    pink_10db: np.ndarray,
    name: str,
    noisy: bool,
    tmp_path: Path,
) -> None:
    pcm = padded(name, pink_10db if noisy else None)
    turn = listener(recognizer, grammar, batch_ms=500)  # the file recognizer's chunks
    events = run_turn(turn, pcm, lead_s=1.5)
    kinds = [type(e) for e in events]
    assert kinds[0] is SpeechStarted and kinds[-1] is TurnEnded
    assert set(kinds[1:-1]) <= {Partial}
    started, ended = events[0], events[-1]
    assert isinstance(started, SpeechStarted) and isinstance(ended, TurnEnded) and ended.speech is not None
    # Vosk heard from 140 ms before the onset to the end of the turn, not the whole padded recording
    assert ended.audio == pcm[(started.at_ms - 140) * 16 : ended.speech.declared_ms * 16]
    assert ended.recognition == recognizer.transcribe(
        as_wav(ended.audio, tmp_path / "turn.wav"), "ko-KR", grammar
    )
    assert turn.done and turn.feed(pcm[:3200]) == []


# dither off, the model makes the same of the same audio: these come out right after 1.5 s of silence
@pytest.mark.parametrize("name", ["agent", "agent_connect", "balance_request", "goodbye"])
def test_padded_recordings_are_recognized_in_100_ms_batches(
    recognizer: VoskRecognizer, grammar: list[str], name: str
) -> None:
    turn = listener(recognizer, grammar)
    events = run_turn(turn, padded(name, None), lead_s=1.5)
    ended = events[-1]
    assert isinstance(ended, TurnEnded)
    assert ended.recognition.text == reference(name)


@pytest.mark.parametrize("noise", ["line", "pink 10 dB"])
def test_noise_alone_never_starts_vosk(
    recognizer: VoskRecognizer, grammar: list[str], pink_10db: np.ndarray, noise: str
) -> None:
    if noise == "line":
        signal = np.resize(np.frombuffer(pcm_of("line_noise"), dtype="<i2").astype(np.float64), 8000 * 8)
    else:
        signal = pink_10db
    pcm = np.clip(np.round(signal), -32768, 32767).astype("<i2").tobytes()
    turn = listener(recognizer, grammar)
    assert turn.feed(pcm) == []
    assert not turn.decoding
    ended = turn.finish()  # the no-input timeout
    assert ended.recognition == Recognition(text="", confidence=0.0) and ended.speech is None
    assert ended.audio_s == 0.0


def test_finish_mid_turn_returns_what_was_heard(recognizer: VoskRecognizer, grammar: list[str]) -> None:
    pcm = padded("balance_request", None, tail_s=0.0)
    turn = listener(recognizer, grammar)
    events = turn.feed(pcm[: len(pcm) - 4000])  # cut before the end of the last word
    assert [type(e) for e in events if not isinstance(e, Partial)] == [SpeechStarted]
    ended = turn.finish()  # a key, or the longest turn allowed
    assert ended.speech is None and ended.recognition.words
    assert turn.finish() is ended
