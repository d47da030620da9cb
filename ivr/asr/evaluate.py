"""Word and sentence error rates over a folder of recordings, for ops staff measuring a model.

A folder holds ``NAME.wav`` files and, next to each, ``NAME.txt`` with what was really said. Chinese is
scored per character (the character error rate), as its words are not written apart; other locales
per word, case and punctuation ignored.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ivr.parts import Recognizer, RecognizerError

_PUNCT = re.compile(r"[^\w\s']|_", re.UNICODE)


def tokens(text: str, locale: str) -> list[str]:
    """The units that errors are counted in."""
    clean = _PUNCT.sub(" ", text.lower())
    if locale.startswith("zh"):
        return [c for c in clean if not c.isspace()]
    return clean.split()


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Substitutions + deletions + insertions turning ``ref`` into ``hyp`` (Levenshtein)."""
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i]
        for j, h in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


@dataclass(frozen=True)
class FileScore:
    wav: Path
    reference: str
    hypothesis: str
    errors: int
    ref_units: int
    confidence: float
    error: str = ""  # the recognizer failed on this file

    @property
    def sentence_ok(self) -> bool:
        return not self.error and self.errors == 0


@dataclass
class EvalReport:
    locale: str
    unit: str  # "word" or "character"
    files: list[FileScore] = field(default_factory=list)
    unreferenced: list[Path] = field(default_factory=list)  # WAVs without a .txt next to them

    @property
    def errors(self) -> int:
        return sum(f.errors for f in self.files)

    @property
    def ref_units(self) -> int:
        return sum(f.ref_units for f in self.files)

    @property
    def error_rate(self) -> float:
        """WER (or CER for Chinese): errors over reference units; 0.0 for no references."""
        return self.errors / self.ref_units if self.ref_units else 0.0

    @property
    def sentence_error_rate(self) -> float:
        return sum(not f.sentence_ok for f in self.files) / len(self.files) if self.files else 0.0


def evaluate_dir(
    directory: Path, recognizer: Recognizer, locale: str, grammar: Sequence[str] | None = None
) -> EvalReport:
    """Transcribe every WAV in ``directory`` that has a ``.txt`` reference and score it.
    A file the recognizer rejects counts as all its reference units wrong, with the reason kept."""
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such folder")
    report = EvalReport(locale=locale, unit="character" if locale.startswith("zh") else "word")
    for wav in sorted(directory.glob("*.wav")):
        ref_file = wav.with_suffix(".txt")
        if not ref_file.is_file():
            report.unreferenced.append(wav)
            continue
        reference = ref_file.read_text(encoding="utf-8").strip()
        ref = tokens(reference, locale)
        try:
            result = recognizer.transcribe(wav, locale, grammar)
        except RecognizerError as exc:
            report.files.append(FileScore(wav, reference, "", len(ref), len(ref), 0.0, error=str(exc)))
            continue
        hyp = tokens(result.text, locale)
        report.files.append(
            FileScore(wav, reference, result.text, edit_distance(ref, hyp), len(ref), result.confidence)
        )
    return report
