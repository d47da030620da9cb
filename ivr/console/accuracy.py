"""Held-out intent accuracy of the draft against the current release: ``python -m ivr.console.accuracy
--locale L`` (the console runs it as a child process and shows its lines; it may train for ~30 s).

Both models classify the same phrasings: the draft's ``heldout.yml`` (never trained on). The draft's model
is its own, in the console's folder (``ivr.console.draftmodel``: trained when the draft changed, never into
the working model ``models/rasa/<locale>``); the release's is the one it was published with. The last
line is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ivr.config import LOCALES, Settings, load_settings


async def _measure(settings: Settings, locale: str, models_dir: Path) -> tuple[int, int, list[str]]:
    from ivr.dialogue.engine import RasaEngine
    from ivr.dialogue.heldout import measure

    # classify() never runs a custom action: no account store is needed
    engine = RasaEngine(settings, store=None, locales=[locale], models_dir=models_dir)  # type: ignore[arg-type]
    await engine.warm_up([locale])
    try:
        result = await measure(settings.dialogs_dir, locale, engine.classify)
    finally:
        await engine.aclose()
    misses = [f"{m.text!r}: expected {m.expected}, got {m.predicted} ({m.confidence:.2f})" for m in result.misses]
    return result.correct, result.total, misses


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ivr.console.accuracy")
    parser.add_argument("--locale", choices=LOCALES, required=True)
    args = parser.parse_args(argv)
    settings = load_settings()
    from ivr.logs import configure_logging

    configure_logging("WARNING", log_format="json")  # log records as JSON lines: the console skips them
    from ivr.console.draftmodel import draft_model
    from ivr.dialogue.train import TrainingError
    from ivr.releases import ReleaseStore

    locale = args.locale
    print(f"{locale}: looking for the draft's model", flush=True)
    try:
        draft = draft_model(settings, locale, say=lambda line: print(line, flush=True))
    except (TrainingError, OSError) as exc:
        print(f"cannot train the draft: {exc}", flush=True)
        return 1
    print(f"{locale}: the draft's model: {draft.how}", flush=True)
    result: dict[str, object] = {"locale": locale, "draft_model": draft.fingerprint[:20]}
    with draft:  # held in use while it is measured (never pruned meanwhile)
        correct, total, misses = asyncio.run(_measure(settings, locale, draft.models_dir))
    result["draft"] = [correct, total]
    print(f"draft: {correct}/{total} held-out phrasings right", flush=True)
    for line in misses[:20]:
        print(f"  draft missed {line}", flush=True)
    release = ReleaseStore(settings).current(locale)
    if release is not None:
        correct, total, _ = asyncio.run(_measure(settings, locale, release.models_dir))
        result["release"] = [release.number, correct, total]
        print(f"release {release.number}: {correct}/{total} held-out phrasings right", flush=True)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
