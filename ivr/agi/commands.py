"""``ivr serve``: the FastAGI server with the robot behind it."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from ivr.config import Settings

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
    p.set_defaults(handler=serve)


def serve(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_serve(settings, args.host, args.port, args.text_input))


async def _serve(settings: Settings, host: str | None, port: int | None, text_input: bool) -> int:
    from ivr.app import build_robot

    robot = build_robot(settings, text_input=text_input, releases=True)
    await robot.warm_up()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, robot.request_reload)  # load the current releases, calls go on
    await robot.start(host, port)
    robot.start_purging()  # retention: transcripts, recordings, audit rows past retention_days, daily
    log.info("the robot answers calls; /metrics and /health on %s:%d", settings.http_host, settings.http_port)
    await stop.wait()
    log.info("stopping: no new calls, live calls get up to %.0f s", settings.stop_grace_s)
    await robot.stop()
    return 0
