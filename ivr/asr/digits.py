"""Digit strings from what a caller said or keyed: ``"일 이 삼 사"`` / ``"four eight two one"`` / ``"1 2 3 4"``.

For ID digits, PINs and phone numbers, which callers say digit by digit. Words that are not digits are
skipped (the recognizer's unknown-word token, fillers), so the caller of this function checks the
length of the result. Compound numbers ("twenty", 十三) are not read: they are not how digit
strings are spoken, and guessing would silently change a secret.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# The words a caller uses for each digit; the keys, in order, are also the DIGITS grammar's words.
DIGIT_WORDS: Mapping[str, Mapping[str, str]] = {
    "zh-CN": {
        "零": "0",
        "一": "1",
        "幺": "1",
        "二": "2",
        "两": "2",
        "三": "3",
        "四": "4",
        "五": "5",
        "六": "6",
        "七": "7",
        "八": "8",
        "九": "9",
    },
    "en-US": {
        "zero": "0",
        "oh": "0",
        "one": "1",
        "two": "2",
        "three": "3",
        "four": "4",
        "five": "5",
        "six": "6",
        "seven": "7",
        "eight": "8",
        "nine": "9",
    },
    "ko-KR": {
        "영": "0",
        "공": "0",
        "일": "1",
        "이": "2",
        "삼": "3",
        "사": "4",
        "오": "5",
        "육": "6",
        "칠": "7",
        "팔": "8",
        "구": "9",
    },
}

# Understood but not offered in grammars.
_EXTRA_WORDS: Mapping[str, Mapping[str, str]] = {
    "zh-CN": {
        "〇": "0",
        "○": "0",
        "壹": "1",
        "贰": "2",
        "叁": "3",
        "肆": "4",
        "伍": "5",
        "陆": "6",
        "柒": "7",
        "捌": "8",
        "玖": "9",
    },
    "en-US": {"o": "0", "nought": "0"},
    "ko-KR": {
        "하나": "1",
        "둘": "2",
        "셋": "3",
        "넷": "4",
        "다섯": "5",
        "여섯": "6",
        "일곱": "7",
        "여덟": "8",
        "아홉": "9",
        "륙": "6",
    },
}

# "double five" → 55 (English callers say phone numbers this way).
REPEAT_WORDS: Mapping[str, Mapping[str, int]] = {"en-US": {"double": 2, "triple": 3}}

_ASCII = str.maketrans("０１２３４５６７８９", "0123456789")
_BRACKETED = re.compile(r"^[\[(](.+)[\])]$")


def digit_map(locale: str) -> dict[str, str]:
    return {**DIGIT_WORDS.get(locale, {}), **_EXTRA_WORDS.get(locale, {})}


def digits_from_words(text: str, locale: str) -> str:
    """The digits in ``text``, in order: keypad digits, digit words, runs of digit characters written
    together (``一二三``, ``尾号四八二一``, ``일이삼``) and the Korean model's bracket forms (``[일]``)."""
    words = digit_map(locale)
    if locale.startswith("zh"):
        return _chinese_digits(text.translate(_ASCII), words)
    repeats = REPEAT_WORDS.get(locale, {})
    by_char = locale.startswith("ko")
    out: list[str] = []
    pending = 1
    for raw in text.translate(_ASCII).split():
        token = raw.lower()
        match = _BRACKETED.match(token)
        if match:
            token = match.group(1)
        found: list[str] = []
        if token.isascii() and token.isdigit():
            found = list(token)
        elif token in words:
            found = [words[token]]
        elif token in repeats:
            pending = repeats[token]
            continue
        elif by_char and all(c in words or (c.isascii() and c.isdigit()) for c in token):
            found = [words.get(c, c) for c in token]
        if found:
            found[0] = found[0] * pending
        pending = 1
        out.extend(found)
    return "".join(out)


def _chinese_digits(text: str, words: Mapping[str, str]) -> str:
    """Chinese is written without spaces (尾号四八二一), so digits are runs of digit characters. A lone
    digit character next to a longer run is part of a word (等一下，尾号四八二一), and is left out."""
    chars = "".join(re.escape(c) for c in words)
    runs = re.findall(f"[{chars}0-9]+", text)
    if any(len(r) > 1 for r in runs):
        runs = [r for r in runs if len(r) > 1]
    return "".join(words.get(c, c) for r in runs for c in r)
