"""Endpointing: the state machine on scripted VAD scores, then the real VADs on the test recordings."""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np
import pytest

from ivr.media.audiosocket import FRAME_BYTES
from ivr.media.vad import (
    Endpointer,
    EnergyVad,
    SileroVad,
    SpeechEnded,
    SpeechStarted,
    State,
    VadPool,
    WebRtcVad,
    frame_dbfs,
)
from ivr.media.vad_bench import sox_noise, speech_span_ms

AUDIO = Path(__file__).parent / "calls" / "audio" / "ko-KR" / "audio"


class Scripted:
    """A VAD that returns the scores it was given, one per frame; frames carry their index."""

    def __init__(self, scores: str) -> None:
        # "S" speech (1.0), "." not speech (0.0), "m" 0.6 (speech at threshold 0.5, not at 0.7)
        self.scores = [{"S": 1.0, ".": 0.0, "m": 0.6}[c] for c in scores.replace(" ", "")]
        self.i = 0
        self.resets = 0

    def speech_probability(self, frame: bytes) -> float:
        score = self.scores[self.i]
        self.i += 1
        return score

    def reset(self) -> None:
        self.resets += 1
        self.i = 0


FRAME = b"\x01\x00" * 160


def run(scores: str, **kw: int | float) -> tuple[list[object], list[State]]:
    vad = Scripted(scores)
    endpointer = Endpointer(vad, **kw)  # type: ignore[arg-type]
    events: list[object] = []
    states: list[State] = []
    for _ in vad.scores:
        event = endpointer.feed_frame(FRAME)
        if event is not None:
            events.append(event)
        states.append(endpointer.state)
    return events, states


# every character is one 20 ms frame; start 100 ms (5 frames), stop 100 ms, gap 40 ms, resume 40 ms
SMALL = {"start_ms": 100, "stop_ms": 100, "max_gap_ms": 40, "resume_ms": 40}

ENDPOINTING = [
    # a clean turn: onset at frame 2, declared after 5 speech frames; ends 5 frames after frame 9
    ("..SSSSSSSS......", [SpeechStarted(40, 140), SpeechEnded(200, 300, 160)]),
    # too short to be an onset (a click, a cough): nothing
    ("..SSSS..........", []),
    # a gap of 2 frames inside the onset is tolerated, of 3 is not
    ("..SS..SSS.......", [SpeechStarted(40, 180), SpeechEnded(180, 280, 140)]),
    ("..SS...SSSSS.......", [SpeechStarted(140, 240), SpeechEnded(240, 340, 100)]),
    # a pause shorter than stop_ms stays inside the turn
    ("SSSSS....SSSSS.....", [SpeechStarted(0, 100), SpeechEnded(280, 380, 280)]),
    # a pause of stop_ms ends it, and the next speech is a new turn
    (
        "SSSSS.....SSSSS.....",
        [
            SpeechStarted(0, 100),
            SpeechEnded(100, 200, 100),
            SpeechStarted(200, 300),
            SpeechEnded(300, 400, 100),
        ],
    ),
    # single speech frames in the trailing silence do not extend the turn (resume needs 2)
    ("SSSSS.S.S.S.", [SpeechStarted(0, 100), SpeechEnded(100, 200, 100)]),
    # two speech frames do: the silence counts again from the end of the resumed speech
    ("SSSSS..SS.....", [SpeechStarted(0, 100), SpeechEnded(180, 280, 180)]),
    # speech to the end of the stream: an onset and no end
    ("..SSSSSSSSSSSS", [SpeechStarted(40, 140)]),
]


@pytest.mark.parametrize(("scores", "expected"), ENDPOINTING)
def test_endpointing_on_scripted_scores(scores: str, expected: list[object]) -> None:
    events, _ = run(scores, **SMALL)
    assert events == expected


def test_states_go_quiet_starting_speaking_stopping_quiet() -> None:
    _, states = run("..SSSSS..SS.....", **SMALL)
    q, st, sp, so = State.QUIET, State.STARTING, State.SPEAKING, State.STOPPING
    assert states == [q, q, st, st, st, st, sp, so, so, so, sp, so, so, so, so, q]


