"""Recognizer grammars per dialogue state, built from the locale's NLU examples, and their vocabulary check.

A Vosk grammar is a list of phrases of space-separated words; Vosk builds a small bigram language model
from them at recognizer creation, so a result can join fragments of different phrases, and a phrase
word that the model does not know is silently dropped. So:

* Chinese phrases (not space-separated) are segmented with jieba and, given the model's vocabulary,
  segments the model lacks are split into words it has.
* Korean phrases keep their words; the recognizer splits a word its model lacks into words it has
  (``얼마예요`` → ``얼마 예요``) when it compiles the grammar, and joins them again in its result.
* ``check_grammars`` (for ``ivr dialogs validate``) lists the words that are still unusable.

Every grammar ends with the model's unknown-word token, so speech outside the grammar can come out as
that token instead of as the nearest grammar word.
"""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import yaml

from ivr.asr.digits import DIGIT_WORDS, REPEAT_WORDS
from ivr.asr.models import MODELS, ModelError, model_path
from ivr.config import Settings
from ivr.parts import Expect

logger = logging.getLogger(__name__)

YES_NO_WORDS: Mapping[str, tuple[str, ...]] = {
    "zh-CN": (
        "是",
        "是的",
        "对",
        "对的",
        "好",
        "好的",
        "嗯",
        "可以",
        "没错",
        "不是",
        "不对",
        "不",
        "不要",
        "没有",
        "不用",
    ),
    "en-US": ("yes", "yeah", "yep", "correct", "right", "sure", "okay", "no", "nope", "not", "wrong"),
    # 맞아요, 맞습니다 and 아니에요 are not in the Korean model: the recognizer splits them
    "ko-KR": (
        "네",
        "예",
        "응",
        "그래요",
        "맞아",
        "맞아요",
        "맞습니다",
        "좋아요",
        "아니",
        "아니요",
        "아니오",
        "아뇨",
        "아니에요",
        "아닙니다",
    ),
}

# Rasa's conventional names for the answers to a yes/no question.
YES_NO_INTENTS: tuple[str, ...] = ("affirm", "deny")
# Intents a caller may say in any state (ask for a person, leave, hear it again, go back): included
# in the yes/no and digits grammars when the NLU data has them.
ANYTIME_INTENTS: tuple[str, ...] = ("human", "request_human", "goodbye", "repeat", "go_back")
# Intents whose examples carry digits ("the last four are 4 8 2 1"): included in the digits grammar.
DIGITS_INTENTS: tuple[str, ...] = ("inform_digits",)

_ENTITY = re.compile(r"\[([^\]]*)\](?:\([^)]*\)|\{[^}]*\})")
_PUNCT = re.compile(r"[\s,.!?;:\"“”‘’()（）、，。！？；：…~·]+")
_SPLITTABLE = re.compile(r"[\u3400-\u9fff\uac00-\ud7a3]")  # Han, Hangul syllables
_DIGIT_RUNS = re.compile(r"[0-9]+|[^0-9]+")


class GrammarError(ValueError):
    """NLU data could not be read or a model's vocabulary could not be found; the message names the file."""


# ---------------------------------------------------------------- NLU examples
def strip_annotations(text: str) -> str:
    """``我想查[余额](product)`` → ``我想查余额``; also ``[text]{"entity": ...}``."""
    return _ENTITY.sub(r"\1", text)


def nlu_files(dialogs_dir: Path, locale: str) -> list[Path]:
    data = dialogs_dir / locale / "data"
    main = data / "nlu.yml"
    files = [main] if main.is_file() else []
    nested = data / "nlu"
    if nested.is_dir():
        files += sorted(p for p in nested.rglob("*.yml") if p.is_file())
    return files


