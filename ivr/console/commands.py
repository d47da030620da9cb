"""``ivr console [--host H] [--port P]`` serves the ops console; ``ivr console adduser NAME --role R`` adds a user.

The console listens on loopback unless ``--allow-remote`` is given with another address: put it behind a
reverse proxy that terminates TLS (README, "The ops console") and add ``--secure-cookies``.
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ivr.config import Settings

DEFAULT_PORT = 8090


def register(subparsers: Any) -> None:
    console = subparsers.add_parser(
        "console", help="the ops console: a web page to edit, publish and review the robot",
        description="Serve the ops console (login required; `ivr console adduser` creates the first admin). "
                    "Loopback only unless --allow-remote.")
    console.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    console.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    console.add_argument("--allow-remote", action="store_true",
                         help="allow an address other than loopback (only behind a TLS reverse proxy)")
    console.add_argument("--secure-cookies", action="store_true",
                         help="mark the session cookie Secure (the browser reaches the console over HTTPS)")
    actions = console.add_subparsers(dest="console_command", metavar="ACTION")
    add = actions.add_parser("adduser", help="add a console user (password prompted, or one line on stdin)")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=("viewer", "editor", "publisher", "admin"))
    add.add_argument("--replace", action="store_true", help="set a new role and password for an existing user")
    console.set_defaults(handler=_console)


def _console(args: argparse.Namespace, settings: Settings) -> int:
    if args.console_command == "adduser":
        return _adduser(args, settings)
    return _serve(args, settings)


def _adduser(args: argparse.Namespace, settings: Settings) -> int:
    from ivr.console.users import ConsoleStore, UserError
    from ivr.releases import default_author

    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            print("ivr console adduser: error: the two passwords differ; nothing was changed", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    try:
        user = ConsoleStore(settings.console_dir).add_user(args.name, args.role, password,
                                                           by=f"{default_author()} (command line)",
                                                           replace=args.replace)
    except UserError as exc:
        print(f"ivr console adduser: error: {exc}", file=sys.stderr)
        return 1
    print(f"console user {user.name} ({user.role}) saved in {settings.console_dir}")
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio
    from pathlib import Path

    from ivr.console.app import serve
    from ivr.console.users import ConsoleStore

    if not _is_loopback(args.host) and not args.allow_remote:
        print(f"ivr console: error: {args.host} is not a loopback address: the console would be reachable from "
              "other machines. Put it behind a TLS reverse proxy and add --allow-remote --secure-cookies "
              "(README, \"The ops console\")", file=sys.stderr)
        return 2
    if not ConsoleStore(settings.console_dir).users():
        print("ivr console: no user yet: create the first admin with "
              "`ivr console adduser NAME --role admin`", file=sys.stderr)
    config = Path(args.config) if args.config else None

    def ready() -> None:
        print(f"ivr console: http://{args.host}:{args.port}/ (Ctrl-C stops it)", flush=True)

    try:
        asyncio.run(serve(settings, args.host, args.port, secure_cookies=args.secure_cookies, config=config,
                          ready=ready))
    except OSError as exc:
        print(f"ivr console: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    return 0
