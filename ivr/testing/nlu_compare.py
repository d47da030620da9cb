"""``python -m ivr.testing.nlu_compare``: NLU pipelines side by side, on what the hotline pays for each.

For every locale and every candidate pipeline (the configured ``dialogs/<locale>/config.yml`` and
variants of it, decided before looking at any result, see ``VARIANTS``): the full model (NLU and
policies, as ``ivr train`` and ``ivr publish`` build it) is trained from a copy of the dialog with only
the pipeline changed, in a child process (wall and CPU seconds of the training itself, Rasa already
imported); then a fresh child process loads it in the robot's own engine (``RasaEngine``) and reports:

- held-out accuracy (``dialogs/<locale>/heldout.yml``, never trained on; ``ivr.dialogue.heldout``) and
  every prediction, so that two pipelines are compared phrasing by phrasing (McNemar's exact test on the
  phrasings one gets right and the other wrong: with 84 phrasings a difference of 2-4 is within chance);
- CPU per parse (process CPU over ``--parses`` classifications of the held-out phrasings, all threads);
- memory: the process's RSS before and after loading the agent (Rasa and TensorFlow imported in both).

Nothing in ``models/`` or ``dialogs/`` is read for training or written: everything happens in a temporary
folder. Run it under ``flock /tmp/ivr-heavy.lock`` (DIET trains for minutes). ``--json`` keeps all of it.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from ivr.config import LOCALES, load_settings

CLASSIFIER = "LogisticRegressionClassifier"


def _char_featurizer(pipeline: list[dict[str, Any]]) -> dict[str, Any]:
    return next(c for c in pipeline if c.get("name") == "CountVectorsFeaturizer" and c.get("analyzer", "word") != "word")


def _swap_classifier(pipeline: list[dict[str, Any]], new: dict[str, Any]) -> None:
    index = next(i for i, c in enumerate(pipeline) if c.get("name") == CLASSIFIER)
    pipeline[index] = new


def _wider(pipeline: list[dict[str, Any]]) -> None:
    char = _char_featurizer(pipeline)
    char["max_ngram"] = int(char.get("max_ngram", 1)) + 1


def _char_wb_2_5(pipeline: list[dict[str, Any]]) -> None:
    char = _char_featurizer(pipeline)
    char.update(analyzer="char_wb", min_ngram=2, max_ngram=5)


def _char_across_words(pipeline: list[dict[str, Any]]) -> None:
    _char_featurizer(pipeline)["analyzer"] = "char"  # n-grams across word boundaries: spacing-proof


def _diet(pipeline: list[dict[str, Any]]) -> None:
    _swap_classifier(pipeline, {"name": "DIETClassifier", "epochs": 100, "random_seed": 1})


# name -> (what it changes, locales it applies to, the change)
VARIANTS: dict[str, tuple[str, tuple[str, ...], Any]] = {
    "configured": ("config.yml as committed", LOCALES, lambda p: None),
    "wider-ngrams": ("the character n-gram featurizer's max_ngram + 1", LOCALES, _wider),
    "char_wb-2-5": ("character n-grams within words, 2 to 5", ("ko-KR",), _char_wb_2_5),
    "char-across": ("character n-grams across word boundaries (analyzer char), same range", ("ko-KR",),
                    _char_across_words),
    "diet": ("DIETClassifier (100 epochs) for the logistic regression", LOCALES, _diet),
}


def rss_mib() -> float:
    with open("/proc/self/status", encoding="utf-8") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def project(dialogs_dir: Path, locale: str, variant: str, into: Path) -> Path:
    """A copy of the locale's dialog with the variant's pipeline: ``into`` is its dialogs folder."""
    shutil.copytree(dialogs_dir / locale, into / locale)
    config_path = into / locale / "config.yml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    pipeline = copy.deepcopy(config["pipeline"])
    VARIANTS[variant][2](pipeline)
    config["pipeline"] = pipeline
    config_path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return into


def train_child(dialogs_dir: Path, models_dir: Path, locale: str) -> dict[str, Any]:
    from ivr.dialogue import prepare_rasa

    prepare_rasa(models_dir)
    import rasa.model_training  # noqa: F401  (imported before the clock starts)

    from ivr.dialogue.train import train_locale

    wall, cpu = time.monotonic(), cpu_s()
    train_locale(dialogs_dir, models_dir, locale, force=True)
    return {"train_wall_s": round(time.monotonic() - wall, 2), "train_cpu_s": round(cpu_s() - cpu, 2)}


def measure_child(dialogs_dir: Path, models_dir: Path, locale: str, parses: int) -> dict[str, Any]:
    from ivr.dialogue import prepare_rasa

    prepare_rasa(models_dir)
    import rasa.core.agent  # noqa: F401
    import tensorflow  # noqa: F401  (both pipelines' processes have it: the difference is the agent)

    from ivr.dialogue.engine import RasaEngine
    from ivr.dialogue.heldout import is_right, load_heldout

    before = rss_mib()
    settings = load_settings()
    engine = RasaEngine(settings, store=None, locales=[locale], models_dir=models_dir)  # type: ignore[arg-type]

    async def run() -> dict[str, Any]:
        await engine.warm_up([locale])
        held = load_heldout(dialogs_dir, locale)
        predictions = []
        for text, expected in held:
            predicted, confidence = await engine.classify(text, locale)
            predictions.append([text, expected, predicted, round(confidence, 3), is_right(expected, predicted)])
        loaded = rss_mib()
        started = cpu_s()
        for i in range(parses):
            await engine.classify(held[i % len(held)][0], locale)
        per_parse = (cpu_s() - started) / parses
        await engine.aclose()
        return {"rss_before_mib": round(before, 1), "rss_loaded_mib": round(loaded, 1),
                "agent_mib": round(loaded - before, 1), "cpu_ms_per_parse": round(per_parse * 1000, 2),
                "correct": sum(p[4] for p in predictions), "total": len(predictions), "predictions": predictions}

    return asyncio.run(run())


def mcnemar_p(a: list[bool], b: list[bool]) -> float:
    """Exact two-sided McNemar test on paired right/wrong outcomes."""
    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def child(args: argparse.Namespace) -> int:
    from ivr.logs import configure_logging

    configure_logging("WARNING", stream=open(os.devnull, "w", encoding="utf-8"), log_format="json")
    if args.child == "train":
        out = train_child(Path(args.dialogs), Path(args.models), args.locale)
    else:
        out = measure_child(Path(args.dialogs), Path(args.models), args.locale, args.parses)
    print("RESULT " + json.dumps(out, ensure_ascii=False), flush=True)
    return 0


def run_child(*argv: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "ivr.testing.nlu_compare", *argv], capture_output=True, text=True,
                          check=False)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[len("RESULT "):]))
    raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ivr.testing.nlu_compare", description=__doc__.split("\n")[0])
    parser.add_argument("--locale", action="append", choices=LOCALES, help="default: all")
    parser.add_argument("--variant", action="append", choices=list(VARIANTS), help="default: all")
    parser.add_argument("--parses", type=int, default=300)
    parser.add_argument("--json", help="write every figure and prediction here")
    parser.add_argument("--child", choices=("train", "measure"), help=argparse.SUPPRESS)
    parser.add_argument("--dialogs", help=argparse.SUPPRESS)
    parser.add_argument("--models", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.locale = args.locale[0]
        return child(args)
    settings = load_settings()
    results: dict[str, dict[str, Any]] = {}
    for locale in args.locale or LOCALES:
        results[locale] = {}
        for variant in args.variant or list(VARIANTS):
            if locale not in VARIANTS[variant][1]:
                continue
            with tempfile.TemporaryDirectory(prefix="ivr-nlu-compare-") as tmp:
                dialogs = project(settings.dialogs_dir, locale, variant, Path(tmp) / "dialogs")
                models = Path(tmp) / "models"
                common = ["--locale", locale, "--dialogs", str(dialogs), "--models", str(models)]
                figures = {"change": VARIANTS[variant][0], **run_child("--child", "train", *common)}
                figures.update(run_child("--child", "measure", "--parses", str(args.parses), *common))
                figures["model_mib"] = round((models / "rasa" / locale / "model.tar.gz").stat().st_size / 2**20, 2)
            base = results[locale].get("configured")
            if base is not None and variant != "configured":
                figures["mcnemar_p_vs_configured"] = round(mcnemar_p(
                    [p[4] for p in base["predictions"]], [p[4] for p in figures["predictions"]]), 3)
            results[locale][variant] = figures
            print(f"{locale} {variant:13} {figures['correct']}/{figures['total']} "
                  f"train {figures['train_wall_s']} s wall / {figures['train_cpu_s']} s CPU, "
                  f"parse {figures['cpu_ms_per_parse']} ms CPU, agent {figures['agent_mib']} MiB "
                  f"(RSS {figures['rss_loaded_mib']} MiB), model {figures['model_mib']} MiB, "
                  f"p={figures.get('mcnemar_p_vs_configured', '-')}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
