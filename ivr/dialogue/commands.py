"""``ivr dialogs validate [--locale L]`` and ``ivr train [--locale L] [--force]``.

Rasa is imported inside the handlers (it takes seconds), so ``ivr --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from ivr.config import LOCALES

if TYPE_CHECKING:
    from ivr.config import Settings


def register(subparsers: Any) -> None:
    dialogs = subparsers.add_parser(
        "dialogs", help="the Rasa projects under dialogs/: check them",
        description="The Rasa projects under dialogs/<locale>/ (domain, NLU data, rules, stories).")
    actions = dialogs.add_subparsers(dest="dialogs_command", metavar="ACTION", required=True)
    validate = actions.add_parser(
        "validate", help="Rasa's validation plus the project's checks; errors with file and line",
        description="Validate the Rasa projects: Rasa's own checks (warnings count as errors) and the "
                    "project's (responses used and defined, placeholders filled, slots, held-out data). "
                    "Exit 1 when there are errors.")
    validate.add_argument("--locale", choices=LOCALES, action="append",
                          help="only this locale (repeatable; default: all)")
    validate.add_argument("--no-rasa", action="store_true", help="skip Rasa's own validation (faster)")
    validate.set_defaults(handler=_validate)

    train = subparsers.add_parser(
        "train", help="train the dialogue models into models/rasa/<locale>/ (unchanged data is skipped)",
        description="Train one Rasa model per locale into models/rasa/<locale>/model.tar.gz. A locale whose "
                    "training files (domain, config, data/) are unchanged since its last training is skipped.")
    train.add_argument("--locale", choices=LOCALES, action="append", help="only this locale (repeatable)")
    train.add_argument("--force", action="store_true", help="train even if the data is unchanged")
    train.set_defaults(handler=_train)


def _validate(args: argparse.Namespace, settings: Settings) -> int:
    from ivr.dialogue.validate import validate

    problems = validate(settings.dialogs_dir, args.locale, models_dir=settings.models_dir, settings=settings,
                        with_rasa=not args.no_rasa)
    for problem in problems:
        print(problem, file=sys.stderr if problem.is_error else sys.stdout)
    count = sum(p.is_error for p in problems)
    warnings = len(problems) - count
    checked = ", ".join(args.locale or LOCALES)
    if count:
        print(f"dialogs validate: {count} error(s), {warnings} warning(s) in {checked}", file=sys.stderr)
        return 1
    print(f"dialogs validate: {checked} OK ({warnings} warning(s))")
    return 0


def _train(args: argparse.Namespace, settings: Settings) -> int:
    from ivr.dialogue.train import TrainingError, train_locale

    for locale in args.locale or LOCALES:
        try:
            result = train_locale(settings.dialogs_dir, settings.models_dir, locale, force=args.force)
        except TrainingError as exc:
            print(f"ivr train: error: {exc}", file=sys.stderr)
            return 1
        if result.trained:
            print(f"{locale}: trained in {result.seconds:.1f} s -> {result.model}")
        else:
            print(f"{locale}: unchanged, kept {result.model}")
    return 0
