"""``ivr replay`` (recorded calls against the robot) and ``ivr bench`` (latency and capacity)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from ivr.config import Settings
from ivr.testing.callfile import CallFile
from ivr.testing.harness import CallReport


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="replay call files against the robot and check their expectations")
    p.add_argument("files", nargs="+", metavar="FILE.yaml")
    p.add_argument("--text", action="store_true", help="give 'say' turns to the dialogue as recognized text")
    p.add_argument("--json", action="store_true", help="print one JSON object per call")
    p.add_argument("--server", metavar="HOST:PORT", help="a running FastAGI server (default: start one in-process)")
    p.add_argument(
        "--asterisk",
        action="store_true",
        help="place each call as a real call through the local Asterisk (`ivr asterisk up` first)",
    )
    p.set_defaults(handler=replay)

    b = sub.add_parser("bench", help="simultaneous calls in real time: latency, CPU and memory")
    b.add_argument("--calls", type=int, default=5, help="simultaneous calls (default 5)")
    b.add_argument("--duration", type=float, default=30.0, help="seconds to keep calling (default 30)")
    b.add_argument("--ramp", type=float, default=10.0, help="seconds over which the callers' first calls start (default 10)")
    b.add_argument("--locale", help="locale of the calls (default: ko-KR, the one with an installed Vosk model)")
    b.add_argument("--json", metavar="FILE", help="write the results as JSON")
    b.add_argument("--plot", metavar="FILE.png", help="with --sweep: plot latency percentiles and CPU")
    b.add_argument("--sweep", help="comma-separated call counts, e.g. 1,5,10,20,50,100")
    b.add_argument("--text", action="store_true", help="skip recognition (text turns): isolates the rest")
    b.add_argument(
        "--asterisk", action="store_true", help="place the calls through the local Asterisk (`ivr asterisk up` first)"
    )
    b.add_argument(
        "--compare",
        action="store_true",
        help="also run free recognition, HTTP Rasa and uncached prompts at the same calls, each against the default",
    )
    b.add_argument(
        "--variant",
        default="default",
        choices=["default", "free-recognition", "http-rasa", "uncached-prompts"],
        help="run the robot one of --compare's other ways (default: the production configuration)",
    )
    b.set_defaults(handler=bench)


def replay(args: argparse.Namespace, settings: Settings) -> int:
    from ivr.testing.replay import load_all, parse_server, replay_calls

    calls = load_all(args.files)
    if args.asterisk:
        from ivr.asterisk.testcall import TestCallError

        try:
            reports = asyncio.run(_replay_through_asterisk(settings, calls, args.server, args.text))
        except TestCallError as exc:
            print(f"ivr replay --asterisk: {exc}", file=sys.stderr)
            return 1
    else:
        server = parse_server(args.server) if args.server else None
        reports = asyncio.run(replay_calls(settings, calls, text_mode=args.text, server=server))
    failed = 0
    for call, report in zip(calls, reports, strict=True):
        failures = report.failures(call)
        failed += bool(failures)
        if args.json:
            print(json.dumps({**report.to_json(), "failures": failures}, ensure_ascii=False))
            continue
        print(f"== {call.path}: {report.outcome}" + (f" ({report.transfer_reason})" if report.transfer_reason else ""))
        for event in report.events:
            label = event.get("kind") or event.get("action") or ""
            text = event["text"] if event["text"] or not label else f"({label})"
            print(f"  {event['who']:>6}{'/' + label if label else ''}: {text}")
        for step in getattr(report, "telephony", ()):  # --asterisk: what the dialplan and the agent did
            detail = step.get("sound") or step.get("reason") or ""
            print(f"  {step['who']:>8}/{step['kind']}" + (f": {detail}" if detail else ""))
        for failure in failures:
            print(f"  FAILED: {failure}")
    if failed:
        print(f"{failed} of {len(calls)} calls failed their expectations", file=sys.stderr)
    return 1 if failed else 0


async def _replay_through_asterisk(
    settings: Settings, calls: list[CallFile], server: str | None, text_mode: bool
) -> list[CallReport]:
    """Each call placed through the local Asterisk, to a server given by --server or started here.

    The caller's ``say`` turns are spoken with the robot's own synthesizer (as in the replay harness).
    With ``--text`` the robot started here takes the words from the sidecar text, not from Vosk.
    """
    from ivr.asterisk.testcall import replay_via_asterisk
    from ivr.testing.replay import parse_server, replay_settings, running_robot

    settings = replay_settings(settings)
    if server:
        from ivr.tts.synth import PromptSynthesizer

        host, port = parse_server(server)
        synth = PromptSynthesizer(settings)
        try:
            return await replay_via_asterisk(
                settings, calls, agi_url=f"agi://{host}:{port}/ivr", speech=synth.render, text_mode=text_mode
            )
        finally:
            await asyncio.to_thread(synth.close)
    # Asterisk (in its chroot) shares this machine's network: the robot listens on loopback only.
    async with running_robot(settings, text_input=text_mode, host="127.0.0.1") as (host, port, robot):
        speech = robot.parts.synthesizer.render
        return await replay_via_asterisk(
            settings, calls, agi_url=f"agi://{host}:{port}/ivr", speech=speech, text_mode=text_mode
        )


def bench(args: argparse.Namespace, settings: Settings) -> int:
    from ivr.testing.bench import run_bench

    return run_bench(args, settings)
