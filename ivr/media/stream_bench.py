"""What stream mode costs: streaming decode of a turn, and an idle call.

    python -m ivr.media.stream_bench [--calls 10] [--seconds 10]

Decode: each Korean test recording with 1.5 s of silence before and after, fed frame by frame through
``Listener`` (Silero VAD, Vosk from the onset on, 100 ms batches): CPU per second of audio and per
second of speech given to Vosk, and the end-of-turn latency (wall time of the ``feed`` call that ended
the turn: the last batch and Vosk's final result).

Idle: ``--calls`` AudioSocket connections over loopback from a peer process playing Asterisk (UUID, then
the recorded line noise of the test calls in 20 ms frames, paced); the robot side runs, per call, the
parser, the ``Listener`` (the VAD only: nobody speaks) and a ``PacedWriter`` sending silence. The robot
process's CPU time over ``--seconds`` divided by calls × seconds is the CPU per idle call-second (the
VADs' model sessions are created before, from a ``VadPool``; their cost is printed as setup).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import resource
import sys
import time
import uuid
import wave
from pathlib import Path

from ivr.media.audiosocket import (
    FRAME_BYTES,
    Audio,
    AudioSocketParser,
    Eof,
    asterisk_audio_frame,
    asterisk_uuid_frame,
)
from ivr.media.playback import PacedWriter
from ivr.media.vad import Endpointer, SileroVad, VadPool

RECORDINGS = Path(__file__).resolve().parents[2] / "tests" / "calls" / "audio" / "ko-KR" / "audio"


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def read_pcm(path: Path) -> bytes:
    with wave.open(str(path)) as w:
        return w.readframes(w.getnframes())


def decode_bench() -> None:
    from ivr.asr.grammar import load_grammars
    from ivr.asr.recognizer import VoskRecognizer
    from ivr.asr.stream import open_stream
    from ivr.config import Settings, load_settings
    from ivr.media.listen import Listener, TurnEnded
    from ivr.parts import Expect

    recognizer = VoskRecognizer(Settings(asr_dither=False))
    recognizer.load("ko-KR")
    grammar = load_grammars(load_settings(environ={}), "ko-KR")[Expect.SPEECH]
    pad = bytes(int(1.5 * 16000))
    total_audio = total_vosk = total_cpu = 0.0
    latencies: list[float] = []
    print("| recording | audio s | Vosk heard s | CPU s | end-of-turn feed ms | text |")
    print("|---|---|---|---|---|---|")
    for wav in sorted(RECORDINGS.glob("*.wav")):
        if not wav.with_suffix(".txt").exists():
            continue
        pcm = pad + read_pcm(wav) + pad
        listener = Listener(
            Endpointer(SileroVad()), functools.partial(open_stream, recognizer, "ko-KR", grammar)
        )
        started = cpu_s()
        ended: TurnEnded | None = None
        latency = 0.0
        for i in range(0, len(pcm), FRAME_BYTES):
            t = time.perf_counter()
            events = listener.feed(pcm[i : i + FRAME_BYTES])
            if any(isinstance(e, TurnEnded) for e in events):
                latency = time.perf_counter() - t
                ended = listener.result
        used = cpu_s() - started
        assert ended is not None, wav.name
        audio_s = len(pcm) / 16000
        total_audio += audio_s
        total_vosk += ended.audio_s
        total_cpu += used
        latencies.append(latency)
        print(
            f"| {wav.stem} | {audio_s:.2f} | {ended.audio_s:.2f} | {used:.3f} | {1000 * latency:.1f} | "
            f"{ended.recognition.text} |"
        )
    print(
        f"\ndecode: {1000 * total_cpu / total_audio:.1f} ms CPU per second of call audio, "
        f"{1000 * total_cpu / total_vosk:.1f} ms per second given to Vosk; end-of-turn feed "
        f"{1000 * max(latencies):.1f} ms at most"
    )


# ---------------------------------------------------------------- idle calls
async def robot(
    port_future: asyncio.Future[int], calls: int, done: asyncio.Event, *, vad: bool, writer_on: bool
) -> list[int]:
    frames_in: list[int] = []
    # the VADs' model sessions are made before the measurement (a VadPool in the server does that once)
    pool = VadPool()
    started = cpu_s()
    warm = [await asyncio.to_thread(pool.acquire) for _ in range(calls)]
    print(f"setup: {1000 * (cpu_s() - started) / calls:.0f} ms CPU to create one Silero VAD")
    for made in warm:
        pool.release(made)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = AudioSocketParser()
        endpointer = Endpointer(pool.acquire())  # from the pool: no model session made here
        player = PacedWriter(writer)
        playing = asyncio.create_task(player.run() if writer_on else asyncio.sleep(0))
        count = 0
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    parser.feed_eof()
                else:
                    parser.feed(data)
                for event in parser.events():
                    if isinstance(event, Audio):
                        count += 1
                        if vad:
                            endpointer.feed(event.pcm)  # the VAD only: nobody speaks, Vosk never starts
                    elif isinstance(event, Eof):
                        return
        finally:
            frames_in.append(count)
            player.close(hangup=False)
            with contextlib.suppress(Exception):
                await playing
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port_future.set_result(server.sockets[0].getsockname()[1])
    async with server:
        await done.wait()
    return frames_in


async def peer(port: int, calls: int, seconds: float) -> None:
    """Asterisk's side: UUID, then line noise in paced 20 ms frames, reading what comes back."""
    noise = read_pcm(RECORDINGS / "line_noise.wav")
    frames = [noise[i : i + FRAME_BYTES] for i in range(0, len(noise) - FRAME_BYTES + 1, FRAME_BYTES)]

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        drain = asyncio.create_task(reader.read(-1))
        writer.write(asterisk_uuid_frame(uuid.uuid4()))
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < seconds:
            writer.write(asterisk_audio_frame(frames[n % len(frames)]))
            n += 1
            await asyncio.sleep(max(0.0, start + n * 0.02 - time.monotonic()))
        writer.close()
        await writer.wait_closed()
        drain.cancel()

    await asyncio.gather(*(one() for _ in range(calls)))


