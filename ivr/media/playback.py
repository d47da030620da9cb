"""Paced playback to Asterisk: 20 ms frames on a monotonic clock, at most two frames ahead.

Asterisk writes the audio it receives over AudioSocket straight to the channel: there is no buffer to
clear, so audio already sent cannot be recalled. The robot therefore sends each frame just before it is
due (``Pacer``: at most ``ahead_frames`` beyond the frame playing now), which bounds how long a prompt
goes on after a barge-in (``ahead_frames`` × 20 ms). While no prompt plays, ``PacedWriter`` sends
silence frames, because AudioSocket ends after 2 s without traffic either way.

``Pacer`` is the pure schedule (give it the time, it tells how many frames to send); ``PacedWriter`` is
the asyncio task built on it, with the clock and the sleep injectable so tests run on virtual time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from ivr.media.audiosocket import (
    FRAME_BYTES,
    FRAME_MS,
    SILENCE_FRAME,
    audio_frame,
    hangup_frame,
    split_frames,
)
from ivr.parts import CallerHangup

logger = logging.getLogger(__name__)

AHEAD_FRAMES = 2


class Pacer:
    """When the next frame is due. Frame ``k`` plays during ``[origin + k·f, origin + (k+1)·f)``; it may
    be sent from ``origin + (k - ahead)·f`` on. After a stall (everything sent has been played out: the
    far end had a gap) the origin moves so the next frame plays now: frames are never sent in a burst to
    catch up."""

    def __init__(self, frame_ms: int = FRAME_MS, ahead_frames: int = AHEAD_FRAMES) -> None:
        if frame_ms <= 0 or ahead_frames < 0:
            raise ValueError("frame_ms must be positive and ahead_frames not negative")
        self.frame_s = frame_ms / 1000
        self.ahead_frames = ahead_frames
        self.origin: float | None = None
        self.sent_frames = 0
        self.stalls = 0

    def due(self, now: float) -> int:
        """How many frames to send at ``now`` (then call ``sent`` for each)."""
        if self.origin is None:
            self.origin = now
        elif now >= self.origin + (self.sent_frames + 1) * self.frame_s:
            self.origin = now - self.sent_frames * self.frame_s  # a gap of a frame or more: restart here
            self.stalls += 1
        playing = math.floor((now - self.origin) / self.frame_s + 1e-9)
        return max(0, playing + self.ahead_frames + 1 - self.sent_frames)

    def sent(self, frames: int = 1) -> None:
        self.sent_frames += frames

    def next_at(self) -> float:
        """The monotonic time at which the next frame becomes due."""
        if self.origin is None:
            raise RuntimeError("the pacer has not started (call due first)")
        return self.origin + (self.sent_frames - self.ahead_frames) * self.frame_s

    def played_frames(self, now: float) -> int:
        """Frames the far end has finished playing by ``now`` (estimate from the schedule)."""
        if self.origin is None:
            return 0
        return max(0, min(self.sent_frames, math.floor((now - self.origin) / self.frame_s + 1e-9)))


@dataclass(frozen=True)
class PlayResult:
    """What became of one prompt: played to its end, or stopped after ``played_ms`` (everything sent
    reaches the caller, so this is what the caller heard, within ``ahead_frames`` × 20 ms)."""

    completed: bool
    played_ms: int


class MediaStreamClosed(CallerHangup):
    """The AudioSocket connection is gone (the caller hung up, or Asterisk ended the application)."""


class FrameSink(Protocol):
    """What ``PacedWriter`` writes to: an ``asyncio.StreamWriter`` or a test double."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


class _Prompt:
    def __init__(self, frames: list[bytes], done: asyncio.Future[PlayResult]) -> None:
        self.frames = frames
        self.next = 0
        self.end_index = -1  # the writer's frame index after this prompt's last frame, once all are sent
        self.done = done

    @property
    def played_ms(self) -> int:
        return self.next * FRAME_MS


