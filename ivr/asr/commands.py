"""``ivr models list|pull|verify`` and ``ivr asr transcribe|eval``. Vosk is imported inside handlers only."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from ivr.config import LOCALES, Settings


def register(sub: Any) -> None:
    models = sub.add_parser("models", help="speech models: list, pull, verify")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    p = msub.add_parser("list", help="each locale's model, where it is, and whether it is there")
    p.set_defaults(handler=models_list)
    p = msub.add_parser("pull", help="download and unpack a locale's model into models/vosk/")
    p.add_argument("locale", choices=LOCALES)
    p.add_argument("--base-url", help="model site (default: $IVR_VOSK_MODEL_BASE_URL or the Vosk site)")
    p.add_argument("--force", action="store_true", help="download again even if the model is there")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=models_pull)
    p = msub.add_parser("verify", help="check that each present model has the files Vosk needs")
    p.add_argument("locales", nargs="*", metavar="LOCALE", help="default: every locale")
    p.set_defaults(handler=models_verify)

    asr = sub.add_parser("asr", help="speech recognition on WAV files: transcribe, eval")
    asub = asr.add_subparsers(dest="asr_command", metavar="ACTION", required=True)
    p = asub.add_parser("transcribe", help="print the text, words, confidences and timing of WAV files")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE.wav")
    _decoding_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object per file")
    p.set_defaults(handler=asr_transcribe)
    p = asub.add_parser(
        "eval", help="word and sentence error rates over a folder of WAVs with .txt references"
    )
    p.add_argument("directory", type=Path, metavar="DIR")
    _decoding_options(p)
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.set_defaults(handler=asr_eval)


def _decoding_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--locale", choices=LOCALES, help="default: the locale setting")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--grammar",
        metavar="PHRASES",
        help="phrases separated by commas, a JSON list, or @FILE with one phrase per line",
    )
    g.add_argument(
        "--expect",
        choices=["speech", "yes_no", "digits"],
        help="use the grammar the dialogue uses when it waits for this (from dialogs/<locale>)",
    )
    p.add_argument("--model", type=Path, metavar="DIR", help="a model folder instead of the locale's")
    p.add_argument("--no-dither", action="store_true", help="reproducible results (as in tests and replays)")


# ---------------------------------------------------------------- models
def models_list(args: argparse.Namespace, settings: Settings) -> int:
    from ivr.asr.models import describe, statuses

    print(describe(statuses(settings)))
    return 0


def models_pull(args: argparse.Namespace, settings: Settings) -> int:
    from ivr.asr.models import ModelError, pull

    try:
        path = pull(
            args.locale,
            settings,
            url_base=args.base_url,
            force=args.force,
            progress=None if args.quiet else sys.stderr,
        )
    except ModelError as exc:
        print(f"ivr models pull: error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.locale}: {path}")
    return 0


def models_verify(args: argparse.Namespace, settings: Settings) -> int:
    from ivr.asr.models import statuses

    unknown = [loc for loc in args.locales if loc not in LOCALES]
    if unknown:
        print(
            f"ivr models verify: error: unknown locale {', '.join(unknown)} (known: {', '.join(LOCALES)})",
            file=sys.stderr,
        )
        return 2
    failed = False
    for st in statuses(settings):
        if args.locales and st.locale not in args.locales:
            continue
        if not st.present:
            why = st.problems[0] if st.problems else f"not pulled ({st.path})"
            print(f"{st.locale}: missing: {why}")
            failed = failed or bool(args.locales)  # asked for by name: it must be there
        elif st.problems:
            failed = True
            print(f"{st.locale}: BROKEN: {st.path}")
            for problem in st.problems:
                print(f"  {problem}")
        else:
            print(f"{st.locale}: ok: {st.path}")
    return 1 if failed else 0


# ---------------------------------------------------------------- asr
def _recognizer(args: argparse.Namespace, settings: Settings, locale: str) -> Any:
    from ivr.asr.recognizer import VoskRecognizer

    return VoskRecognizer(
        settings,
        model_dirs={locale: args.model} if args.model else None,
        dither=False if args.no_dither else None,
    )


def parse_grammar(value: str) -> list[str]:
    """``--grammar``: "a, b, c", '["a", "b"]' or @FILE (one phrase per line)."""
    text = value.strip()
    if text.startswith("@"):
        lines = Path(text[1:]).read_text(encoding="utf-8").splitlines()
        return [line.strip() for line in lines if line.strip()]
    if text.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--grammar: not a JSON list: {exc}") from exc
        if not isinstance(items, list):
            raise ValueError("--grammar: not a JSON list")
        return [str(i).strip() for i in items if str(i).strip()]
    return [p.strip() for p in text.replace("，", ",").split(",") if p.strip()]


def _grammar(args: argparse.Namespace, settings: Settings, locale: str, recognizer: Any) -> list[str] | None:
    if args.grammar:
        return parse_grammar(args.grammar)
    if not args.expect:
        return None
    from ivr.asr.grammar import build_grammars, load_nlu_examples, model_vocabulary
    from ivr.parts import Expect

    vocabulary = model_vocabulary(recognizer.model_dir(locale)) if locale.startswith(("zh", "ko")) else None
    grammars = build_grammars(load_nlu_examples(settings.dialogs_dir, locale), locale, vocabulary=vocabulary)
    return grammars.get(Expect(args.expect))  # None (free recognition) when there is no such grammar


def asr_transcribe(args: argparse.Namespace, settings: Settings) -> int:
    from ivr.parts import RecognizerError

    locale = args.locale or settings.locale
    recognizer = _recognizer(args, settings, locale)
    try:
        grammar = _grammar(args, settings, locale, recognizer)
        return transcribe_files(recognizer, args.files, locale, grammar, as_json=args.json)
    except RecognizerError as exc:
        print(f"ivr asr transcribe: error: {exc}", file=sys.stderr)
        return 1


def transcribe_files(
    recognizer: Any,
    files: Sequence[Path],
    locale: str,
    grammar: Sequence[str] | None,
    *,
    as_json: bool = False,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
) -> int:
    """Print each file's transcription; a file that fails is reported and the others go on (exit 1)."""
    from ivr.parts import RecognizerError

    out = out or sys.stdout
    err = err or sys.stderr
    status = 0
    for wav in files:
        try:
            result = recognizer.transcribe(wav, locale, grammar)
        except RecognizerError as exc:
            print(f"ivr asr transcribe: {exc}", file=err)
            status = 1
            continue
        if as_json:
            print(
                json.dumps(
                    {
                        "file": str(wav),
                        "locale": locale,
                        "grammar": grammar is not None,
                        "text": result.text,
                        "confidence": result.confidence,
                        "words": [
                            {
                                "word": w.word,
                                "confidence": w.confidence,
                                "start_s": w.start_s,
                                "end_s": w.end_s,
                            }
                            for w in result.words
                        ],
                    },
                    ensure_ascii=False,
                ),
                file=out,
            )
        else:
            print(
                f"{wav}: {result.text or '(nothing recognized)'}  [confidence {result.confidence:.2f}]",
                file=out,
            )
            for w in result.words:
                print(f"  {w.start_s:6.2f}-{w.end_s:6.2f}s  {w.confidence:.2f}  {w.word}", file=out)
    return status