def load_nlu_examples(dialogs_dir: Path, locale: str) -> dict[str, list[str]]:
    """Examples by intent from ``dialogs/<locale>/data/nlu.yml`` (and ``data/nlu/*.yml``), Rasa 3 format,
    entity annotations removed. Raises GrammarError naming the file (and line) on malformed data."""
    files = nlu_files(dialogs_dir, locale)
    if not files:
        raise GrammarError(f"{dialogs_dir / locale / 'data' / 'nlu.yml'}: no NLU data for locale {locale}")
    out: dict[str, list[str]] = {}
    for path in files:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise GrammarError(f"{path}: not valid YAML: {exc}") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise GrammarError(f"{path}: cannot read: {exc}") from exc
        items = data.get("nlu") if isinstance(data, dict) else None
        if items is None:
            continue
        if not isinstance(items, list):
            raise GrammarError(f"{path}: 'nlu' must be a list of intents")
        for item in items:
            if not isinstance(item, dict) or "intent" not in item:
                continue  # synonym / regex / lookup entries
            intent = str(item["intent"])
            raw = item.get("examples", "")
            if isinstance(raw, list):  # tolerate a YAML list instead of the block string
                lines = [str(x) for x in raw]
            elif isinstance(raw, str):
                lines = [line.strip() for line in raw.splitlines()]
                lines = [line[1:].strip() for line in lines if line.startswith("-")]
            else:
                raise GrammarError(f"{path}: intent {intent}: 'examples' must be a block of '- text' lines")
            examples = [strip_annotations(line).strip() for line in lines]
            out.setdefault(intent, []).extend(e for e in examples if e)
    return out


# ---------------------------------------------------------------- phrases
def tokenize(text: str, locale: str, vocabulary: Collection[str] | None = None) -> list[str]:
    """The words of a phrase as the locale's model spells them.

    Written digits become the locale's digit words (``1357이에요`` → ``일 삼 오 칠 이에요``). Chinese is
    segmented with jieba and, given the model's ``vocabulary``, a segment the model lacks is split into
    the fewest words it has (else longest matches and single characters). Korean words stay as written:
    the recognizer splits the ones its model lacks at decoding time and joins them again in its result.
    """
    zh = locale.startswith("zh")
    if zh:
        words = _segment_zh(text)
    else:
        words = [w for w in _PUNCT.split(text) if w]
        if locale.startswith("en"):
            words = [w.lower() for w in words]
    out: list[str] = []
    for word in words:
        for run in _DIGIT_RUNS.findall(word):
            if run.isascii() and run.isdigit():
                out.extend(_spell_digits(run, locale))
            elif vocabulary is not None and run not in vocabulary and zh and _SPLITTABLE.search(run):
                out.extend(
                    split_in_vocabulary(run, vocabulary.__contains__) or _longest_match(run, vocabulary)
                )
            else:
                out.append(run)
    return out


def _spell_digits(digits: str, locale: str) -> list[str]:
    """``4821`` → the locale's digit words (how a caller says an ID)."""
    names: dict[str, str] = {}
    for name, digit in DIGIT_WORDS.get(locale, {}).items():
        names.setdefault(digit, name)  # the first word listed for each digit
    return [names.get(d, d) for d in digits]


def _segment_zh(text: str) -> list[str]:
    import jieba

    out: list[str] = []
    for piece in _PUNCT.split(text):
        if piece:
            out.extend(t.strip().lower() for t in jieba.lcut(piece, HMM=False) if t.strip())
    return out


def split_in_vocabulary(word: str, known: Callable[[str], bool], max_len: int = 8) -> list[str] | None:
    """The split of a Chinese or Korean ``word`` into the fewest words the model ``known``s, or None.
    Said one after the other, the pieces sound like the word (``얼마예요`` → ``얼마 예요``)."""
    best: list[list[str] | None] = [[]] + [None] * len(word)
    for end in range(1, len(word) + 1):
        for start in range(max(0, end - max_len), end):
            head, current = best[start], best[end]
            if head is None or (current is not None and len(current) <= len(head) + 1):
                continue
            piece = word[start:end]
            if known(piece):
                best[end] = [*head, piece]
    return best[-1]


def splittable(word: str) -> bool:
    """Whether a word missing from a model may be split into model words (Chinese or Korean script)."""
    return bool(_SPLITTABLE.search(word))


def _longest_match(token: str, vocabulary: Collection[str], max_len: int = 6) -> list[str]:
    """Forward maximum matching against the model's words; unknown single characters stay as they are."""
    out: list[str] = []
    i = 0
    while i < len(token):
        for j in range(min(len(token), i + max_len), i, -1):
            if token[i:j] in vocabulary or j == i + 1:
                out.append(token[i:j])
                i = j
                break
    return out


