"""``ivr bench``: N simultaneous calls in real time through the FastAGI server; latency, CPU, memory.

The callers are the replay harness in real-time mode: the caller's audio "arrives" at the pace of
speech and the recorder's silence wait is spent before the server gets the recording, as with
Asterisk. Per turn: compute latency (recording handed to the server → its command to play the reply),
perceived latency (caller's last word → reply starts = silence wait + compute), and the parts (ASR,
dialogue, synthesis). Per run: percentiles, answered/completed/transferred, time to answer, CPU
seconds per call, peak RSS and RSS before/after.

``--asterisk`` places the same calls as real calls through the local Asterisk (``ivr asterisk up``):
AMI originates each call, the caller's side is a Local channel that plays the turns (see
``ivr.asterisk.testcall``), and the latencies are read from AMI events, so they include Asterisk's own
work and the event delivery. ``--compare`` answers the design questions in one run, each variant on a
fresh robot with the same calls: grammar vs free recognition, in-process vs HTTP Rasa (the scale-out
servers of ``dialogs/server/`` started on loopback), cached vs uncached prompts. CPU and RSS of the
processes beside the robot (the pyttsx3 worker, the Rasa servers, Asterisk) are reported per process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from ivr.config import Settings
from ivr.testing.callfile import CallFile, Expectation, Turn
from ivr.testing.harness import CallReport, ScriptedAsterisk

# One call per locale that walks the common path: ask, verify by keypad, hear the answer, say goodbye.
BENCH_CALLS: dict[str, tuple[str, tuple[Turn, ...]]] = {
    "ko-KR": (
        "01012345678",
        # "바이바이" (goodbye) is the one goodbye Vosk's small Korean model recognizes in espeak-ng's voice
        (Turn("say", "잔액을 알려 주세요"), Turn("dtmf", "6193#"), Turn("say", "감사합니다"), Turn("say", "바이바이")),
    ),
    "zh-CN": (
        "13800000001",
        (Turn("say", "我想查一下余额"), Turn("dtmf", "4821#"), Turn("say", "谢谢"), Turn("say", "再见")),
    ),
    "en-US": (
        "15550000002",
        (Turn("say", "what is my balance"), Turn("dtmf", "7305#"), Turn("say", "thank you"), Turn("say", "goodbye")),
    ),
}


BARGE_IN_S = 2.0  # stream calls say their first words this far into the greeting


def bench_call(locale: str, media: str) -> CallFile:
    """The bench's call in ``media``: in stream mode the caller interrupts the greeting with its first
    words (full duplex); in record mode it waits for the greeting to end (keys are the only barge-in)."""
    caller_id, turns = BENCH_CALLS[locale]
    if media == "stream":
        first = dataclasses.replace(turns[0], during_prompt=BARGE_IN_S)
        turns = (first, *turns[1:])
    return CallFile(Path(f"bench-{locale}.yaml"), caller_id, locale, turns, Expectation(), {"media": media})


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}
    ordered = sorted(values)

    def pick(q: float) -> float:
        index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
        return round(ordered[index], 1)

    return {"p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99), "max": round(ordered[-1], 1), "n": len(ordered)}


def synth_stats(robot: Any) -> dict[str, float]:
    """The synthesizer's counters (renders, hits, misses, syntheses, ...), or {} if it keeps none."""
    stats = getattr(robot.parts.synthesizer, "stats", None)
    return dict(stats.snapshot()) if stats is not None else {}


def _status_kb(pid: int | str, field: str) -> float:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def rss_mb(pid: int | str = "self") -> float:
    return _status_kb(pid, "VmRSS") / 1024


def peak_rss_mb() -> float:
    """This process's peak RSS since the last ``reset_peak_rss`` (VmHWM)."""
    return _status_kb("self", "VmHWM") / 1024


def reset_peak_rss() -> None:
    """Start a new peak-RSS window (Linux: "5" in clear_refs resets VmHWM), so each step's peak is its own."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
        refs.write("5")


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class TimedStore:
    """The account store with each call timed (inside its worker thread, so without queueing for one):
    the bench's "lookup" part. Everything else is the wrapped store's."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.seconds: list[float] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if not callable(attribute) or name in ("close", "healthy"):
            return attribute

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return attribute(*args, **kwargs)
            finally:
                self.seconds.append(time.perf_counter() - started)

        return timed


