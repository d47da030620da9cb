"""``ivr bench``: N simultaneous calls in real time through the FastAGI server; latency, CPU, memory.

The callers are the replay harness in real-time mode: the caller's audio "arrives" at the pace of
speech and the recorder's silence wait is spent before the server gets the recording, as with
Asterisk. Per turn: compute latency (recording handed to the server → its command to play the reply),
perceived latency (caller's last word → reply starts = silence wait + compute), and the parts (ASR,
dialogue, synthesis). Per run: percentiles, answered/completed/transferred, time to answer, CPU
seconds per call, peak RSS and RSS before/after.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

from ivr.config import Settings
from ivr.testing.callfile import CallFile, Expect, Turn
from ivr.testing.harness import CallReport, ScriptedAsterisk

# One call per locale that walks the common path: ask, verify by keypad, hear the answer, say goodbye.
BENCH_CALLS: dict[str, tuple[str, tuple[Turn, ...]]] = {
    "ko-KR": (
        "01012345678",
        (Turn("say", "잔액을 알려 주세요"), Turn("dtmf", "6193#"), Turn("say", "감사합니다"), Turn("say", "안녕히 계세요")),
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


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _caller(
    call: CallFile, locale: str, port: int, start_after_s: float, deadline: float,
    reports: list[CallReport], text: bool, render: Any,
) -> None:
    await asyncio.sleep(start_after_s)
    while time.monotonic() < deadline:
        peer = ScriptedAsterisk(call, locale=locale, text_mode=text, speech=render, realtime=True, timeout_s=180)
        reports.append(await peer.run("127.0.0.1", port))


async def bench_once(
    robot: Any, settings: Settings, calls: int, duration_s: float, locale: str, text: bool, ramp_s: float = 10.0
) -> dict[str, Any]:
    caller_id, turns = BENCH_CALLS[locale]
    call = CallFile(Path(f"bench-{locale}.yaml"), caller_id, locale, turns, Expect())
    render = robot.parts.synthesizer.render
    # Render the callers' utterances once, before measuring (the caller's side is not the robot's cost).
    for turn in turns:
        if turn.kind == "say" and not text:
            await render(turn.value, locale)
    robot.results = []
    reports: list[CallReport] = []
    rss_before, cpu_before = rss_mb(), cpu_s()
    stats_before = synth_stats(robot)
    started = time.monotonic()
    deadline = started + duration_s
    # Callers start spread evenly over the ramp (calls arrive one after another, not in lockstep),
    # then each keeps calling again until the duration is over; calls under way then are finished.
    await asyncio.gather(
        *(
            _caller(call, locale, robot.server.port, i * ramp_s / calls, deadline, reports, text, render)
            for i in range(calls)
        )
    )
    cpu_used = cpu_s() - cpu_before
    wall_s = time.monotonic() - started  # longer than the duration: calls under way are finished
    turns_ = [t for r in robot.results for t in r.turns]
    compute = [x * 1000 for r in reports for x in r.compute_latencies_s]
    silence = [x * 1000 for r in reports for x in r.silence_waits_s]
    perceived = [x * 1000 for r in reports for x in r.perceived_latencies_s]
    stats_after = synth_stats(robot)
    outcomes = [r.outcome for r in reports]
    return {
        "calls": calls,
        "duration_s": duration_s,
        "ramp_s": ramp_s,
        "locale": locale,
        "recognition": "text" if text else "vosk",
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
        "compute_latency_ms": percentiles(compute),
        "perceived_latency_ms": percentiles(perceived),
        "silence_wait_ms": percentiles(silence),
        "asr_ms": percentiles([t.asr_s * 1000 for t in turns_]),
        "dialogue_ms": percentiles([t.dialogue_s * 1000 for t in turns_]),
        "tts_ms": percentiles([t.tts_s * 1000 for t in turns_]),
        "time_to_answer_ms": percentiles([r.time_to_answer_s * 1000 for r in reports if r.time_to_answer_s is not None]),
        "tts_cache": {k: stats_after.get(k, 0) - stats_before.get(k, 0) for k in stats_after},
        "cpu_s_per_call": round(cpu_used / max(1, len(reports)), 3),
        "wall_s": round(wall_s, 1),
        "cpu_utilisation": round(cpu_used / wall_s, 2),
        "rss_before_mb": round(rss_before, 1),
        "rss_after_mb": round(rss_mb(), 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "errors": sorted({e for r in reports for e in r.errors})[:10],
    }


async def _run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from ivr.testing.replay import running_robot

    locale = args.locale or "ko-KR"
    counts = [int(c) for c in args.sweep.split(",")] if args.sweep else [args.calls]
    # The bench's callers are all the same demo customer: the cross-call lockout would end their
    # calls after a few misrecognized answers, which is not what is being measured.
    settings = dataclasses.replace(
        settings, max_calls=max(max(counts), settings.max_calls), lockout_failures=1_000_000
    )
    runs = []
    async with running_robot(settings, text_input=args.text) as (_host, _port, robot):
        for count in counts:
            print(f"bench: {count} simultaneous calls for {args.duration:.0f} s ...", file=sys.stderr)
            runs.append(await bench_once(robot, settings, count, args.duration, locale, args.text, args.ramp))
            print(json.dumps(_summary(runs[-1])), file=sys.stderr)
    return {
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "command": " ".join(["ivr", "bench", *sys.argv[2:]]),
        "runs": runs,
    }


def _summary(run: dict[str, Any]) -> dict[str, Any]:
    return {
        "calls": run["calls"],
        "placed": run["calls_placed"],
        "unanswered": run["calls_unanswered"],
        "compute_p95_ms": run["compute_latency_ms"]["p95"],
        "perceived_p95_ms": run["perceived_latency_ms"]["p95"],
        "peak_rss_mb": run["peak_rss_mb"],
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    xs = [r["calls"] for r in runs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("p50", "p95", "p99"):
        ax1.plot(xs, [r["compute_latency_ms"][key] or 0 for r in runs], marker="o", label=f"compute {key}")
    ax1.plot(xs, [r["perceived_latency_ms"]["p95"] or 0 for r in runs], marker="s", ls="--", label="perceived p95")
    ax1.set_xlabel("simultaneous calls")
    ax1.set_ylabel("ms")
    ax1.set_title("turn latency")
    ax1.legend()
    ax2.plot(xs, [r["cpu_utilisation"] for r in runs], marker="o", label="CPU (cores busy)")
    ax2.plot(xs, [r["peak_rss_mb"] / 1024 for r in runs], marker="s", label="peak RSS (GB)")
    ax2.set_xlabel("simultaneous calls")
    ax2.set_title("resources")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def run_bench(args: argparse.Namespace, settings: Settings) -> int:
    if args.asterisk:
        print("ivr bench: --asterisk mode is not available yet; run without it", file=sys.stderr)
        return 2
    if args.calls < 1 or args.duration <= 0:
        print("ivr bench: --calls must be >= 1 and --duration > 0", file=sys.stderr)
        return 2
    result = asyncio.run(_run(args, settings))
    text = json.dumps(result, ensure_ascii=False, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    if args.plot:
        plot(result, Path(args.plot))
    unanswered = sum(r["calls_unanswered"] for r in result["runs"])
    return 1 if unanswered else 0
