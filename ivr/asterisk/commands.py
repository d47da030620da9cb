"""``ivr asterisk up|down|status|config``: the local Asterisk, and the production configuration."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ivr.config import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("asterisk", help="the local Asterisk (Debian sid chroot) and the shipped configuration")
    actions = p.add_subparsers(dest="asterisk_command", metavar="ACTION", required=True)

    up = actions.add_parser("up", help="install (first time: debootstrap, ~1 min) and start the local Asterisk")
    up.add_argument("--timeout", type=float, default=30.0, help="seconds to wait until fully booted (default 30)")
    up.set_defaults(handler=asterisk_up)

    down = actions.add_parser("down", help="stop the local Asterisk (by its PID) and unmount the shared folders")
    down.add_argument("--timeout", type=float, default=15.0, help="seconds before it is killed (default 15)")
    down.set_defaults(handler=asterisk_down)

    status = actions.add_parser("status", help="is the local Asterisk installed and running (exit 3 if not)")
    status.set_defaults(handler=asterisk_status)

    config = actions.add_parser(
        "config", help="render asterisk_conf/ for a production Asterisk (AGI address, AMI login from settings)"
    )
    config.add_argument("--out", required=True, metavar="DIR", help="folder to write the .conf files into")
    config.set_defaults(handler=asterisk_config)


def asterisk_up(args: argparse.Namespace, settings: Settings) -> int:
    from ivr.asterisk.local import AsteriskError, LocalAsterisk

    local = LocalAsterisk(settings)
    if not local.installed():
        print(f"== installing Debian sid + asterisk into {local.root} (debootstrap, about a minute, ~500 MB)")
    try:
        status = local.up(timeout_s=args.timeout)
    except AsteriskError as exc:
        print(f"ivr asterisk up: {exc}", file=sys.stderr)
        return 1
    print("\n".join(status.lines()))
    apology = settings.sounds_dir / "fallback" / settings.locale / "apology.wav"
    if not apology.exists():
        print(f"note: no pre-rendered apology at {apology}: run `ivr prompts build` (else the dialplan plays "
              "Asterisk's stock English apology when the robot is down)")
    print(
        f"call the robot: a SIP softphone registered as 'softphone' at 127.0.0.1:{status.sip_port}, dial any number"
    )
    return 0


def asterisk_down(args: argparse.Namespace, settings: Settings) -> int:
    from ivr.asterisk.local import AsteriskError, LocalAsterisk

    try:
        stopped = LocalAsterisk(settings).down(timeout_s=args.timeout)
    except AsteriskError as exc:
        print(f"ivr asterisk down: {exc}", file=sys.stderr)
        return 1
    print("local Asterisk stopped" if stopped else "local Asterisk was not running")
    return 0


def asterisk_status(args: argparse.Namespace, settings: Settings) -> int:
    from ivr.asterisk.local import LocalAsterisk

    status = LocalAsterisk(settings).status()
    print("\n".join(status.lines()))
    return 0 if status.running else 3


def asterisk_config(args: argparse.Namespace, settings: Settings) -> int:
    from ivr.asterisk.local import config_values, new_secret, render_config

    out = Path(args.out)
    generated = []
    ami_secret = settings.ami_secret
    if not ami_secret:
        ami_secret = new_secret()
        generated.append("AMI")
    sip_secret = os.environ.get("IVR_SIP_SECRET", "")
    if not sip_secret:
        sip_secret = new_secret()
        generated.append("SIP softphone")
    values = config_values(settings, os.environ, local=False, ami_secret=ami_secret, sip_secret=sip_secret)
    for path in render_config(out, values, local=False):
        print(path)
    if generated:
        print(
            f"generated new {' and '.join(generated)} secret(s): they are only in {out}/manager.conf and "
            f"{out}/pjsip.conf; set IVR_AMI_SECRET / IVR_SIP_SECRET to choose them",
            file=sys.stderr,
        )
    return 0