def test_threshold_decides_what_counts_as_speech() -> None:
    assert run("mmmmmm......", **SMALL)[0] == [SpeechStarted(0, 100), SpeechEnded(120, 220, 120)]
    assert run("mmmmmm......", threshold=0.7, **SMALL)[0] == []


def test_min_dbfs_silences_quiet_frames_whatever_the_vad_says() -> None:
    endpointer = Endpointer(Scripted("S" * 20), start_ms=100, min_dbfs=-60)
    quiet = b"\x01\x00" * 160  # -90 dBFS
    assert [endpointer.feed_frame(quiet) for _ in range(10)] == [None] * 10
    loud = b"\x00\x10" * 160
    assert [e for e in (endpointer.feed_frame(loud) for _ in range(10)) if e] == [SpeechStarted(200, 300)]


def test_feed_cuts_any_chunking_into_frames() -> None:
    scores = "..SSSSSSSS......"
    pcm = FRAME * len(scores)
    whole = Endpointer(Scripted(scores), **SMALL).feed(pcm)
    chunked = Endpointer(Scripted(scores), **SMALL)
    events = []
    for i in range(0, len(pcm), 333):
        events.extend(chunked.feed(pcm[i : i + 333]))
    assert events == whole == [SpeechStarted(40, 140), SpeechEnded(200, 300, 160)]


def test_reset_starts_a_new_listen_at_zero() -> None:
    vad = Scripted("SSSSSS" * 3)
    endpointer = Endpointer(vad, **SMALL)
    endpointer.feed(FRAME * 6)
    assert endpointer.in_speech and endpointer.position_ms == 120
    endpointer.reset()
    assert endpointer.state is State.QUIET and endpointer.position_ms == 0 and vad.resets == 2
    assert endpointer.feed(FRAME * 6) == [SpeechStarted(0, 100)]


