"""The one process that owns pyttsx3 (espeak-ng): run as ``python -m ivr.tts.worker FD``.

Why a child process: pyttsx3 2.99 prints ``Audio saved to …`` on stdout for every file, is not
thread-safe, and its espeak driver synthesizes on espeak-ng's own thread (``AUDIO_OUTPUT_RETRIEVAL`` is
asynchronous), so ``runAndWait()`` can return before the file is written and a property set meanwhile
lands on the wrong utterance. Here one engine serves one request at a time, waits for the
``finished-utterance`` notification before touching the file, and reads the rate back to verify it.
The parent starts this with stdin and stdout on /dev/null (fd 1 is pointed there again below, so
nothing the engine prints can reach a protocol stream) and talks JSON lines over the socket ``FD``.

Requests: ``{"text", "voice", "rate_wpm", "out"}``; the reply ``{"ok": true, "synth_s", "convert_s",
"frames", "count"}`` or ``{"ok": false, "error"}``. ``out`` receives an 8 kHz mono 16-bit WAV; the parent
moves it into place. The first line written is ``{"ready": true, "pid": …}`` once the engine is loaded.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path
from typing import Any

logger = logging.getLogger("ivr.tts.worker")

ENGINE_RATE_HZ = 22050  # what the espeak driver writes, always
ASTERISK_RATE_HZ = 8000
MIN_RATE_WPM = 80  # espeak-ng's own limits
MAX_RATE_WPM = 450


def _lowpass_taps(cutoff_hz: float, rate_hz: float, count: int = 63) -> Any:
    """A windowed-sinc low-pass FIR: audioop.ratecv (pydub's resampler) has no anti-aliasing filter."""
    import numpy as np

    n = np.arange(count) - (count - 1) / 2
    taps = np.sinc(2 * cutoff_hz / rate_hz * n) * np.hamming(count)
    return taps / taps.sum()


class Engine:
    """pyttsx3 with the waits and checks its espeak driver needs."""

    def __init__(self, finish_timeout_s: float = 30.0) -> None:
        import pyttsx3

        self._engine = pyttsx3.init("espeak")
        # The driver's own setProperty applies at once; the engine's is queued behind the driver's
        # busy flag and, measured, sometimes applied to the next utterance instead of this one.
        self._driver = self._engine.proxy._driver
        self._done = threading.Event()
        self._engine.connect("finished-utterance", self._on_finished)
        self._finish_timeout_s = finish_timeout_s
        self._taps = _lowpass_taps(3600.0, ENGINE_RATE_HZ)
        self.count = 0

    def _on_finished(self, name: Any = None, completed: bool = True) -> None:
        self._done.set()

    def synthesize(self, text: str, voice: str, rate_wpm: int, out: Path) -> dict[str, Any]:
        if not text.strip():
            raise ValueError("nothing to say")
        if not MIN_RATE_WPM <= rate_wpm <= MAX_RATE_WPM:
            raise ValueError(f"rate {rate_wpm} wpm is outside espeak-ng's {MIN_RATE_WPM}..{MAX_RATE_WPM}")
        # Voice first: loading a voice resets the rate to espeak's default (175).
        try:
            self._driver.setProperty("voice", voice)
        except ValueError as exc:
            raise ValueError(f"espeak-ng has no voice {voice!r} ({exc})") from exc
        self._driver.setProperty("rate", rate_wpm)
        fd, raw_name = tempfile.mkstemp(suffix=".22k.wav", dir=out.parent)
        os.close(fd)
        raw = Path(raw_name)
        try:
            started = time.perf_counter()
            self._done.clear()
            self._engine.save_to_file(text, str(raw))
            self._engine.runAndWait()
            if not self._done.wait(self._finish_timeout_s):
                raise TimeoutError(f"espeak-ng did not finish within {self._finish_timeout_s:.0f} s")
            synth_s = time.perf_counter() - started
            applied = self._engine.getProperty("rate")
            if applied != rate_wpm:
                raise RuntimeError(f"espeak-ng spoke at {applied} wpm, not the {rate_wpm} wpm asked for")
            self.count += 1
            started = time.perf_counter()
            frames = self._convert(raw, out)
            convert_s = time.perf_counter() - started
        finally:
            raw.unlink(missing_ok=True)
        return {"synth_s": synth_s, "convert_s": convert_s, "frames": frames, "count": self.count}

    def _convert(self, raw: Path, out: Path) -> int:
        """22.05 kHz engine output -> 8 kHz mono 16-bit WAV, with pydub (and a numpy anti-alias filter)."""
        import numpy as np
        from pydub import AudioSegment

        with wave.open(str(raw), "rb") as check:
            if check.getnframes() == 0:
                raise RuntimeError("espeak-ng produced no audio")
        seg = AudioSegment.from_wav(str(raw)).set_channels(1).set_sample_width(2)
        samples = np.frombuffer(seg.raw_data, dtype=np.int16).astype(np.float32)
        filtered = np.convolve(samples, self._taps, mode="same")
        clean = np.clip(np.rint(filtered), -32768, 32767).astype(np.int16).tobytes()
        seg = AudioSegment(data=clean, sample_width=2, frame_rate=seg.frame_rate, channels=1)
        seg = seg.set_frame_rate(ASTERISK_RATE_HZ)
        seg.export(str(out), format="wav")
        return int(seg.frame_count())


def serve(sock: socket.socket) -> int:
    stream = sock.makefile("rwb")

    def send(message: dict[str, Any]) -> None:
        stream.write(json.dumps(message, ensure_ascii=False).encode("utf-8") + b"\n")
        stream.flush()

    try:
        engine = Engine()
    except Exception as exc:  # libespeak-ng1 missing, pyttsx3 broken: tell the parent why
        send({"ready": False, "error": f"pyttsx3/espeak-ng could not start: {exc}"})
        return 1
    send({"ready": True, "pid": os.getpid()})
    for line in stream:
        try:
            request = json.loads(line)
            reply = engine.synthesize(
                str(request["text"]), str(request["voice"]), int(request["rate_wpm"]), Path(request["out"])
            )
            reply["ok"] = True
        except Exception as exc:
            logger.debug("synthesis failed", exc_info=True)
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        send(reply)
    return 0


def main(argv: list[str]) -> int:
    # Belt and braces: whatever the parent passed as stdout, nothing printed here goes anywhere.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="ivr.tts.worker: %(message)s")
    if len(argv) != 2 or not argv[1].isdigit():
        logger.error("usage: python -m ivr.tts.worker FD")
        return 2
    with socket.socket(fileno=int(argv[1])) as sock:
        return serve(sock)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