class PacedWriter:
    """Writes prompts as paced 20 ms audio frames, and silence between them.

    Run ``run()`` as one task per call. ``play(pcm)`` queues a prompt and returns when the caller has
    heard it to the end, or when ``stop()`` cut it (barge-in). ``close()`` sends the terminate frame and
    ends ``run()``. ``clock`` and ``sleep`` are injectable for tests on virtual time.
    """

    def __init__(
        self,
        sink: FrameSink,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        ahead_frames: int = AHEAD_FRAMES,
        idle_silence: bool = True,
    ) -> None:
        self._sink = sink
        self._clock = clock
        self._sleep = sleep
        self._pacer = Pacer(FRAME_MS, ahead_frames)
        self._idle_silence = idle_silence
        self._queue: deque[_Prompt] = deque()
        self._playing: _Prompt | None = None
        self._finishing: list[_Prompt] = []  # all frames sent, not yet heard to the end
        self._closing = False
        self._hangup = True
        self._error: BaseException | None = None
        self.frames_written = 0
        self.silence_frames = 0

    @property
    def pacer(self) -> Pacer:
        return self._pacer

    @property
    def busy(self) -> bool:
        """Whether a prompt is queued, playing, or still being heard."""
        return bool(self._queue or self._playing or self._finishing)

    async def play(self, pcm: bytes) -> PlayResult:
        """Play 8 kHz 16-bit mono ``pcm`` after the prompts already queued. Raises ``MediaStreamClosed``
        when the connection is gone. Cancelling the caller stops the prompt."""
        if self._error is not None or self._closing:
            raise MediaStreamClosed("the media stream is closed")
        done: asyncio.Future[PlayResult] = asyncio.get_running_loop().create_future()
        frames = list(split_frames(pcm, FRAME_BYTES))
        if not frames:
            return PlayResult(completed=True, played_ms=0)
        prompt = _Prompt(frames, done)
        self._queue.append(prompt)
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            self._cancel(prompt)
            raise

    def stop(self) -> int:
        """Barge-in: cut the prompt playing now and drop the queued ones; returns the ms of the cut
        prompt that were sent (the caller hears them: at most ``ahead_frames`` frames after now)."""
        played = 0
        if self._playing is not None:
            played = self._playing.played_ms
            self._resolve(self._playing, completed=False)
            self._playing = None
        for prompt in self._finishing:
            self._resolve(prompt, completed=True)
        self._finishing.clear()
        while self._queue:
            self._resolve(self._queue.popleft(), completed=False)
        return played

    def close(self, *, hangup: bool = True) -> None:
        """End ``run()`` within one frame; it sends the terminate frame first unless ``hangup`` is False."""
        self._closing = True
        self._hangup = hangup

    async def run(self) -> None:
        """The writer task. Returns after ``close()``; raises ``MediaStreamClosed`` if the connection
        fails (the pending prompts get the same error)."""
        try:
            while not self._closing:
                now = self._clock()
                due = self._pacer.due(now)
                frames: list[bytes] = []
                for _ in range(due):
                    frame = self._next_frame()
                    self._pacer.sent()
                    if frame is not None:
                        frames.append(frame)
                if frames:  # header and payload of every frame in one write
                    self._sink.write(b"".join(audio_frame(f) for f in frames))
                    self.frames_written += len(frames)
                    await self._sink.drain()
                self._settle(self._clock())
                await self._sleep(max(0.0, self._pacer.next_at() - self._clock()))
            self.stop()
            if self._hangup:
                self._sink.write(hangup_frame())
                await self._sink.drain()
        except (ConnectionError, OSError) as exc:
            self._fail(MediaStreamClosed(f"the media stream failed: {exc!r}"))
            raise MediaStreamClosed(f"the media stream failed: {exc!r}") from exc
        except BaseException as exc:
            self._fail(MediaStreamClosed("the media writer stopped"))
            if not isinstance(exc, asyncio.CancelledError):
                logger.exception("the media writer failed")
            raise

    def _next_frame(self) -> bytes | None:
        if self._playing is None and self._queue:
            self._playing = self._queue.popleft()
        prompt = self._playing
        if prompt is None:
            self.silence_frames += 1
            return SILENCE_FRAME if self._idle_silence else None
        frame = prompt.frames[prompt.next]
        prompt.next += 1
        if prompt.next == len(prompt.frames):
            prompt.end_index = self._pacer.sent_frames + 1  # this frame's index is ``sent_frames``
            self._finishing.append(prompt)
            self._playing = None
        return frame

    def _settle(self, now: float) -> None:
        """Prompts whose last frame the caller has heard by now are complete."""
        played = self._pacer.played_frames(now)
        while self._finishing and self._finishing[0].end_index <= played:
            self._resolve(self._finishing.pop(0), completed=True)

    def _cancel(self, prompt: _Prompt) -> None:
        if prompt is self._playing:
            self._playing = None
        elif prompt in self._queue:
            self._queue.remove(prompt)
        elif prompt in self._finishing:
            self._finishing.remove(prompt)

    @staticmethod
    def _resolve(prompt: _Prompt, *, completed: bool) -> None:
        if not prompt.done.done():
            prompt.done.set_result(PlayResult(completed=completed, played_ms=prompt.played_ms))

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self._closing = True
        pending = [*([self._playing] if self._playing else []), *self._finishing, *self._queue]
        self._playing = None
        self._finishing.clear()
        self._queue.clear()
        for prompt in pending:
            if not prompt.done.done():
                prompt.done.set_exception(error)