def _tts_worker_cpu(synthesizer: Any) -> float:
    """CPU seconds of the synthesizer's worker processes so far: the live one's, plus those of workers
    replaced and reaped (they count among this process's waited-for children; the bench starts no others)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    pid = getattr(synthesizer, "worker_pid", None)
    return children.ru_utime + children.ru_stime + (process_cpu_s(pid) if pid else 0.0)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One way of running the robot; ``--compare`` measures each against the first (the default)."""

    name: str
    question: str = ""  # the design question this variant answers against the default
    grammars: bool = True  # per-state grammars (settings.asr_grammars) or free recognition
    dialogue: str = "in-process"  # or "http": the Rasa servers of dialogs/server/ on loopback
    prompts: str = "cached"  # or "uncached": every prompt synthesized when it is played
    media: str | None = None  # "record" or "stream"; None: the bench's --media


DEFAULT = Variant("default")
COMPARISONS = (
    Variant("free-recognition", "grammar vs free recognition", grammars=False),
    Variant("http-rasa", "in-process vs HTTP Rasa", dialogue="http"),
    Variant("uncached-prompts", "cached vs uncached prompts", prompts="uncached"),
)
# the default's calls in the other media mode (--compare runs the one that differs from --media)
MEDIA_VARIANTS = (
    Variant("stream", "record vs stream (full duplex)", media="stream"),
    Variant("record", "stream vs record", media="record"),
)
VARIANTS = {v.name: v for v in (DEFAULT, *COMPARISONS, *MEDIA_VARIANTS)}


def media_of(args: argparse.Namespace, variant: Variant) -> str:
    return variant.media or args.media


def compared(args: argparse.Namespace) -> tuple[Variant, ...]:
    """The variants --compare measures against the default, the other media mode first."""
    return (*(v for v in MEDIA_VARIANTS if v.media != args.media), *COMPARISONS)


class BenchError(RuntimeError):
    """The benchmark could not run (a variant's process failed, a server did not start)."""

# One call as the bench's callers place it: through the harness or through Asterisk.
PlaceCall = Callable[[CallFile], Awaitable[CallReport]]


async def _caller(place: PlaceCall, call: CallFile, start_after_s: float, deadline: float, reports: list[CallReport]) -> None:
    await asyncio.sleep(start_after_s)
    while time.monotonic() < deadline:
        reports.append(await place(call))


async def _lockstep(place: PlaceCall, call: CallFile, calls: int, deadline: float, reports: list[CallReport]) -> None:
    """Rounds of ``calls`` calls placed at the same instant; the next round when all have ended. The
    callers play the same turns, so their turns reach the robot together: the peak a call centre sees
    when many callers finish speaking at once."""
    while time.monotonic() < deadline:
        reports.extend(await asyncio.gather(*(place(call) for _ in range(calls))))