def phrase(text: str, locale: str, vocabulary: Collection[str] | None = None) -> str:
    return " ".join(tokenize(text, locale, vocabulary))


def _unique(items: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        if item and item not in seen:
            seen[item] = None
    return list(seen)


def build_grammars(
    nlu_examples: Mapping[str, Sequence[str]],
    locale: str,
    *,
    vocabulary: Collection[str] | None = None,
    unk_token: str | None = None,
    yes_no_intents: Sequence[str] = YES_NO_INTENTS,
    anytime_intents: Sequence[str] = ANYTIME_INTENTS,
    digits_intents: Sequence[str] = DIGITS_INTENTS,
) -> dict[Expect, list[str]]:
    """The recognizer grammar for each kind of answer the dialogue can wait for.

    * SPEECH: every NLU example (any intent can follow a free question), plus the yes/no and digit
      words; left out when there are no examples, so the recognizer falls back to free recognition.
    * YES_NO: the locale's yes/no words, the examples of ``yes_no_intents`` and ``anytime_intents``.
    * DIGITS: the locale's digit words, the examples of ``digits_intents`` and ``anytime_intents``
      (keypad covers the rest).

    Digits written in examples (``4821``) become the locale's digit words. Each list ends with the
    model's unknown-word token. Intents missing from ``nlu_examples`` are simply skipped.
    """
    unk = unk_token or _unk(locale)

    def phrases_of(intents: Iterable[str]) -> list[str]:
        return [phrase(t, locale, vocabulary) for i in intents for t in nlu_examples.get(i, ())]

    yes_no = [phrase(w, locale, vocabulary) for w in YES_NO_WORDS.get(locale, ())]
    anytime = phrases_of(anytime_intents)
    grammars: dict[Expect, list[str]] = {
        Expect.YES_NO: _unique([*yes_no, *phrases_of(yes_no_intents), *anytime, unk]),
        Expect.DIGITS: _unique([*digit_grammar_words(locale), *phrases_of(digits_intents), *anytime, unk]),
    }
    everything = phrases_of(nlu_examples)
    if everything:
        grammars[Expect.SPEECH] = _unique([*everything, *yes_no, *digit_grammar_words(locale), unk])
    return grammars


def load_grammars(settings: Settings, locale: str) -> dict[Expect, list[str]]:
    """``build_grammars`` over the locale's NLU data in ``settings.dialogs_dir``; Chinese is segmented
    against the installed model's vocabulary when the model is there (see ``tokenize``).
    Raises GrammarError when the NLU data is missing or malformed."""
    vocabulary: set[str] | None = None
    if locale.startswith("zh"):
        try:
            vocabulary = model_vocabulary(model_path(locale, settings))
        except (GrammarError, ModelError) as exc:
            logger.warning("%s grammars segmented without the model's vocabulary: %s", locale, exc)
    return build_grammars(load_nlu_examples(settings.dialogs_dir, locale), locale, vocabulary=vocabulary)


def _unk(locale: str) -> str:
    spec = MODELS.get(locale)
    return spec.unk_token if spec else "[unk]"


def digit_grammar_words(locale: str) -> list[str]:
    """The words a caller says for digits, as grammar phrases (one word each)."""
    return [*DIGIT_WORDS.get(locale, {}), *REPEAT_WORDS.get(locale, {})]


# ---------------------------------------------------------------- vocabulary
def missing_words(phrases: Iterable[str], vocabulary: Collection[str]) -> list[str]:
    """The words of ``phrases`` (space-separated) that the model lacks, in first-seen order."""
    return _unique(w for p in phrases for w in p.split() if w not in vocabulary)


def model_vocabulary(model_dir: Path) -> set[str]:
    """Every word the model can recognize: ``graph/words.txt`` for static-graph models, else the symbol
    table embedded in ``graph/Gr.fst`` (the small lookahead models, including the Korean one, have no
    words.txt). Raises GrammarError naming the folder when neither is there."""
    words_txt = model_dir / "graph" / "words.txt"
    if words_txt.is_file():
        with words_txt.open(encoding="utf-8") as f:
            return {line.split()[0] for line in f if line.strip()}
    gr = model_dir / "graph" / "Gr.fst"
    if gr.is_file():
        with gr.open("rb") as f:
            try:
                return _fst_symbols(f)
            except (struct.error, ValueError, UnicodeDecodeError) as exc:
                raise GrammarError(f"{gr}: cannot read its word list: {exc}") from exc
    raise GrammarError(f"{model_dir}: no graph/words.txt and no graph/Gr.fst: cannot tell the model's words")


_FST_MAGIC = 2125659606
_SYMBOLS_MAGIC = 2125658996


def _fst_symbols(f: BinaryIO) -> set[str]:
    """The input symbol table of an OpenFst binary file (header, then the embedded tables)."""

    def i32() -> int:
        return int(struct.unpack("<i", f.read(4))[0])

    def i64() -> int:
        return int(struct.unpack("<q", f.read(8))[0])

    def string() -> str:
        n = i32()
        if n < 0 or n > 1 << 20:
            raise ValueError(f"bad string length {n}")
        return f.read(n).decode("utf-8")

    if i32() != _FST_MAGIC:
        raise ValueError("not an OpenFst file")
    string()  # fst type (ngram, const, vector)
    string()  # arc type
    i32()  # version
    flags = i32()
    f.read(8)  # properties
    i64(), i64(), i64()  # start, states, arcs
    if not flags & 1:
        raise ValueError("no symbol table inside")
    if i32() != _SYMBOLS_MAGIC:
        raise ValueError("bad symbol table")
    string()  # table name
    i64()  # available key
    size = i64()
    words: set[str] = set()
    for _ in range(size):
        words.add(string())
        i64()
    words.discard("<eps>")
    return words


def check_grammars(
    nlu_examples: Mapping[str, Sequence[str]],
    locale: str,
    vocabulary: Collection[str],
    *,
    source: str = "",
    unk_token: str | None = None,
) -> list[str]:
    """Problems for ``ivr dialogs validate``: each NLU example or built-in grammar phrase with words the
    model lacks and that cannot be split into words it has (Vosk would silently drop those words).
    ``source`` names the NLU file in messages."""
    where = f"{source}: " if source else ""
    problems: list[str] = []

    def unusable(words: list[str]) -> list[str]:
        return [
            w
            for w in words
            if not (splittable(w) and split_in_vocabulary(w, vocabulary.__contains__) is not None)
        ]

    for intent, examples in nlu_examples.items():
        for example in examples:
            missing = unusable(missing_words([phrase(example, locale, vocabulary)], vocabulary))
            if missing:
                problems.append(
                    f"{where}intent {intent}, example {example!r}: not in the {locale} model's vocabulary: "
                    + ", ".join(missing)
                )
    built_in = [phrase(w, locale, vocabulary) for w in YES_NO_WORDS.get(locale, ())] + digit_grammar_words(
        locale
    )
    for word in unusable(missing_words(built_in, vocabulary)):
        problems.append(f"built-in yes/no or digit word {word!r}: not in the {locale} model's vocabulary")
    unk = unk_token or _unk(locale)
    if unk not in vocabulary:
        problems.append(f"unknown-word token {unk!r}: not in the {locale} model's vocabulary")
    return problems


def check_locale_grammars(settings: Settings, locale: str) -> list[str]:
    """``check_grammars`` for the locale's NLU data against its installed model, for ``ivr dialogs
    validate``. A model that is not installed is reported (as one problem) instead of checked against."""
    try:
        path = model_path(locale, settings)
        if not path.is_dir():
            raise ModelError(f"{path}: not there (run: ivr models pull {locale})")
        vocabulary = model_vocabulary(path)
    except (GrammarError, ModelError) as exc:
        return [f"{locale}: speech model not available, grammar words not checked: {exc}"]
    files = nlu_files(settings.dialogs_dir, locale)
    source = ", ".join(str(f) for f in files) or str(settings.dialogs_dir / locale / "data" / "nlu.yml")
    return check_grammars(load_nlu_examples(settings.dialogs_dir, locale), locale, vocabulary, source=source)