def asr_eval(args: argparse.Namespace, settings: Settings) -> int:
    from ivr.asr.evaluate import evaluate_dir
    from ivr.parts import RecognizerError

    locale = args.locale or settings.locale
    recognizer = _recognizer(args, settings, locale)
    try:
        grammar = _grammar(args, settings, locale, recognizer)
        recognizer.load(locale)
        report = evaluate_dir(args.directory, recognizer, locale, grammar)
    except RecognizerError as exc:
        print(f"ivr asr eval: error: {exc}", file=sys.stderr)
        return 1
    print_report(report, as_json=args.json)
    return 0


def print_report(report: Any, *, as_json: bool = False, out: IO[str] | None = None) -> None:
    out = out or sys.stdout
    rate_name = "CER" if report.unit == "character" else "WER"
    if as_json:
        print(
            json.dumps(
                {
                    "locale": report.locale,
                    "unit": report.unit,
                    "error_rate": report.error_rate,
                    "sentence_error_rate": report.sentence_error_rate,
                    "errors": report.errors,
                    "reference_units": report.ref_units,
                    "files": [
                        {
                            "file": str(f.wav),
                            "reference": f.reference,
                            "hypothesis": f.hypothesis,
                            "errors": f.errors,
                            "reference_units": f.ref_units,
                            "confidence": f.confidence,
                            "error": f.error,
                        }
                        for f in report.files
                    ],
                    "without_reference": [str(p) for p in report.unreferenced],
                },
                ensure_ascii=False,
                indent=2,
            ),
            file=out,
        )
        return
    for f in report.files:
        mark = "ok " if f.sentence_ok else ("ERR" if f.error else "   ")
        detail = f.error or f"heard: {f.hypothesis}"
        print(
            f"{mark} {f.errors:3d}/{f.ref_units:<3d} {f.wav.name}  said: {f.reference}  | {detail}", file=out
        )
    if report.unreferenced:
        print(
            f"skipped {len(report.unreferenced)} WAV file(s) without a .txt reference: "
            + ", ".join(p.name for p in report.unreferenced),
            file=out,
        )
    if not report.files:
        print("no WAV file with a .txt reference", file=out)
        return
    bad = sum(not f.sentence_ok for f in report.files)
    print(
        f"{rate_name} {100 * report.error_rate:.1f}% ({report.errors} errors / {report.ref_units} "
        f"{report.unit}s), SER {100 * report.sentence_error_rate:.1f}% ({bad}/{len(report.files)} files)",
        file=out,
    )
