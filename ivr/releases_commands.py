"""``ivr publish``, ``ivr releases [list|diff]``, ``ivr rollback``: the ops loop for dialog changes.

Every command honours ``IVR_DIALOGS_DIR`` and ``IVR_MODELS_DIR`` (``settings.dialogs_dir`` / ``models_dir``).
``publish`` and ``rollback`` notify the servers running on this machine with the same models folder
(``POST /reload`` with the token each server wrote to ``models/releases/.servers/``); ``kill -HUP``
of a server's pid does the same.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from ivr.config import LOCALES

if TYPE_CHECKING:
    from ivr.config import Settings


def register(subparsers: Any) -> None:
    publish = subparsers.add_parser(
        "publish", help="validate, train, render and publish a locale's dialog as a new release",
        description="Validate dialogs/<locale>/ (errors name file and line; nothing is published on an error), "
                    "train its Rasa model if the files changed, render its prompts, write release N+1 under "
                    "models/releases/<locale>/ atomically, make it current and tell the running servers.")
    publish.add_argument("--locale", choices=LOCALES, action="append",
                         help="the locale (repeatable; default: every locale)")
    publish.add_argument("--message", "-m", default="", help="what changed and why (shown by `ivr releases`)")
    publish.add_argument("--author", help="who publishes (default: the login name)")
    publish.add_argument("--if-none", action="store_true",
                         help="only publish a locale that has no release yet (first run: `make run`)")
    publish.add_argument("--no-notify", action="store_true", help="do not tell the running servers")
    publish.add_argument("--check", metavar="DIR", help="first replay the call files in DIR against the current "
                         "release and the draft (`ivr replay DIR --compare-releases current draft`); publish only "
                         "if no call that the current release completed does worse")
    publish.set_defaults(handler=_publish)

    releases = subparsers.add_parser(
        "releases", help="list the releases (and the audit log), or diff two of them",
        description="Without an action: the releases of each locale (number, time, author, message, current) "
                    "and the publish/rollback audit log. `ivr releases diff LOCALE N M`: what changed in "
                    "wording, phrasings and flows from release N to release M.")
    releases.add_argument("--locale", choices=LOCALES, action="append", help="only this locale (repeatable)")
    actions = releases.add_subparsers(dest="releases_command", metavar="ACTION")
    diff = actions.add_parser("diff", help="what changed between two releases of a locale")
    diff.add_argument("diff_locale", metavar="LOCALE", choices=LOCALES)
    diff.add_argument("old", type=int, metavar="N")
    diff.add_argument("new", type=int, metavar="M")
    releases.set_defaults(handler=_releases)

    rollback = subparsers.add_parser(
        "rollback", help="make an earlier release of a locale current again",
        description="Make an earlier release current (default: the newest one before the current), after "
                    "checking its files; the running servers switch to it for new calls.")
    rollback.add_argument("--locale", choices=LOCALES, required=True)
    rollback.add_argument("--to", type=int, metavar="N", help="the release number (default: the previous one)")
    rollback.add_argument("--message", "-m", default="", help="why (written to the audit log)")
    rollback.add_argument("--author", help="who rolls back (default: the login name)")
    rollback.add_argument("--no-notify", action="store_true", help="do not tell the running servers")
    rollback.set_defaults(handler=_rollback)


def _audit(settings: Settings) -> Any:
    from ivr.releases import ReleaseAudit

    return ReleaseAudit(settings.database_url)


def _notify(settings: Settings, args: argparse.Namespace) -> None:
    from ivr.releases import notify_servers

    if args.no_notify:
        return
    lines = notify_servers(settings.models_dir)
    for line in lines:
        print(f"  {line}")
    if not lines:
        print("  no running server registered here (a server started later loads it; "
              "others: SIGHUP or POST /reload)")


def _publish(args: argparse.Namespace, settings: Settings) -> int:
    from ivr.dialogue.train import TrainingError
    from ivr.releases import InvalidDialog, ReleaseError, ReleaseStore, default_author

    store = ReleaseStore(settings)
    audit = _audit(settings)
    published = 0
    try:
        for locale in args.locale or LOCALES:
            if args.if_none and store.current_number(locale):
                print(f"{locale}: release {store.current_number(locale)} is current; nothing to do")
                continue
            try:
                if args.check and not _check(settings, locale, args.check):
                    print(f"ivr publish: {locale}: not published: the draft does worse than release "
                          f"{store.current_number(locale)} on calls in {args.check} (table above)", file=sys.stderr)
                    return 1
                release = store.publish(locale, author=args.author or default_author(), message=args.message,
                                        audit=audit, say=print)
            except InvalidDialog as exc:
                print(f"ivr publish: error: {exc}", file=sys.stderr)
                return 1
            except (ReleaseError, TrainingError) as exc:
                print(f"ivr publish: error: {exc}", file=sys.stderr)
                return 1
            print(f"{locale}: published release {release.number} ({release.folder}); it is current")
            published += 1
    finally:
        audit.close()
    if published:
        _notify(settings, args)
    return 0


def _check(settings: Settings, locale: str, folder: str) -> bool:
    """``--check DIR`` (issue #18, ivr.testing.compare): the draft against the current release on DIR's calls."""
    from pathlib import Path

    from ivr.releases import ReleaseError
    from ivr.testing.compare import check_before_publish

    try:
        return check_before_publish(settings, locale, Path(folder))
    except ValueError as exc:  # a call file that cannot be read, a side that cannot be set up
        raise ReleaseError(f"--check {folder}: {exc}") from exc


def _releases(args: argparse.Namespace, settings: Settings) -> int:
    from ivr.releases import ReleaseError, ReleaseStore

    store = ReleaseStore(settings)
    if args.releases_command == "diff":
        try:
            lines = store.diff(args.diff_locale, args.old, args.new)
        except ReleaseError as exc:
            print(f"ivr releases diff: error: {exc}", file=sys.stderr)
            return 1
        print(f"{args.diff_locale}: release {args.old} -> release {args.new}")
        print("\n".join(lines) if lines else "  no difference")
        return 0
    audit = _audit(settings)
    try:
        for locale in args.locale or LOCALES:
            current = store.current_number(locale)
            items = store.releases(locale)
            print(f"{locale}: " + (f"release {current} is current" if current else
                                   "no release published (the working copy is served)"))
            for r in reversed(items):
                mark = "*" if r.number == current else " "
                print(f"  {mark} {r.number:>4}  {r.created}  {r.author:<12}  {r.message}")
            events = audit.events(locale)
            if events:
                print("  audit log:")
                for e in events[-20:]:
                    print(f"    {e['at']}  {e['action']:<8}  {e['from_release'] or '-'} -> {e['to_release']}  "
                          f"by {e['author']} on {e['host']}  {e['message']}")
    except ReleaseError as exc:
        print(f"ivr releases: error: {exc}", file=sys.stderr)
        return 1
    finally:
        audit.close()
    return 0


def _rollback(args: argparse.Namespace, settings: Settings) -> int:
    from ivr.releases import ReleaseError, ReleaseStore, default_author

    audit = _audit(settings)
    try:
        was, release = ReleaseStore(settings).rollback(
            args.locale, author=args.author or default_author(), to=args.to, message=args.message, audit=audit)
    except ReleaseError as exc:
        print(f"ivr rollback: error: {exc}", file=sys.stderr)
        return 1
    finally:
        audit.close()
    print(f"{args.locale}: release {release.number} is current again (was {was}); "
          f"published {release.created} by {release.author}: {release.message}")
    _notify(settings, args)
    return 0
