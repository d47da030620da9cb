"""``ivr serve``: the FastAGI server with the robot behind it."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import TYPE_CHECKING

from ivr.config import Settings

if TYPE_CHECKING:
    from ivr.parts import Recognizer

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the FastAGI server (the robot)")
    p.add_argument("--host", help="address to bind (default: $IVR_AGI_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: $IVR_AGI_PORT or 4573)")
    p.add_argument(
        "--text-input",
        action="store_true",
        help="development only: take the caller's words from <recording>.txt instead of Vosk",
    )
    p.add_argument(
        "--workers",
        help="robot processes: a number or 'auto' (one per core; default: $IVR_WORKERS or 1). More than one: "
        "HAProxy on the FastAGI port in front of them, supervised (see `ivr pod`)",
    )
    p.set_defaults(handler=serve)


def serve(args: argparse.Namespace, settings: Settings) -> int:
    from ivr.pod.supervisor import run_pod, worker_count

    workers = worker_count(args.workers or settings.workers)
    if workers > 1:
        return run_pod(settings, workers, host=args.host, port=args.port, text_input=args.text_input)
    return asyncio.run(serve_robot(settings, args.host, args.port, args.text_input))


async def serve_robot(
    settings: Settings, host: str | None, port: int | None, text_input: bool, *,
    recognizer: Recognizer | None = None, housekeeping: bool = True,
) -> int:
    """One robot process until SIGTERM/SIGINT. A pod's worker (ivr.pod) passes the speech models its
    supervisor loaded before forking, and only one worker does the housekeeping: the retention purge and
    the release pull (ivr.releases_pull; the workers share one models folder)."""
    from ivr.app import build_robot

    robot = build_robot(settings, text_input=text_input, releases=True, recognizer=recognizer)
    if housekeeping:
        await robot.pull_releases_once()  # the releases published elsewhere, before loading
    await robot.warm_up()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, robot.request_reload)  # load the current releases, calls go on
    await robot.start(host, port)
    if housekeeping:
        robot.start_purging()  # retention: transcripts, recordings, audit rows past retention_days, daily
        robot.start_pulling()  # releases published from other models folders, every release_pull_s
    log.info("the robot answers calls; /metrics and /health on %s:%d", settings.http_host, settings.http_port)
    await stop.wait()
    log.info("stopping: no new calls, live calls get up to %.0f s", settings.stop_grace_s)
    await robot.stop()
    return 0