async def idle_bench(calls: int, seconds: float, *, vad: bool = True, writer_on: bool = True) -> None:
    port_future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    done = asyncio.Event()
    serving = asyncio.create_task(robot(port_future, calls, done, vad=vad, writer_on=writer_on))
    port = await port_future
    await asyncio.sleep(0.5)
    started = cpu_s()
    wall = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ivr.media.stream_bench",
        "--peer",
        str(port),
        "--calls",
        str(calls),
        "--seconds",
        str(seconds),
    )
    await proc.wait()
    await asyncio.sleep(0.2)
    used = cpu_s() - started
    elapsed = time.monotonic() - wall
    done.set()
    frames_in = await serving
    print(
        f"idle (VAD {'on' if vad else 'off'}, writer {'on' if writer_on else 'off'}): "
        f"{calls} calls for {elapsed:.1f} s: robot CPU {used:.2f} s = "
        f"{1000 * used / (calls * seconds):.1f} ms per idle call-second "
        f"({100 * used / elapsed:.1f} % of one core); frames received per call {min(frames_in)}-{max(frames_in)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--peer", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--skip-decode", action="store_true")
    parser.add_argument("--parts", action="store_true", help="also measure idle calls without VAD, writer")
    args = parser.parse_args(argv)
    if args.peer:
        asyncio.run(peer(args.peer, args.calls, args.seconds))
        return 0
    if not args.skip_decode:
        decode_bench()
    asyncio.run(idle_bench(args.calls, args.seconds))
    if args.parts:
        asyncio.run(idle_bench(args.calls, args.seconds, vad=False))
        asyncio.run(idle_bench(args.calls, args.seconds, writer_on=False))
        asyncio.run(idle_bench(args.calls, args.seconds, vad=False, writer_on=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
