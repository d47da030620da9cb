"""``ivr say TEXT`` (preview what the robot would say) and ``ivr prompts build`` (pre-render prompts).

pyttsx3 and pydub are only imported by the TTS worker process, so ``ivr --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ivr.config import LOCALES

if TYPE_CHECKING:
    from ivr.config import Settings


def register(subparsers: Any) -> None:
    say = subparsers.add_parser(
        "say", help="render what the robot would say to an Asterisk-ready WAV",
        description="Read the numbers in TEXT the way the robot does (money '1,234.56 CNY', dates "
                    "'2026-12-15', digit strings, counts) and render it to an 8 kHz mono 16-bit WAV in the "
                    "prompt cache (settings.sounds_dir), or to --out.",
    )  # fmt: skip
    say.add_argument("text", nargs="+", help="what to say (several words are joined with spaces)")
    say.add_argument("--locale", choices=LOCALES, help="the locale (default: settings.locale)")
    say.add_argument("--out", type=Path, help="also copy the WAV here (must end in .wav)")
    say.add_argument("--dry-run", action="store_true", help="only print the text that would be spoken")
    say.add_argument("--voice", help="an espeak-ng voice for this preview (default: settings.tts_voice)")
    say.add_argument("--rate", type=int, metavar="WPM", help="speed in words per minute (default: settings)")
    say.set_defaults(handler=_say)

    prompts = subparsers.add_parser(
        "prompts",
        help="the robot's fixed prompts",
        description="The robot's fixed prompts (the domain responses).",
    )
    actions = prompts.add_subparsers(dest="prompts_command", metavar="ACTION", required=True)
    build = actions.add_parser(
        "build", help="render every fixed response of every locale ahead of time",
        description="Render every response of dialogs/<locale>/domain.yml without {slot} placeholders into "
                    "the prompt cache and write the manifest that fallback prompts are found by.",
    )  # fmt: skip
    build.add_argument("--locale", action="append", choices=LOCALES, help="only this locale (repeatable)")
    build.set_defaults(handler=_build)


def _say(args: argparse.Namespace, settings: Settings) -> int:
    from ivr.parts import SynthesisError
    from ivr.tts.synth import PromptSynthesizer, asterisk_name

    text = " ".join(args.text)
    locale = args.locale or settings.locale
    if args.out is not None and args.out.suffix.lower() != ".wav":
        raise ValueError(f"--out {args.out}: the file name must end in .wav")
    changes: dict[str, Any] = {}
    if args.voice:
        changes["tts_voice"] = args.voice
    if args.rate is not None:
        changes["tts_rate_wpm"] = args.rate
    settings = dataclasses.replace(settings, **changes)
    with PromptSynthesizer(settings) as synth:
        if args.dry_run:
            print(synth.spoken_text(text, locale))
            return 0
        started = time.perf_counter()
        try:
            wav = synth.render_blocking(text, locale)
        except SynthesisError as exc:
            print(f"ivr say: error: {exc}", file=sys.stderr)
            return 1
        elapsed_ms = 1000 * (time.perf_counter() - started)
        stats = synth.stats.snapshot()
    how = "cached" if stats["syntheses"] == 0 else f"synthesized in {elapsed_ms:.0f} ms"
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")
        shutil.copyfile(wav, tmp)
        os.replace(tmp, args.out)
        print(f"{args.out}  ({how}; cached as {wav})")
    else:
        print(f"{wav}  ({how}; Asterisk plays it as {asterisk_name(wav)})")
    return 0


def _build(args: argparse.Namespace, settings: Settings) -> int:
    from ivr.dialogue.prompts import PromptBook
    from ivr.parts import SynthesisError
    from ivr.tts.synth import PromptSynthesizer

    book = PromptBook(settings.dialogs_dir)
    total = 0
    started = time.perf_counter()
    with PromptSynthesizer(settings, book) as synth:
        for locale in args.locale or LOCALES:
            before = synth.stats.snapshot()
            try:
                count = synth.build_all(book, [locale])
            except SynthesisError as exc:
                print(f"ivr prompts build: error: {locale}: {exc}", file=sys.stderr)
                return 1
            after = synth.stats.snapshot()
            if count == 0:
                print(
                    f"{locale}: no fixed prompts (no readable {settings.dialogs_dir / locale / 'domain.yml'}?)"
                )
                continue
            made = int(after["syntheses"] - before["syntheses"])
            print(
                f"{locale}: {count} prompts ({made} synthesized, {count - made} already cached) "
                f"in {settings.sounds_dir / locale / 'prompts'}"
            )
            total += count
        stats = synth.stats.snapshot()
    print(
        f"{total} prompts ready in {time.perf_counter() - started:.1f} s "
        f"(engine {stats['synthesis_s']:.2f} s, conversion {stats['conversion_s']:.2f} s)"
    )
    return 0 if total else 1
