"""``ivr replay`` (recorded calls against the robot) and ``ivr bench`` (latency and capacity)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys

from ivr.config import Settings
from ivr.testing.callfile import CallFile
from ivr.testing.harness import CallReport


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="replay call files against the robot and check their expectations")
    p.add_argument("files", nargs="+", metavar="FILE.yaml|DIR", help="call files, or folders of them (*.yaml)")
    p.add_argument("--text", action="store_true", help="give 'say' turns to the dialogue as recognized text")
    p.add_argument("--json", action="store_true", help="print one JSON object per call")
    p.add_argument("--server", metavar="HOST:PORT", help="a running FastAGI server (default: start one in-process)")
    p.add_argument(
        "--asterisk",
        action="store_true",
        help="place each call as a real call through the local Asterisk (`ivr asterisk up` first)",
    )
    p.add_argument(
        "--media",
        choices=["record", "stream"],
        help="how every call's audio goes: record (RECORD FILE / STREAM FILE) or stream (AudioSocket, full "
        "duplex); default: each call file's agi_params.media, else the robot's IVR_MEDIA",
    )
    p.add_argument(
        "--compare-releases",
        nargs=2,
        metavar=("A", "B"),
        help="replay against two versions of the dialog (a release number, `current` or `draft`, the working "
        "copy) and report per call where the outcome, the intents or the answers differ; exit 1 when a call "
        "completed under A ends in transfer or error under B (--json: the report as JSON)",
    )
    p.set_defaults(handler=replay)
    register_calls(sub)

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
        choices=["default", "free-recognition", "http-rasa", "uncached-prompts", "stream", "record"],
        help="run the robot one of --compare's other ways (default: the production configuration)",
    )
    b.add_argument(
        "--media",
        choices=["record", "stream"],
        help="how the calls' audio goes (default: IVR_MEDIA): record (RECORD FILE / STREAM FILE) or stream "
        "(AudioSocket, full duplex; the callers interrupt the greeting); --compare also runs the other one",
    )
    b.add_argument(
        "--lockstep", action="store_true",
        help="callers in rounds: all place their call at the same instant, the next round when all have ended "
        "(their turns reach the robot together; --ramp is not used)",
    )
    b.add_argument(
        "--workers", type=int, metavar="N",
        help="call `ivr serve --workers N` started in processes of their own (N >= 2: HAProxy in front, as in a "
        "pod) instead of a robot in the bench's process; CPU and memory are then those of the robot's processes",
    )
    b.add_argument(
        "--no-idle", action="store_true",
        help="skip the idle-call figure (a robot process of its own with callers who say nothing)",
    )
    b.set_defaults(handler=bench)


def call_file_paths(items: list[str]) -> list[str]:
    """Call files as given, folders expanded to the ``*.yaml`` files in them (sorted, not recursive)."""
    from pathlib import Path

    out: list[str] = []
    for item in items:
        folder = Path(item)
        if folder.is_dir():
            found = sorted(str(f) for f in folder.glob("*.yaml"))
            if not found:
                raise ValueError(f"{folder}: no call files (*.yaml) in this folder")
            out += found
        else:
            out.append(item)
    return out


def replay(args: argparse.Namespace, settings: Settings) -> int:
    from ivr.testing.replay import load_all, parse_server, replay_calls

    calls = load_all(call_file_paths(args.files))
    if args.media == "stream" and args.text:
        print("ivr replay: --media stream streams the caller's audio: leave out --text", file=sys.stderr)
        return 2
    if args.compare_releases:
        return compare(args, settings, calls)
    if args.asterisk:
        from ivr.asterisk.testcall import TestCallError

        try:
            reports = asyncio.run(_replay_through_asterisk(settings, calls, args.server, args.text, args.media))
        except TestCallError as exc:
            print(f"ivr replay --asterisk: {exc}", file=sys.stderr)
            return 1
    else:
        server = parse_server(args.server) if args.server else None
        reports = asyncio.run(replay_calls(settings, calls, text_mode=args.text, server=server, media=args.media))
    failed = 0
    for call, report in zip(calls, reports, strict=True):
        failures = report.failures(call)
        failed += bool(failures)
        if args.json:
            print(json.dumps({**report.to_json(), "failures": failures}, ensure_ascii=False))
            continue
        reason = f" ({report.transfer_reason})" if report.transfer_reason else ""
        print(f"== {call.path}: {report.outcome}{reason} [{report.media}]")
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
    settings: Settings, calls: list[CallFile], server: str | None, text_mode: bool, media: str | None = None
) -> list[CallReport]:
    """Each call placed through the local Asterisk, to a server given by --server or started here.

    The caller's ``say`` turns are spoken with the robot's own synthesizer (as in the replay harness).
    With ``--text`` the robot started here takes the words from the sidecar text, not from Vosk.
    ``media`` puts every call in that mode (stream calls: the caller's audio over its own AudioSocket).
    """
    from ivr.asterisk.testcall import replay_via_asterisk
    from ivr.testing.replay import parse_server, replay_settings, running_robot, with_media

    settings = replay_settings(settings)
    calls = with_media(calls, media)
    if media is not None:
        settings = dataclasses.replace(settings, media=media)
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


def compare(args: argparse.Namespace, settings: Settings, calls: list[CallFile]) -> int:
    from ivr.testing.compare import CompareError, compare_releases, print_report

    if args.server or args.asterisk:
        print("ivr replay: --compare-releases starts its own robots: no --server or --asterisk", file=sys.stderr)
        return 2
    a, b = args.compare_releases
    try:
        report = asyncio.run(compare_releases(settings, calls, a, b, text_mode=args.text))
    except CompareError as exc:
        print(f"ivr replay --compare-releases: {exc}", file=sys.stderr)
        return 2
    print_report(report, as_json=args.json)
    return 1 if report.regressions else 0


# ---------------------------------------------------------------- ivr calls list | export | import
def register_calls(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("calls", help="find finished calls, export one as a call file, import a call recording")
    actions = c.add_subparsers(dest="calls_command", metavar="ACTION", required=True)
    ls = actions.add_parser("list", help="the finished calls, from the robot's transcripts")
    ls.add_argument("--since", help="only calls on or after this day (YYYY-MM-DD) or this many days back (e.g. 7)")
    ls.add_argument("--outcome", choices=["completed", "transfer", "caller_hangup", "error"])
    ls.add_argument("--intent", help="only calls in which the caller had this intent (e.g. check_balance)")
    ls.add_argument("--json", action="store_true", help="one JSON object per call")
    ls.set_defaults(handler=calls_list)
    ex = actions.add_parser(
        "export", help="write a call file for a finished call (owner-only; secrets become placeholders)",
        description="A call file for a finished call: the caller's kept recordings (IVR_KEEP_RECORDINGS=true) "
        "as audio turns, else the recognized words; keys, silences, the hang-up; expect: what the robot did. "
        "Secret keys, spoken ID digits and the caller's number are never exported: placeholders stand in.",
    )
    ex.add_argument("call_id", metavar="CALL_ID", help="the robot's call ID (as `ivr calls list` or Asterisk's log "
                    "shows it; a unique prefix will do)")
    ex.add_argument("--out", default="calls-export", help="folder for the call file and its audio (default: "
                    "./calls-export, created owner-only)")
    ex.add_argument("--caller-id", help="a test caller ID to put in (the robot never keeps the caller's number; "
                    "default: a placeholder, or \"\" for a withheld one)")
    ex.add_argument("--text-only", action="store_true", help="recognized words as `say` turns even where the "
                    "recording was kept (the anonymized form, for committing)")
    ex.set_defaults(handler=calls_export)
    im = actions.add_parser("import", help="a call recording (stereo, or the caller alone) as a call file")
    im.add_argument("recording", metavar="RECORDING.wav", help="WAV, or MixMonitor's interleaved .raw (D option)")
    im.add_argument("--caller-channel", choices=["left", "right"], help="the caller's side of a stereo recording")
    im.add_argument("--locale", required=True, choices=["zh-CN", "en-US", "ko-KR"])
    im.add_argument("--out", default="calls-import", help="folder for the call file and its audio")
    im.add_argument("--caller-id", default="", help="the caller ID the replay presents (default: withheld)")
    im.add_argument("--threshold", type=int, default=256, help="speech level, RMS of 16-bit samples (default 256, "
                    "Asterisk's silence threshold)")
    im.add_argument("--gap", type=float, default=1.0, help="pauses shorter than this (s) stay inside a turn")
    im.set_defaults(handler=calls_import)


def calls_list(args: argparse.Namespace, settings: Settings) -> int:
    import datetime as dt

    from ivr.testing.export import list_calls

    since = None
    if args.since:
        since = (dt.date.today() - dt.timedelta(days=int(args.since)) if args.since.isdigit()
                 else dt.date.fromisoformat(args.since))
    found = list_calls(settings.transcripts_dir, since=since, outcome=args.outcome, intent=args.intent)
    for call in found:
        if args.json:
            print(json.dumps(call.to_json(), ensure_ascii=False))
            continue
        intents = ",".join(call.intents) or "-"
        reason = f" ({call.reason})" if call.reason else ""
        print(f"{call.call_id}  {call.to_json()['started']}  {call.locale or '?':5}  {call.outcome}{reason}  "
              f"turns {call.caller_turns}  intents {intents}")
    if not args.json:
        print(f"{len(found)} call(s) in {settings.transcripts_dir}", file=sys.stderr)
    return 0


def calls_export(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from ivr.testing.export import ExportError, export_call

    try:
        result = export_call(settings, args.call_id, Path(args.out), caller_id=args.caller_id,
                             text_only=args.text_only)
    except ExportError as exc:
        print(f"ivr calls export: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {result.call_file} (owner-only; call data: keep it out of version control)")
    for path in result.audio:
        print(f"  audio {path}")
    for note in result.notes:
        print(f"  note: {note}")
    for placeholder in result.placeholders:
        print(f"  fill in: {placeholder}")
    return 0


def calls_import(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from ivr.testing.importer import RecordingImportError, import_recording

    try:
        result = import_recording(Path(args.recording), Path(args.out), locale=args.locale,
                                  caller_channel=args.caller_channel, caller_id=args.caller_id,
                                  threshold=args.threshold, gap_s=args.gap)
    except RecordingImportError as exc:
        print(f"ivr calls import: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {result.call_file}: {len(result.segments)} turn(s) from {result.duration_s:.1f} s "
          "(owner-only; call data: keep it out of version control)")
    for seg, path in zip(result.segments, result.audio, strict=True):
        print(f"  {seg.start_s:7.2f}-{seg.end_s:7.2f} s  {path}")
    return 0
