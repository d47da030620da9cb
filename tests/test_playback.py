"""Paced playback on virtual time: the schedule, barge-in, silence while idle, close and failures."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from ivr.media.audiosocket import SILENCE_FRAME, Audio, AudioSocketParser, Hangup, Peer
from ivr.media.playback import MediaStreamClosed, PacedWriter, Pacer, PlayResult
from ivr.parts import CallerHangup

F = 0.02  # one frame


# ---------------------------------------------------------------- the pure schedule
def test_pacer_sends_the_playing_frame_and_two_ahead_then_one_per_frame() -> None:
    pacer = Pacer()
    assert pacer.due(100.0) == 3
    pacer.sent(3)
    assert pacer.next_at() == pytest.approx(100.0 + F)
    assert pacer.due(100.0 + F - 1e-6) == 0
    assert pacer.due(100.0 + F) == 1
    pacer.sent()
    assert pacer.due(100.0 + 1.5 * F) == 0
    assert pacer.played_frames(100.0 + 1.5 * F) == 1
    assert pacer.played_frames(101.0) == 4  # never more than was sent


@pytest.mark.parametrize("ahead", [0, 1, 2, 4])
def test_pacer_never_lets_more_than_ahead_frames_wait_at_the_far_end(ahead: int) -> None:
    pacer = Pacer(ahead_frames=ahead)
    now = 5.0
    for step in range(400):
        now += 0.0037 * (1 + step % 5)  # irregular wake-ups
        pacer.sent(pacer.due(now))
        queued = pacer.sent_frames - (now - pacer.origin) / pacer.frame_s  # type: ignore[operator]
        assert queued <= ahead + 1 + 1e-6
        assert queued > 0  # nor does it let the far end run dry


def test_after_a_stall_the_pacer_restarts_instead_of_bursting_to_catch_up() -> None:
    pacer = Pacer()
    pacer.sent(pacer.due(0.0))
    pacer.sent(pacer.due(F))  # 4 frames: played out at 0.08
    assert pacer.due(0.3) == 3  # not the ~15 frames "owed" since 0.08
    assert pacer.stalls == 1
    pacer.sent(3)
    assert pacer.next_at() == pytest.approx(0.3 + F)


def test_pacer_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        Pacer(frame_ms=0)
    with pytest.raises(RuntimeError):
        Pacer().next_at()


# ---------------------------------------------------------------- the writer on virtual time
class Clock:
    """Virtual time: the writer's sleep advances it; ``until`` wakes a test when it gets there."""

    def __init__(self) -> None:
        self.t = 1000.0
        self._waiters: list[tuple[float, asyncio.Future[None]]] = []

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds
        for at, waiter in self._waiters:
            if at <= self.t and not waiter.done():
                waiter.set_result(None)
        await asyncio.sleep(0)

    async def until(self, t: float) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((t, waiter))
        await waiter


class Sink:
    def __init__(self, clock: Clock, fail_after: int | None = None) -> None:
        self.clock = clock
        self.writes: list[tuple[float, bytes]] = []
        self.fail_after = fail_after

    def write(self, data: bytes) -> None:
        self.writes.append((self.clock.t, data))

    async def drain(self) -> None:
        if self.fail_after is not None and len(self.writes) > self.fail_after:
            raise ConnectionResetError("peer closed")

    def frames(self) -> list[tuple[float, object]]:
        parser = AudioSocketParser(Peer.SERVER)
        out: list[tuple[float, object]] = []
        for t, data in self.writes:
            parser.feed(data)
            out.extend((t, e) for e in parser.events())
        return out

    def audio(self) -> list[tuple[float, bytes]]:
        return [(t, e.pcm) for t, e in self.frames() if isinstance(e, Audio)]


TONE = b"\x10\x27" * 160  # a non-silent 20 ms frame


def writer_on(clock: Clock, sink: Sink, **kw: object) -> PacedWriter:
    return PacedWriter(sink, clock=clock, sleep=clock.sleep, **kw)  # type: ignore[arg-type]


async def test_a_prompt_plays_to_its_end_paced_and_returns_when_heard() -> None:
    clock, sink = Clock(), Sink(Clock())
    sink.clock = clock
    writer = writer_on(clock, sink)
    task = asyncio.create_task(writer.run())
    start = clock.t
    result = await writer.play(TONE * 50)  # 1 s
    assert result == PlayResult(completed=True, played_ms=1000)
    # returns once the last frame was heard (virtual time runs on while the result reaches this task)
    assert start + 1.0 <= clock.t <= start + 1.0 + 3 * F + 1e-9
    writer.close()
    await task
    audio = sink.audio()
    assert [pcm for _, pcm in audio].count(TONE) == 50
    for i, (t, _) in enumerate(audio):  # frame i is never sent before (i - 2) frames have played
        assert t >= start + (i - 2) * F - 1e-9


