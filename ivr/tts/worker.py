"""The one process that owns pyttsx3 (espeak-ng): run as ``python -m ivr.tts.worker FD``.

Why a child process: pyttsx3 2.99 prints ``Audio saved to …`` on stdout for every file, is not
thread-safe, and its espeak driver synthesizes on espeak-ng's own thread (``AUDIO_OUTPUT_RETRIEVAL`` is
asynchronous), so ``runAndWait()`` can return before the file is written. Here one engine serves one
request at a time and waits for the ``finished-utterance`` notification before touching the file.

Why the rate "took effect unreliably" (measured): espeak-ng queues a rate change in its command FIFO,
and ``runAndWait()`` first calls the driver's ``stop()``, which cancels that FIFO whenever it is not yet
drained, so the change is silently dropped and the previous rate stays. pyttsx3 cannot show it either:
it declares ``espeak_GetParameter`` without its ``current`` argument, so ``getProperty("rate")`` returns
the default or the current value at random. So: set voice then rate on the driver, wait until the real
current rate (``espeak_GetParameter(RATE, 1)``) is the one asked for (typically < 1 ms), then synthesize,
and check it again afterwards. In 3 x 40 random voice/rate changes every utterance then had the length
of its rate; without the wait most changes were lost.
The parent starts this with stdin and stdout on /dev/null (fd 1 is pointed there again below, so
nothing the engine prints can reach a protocol stream) and talks JSON lines over the socket ``FD``.

Requests: ``{"text", "voice", "rate_wpm", "out"}``; the reply ``{"ok": true, "synth_s", "convert_s",
"frames", "count"}`` or ``{"ok": false, "error", "restart"}`` (``restart``: the engine misbehaved, replace
this process). ``out`` receives an 8 kHz mono 16-bit WAV; the parent
moves it into place. The first line written is ``{"ready": true, "pid": …}`` once the engine is loaded.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
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
        import pydub  # noqa: F401 - loaded now, not on the first request
        import pyttsx3

        self._engine = pyttsx3.init("espeak")
        # Properties go to the driver directly: the engine's setProperty is queued behind pyttsx3's busy
        # flag and may run after this utterance has started. (espeak-ng's own FIFO: see _apply_rate.)
        self._driver = self._engine.proxy._driver
        self._done = threading.Event()
        self._completed = True  # the last finished-utterance: completed, or cancelled
        self._engine.connect("finished-utterance", self._on_finished)
        self._finish_timeout_s = finish_timeout_s
        self._taps = _lowpass_taps(3600.0, ENGINE_RATE_HZ)
        self.count = 0
        from pyttsx3.drivers import _espeak

        self._espeak = _espeak
        get_parameter = _espeak.dll.espeak_GetParameter
        get_parameter.argtypes = [ctypes.c_int, ctypes.c_int]
        get_parameter.restype = ctypes.c_int
        self._get_parameter = get_parameter

    def current_rate(self) -> int:
        return int(self._get_parameter(self._espeak.RATE, 1))

    def _apply_rate(self, rate_wpm: int) -> None:
        """Wait until espeak-ng's FIFO has applied the rate, so runAndWait()'s cancel cannot drop it."""
        deadline = time.monotonic() + 0.5
        while self.current_rate() != rate_wpm:
            if time.monotonic() > deadline:
                self._espeak.Synchronize()  # drains the FIFO (polls in 20 ms steps)
                if self.current_rate() != rate_wpm:
                    raise RuntimeError(f"espeak-ng did not take the rate {rate_wpm} wpm")
                return
            time.sleep(0.0002)

    def _wait_until_idle(self, timeout_s: float = 2.0) -> None:
        """pyttsx3 2.99's espeak driver: runAndWait() queues the engine's endLoop behind the request, and
        the driver runs it, i.e. driver.stop(), *before* starting the utterance; stop() sets _stopping
        when espeak-ng still reports IsPlaying() from the previous utterance (its thread winds down
        after the finished event; a race, more likely under CPU load), and the loop's first iterate()
        then cancels the fresh utterance, whose file is never written. That was the worker that "hung
        now and then". Measured with both cores busy: 40 cancelled utterances in 600 without this wait,
        none with it. So: start only when espeak-ng is idle, with no stale flag."""
        deadline = time.monotonic() + timeout_s
        while self._espeak.IsPlaying() and time.monotonic() < deadline:
            time.sleep(0.001)
        self._driver._stopping = False

    def _on_finished(self, name: Any = None, completed: bool = True) -> None:
        self._completed = completed
        self._done.set()

    def synthesize(self, text: str, voice: str, rate_wpm: int, out: Path) -> dict[str, Any]:
        if not text.strip():
            raise ValueError("nothing to say")
        if not MIN_RATE_WPM <= rate_wpm <= MAX_RATE_WPM:
            raise ValueError(f"rate {rate_wpm} wpm is outside espeak-ng's {MIN_RATE_WPM}..{MAX_RATE_WPM}")
        # Voice first, then the rate: a voice (re)load must not override the rate asked for.
        try:
            self._driver.setProperty("voice", voice)
        except ValueError as exc:
            raise ValueError(f"espeak-ng has no voice {voice!r} (see espeak-ng --voices; {exc})") from exc
        self._driver.setProperty("rate", rate_wpm)
        self._apply_rate(rate_wpm)
        fd, raw_name = tempfile.mkstemp(suffix=".22k.wav", dir=out.parent)
        os.close(fd)
        raw = Path(raw_name)
        try:
            started = time.perf_counter()
            self._done.clear()
            self._completed = True
            self._wait_until_idle()
            self._engine.save_to_file(text, str(raw))
            self._engine.runAndWait()
            if not self._done.wait(self._finish_timeout_s):
                raise RuntimeError(f"espeak-ng did not finish within {self._finish_timeout_s:.0f} s")
            if not self._completed:
                raise RuntimeError("espeak-ng cancelled the utterance")
            _wait_for_audio(raw, self._finish_timeout_s)
            synth_s = time.perf_counter() - started
            applied = self.current_rate()
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
                raise ValueError("espeak-ng produced no audio for this text")
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
            # a hung or misbehaving engine is not trusted with the next request
            reply = {
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}",
                "restart": isinstance(exc, RuntimeError),
            }
        send(reply)
    return 0


def main(argv: list[str]) -> int:
    # Belt and braces: whatever the parent passed as stdout, nothing printed here goes anywhere.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    sys.stdout = open(os.devnull, "w", encoding="utf-8")  # lives as long as the process
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's; we stop at EOF on the socket
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="ivr.tts.worker: %(message)s")
    if len(argv) != 2 or not argv[1].isdigit():
        logger.error("usage: python -m ivr.tts.worker FD")
        return 2
    with socket.socket(fileno=int(argv[1])) as sock:
        return serve(sock)


def _wait_for_audio(raw: Path, timeout_s: float) -> None:
    """espeak-ng writes the file on its own thread; under load the finished-utterance event of the
    previous request can arrive late and release us before this file has any frames (seen: about
    1 in 100 renders of 116 concurrent requests). Poll briefly for the frames instead of failing."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with wave.open(str(raw), "rb") as check:
                if check.getnframes() > 0:
                    return
        except (wave.Error, EOFError):
            pass  # header not written yet
        if time.monotonic() > deadline:
            return  # _convert names the problem
        time.sleep(0.01)


if __name__ == "__main__":
    sys.exit(main(sys.argv))