async def bench_once(
    robot: Any,
    settings: Settings,
    calls: int,
    duration_s: float,
    locale: str,
    text: bool,
    ramp_s: float = 10.0,
    *,
    place: PlaceCall | None = None,
    helpers: dict[str, int] | None = None,
    variant: Variant = DEFAULT,
    transport: str = "harness",
    media: str = "record",
    lockstep: bool = False,
) -> dict[str, Any]:
    """``calls`` callers for ``duration_s`` against ``robot``; ``place`` places one call (default: the
    real-time harness on the robot's port); ``helpers``: processes beside the robot whose CPU and RSS count.
    ``media``: "stream" calls barge in on the greeting with their first words (full duplex)."""
    call = bench_call(locale, media)
    turns = call.turns
    render = robot.parts.synthesizer.render
    # Render the callers' utterances once, before measuring (the caller's side is not the robot's cost).
    for turn in turns:
        if turn.kind == "say" and not text:
            await render(turn.value, locale)
    if place is None:

        async def place(one: CallFile) -> CallReport:
            peer = ScriptedAsterisk(
                one, locale=locale, text_mode=text, speech=render, realtime=True, timeout_s=180,
                sounds_dir=robot.settings.sounds_dir,
            )
            return await peer.run("127.0.0.1", robot.server.port)

    helpers = {**(helpers or {})}
    synthesizer = robot.parts.synthesizer
    robot.results = []
    lookups: list[float] = getattr(robot.store, "seconds", [])
    lookups.clear()
    reports: list[CallReport] = []
    # An in-process robot is this process; robot processes (--workers) are measured as their process group.
    robot_cpu_s, robot_rss_mb = getattr(robot, "cpu_s", cpu_s), getattr(robot, "rss_mb", rss_mb)
    robot_peak_rss_mb = getattr(robot, "peak_rss_mb", peak_rss_mb)
    getattr(robot, "reset_peak_rss", reset_peak_rss)()
    rss_before, cpu_before = robot_rss_mb(), robot_cpu_s()
    answered_before = robot.calls_by_worker() if hasattr(robot, "calls_by_worker") else {}
    helpers_before = {name: process_cpu_s(pid) for name, pid in helpers.items()}
    tts_before = _tts_worker_cpu(synthesizer)
    stats_before = synth_stats(robot)
    started = time.monotonic()
    deadline = started + duration_s
    # Callers start spread evenly over the ramp (calls arrive one after another, not in lockstep),
    # then each keeps calling again until the duration is over; calls under way then are finished.
    if lockstep:
        await _lockstep(place, call, calls, deadline, reports)
    else:
        await asyncio.gather(*(_caller(place, call, i * ramp_s / calls, deadline, reports) for i in range(calls)))
    cpu_used = robot_cpu_s() - cpu_before
    wall_s = time.monotonic() - started  # longer than the duration: calls under way are finished
    helper_figures = {
        name: {"cpu_s": round(process_cpu_s(pid) - helpers_before[name], 2), "rss_mb": round(rss_mb(pid), 1)}
        for name, pid in helpers.items()
    }
    worker_pid = getattr(synthesizer, "worker_pid", None)
    helper_figures["tts_worker"] = {
        "cpu_s": round(_tts_worker_cpu(synthesizer) - tts_before, 2),
        "rss_mb": round(rss_mb(worker_pid), 1) if worker_pid else 0.0,
    }
    helpers_cpu = sum(h["cpu_s"] for h in helper_figures.values())
    turns_ = [t for r in robot.results for t in r.turns]
    compute = [x * 1000 for r in reports for x in r.compute_latencies_s]
    silence = [x * 1000 for r in reports for x in r.silence_waits_s]
    perceived = [x * 1000 for r in reports for x in r.perceived_latencies_s]
    barge_in_stops = [x * 1000 for r in reports for x in r.barge_in_stops_s]
    stats_after = synth_stats(robot)
    outcomes = [r.outcome for r in reports]
    placed = max(1, len(reports))
    return {
        "variant": variant.name,
        "transport": transport,
        # robot processes (ivr serve --workers N, started by the bench), or 0: the robot in the bench's process
        "workers": getattr(robot, "workers", 0),
        "media": media,
        "calls_in_stream_mode": sum(r.media == "stream" for r in reports),
        "calls": calls,
        "duration_s": duration_s,
        "ramp_s": 0.0 if lockstep else ramp_s,
        "lockstep": lockstep,
        "locale": locale,
        "recognition": "text" if text else "vosk",
        "grammars": variant.grammars and not text,
        "dialogue": variant.dialogue,
        "prompts": variant.prompts,
        "calls_placed": len(reports),
        "calls_answered": sum(r.answered for r in reports),
        "calls_unanswered": sum(not r.answered for r in reports),
        "calls_completed": outcomes.count("completed"),
        "calls_transferred": outcomes.count("transfer"),
        "calls_other": {o: outcomes.count(o) for o in set(outcomes) - {"completed", "transfer"}},
        "transfer_reasons": {
            reason: sum(r.transfer_reason == reason for r in reports)
            for reason in {r.transfer_reason for r in reports if r.transfer_reason}
        },
        # how the robot's calls were served (voice, keypad, mixed): the keypad menu's share
        "served_by": {by: sum(r.served_by == by for r in robot.results) for by in sorted({r.served_by for r in robot.results})},
        "keypad_share": round(sum(r.served_by in ("keypad", "mixed") for r in robot.results) / max(1, len(robot.results)), 3),
        "compute_latency_ms": percentiles(compute),
        # stream: end of the caller's speech (its last loud frame) → the robot's first audio, at the caller;
        # record: the recorder's silence wait + compute (the caller's last word → the reply starts)
        "perceived_latency_ms": percentiles(perceived),
        # stream: the caller's first word during a prompt → that prompt's audio stops, at the caller
        "barge_in_stop_ms": percentiles(barge_in_stops),
        "silence_wait_ms": percentiles(silence),
        # the same span measured inside the robot (no transport, no event delivery)
        "server_compute_ms": percentiles([t.compute_s * 1000 for t in turns_]),
        "asr_ms": percentiles([t.asr_s * 1000 for t in turns_]),
        "dialogue_ms": percentiles([t.dialogue_s * 1000 for t in turns_]),
        "tts_ms": percentiles([t.tts_s * 1000 for t in turns_]),
        # each account store call made by the in-process actions (none with HTTP Rasa: they run in the
        # action server); part of dialogue_ms
        "lookup_ms": percentiles([x * 1000 for x in lookups]),
        "time_to_answer_ms": percentiles([r.time_to_answer_s * 1000 for r in reports if r.time_to_answer_s is not None]),
        "tts_cache": {k: stats_after.get(k, 0) - stats_before.get(k, 0) for k in stats_after},
        "cpu_s_per_call": round(cpu_used / placed, 3),  # the robot's process (with --workers: all of them)
        "cpu_s_per_call_with_helpers": round((cpu_used + helpers_cpu) / placed, 3),
        "wall_s": round(wall_s, 1),
        "cpu_utilisation": round(cpu_used / wall_s, 2),  # cores busy: the robot's process
        "cpu_utilisation_with_helpers": round((cpu_used + helpers_cpu) / wall_s, 2),
        "rss_before_mb": round(rss_before, 1),
        "rss_after_mb": round(robot_rss_mb(), 1),
        # the robot's process during this step (with --workers: the sum of its processes' peaks, so the
        # pages they share count once per process; "memory" has their PSS, shared pages split)
        "peak_rss_mb": round(robot_peak_rss_mb(), 1),
        **({"memory": robot.memory()} if hasattr(robot, "memory") else {}),
        # with --workers: the calls each worker answered in this step (HAProxy's leastconn at work)
        **({"calls_by_worker": {w: n - answered_before.get(w, 0) for w, n in robot.calls_by_worker().items()}}
           if hasattr(robot, "calls_by_worker") else {}),
        "helpers": helper_figures,
        "errors": sorted({e for r in reports for e in r.errors})[:10],
    }