async def test_barge_in_stops_within_two_frames_and_reports_what_was_played() -> None:
    clock = Clock()
    sink = Sink(clock)
    writer = writer_on(clock, sink)
    task = asyncio.create_task(writer.run())
    start = clock.t
    playing = asyncio.create_task(writer.play(TONE * 100))  # 2 s
    await clock.until(start + 0.5)
    stopped_at = clock.t
    played_ms = writer.stop()
    result = await playing
    assert result == PlayResult(completed=False, played_ms=played_ms)
    await clock.until(start + 1.0)
    writer.close()
    await task
    audio = sink.audio()
    tone = [t for t, pcm in audio if pcm == TONE]
    assert len(tone) * 20 == played_ms  # what was sent is what the caller hears
    assert max(tone) <= stopped_at  # nothing of the prompt after the stop
    # the prompt starts within 3 frames of play(); the caller hears it until at most 3 frames (the one
    # playing and 2 ahead) after the stop
    first = next(i for i, (_, pcm) in enumerate(audio) if pcm == TONE)
    assert first <= 3
    prompt_starts = start + first * F
    assert stopped_at - 3 * F <= prompt_starts + played_ms / 1000 <= stopped_at + 3 * F + 1e-9


async def test_silence_keeps_the_stream_alive_while_idle() -> None:
    clock = Clock()
    sink = Sink(clock)
    writer = writer_on(clock, sink)
    task = asyncio.create_task(writer.run())
    start = clock.t
    await clock.until(start + 5.0)
    writer.close()
    await task
    audio = sink.audio()
    assert {pcm for _, pcm in audio} == {SILENCE_FRAME}
    assert abs(len(audio) - (5.0 / F + 3)) <= 2
    times = sorted({t for t, _ in audio})
    assert max(b - a for a, b in itertools.pairwise(times)) <= F + 1e-9  # never a gap near Asterisk's 2 s


async def test_prompts_queue_back_to_back_in_order() -> None:
    clock = Clock()
    sink = Sink(clock)
    writer = writer_on(clock, sink)
    task = asyncio.create_task(writer.run())
    first_tone, second_tone = b"\x01\x02" * 160, b"\x03\x04" * 160
    first = asyncio.create_task(writer.play(first_tone * 10))
    second = asyncio.create_task(writer.play(second_tone * 5 + b"\x05\x06" * 10))  # the last one short
    assert await first == PlayResult(True, 200)
    assert await second == PlayResult(True, 120)
    writer.close()
    await task
    pcm = [p for _, p in sink.audio() if p != SILENCE_FRAME]
    assert pcm == [first_tone] * 10 + [second_tone] * 5 + [b"\x05\x06" * 10 + bytes(300)]


async def test_close_sends_the_terminate_frame_last_and_cuts_a_pending_prompt() -> None:
    clock = Clock()
    sink = Sink(clock)
    writer = writer_on(clock, sink)
    task = asyncio.create_task(writer.run())
    playing = asyncio.create_task(writer.play(TONE * 100))
    await clock.until(clock.t + 0.2)
    writer.close()
    await task
    result = await playing
    assert not result.completed and 140 <= result.played_ms <= 260
    events = [e for _, e in sink.frames()]
    assert events[-1] == Hangup()
    assert Hangup() not in events[:-1]
    with pytest.raises(MediaStreamClosed):
        await writer.play(TONE)


async def test_a_cancelled_play_stops_its_prompt() -> None:
    clock = Clock()
    sink = Sink(clock)
    writer = writer_on(clock, sink)
    task = asyncio.create_task(writer.run())
    playing = asyncio.create_task(writer.play(TONE * 100))
    await clock.until(clock.t + 0.1)
    playing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await playing
    cancelled_at = clock.t
    await clock.until(clock.t + 0.5)
    writer.close()
    await task
    assert all(t <= cancelled_at for t, pcm in sink.audio() if pcm == TONE)
    assert not writer.busy


async def test_a_broken_connection_is_a_hangup_for_the_prompt_and_the_writer() -> None:
    clock = Clock()
    sink = Sink(clock, fail_after=10)
    writer = writer_on(clock, sink)
    task = asyncio.create_task(writer.run())
    playing = asyncio.create_task(writer.play(TONE * 100))
    with pytest.raises(MediaStreamClosed):
        await task
    with pytest.raises(CallerHangup):
        await playing


async def test_without_idle_silence_nothing_is_sent_between_prompts() -> None:
    clock = Clock()
    sink = Sink(clock)
    writer = writer_on(clock, sink, idle_silence=False)
    task = asyncio.create_task(writer.run())
    await clock.until(clock.t + 0.5)
    assert sink.writes == []
    assert await writer.play(TONE * 3) == PlayResult(True, 60)
    writer.close(hangup=False)
    await task
    assert [pcm for _, pcm in sink.audio()] == [TONE] * 3
