"""The ``ivr`` command: wiring and configuration only. Logging is configured here and nowhere else.

Each area registers its subcommands from its own ``commands`` module (``register(subparsers)``);
a handler takes the parsed arguments and the settings and returns the exit code. Heavy imports
(Rasa, Vosk, pyttsx3) happen inside handlers, so ``ivr --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from ivr.config import ConfigError, load_settings
from ivr.logs import LOG_FORMATS, configure_logging

COMMAND_MODULES = (
    "ivr.agi.commands",  # serve
    "ivr.testing.commands",  # replay, bench
    "ivr.dialogue.commands",  # dialogs validate, train
    "ivr.accounts.commands",  # db init, db import
    "ivr.tts.commands",  # say, prompts build
    "ivr.asr.commands",  # models list|pull|verify, asr transcribe|eval
    "ivr.asterisk.commands",  # asterisk up|down|status
    "ivr.pod.commands",  # pod config|up|down|status
    "ivr.retention",  # purge
    "ivr.releases_commands",  # publish, releases, rollback
    "ivr.console.commands",  # console, console adduser
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ivr", description="Voice robot for a consumer-finance hotline.")
    parser.add_argument("--config", help="a TOML settings file (default: ./ivr.toml, or $IVR_CONFIG)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR (default: $IVR_LOG_LEVEL or INFO)")
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="auto",
        help="auto (default): readable lines on a terminal, JSON lines otherwise",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from pathlib import Path

        settings = load_settings(Path(args.config) if args.config else None, log_level=args.log_level)
    except ConfigError as exc:
        print(f"ivr: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, log_format=args.log_format)
    try:
        return int(args.handler(args, settings))
    except KeyboardInterrupt:
        return 130
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        logging.getLogger("ivr").debug("command failed", exc_info=True)
        print(f"ivr {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