IDLE_SILENCE_S = 4.0  # an idle caller's silence (the robot's listen timeout is 5 s: it stays listening)
IDLE_WINDOW_S = 3.0  # the robot's CPU is read over this much of it, once every idle caller is silent


async def _idle_calls(port: int, sounds_dir: Path, calls: int, locale: str, media: str, robot_pid: int) -> dict[str, Any]:
    """``calls`` callers at once who, after the greeting, say nothing: the robot listens to silence. Its
    process's CPU over a window inside that silence, per call: what an idle call costs (in stream mode the
    caller's audio still arrives 50 frames a second, through the VAD)."""

    async def never(text: str, locale: str) -> Path:
        raise RuntimeError("idle callers say nothing")

    caller_id, _ = BENCH_CALLS[locale]
    turns = (Turn("silence", IDLE_SILENCE_S), Turn("hangup", True))
    call = CallFile(Path("bench-idle.yaml"), caller_id, locale, turns, Expectation(), {"media": media})
    peers = [
        ScriptedAsterisk(call, locale=locale, text_mode=False, speech=never, realtime=True, timeout_s=120,
                         sounds_dir=sounds_dir)
        for _ in range(calls)
    ]
    # the robot's own idling (timers, health, its threads) without any call: not a call's cost
    cpu_before, started = process_cpu_s(robot_pid), time.monotonic()
    await asyncio.sleep(IDLE_WINDOW_S)
    baseline = (process_cpu_s(robot_pid) - cpu_before) / (time.monotonic() - started)
    placed = [asyncio.create_task(peer.run("127.0.0.1", port)) for peer in peers]
    deadline = time.monotonic() + 60
    while not all(any(e.get("kind") == "silence" for e in peer.report.events) for peer in peers):
        if time.monotonic() > deadline or all(t.done() for t in placed):
            break
        await asyncio.sleep(0.05)
    silent = sum(any(e.get("kind") == "silence" for e in peer.report.events) for peer in peers)
    await asyncio.sleep(0.3)  # the last caller's silence has begun
    cpu_before, started = process_cpu_s(robot_pid), time.monotonic()
    await asyncio.sleep(IDLE_WINDOW_S)
    used, window = process_cpu_s(robot_pid) - cpu_before, time.monotonic() - started
    reports = await asyncio.gather(*placed)
    return {
        "idle_calls": calls,
        "idle_calls_silent_together": silent,
        "idle_calls_in_stream_mode": sum(r.media == "stream" for r in reports),
        "idle_window_s": round(window, 2),
        "idle_cpu_s": round(used, 3),
        "robot_without_calls_core_share": round(baseline, 4),
        # share of one core each idle call adds to the robot's process (its own process: no caller in it)
        "idle_core_share_per_call": round(max(0.0, used / window - baseline) / calls, 4),
        "idle_errors": sorted({e for r in reports for e in r.errors})[:5],
    }