@pytest.mark.parametrize("kw", [{"start_ms": 0}, {"stop_ms": 10}, {"resume_ms": -20}, {"max_gap_ms": -1}])
def test_nonsense_settings_are_refused(kw: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        Endpointer(Scripted(""), **kw)


def test_durations_count_whole_frames() -> None:
    # stop after 90 ms acts as 100 ms (5 frames): 4 silent frames keep the turn, 5 end it
    assert run("SSSSS....SS.....", start_ms=100, stop_ms=90, resume_ms=40)[0] == [
        SpeechStarted(0, 100),
        SpeechEnded(220, 320, 220),
    ]


def test_frames_must_be_20_ms() -> None:
    with pytest.raises(ValueError, match="320 bytes"):
        Endpointer(Scripted("S")).feed_frame(b"\x00" * 160)


def test_frame_level() -> None:
    assert frame_dbfs(bytes(FRAME_BYTES)) == -math.inf
    full = np.full(160, 32767, dtype="<i2").tobytes()
    assert frame_dbfs(full) == pytest.approx(0.0, abs=0.01)
    assert frame_dbfs(np.full(160, 328, dtype="<i2").tobytes()) == pytest.approx(-40.0, abs=0.1)
    assert EnergyVad(-45).speech_probability(np.full(160, 328, dtype="<i2").tobytes()) == 1.0
    assert EnergyVad(-35).speech_probability(np.full(160, 328, dtype="<i2").tobytes()) == 0.0


# ---------------------------------------------------------------- real VADs on the recordings
def read(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)


def padded(
    name: str, noise: np.ndarray | None, lead_s: float = 1.0, tail_s: float = 1.5
) -> tuple[bytes, int, int]:
    """The recording between ``lead_s`` and ``tail_s`` of silence, plus ``noise``; its true speech span."""
    clip = read(AUDIO / f"{name}.wav")
    lead, tail = int(lead_s * 8000), int(tail_s * 8000)
    signal = np.concatenate([np.zeros(lead), clip, np.zeros(tail)])
    if noise is not None:
        signal = signal + np.resize(noise, len(signal))
    start, end = speech_span_ms(clip)
    pcm = np.clip(np.round(signal), -32768, 32767).astype("<i2").tobytes()
    return pcm, start + int(lead_s * 1000), end + int(lead_s * 1000)


@pytest.fixture(scope="module")
def pink_10db() -> np.ndarray:
    """sox's pink noise 10 dB under the recordings' speech level (about -17 dBFS)."""
    return sox_noise("pink", 6.0) * 10 ** (-27 / 20) * 32768


NAMES = ["agent", "balance_request", "goodbye", "no"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("noisy", [False, True], ids=["clean", "pink 10 dB"])
def test_silero_finds_the_turn_in_a_recording(name: str, noisy: bool, pink_10db: np.ndarray) -> None:
    pcm, onset, end = padded(name, pink_10db if noisy else None)
    endpointer = Endpointer(SileroVad())
    events = endpointer.feed(pcm)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded], events
    started, ended = events
    assert isinstance(started, SpeechStarted) and isinstance(ended, SpeechEnded)
    assert onset - 100 <= started.at_ms <= onset + 200
    assert started.declared_ms - onset <= 400  # a barge-in can stop the prompt within ~0.4 s
    assert end - 100 <= ended.at_ms <= end + 250
    assert endpointer.stop_ms <= ended.declared_ms - end <= endpointer.stop_ms + 250


@pytest.mark.parametrize("noise", ["line", "pink 10 dB", "digital silence"])
def test_silero_declares_no_onset_on_noise_alone(noise: str, pink_10db: np.ndarray) -> None:
    if noise == "line":
        signal = np.resize(read(AUDIO / "line_noise.wav"), 8000 * 6)
    elif noise == "pink 10 dB":
        signal = pink_10db
    else:
        signal = np.zeros(8000 * 6)
    pcm = np.clip(np.round(signal), -32768, 32767).astype("<i2").tobytes()
    endpointer = Endpointer(SileroVad())
    assert endpointer.feed(pcm) == []
    assert endpointer.state in (State.QUIET, State.STARTING)


def test_webrtcvad_hears_a_clean_recording_and_not_digital_silence() -> None:
    pcm, onset, _ = padded("agent", None)
    events = Endpointer(WebRtcVad(3)).feed(pcm)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    assert abs(events[0].at_ms - onset) <= 100
    assert Endpointer(WebRtcVad(3)).feed(bytes(8000 * 2 * 3)) == []
    with pytest.raises(ValueError):
        WebRtcVad(4)


def test_a_silero_vad_reused_after_reset_gives_the_same_events() -> None:
    pcm, _, _ = padded("goodbye", None)
    endpointer = Endpointer(SileroVad())
    first = endpointer.feed(pcm)
    endpointer.reset()
    assert endpointer.feed(pcm) == first


def test_a_pool_reuses_reset_vads_and_keeps_at_most_max_idle() -> None:
    made: list[Scripted] = []

    def factory() -> Scripted:
        made.append(Scripted("S" * 10))
        return made[-1]

    pool = VadPool(factory, max_idle=1)
    first, second = pool.acquire(), pool.acquire()
    assert first is not second and pool.created == 2
    first.speech_probability(FRAME)
    pool.release(first)
    pool.release(second)  # one too many: dropped
    assert pool.idle == 1 and made[0].resets == 1
    assert pool.acquire() is first and made[0].i == 0  # reset before reuse
    assert pool.created == 2


def test_pooled_silero_vads_give_the_same_events_as_new_ones() -> None:
    pcm, _, _ = padded("thanks", None)
    pool = VadPool()
    vad = pool.acquire()
    first = Endpointer(vad).feed(pcm)
    pool.release(vad)
    again = pool.acquire()
    assert again is vad
    assert Endpointer(again).feed(pcm) == first == Endpointer(SileroVad()).feed(pcm)
