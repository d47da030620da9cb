"""Held-out intent accuracy per locale: phrasings the models never trained on (dialogs/<locale>/heldout.yml).

The floor catches a broken model or a bad data edit, not a small regression; the figures themselves are
reported in the README (and printed here with ``-s``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from ivr.config import LOCALES, load_settings
from ivr.dialogue.engine import RasaEngine
from ivr.dialogue.heldout import load_heldout, measure
from ivr.dialogue.train import train_locales

FLOOR = 0.8


@pytest.fixture(scope="module")
def engine() -> Iterator[RasaEngine]:
    settings = load_settings(environ={})
    train_locales(settings.dialogs_dir, settings.models_dir)  # skipped when the data is unchanged
    # classify() never runs a custom action, so no account store is needed.
    eng = RasaEngine(settings, store=None, locales=LOCALES)  # type: ignore[arg-type]
    asyncio.run(eng.warm_up())
    yield eng
    asyncio.run(eng.aclose())


@pytest.mark.parametrize("locale", LOCALES)
async def test_heldout_intent_accuracy(engine: RasaEngine, locale: str) -> None:
    settings = load_settings(environ={})
    result = await measure(settings.dialogs_dir, locale, engine.classify)
    print(f"\nheld-out intent accuracy {locale}: {result.correct}/{result.total} = {result.accuracy:.3f}")
    for miss in result.misses:
        print(f"  {miss.text!r}: expected {miss.expected}, got {miss.predicted} ({miss.confidence:.2f})")
    assert result.total >= 5 * 14
    assert result.accuracy >= FLOOR, [m.text for m in result.misses]


@pytest.mark.parametrize("locale", LOCALES)
def test_heldout_is_not_training_data(locale: str) -> None:
    from ivr.asr.grammar import load_nlu_examples

    settings = load_settings(environ={})
    training = {t.lower() for examples in load_nlu_examples(settings.dialogs_dir, locale).values() for t in examples}
    held = load_heldout(settings.dialogs_dir, locale)
    assert held and not [t for t, _ in held if t.lower() in training]
