"""Held-out intent accuracy: phrasings in ``dialogs/<locale>/heldout.yml`` that the model never trained on.

The file has Rasa's NLU format (``nlu: - intent: ... examples: |``) but lives outside ``data/``.
A prediction of ``nlu_fallback`` for an ``out_of_scope`` phrasing counts as right: the call session
treats both as "not understood".

A held-out phrasing must be new: ``training_twin`` finds the training example it merely repeats, once
case, punctuation and spacing are set aside (``我 要 人工`` is ``我要人工``), or that it only extends or
shortens by one word at one place (``okay goodbye`` / ``okay``, ``早上好啊`` / ``早上好``: Chinese by
up to two characters, its word spacing being arbitrary).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

HELDOUT_FILE = "heldout.yml"
NOT_UNDERSTOOD = frozenset({"nlu_fallback", "out_of_scope"})


class HeldoutError(ValueError):
    """The held-out file is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Miss:
    text: str
    expected: str
    predicted: str
    confidence: float


@dataclass
class Accuracy:
    locale: str
    total: int = 0
    correct: int = 0
    misses: list[Miss] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


def load_heldout(dialogs_dir: Path, locale: str) -> list[tuple[str, str]]:
    """(text, intent) pairs, in file order."""
    path = dialogs_dir / locale / HELDOUT_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as exc:
        raise HeldoutError(f"{path}: no held-out phrasings for {locale}") from exc
    except yaml.YAMLError as exc:
        raise HeldoutError(f"{path}: not valid YAML: {exc}") from exc
    pairs: list[tuple[str, str]] = []
    for item in data.get("nlu") or []:
        if not isinstance(item, dict) or "intent" not in item:
            continue
        examples = item.get("examples") or ""
        if not isinstance(examples, str):
            raise HeldoutError(f"{path}: intent {item['intent']}: 'examples' must be a block of '- text' lines")
        for line in examples.splitlines():
            line = line.strip()
            if line.startswith("- ") and line[2:].strip():
                pairs.append((line[2:].strip(), str(item["intent"])))
    if not pairs:
        raise HeldoutError(f"{path}: no examples")
    return pairs


_PUNCTUATION = re.compile(r"[^\w\s]|_")


def words(text: str, locale: str) -> tuple[str, ...]:
    """The phrasing as comparable units: case folded, width unified (NFKC), punctuation dropped; words
    for space-separated languages, characters for Chinese (whose word spacing in our data is arbitrary)."""
    folded = _PUNCTUATION.sub(" ", unicodedata.normalize("NFKC", text).casefold())
    if locale.startswith("zh"):
        return tuple("".join(folded.split()))
    return tuple(folded.split())


def _one_chunk_apart(longer: tuple[str, ...], shorter: tuple[str, ...], most: int) -> bool:
    """True when ``longer`` is ``shorter`` with at most ``most`` units inserted at one place."""
    extra = len(longer) - len(shorter)
    if not 0 <= extra <= most:
        return False
    return any(longer[:i] + longer[i + extra :] == shorter for i in range(len(shorter) + 1))


def training_twin(text: str, training: Iterable[str], locale: str) -> str | None:
    """The training example that ``text`` repeats (the same once case, punctuation and spacing are set
    aside) or only extends or shortens by one word at one place (Chinese: up to two characters); None
    when ``text`` is a new phrasing."""
    most = 2 if locale.startswith("zh") else 1
    mine = words(text, locale)
    flat = "".join(mine)
    for example in training:
        theirs = words(example, locale)
        if "".join(theirs) == flat or _one_chunk_apart(mine, theirs, most) or _one_chunk_apart(theirs, mine, most):
            return example
    return None


def is_right(expected: str, predicted: str) -> bool:
    return predicted == expected or (expected in NOT_UNDERSTOOD and predicted in NOT_UNDERSTOOD)


async def measure(
    dialogs_dir: Path, locale: str, classify: Callable[[str, str], Awaitable[tuple[str, float]]]
) -> Accuracy:
    """Classify every held-out phrasing with ``classify(text, locale)`` (e.g. ``RasaEngine.classify``)."""
    result = Accuracy(locale)
    for text, expected in load_heldout(dialogs_dir, locale):
        predicted, confidence = await classify(text, locale)
        result.total += 1
        if is_right(expected, predicted):
            result.correct += 1
        else:
            result.misses.append(Miss(text, expected, predicted, confidence))
    return result
