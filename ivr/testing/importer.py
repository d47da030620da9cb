"""A call recording as a call file: ``ivr calls import`` (issue #18).

The input is a recording of a whole call: stereo (Asterisk's ``MixMonitor(file.raw,D)`` interleaves
what the channel reads, the caller, with what it writes, the robot; any stereo call recording works,
``--caller-channel`` says which side is the caller), or mono holding the caller alone. The caller's
channel is cut into turns by voice activity: 20 ms frames at or above ``threshold`` (RMS of 16-bit
samples; Asterisk's own silence threshold by default) are speech, pauses shorter than ``gap_s`` (the
robot's recorder ends a turn after 1 s of silence) stay inside a turn, and each turn keeps ``pad_before_s``
of audio before and ``pad_after_s`` after. Each turn becomes an ``audio`` turn: an 8 kHz mono 16-bit WAV
beside the call file.

Not detected: keys (RFC 4733 events are not in the audio), and listens the caller let pass in silence.
The robot's side is not used; on a line with echo, the robot's voice on the caller's channel would be
cut into turns too (raise ``--threshold``).
"""

from __future__ import annotations

import audioop
import os
import wave
from dataclasses import dataclass, field
from pathlib import Path

from ivr.asr.recognizer import SPEECH_RMS
from ivr.retention import private_dir, write_private_text
from ivr.testing.export import CALL_DATA_HEADER, _q

RATE = 8000
FRAME_S = 0.02
RAW_SUFFIXES = (".raw", ".sln", ".slin")  # MixMonitor's interleaved output: 8 kHz 16-bit stereo, no header


class RecordingImportError(ValueError):
    """A recording that cannot be imported; the message names the file and the problem."""


@dataclass(frozen=True)
class Segment:
    start_s: float
    end_s: float


@dataclass
class ImportResult:
    call_file: Path
    audio: list[Path] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    duration_s: float = 0.0


def read_caller_channel(path: Path, caller_channel: str | None) -> bytes:
    """The caller's audio as 8 kHz mono 16-bit frames."""
    try:
        if path.suffix.lower() in RAW_SUFFIXES:
            frames, channels, width, rate = path.read_bytes(), 2, 2, RATE
            if len(frames) % 4:
                raise RecordingImportError(f"{path}: not interleaved 16-bit stereo (MixMonitor's D option): "
                                   f"{len(frames)} bytes is not a whole number of frames")
        else:
            with wave.open(str(path), "rb") as w:
                channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
                frames = w.readframes(w.getnframes())
    except FileNotFoundError:
        raise RecordingImportError(f"{path}: no such recording") from None
    except (wave.Error, EOFError) as exc:
        raise RecordingImportError(f"{path}: not a PCM WAV file ({exc}); convert it first, e.g. "
                           f"`sox {path.name} -e signed -b 16 out.wav`") from None
    if channels not in (1, 2):
        raise RecordingImportError(f"{path}: {channels} channels; need a mono recording of the caller or a stereo call")
    if width not in (1, 2, 3, 4):
        raise RecordingImportError(f"{path}: {8 * width}-bit samples are not supported")
    if width == 1:  # WAV's 8-bit samples are unsigned
        frames = audioop.bias(frames, 1, -128)
    if channels == 2:
        if caller_channel not in ("left", "right"):
            raise RecordingImportError(f"{path}: a stereo recording: say which channel is the caller "
                               "(--caller-channel left|right; MixMonitor's D option puts the caller on the left)")
        frames = audioop.tomono(frames, width, 1.0, 0.0) if caller_channel == "left" else \
            audioop.tomono(frames, width, 0.0, 1.0)
    elif caller_channel == "right":
        raise RecordingImportError(f"{path}: a mono recording has no right channel (it must be the caller alone)")
    if width != 2:
        frames = audioop.lin2lin(frames, width, 2)
    if rate != RATE:
        frames, _ = audioop.ratecv(frames, 2, 1, rate, RATE, None)
    return frames


PAD_BEFORE_S = 0.0  # measured: 50 ms of digital silence before a word changes what Vosk hears (README)
PAD_AFTER_S = 0.25


def speech_segments(
    frames: bytes, *, threshold: int = SPEECH_RMS, gap_s: float = 1.0, min_speech_s: float = 0.15,
    pad_before_s: float = PAD_BEFORE_S, pad_after_s: float = PAD_AFTER_S,
) -> list[Segment]:
    """Where the caller speaks, in seconds (8 kHz mono 16-bit frames), from the first loud frame of a
    turn (less ``pad_before_s``) to its last (plus ``pad_after_s``)."""
    step = int(RATE * FRAME_S) * 2
    voiced = [audioop.rms(frames[i:i + step], 2) >= threshold for i in range(0, len(frames) - step + 1, step)]
    runs: list[list[int]] = []  # [first, last] voiced frame of each run, pauses shorter than gap_s joined
    max_gap = int(gap_s / FRAME_S)
    for index, loud in enumerate(voiced):
        if not loud:
            continue
        if runs and index - runs[-1][1] - 1 < max_gap:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    total_s = len(frames) / 2 / RATE
    out = []
    for first, last in runs:
        if (last - first + 1) * FRAME_S < min_speech_s:
            continue  # a click, not a word
        out.append(Segment(max(0.0, first * FRAME_S - pad_before_s),
                           min(total_s, (last + 1) * FRAME_S + pad_after_s)))
    return out


def _write_wav(path: Path, frames: bytes) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(frames)
    os.chmod(path, 0o600)


def import_recording(
    recording: Path,
    out_dir: Path,
    *,
    locale: str,
    caller_channel: str | None = None,
    caller_id: str = "",
    threshold: int = SPEECH_RMS,
    gap_s: float = 1.0,
) -> ImportResult:
    """Write ``<out_dir>/<recording's name>.yaml`` with one ``audio`` turn per stretch of the caller's speech."""
    frames = read_caller_channel(recording, caller_channel)
    segments = speech_segments(frames, threshold=threshold, gap_s=gap_s)
    if not segments:
        raise RecordingImportError(f"{recording}: no speech found on the caller's channel ({caller_channel or 'mono'}) "
                           f"at threshold {threshold}: the other channel, or a lower --threshold?")
    stem = recording.stem
    target = out_dir / f"{stem}.yaml"
    result = ImportResult(target, segments=segments, duration_s=len(frames) / 2 / RATE)
    audio_dir = private_dir(out_dir / "audio")
    turns = []
    for number, seg in enumerate(segments, 1):
        name = f"{stem}-{number}.wav"
        _write_wav(audio_dir / name, frames[int(seg.start_s * RATE) * 2:int(seg.end_s * RATE) * 2])
        result.audio.append(audio_dir / name)
        turns.append(f"  - audio: audio/{name}    # {seg.start_s:.2f}-{seg.end_s:.2f} s of the recording")
    lines = [
        CALL_DATA_HEADER,
        f"# Imported from {recording.name} by `ivr calls import` ({caller_channel or 'mono'} channel: the caller),",
        f"# {len(segments)} turn(s) found by voice activity. Say what the robot should do under `expect`.",
        f"caller_id: {_q(caller_id)}",
        f"locale: {locale}",
        "turns:",
        *turns,
        "expect: {}    # e.g. {outcome: completed, said: [...]}",
    ]
    write_private_text(target, "\n".join(lines) + "\n")
    return result