def idle_figures(args: argparse.Namespace, settings: Settings, media: str) -> dict[str, Any]:
    """An ``ivr serve`` of its own (so that its CPU is the robot's alone), ``args.calls`` idle calls to it."""
    from ivr.dialogue.servers import free_ports

    agi, http, audio = free_ports(3)
    env = {
        **os.environ, "IVR_MEDIA": media, "IVR_AGI_HOST": "127.0.0.1", "IVR_AGI_PORT": str(agi),
        "IVR_HTTP_PORT": str(http), "IVR_AUDIOSOCKET_PORT": str(audio),
        "IVR_MAX_CALLS": str(max(args.calls, settings.max_calls)), "IVR_ASR_DITHER": "false",
    }
    argv = [sys.executable, "-m", "ivr", *(["--config", args.config] if args.config else []), "serve"]
    print(f"bench [idle, {media}]: starting a robot of its own for {args.calls} idle calls ...", file=sys.stderr)
    with tempfile.TemporaryFile() as log:
        robot = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                 start_new_session=True)
        try:
            _wait_listening(robot, agi)
            return asyncio.run(_idle_calls(agi, settings.sounds_dir, args.calls, args.locale, media, robot.pid))
        finally:
            robot.terminate()
            try:
                robot.wait(60)
            except subprocess.TimeoutExpired:
                robot.kill()
                robot.wait()


def _wait_listening(robot: subprocess.Popen[bytes], port: int, timeout_s: float = 300.0) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if robot.poll() is not None:
            raise BenchError(f"the idle robot exited with {robot.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.5)
    raise BenchError(f"the idle robot did not listen on port {port} within {timeout_s:.0f} s")


@contextlib.contextmanager
def _variant_settings(settings: Settings, variant: Variant, locale: str, work: Path) -> Iterator[tuple[Settings, dict[str, int]]]:
    """The settings for ``variant``'s robot, and the helper processes started for it (HTTP Rasa)."""
    settings = dataclasses.replace(settings, asr_grammars=variant.grammars)
    if variant.dialogue != "http":
        yield settings, {}
        return
    from ivr.dialogue.servers import rasa_servers

    print(f"bench: starting the Rasa servers for {locale} (logs in {work}) ...", file=sys.stderr)
    extra = {"IVR_LOCKOUT_FAILURES": str(settings.lockout_failures)}
    with rasa_servers(settings, [locale], work, extra_env=extra) as servers:
        names = ["rasa_actions", f"rasa_{locale}"]
        yield (
            dataclasses.replace(settings, dialogue_url=servers.url(locale), dialogue_token=servers.token, locale=locale),
            dict(zip(names, servers.pids, strict=True)),
        )


@contextlib.asynccontextmanager
async def _robot(settings: Settings, variant: Variant, args: argparse.Namespace) -> AsyncIterator[Any]:
    text = args.text
    from ivr.accounts.store import SqlAccountStore
    from ivr.testing.replay import running_robot

    parts: dict[str, Any] = {"store": TimedStore(SqlAccountStore.from_settings(settings))}
    if variant.prompts == "uncached":
        from ivr.tts.synth import PromptSynthesizer

        parts["synthesizer"] = PromptSynthesizer(settings, cache=False)
    try:
        # Asterisk (in its chroot) shares this machine's network: the robot listens on loopback only.
        async with running_robot(settings, text_input=text, host="127.0.0.1", **parts) as (_host, _port, robot):
            yield robot
    finally:
        for part in parts.values():
            await asyncio.to_thread(part.close)


@contextlib.asynccontextmanager
async def _robot_processes(settings: Settings, variant: Variant, args: argparse.Namespace) -> AsyncIterator[Any]:
    """``ivr serve --workers N`` in processes of its own (``ivr.testing.bench_pod``); the callers' speech is
    rendered by a synthesizer in this process."""
    from ivr.testing.bench_pod import PodStartError, robot_processes
    from ivr.tts.synth import PromptSynthesizer

    if variant.dialogue != "in-process" or variant.prompts != "cached":
        raise BenchError(f"--workers runs the production configuration; the {variant.name} variant needs the in-process robot")
    synthesizer = PromptSynthesizer(settings)
    try:
        with tempfile.TemporaryDirectory(prefix="ivr-bench-pod-") as work:
            print(f"bench: starting `ivr serve --workers {args.workers}` (log in {work}/robot.log) ...", file=sys.stderr)
            try:
                with robot_processes(settings, args.workers, text=args.text, render=synthesizer.render, work=Path(work)) as robot:
                    yield robot
            except PodStartError as exc:
                raise BenchError(str(exc)) from exc
    finally:
        await asyncio.to_thread(synthesizer.close)


async def _steps(
    args: argparse.Namespace, settings: Settings, variant: Variant, counts: list[int], helpers: dict[str, int]
) -> list[dict[str, Any]]:
    locale = args.locale
    runs = []
    robot_of = _robot_processes if args.workers else _robot
    async with robot_of(settings, variant, args) as robot, contextlib.AsyncExitStack() as stack:
        place: PlaceCall | None = None
        transport = "harness"
        if args.asterisk:
            from ivr.asterisk.local import LocalAsterisk
            from ivr.asterisk.testcall import AsteriskCaller

            caller = await stack.enter_async_context(
                AsteriskCaller(
                    settings, speech=robot.parts.synthesizer.render, text_mode=args.text,
                    agi_url=f"agi://127.0.0.1:{robot.server.port}/ivr",
                )
            )

            async def place(one: CallFile) -> CallReport:
                return await caller.place(one, timeout_s=180)

            transport = "asterisk"
            asterisk_pid = LocalAsterisk(settings).pid()
            helpers = {**helpers, **({"asterisk": asterisk_pid} if asterisk_pid else {})}
        for count in counts:
            print(f"bench [{variant.name}, {transport}]: {count} simultaneous calls for {args.duration:.0f} s ...", file=sys.stderr)
            run = await bench_once(
                robot, settings, count, args.duration, locale, args.text, args.ramp,
                place=place, helpers=helpers, variant=variant, transport=transport, media=media_of(args, variant),
                lockstep=args.lockstep,
            )
            runs.append(run)
            print(json.dumps(_summary(run)), file=sys.stderr)
    return runs


def _comparisons(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each variant's run against the default run with the same call count, figure by figure."""
    base = {r["calls"]: r for r in runs if r["variant"] == DEFAULT.name}
    out = []
    for variant in (*MEDIA_VARIANTS, *COMPARISONS):
        for run in (r for r in runs if r["variant"] == variant.name and r["calls"] in base):
            ref = base[run["calls"]]
            out.append({
                "question": variant.question,
                "calls": run["calls"],
                "default": DEFAULT.name,
                "variant": variant.name,
                **{
                    f"{figure}_p95": {"default": ref[figure]["p95"], variant.name: run[figure]["p95"]}
                    for figure in ("compute_latency_ms", "perceived_latency_ms", "barge_in_stop_ms", "asr_ms",
                                   "dialogue_ms", "tts_ms", "lookup_ms", "server_compute_ms")
                },
                "media": {"default": ref.get("media"), variant.name: run.get("media")},
                "cpu_s_per_call": {"default": ref["cpu_s_per_call"], variant.name: run["cpu_s_per_call"]},
                "idle_core_share_per_call": {
                    "default": ref.get("idle", {}).get("idle_core_share_per_call"),
                    variant.name: run.get("idle", {}).get("idle_core_share_per_call"),
                },
                "cpu_s_per_call_with_helpers": {
                    "default": ref["cpu_s_per_call_with_helpers"], variant.name: run["cpu_s_per_call_with_helpers"]
                },
                "peak_rss_mb": {"default": ref["peak_rss_mb"], variant.name: run["peak_rss_mb"]},
                "outcomes": {"default": _outcomes(ref), variant.name: _outcomes(run)},
            })
    return out


def _outcomes(run: dict[str, Any]) -> dict[str, int]:
    counts = {"completed": run["calls_completed"], "transfer": run["calls_transferred"], **run["calls_other"]}
    return {k: v for k, v in counts.items() if v}


def _check_asterisk(settings: Settings) -> str | None:
    """Why the --asterisk mode cannot run, or None."""
    from ivr.asterisk.local import LocalAsterisk

    if LocalAsterisk(settings).pid() is None:
        return "the local Asterisk is not running: start it with `ivr asterisk up` (or run without --asterisk)"
    return None


def _run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    counts = [int(c) for c in args.sweep.split(",")] if args.sweep else [args.calls]
    if args.compare:
        runs = []
        for variant in (DEFAULT, *compared(args)):
            runs += _variant_in_child(args, variant)
    else:
        runs = _variant_here(args, settings, VARIANTS[args.variant], counts)
    result: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "command": " ".join(["ivr", *sys.argv[1:]]),
        "runs": runs,
    }
    if args.compare:
        result["comparisons"] = _comparisons(runs)
    return result


def _variant_here(args: argparse.Namespace, settings: Settings, variant: Variant, counts: list[int]) -> list[dict[str, Any]]:
    # The bench's callers are all the same demo customer: the cross-call lockout would end their
    # calls after a few misrecognized answers, which is not what is being measured.
    # The AudioSocket listener on a port of its own (another robot may hold the default one).
    settings = dataclasses.replace(
        settings, max_calls=max(max(counts), settings.max_calls), lockout_failures=1_000_000,
        media=media_of(args, variant), audiosocket_port=0,
    )
    with tempfile.TemporaryDirectory(prefix="ivr-bench-") as work:
        with _variant_settings(settings, variant, args.locale, Path(work)) as (variant_settings, helpers):
            runs = asyncio.run(_steps(args, variant_settings, variant, counts, helpers))
    if variant.name in (DEFAULT.name, *(v.name for v in MEDIA_VARIANTS)) and not args.text and not args.no_idle:
        idle = idle_figures(args, settings, media_of(args, variant))
        for run in runs:
            run["idle"] = idle
    return runs


def _variant_in_child(args: argparse.Namespace, variant: Variant) -> list[dict[str, Any]]:
    """One variant in a fresh ``ivr bench --variant`` process: models loaded for one variant stay in a
    process's memory, so variants run one after another in one process would inherit each other's RSS."""
    with tempfile.TemporaryDirectory(prefix="ivr-bench-") as work:
        out = Path(work) / "runs.json"
        argv = [sys.executable, "-m", "ivr"]
        argv += ["--config", args.config] if args.config else []
        argv += ["--log-level", args.log_level] if args.log_level else []
        argv += ["bench", "--variant", variant.name, "--json", str(out), "--locale", args.locale]
        argv += ["--calls", str(args.calls), "--duration", str(args.duration), "--ramp", str(args.ramp)]
        argv += ["--sweep", args.sweep] if args.sweep else []
        argv += ["--media", args.media]
        argv += ["--workers", str(args.workers)] if args.workers else []
        argv += ["--lockstep"] if args.lockstep else []
        argv += [flag for flag, on in (("--text", args.text), ("--asterisk", args.asterisk), ("--no-idle", args.no_idle)) if on]
        done = subprocess.run(argv, check=False)  # its progress and logs go to our stderr
        if not out.exists():
            raise BenchError(f"the {variant.name} variant failed (exit {done.returncode}); see its output above")
        runs: list[dict[str, Any]] = json.loads(out.read_text(encoding="utf-8"))["runs"]
        return runs


def _summary(run: dict[str, Any]) -> dict[str, Any]:
    return {
        "variant": run["variant"],
        "calls": run["calls"],
        "placed": run["calls_placed"],
        "unanswered": run["calls_unanswered"],
        "compute_p95_ms": run["compute_latency_ms"]["p95"],
        "media": run["media"],
        "perceived_p50_ms": run["perceived_latency_ms"]["p50"],
        "perceived_p95_ms": run["perceived_latency_ms"]["p95"],
        "barge_in_stop_p95_ms": run["barge_in_stop_ms"]["p95"],
        "peak_rss_mb": run["peak_rss_mb"],
    }


def _with_helpers(run: dict[str, Any]) -> float:
    if "cpu_utilisation_with_helpers" in run:
        return float(run["cpu_utilisation_with_helpers"])
    return float(run["cpu_s_per_call_with_helpers"] * max(1, run["calls_placed"]) / run["wall_s"])


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in result["runs"] if r.get("variant", DEFAULT.name) == DEFAULT.name]
    xs = [r["calls"] for r in runs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("p50", "p95", "p99"):
        ax1.plot(xs, [r["compute_latency_ms"][key] or 0 for r in runs], marker="o", label=f"compute {key}")
    ax1.plot(xs, [r["perceived_latency_ms"]["p95"] or 0 for r in runs], marker="s", ls="--", label="perceived p95")
    ax1.set_xlabel("simultaneous calls")
    ax1.set_ylabel("ms")
    ax1.set_title("turn latency")
    ax1.legend()
    ax2.plot(xs, [r["cpu_utilisation"] for r in runs], marker="o", label="CPU, robot (cores busy)")
    ax2.plot(xs, [_with_helpers(r) for r in runs], marker="^", ls=":", label="CPU, robot + helpers")
    ax2.plot(xs, [r["peak_rss_mb"] / 1024 for r in runs], marker="s", label="peak RSS (GB)")
    ax2.set_xlabel("simultaneous calls")
    ax2.set_title("resources")
    ax2.legend()
    transport = runs[0].get("transport", "harness") if runs else "harness"
    fig.suptitle(f"{result['command']}  ({transport}; {result['machine']['cores']} cores)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_media(result: dict[str, Any], path: Path) -> None:
    """``--compare --plot``: record vs stream at each call count: perceived latency, barge-in stop, CPU."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in result["runs"] if r["variant"] in (DEFAULT.name, *(v.name for v in MEDIA_VARIANTS))]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"{r['media']}\n{r['calls']} calls" for r in runs]
    xs = range(len(runs))
    for offset, key in ((-0.2, "p50"), (0.2, "p95")):
        ax1.bar([x + offset for x in xs], [r["perceived_latency_ms"][key] or 0 for r in runs], width=0.4,
                label=f"perceived {key}")
    barged = [(x, r["barge_in_stop_ms"]["p95"]) for x, r in zip(xs, runs, strict=True) if r["barge_in_stop_ms"]["p95"]]
    ax1.scatter([x for x, _ in barged], [ms for _, ms in barged], color="black", marker="v", zorder=3,
                label="barge-in stop p95 (stream only)")
    ax1.axhline(700, ls=":", color="grey")
    ax1.set_xticks(list(xs), labels)
    ax1.set_ylabel("ms")
    ax1.set_title("end of the caller's speech → robot audio")
    ax1.legend(fontsize=8)
    ax2.bar([x - 0.2 for x in xs], [r["cpu_s_per_call_with_helpers"] for r in runs], width=0.4,
            label="CPU s per call (robot + helpers)")
    ax2.bar([x + 0.2 for x in xs], [100 * r.get("idle", {}).get("idle_core_share_per_call", 0) for r in runs],
            width=0.4, label="% of a core per idle call")
    ax2.set_xticks(list(xs), labels)
    ax2.set_title("cost")
    ax2.legend(fontsize=8)
    transport = runs[0].get("transport", "harness") if runs else "harness"
    fig.suptitle(f"{result['command']}  ({transport}; {result['machine']['cores']} cores)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def run_bench(args: argparse.Namespace, settings: Settings) -> int:
    args.locale = args.locale or "ko-KR"
    args.media = args.media or settings.media
    problem = None
    if args.calls < 1 or args.duration <= 0 or args.ramp < 0:
        problem = "--calls must be >= 1, --duration > 0 and --ramp >= 0"
    elif args.sweep and not all(c.strip().isdigit() and int(c) > 0 for c in args.sweep.split(",")):
        problem = f"--sweep must be positive call counts separated by commas, got {args.sweep!r}"
    elif args.locale not in BENCH_CALLS:
        problem = f"--locale must be one of {', '.join(BENCH_CALLS)}, got {args.locale!r}"
    elif args.compare and args.variant != DEFAULT.name:
        problem = "--compare runs every variant; leave out --variant"
    elif args.media == "stream" and args.text:
        problem = "--media stream streams the callers' audio: leave out --text"
    elif args.plot and not (args.sweep or args.compare):
        problem = "--plot needs --sweep (figures against the number of calls) or --compare (record vs stream)"
    elif args.workers is not None and args.workers < 1:
        problem = f"--workers must be 1 or more robot processes, got {args.workers}"
    elif args.asterisk:
        problem = _check_asterisk(settings)
    if problem:
        print(f"ivr bench: {problem}", file=sys.stderr)
        return 2
    from ivr.asterisk.testcall import TestCallError
    from ivr.dialogue.servers import RasaServerError

    try:
        result = _run(args, settings)
    except (BenchError, RasaServerError, TestCallError) as exc:
        print(f"ivr bench: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(result, ensure_ascii=False, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    if args.plot:
        (plot_media if args.compare else plot)(result, Path(args.plot))
    unanswered = sum(r["calls_unanswered"] for r in result["runs"])
    return 1 if unanswered else 0
