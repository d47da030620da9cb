"""Numbers read the way a person says them, per locale: the one place that turns robot text into words.

The robot's texts follow the project's number conventions (README, "Editing a dialog"):

- money: thousands separators, a space and the ISO code: ``1,234.56 CNY``, ``-300.00 CNY``, ``1,234,000 KRW``
  (also accepted: no separators ``1234.56 CNY``, no space ``1234.56CNY``, a leading symbol ``$12.50``);
- dates: ISO ``2026-12-15``;
- digit strings (last 4 of an account, phone numbers): bare runs of 4+ digits, read digit by digit,
  in groups of four from the right (a phone number 138 0000 0001, an account 6222 0200 0000 5678);
- counts and days: bare integers of 1-3 digits, read as numbers. A 2-3 digit run with a leading zero is
  read digit by digit ("007").

Also read: grouped numbers without a currency (``1,234``), decimals (``12.5``), percentages (``5%``).

:func:`speakable` applies all of these to a text; the ``read_*`` functions are the per-locale tables.
Every number comes out as words in the locale's script, so the speech engine never applies its own
number rules (espeak-ng's differ per voice, and its Mandarin reads long numbers digit by digit).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

__all__ = [
    "read_date",
    "read_decimal",
    "read_digits",
    "read_integer",
    "read_money",
    "speakable",
]

# ---------------------------------------------------------------- locale
_LANGUAGES = ("zh", "en", "ko")


def language(locale: str) -> str:
    """``zh-CN`` -> ``zh``; raises ValueError for a locale whose numbers we cannot read."""
    lang = locale.replace("_", "-").split("-")[0].lower()
    if lang not in _LANGUAGES:
        raise ValueError(f"no number reading for locale {locale!r} (supported: zh-CN, en-US, ko-KR)")
    return lang


# ---------------------------------------------------------------- Mandarin
_ZH_DIGITS = "零一二三四五六七八九"
_ZH_SMALL_UNITS = ("", "十", "百", "千")
_ZH_BIG_UNITS = ("", "万", "亿", "万亿")
# Measure words after which a count of 2 is 两, not 二 ("两天", "两笔"); a month "2月" stays 二月.
_ZH_MEASURE_WORDS = ("天", "笔", "个", "次", "期", "位", "条", "张", "项", "周", "分钟", "小时", "年", "元")


def _zh_section(n: int) -> str:
    """1..9999 -> Mandarin, with 零 for each run of inner zeros: 1001 一千零一, 1010 一千零一十."""
    out = []
    pending_zero = False
    started = False
    for pos in (3, 2, 1, 0):
        digit = n // 10**pos % 10
        if digit == 0:
            pending_zero = pending_zero or started
            continue
        if pending_zero:
            out.append("零")
            pending_zero = False
        out.append(_ZH_DIGITS[digit] + _ZH_SMALL_UNITS[pos])
        started = True
    return "".join(out)


def _zh_integer(n: int) -> str:
    if n < 0:
        return "负" + _zh_integer(-n)
    if n == 0:
        return "零"
    if n >= 10**16:
        return _zh_digits(str(n))
    sections = [n // 10000**i % 10000 for i in range(4)]
    out = ""
    pending_zero = False
    for idx in (3, 2, 1, 0):
        sec = sections[idx]
        if sec == 0:
            pending_zero = pending_zero or bool(out)
            continue
        if out and (pending_zero or sec < 1000):
            out += "零"
        out += _zh_section(sec) + _ZH_BIG_UNITS[idx]
        pending_zero = False
    if out.startswith("一十"):  # 10 十, 15 十五, 100000 十万 (but 110 一百一十)
        out = out[1:]
    if out[:2] in ("二千", "二万", "二亿"):  # 2000 两千, 20000 两万
        out = "两" + out[1:]
    return out


def _zh_digits(digits: str) -> str:
    # 1 is 幺 when digits are read one by one (phone numbers, account tails): it cannot be misheard as 七.
    table = "零幺二三四五六七八九"
    return "，".join("".join(table[int(c)] for c in group) for group in _groups(digits))


def _zh_fraction(frac: str) -> str:
    return "".join(_ZH_DIGITS[int(c)] for c in frac)


# ---------------------------------------------------------------- English
_EN_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_EN_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_EN_SCALES = ("", "thousand", "million", "billion", "trillion", "quadrillion")
_EN_MONTHS = ("January February March April May June July August September October November December").split()
_EN_ORDINAL_WORDS = {
    "one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
    "nine": "ninth", "twelve": "twelfth",
}  # fmt: skip


def _en_under_100(n: int) -> str:
    if n < 20:
        return _EN_ONES[n]
    tens, ones = divmod(n, 10)
    return _EN_TENS[tens] + (f"-{_EN_ONES[ones]}" if ones else "")


def _en_under_1000(n: int) -> str:
    hundreds, rest = divmod(n, 100)
    parts = []
    if hundreds:
        parts.append(f"{_EN_ONES[hundreds]} hundred")
    if rest:
        parts.append(_en_under_100(rest))
    return " ".join(parts)


def _en_integer(n: int) -> str:
    if n < 0:
        return "minus " + _en_integer(-n)
    if n == 0:
        return "zero"
    if n >= 1000 ** len(_EN_SCALES):
        return _en_digits(str(n))
    parts = []
    for idx in range(len(_EN_SCALES) - 1, -1, -1):
        group = n // 1000**idx % 1000
        if group:
            parts.append(_en_under_1000(group) + (f" {_EN_SCALES[idx]}" if idx else ""))
    return " ".join(parts)


def _en_ordinal(n: int) -> str:
    words = _en_integer(n)
    head, sep, last = words.rpartition(" ")
    head2, sep2, last2 = last.rpartition("-")
    if last2 in _EN_ORDINAL_WORDS:
        last2 = _EN_ORDINAL_WORDS[last2]
    elif last2.endswith("y"):
        last2 = last2[:-1] + "ieth"
    else:
        last2 += "th"
    return head + sep + head2 + sep2 + last2


def _en_year(year: int) -> str:
    """2026 twenty twenty-six, 2000 two thousand, 2005 two thousand five, 1905 nineteen oh five."""
    if 2000 <= year <= 2009 or year < 1000 or year > 9999:
        return _en_integer(year)
    century, rest = divmod(year, 100)
    if rest == 0:
        return f"{_en_under_100(century)} hundred"
    if rest < 10:
        return f"{_en_under_100(century)} oh {_EN_ONES[rest]}"
    return f"{_en_under_100(century)} {_en_under_100(rest)}"


def _en_digits(digits: str) -> str:
    return ", ".join(" ".join(_EN_ONES[int(c)] for c in group) for group in _groups(digits))


def _en_fraction(frac: str) -> str:
    return " ".join(_EN_ONES[int(c)] for c in frac)


# ---------------------------------------------------------------- Korean (Sino-Korean numerals)
_KO_DIGITS = ("", "일", "이", "삼", "사", "오", "육", "칠", "팔", "구")
_KO_SMALL_UNITS = ("", "십", "백", "천")
_KO_BIG_UNITS = ("", "만", "억", "조", "경")
_KO_MONTHS = ("일", "이", "삼", "사", "오", "유", "칠", "팔", "구", "시", "십일", "십이")  # 6 유월, 10 시월


def _ko_section(n: int) -> str:
    """1..9999: 일 is dropped before 십/백/천 (1234 천이백삼십사, 110 백십)."""
    out = []
    for pos in (3, 2, 1, 0):
        digit = n // 10**pos % 10
        if digit == 0:
            continue
        if digit == 1 and pos > 0:
            out.append(_KO_SMALL_UNITS[pos])
        else:
            out.append(_KO_DIGITS[digit] + _KO_SMALL_UNITS[pos])
    return "".join(out)


def _ko_integer(n: int) -> str:
    """만-unit groups, spaced as Korean spelling rules space them: 1,234,000 백이십삼만 사천."""
    if n < 0:
        return "마이너스 " + _ko_integer(-n)
    if n == 0:
        return "영"
    if n >= 10000 ** len(_KO_BIG_UNITS):
        return _ko_digits(str(n))
    parts = []
    for idx in range(len(_KO_BIG_UNITS) - 1, -1, -1):
        group = n // 10000**idx % 10000
        if not group:
            continue
        if group == 1 and idx == 1:
            parts.append("만")  # 10000 만, not 일만; but 1억 일억
        else:
            parts.append(_ko_section(group) + _KO_BIG_UNITS[idx])
    return " ".join(parts)


def _ko_digits(digits: str) -> str:
    table = ("공", "일", "이", "삼", "사", "오", "육", "칠", "팔", "구")  # 0 is 공 in phone numbers
    return ", ".join(" ".join(table[int(c)] for c in group) for group in _groups(digits))


def _ko_fraction(frac: str) -> str:
    return " ".join(("영", *_KO_DIGITS[1:])[int(c)] for c in frac)


# ---------------------------------------------------------------- shared tables
def _groups(digits: str) -> list[str]:
    """Digit strings are read in groups of four from the right: 138 0000 0001; 4 digits are one group."""
    if len(digits) <= 4:
        return [digits]
    head = len(digits) % 4
    groups = [digits[:head]] if head else []
    groups += [digits[i : i + 4] for i in range(head, len(digits), 4)]
    return groups


_INTEGER: dict[str, Callable[[int], str]] = {"zh": _zh_integer, "en": _en_integer, "ko": _ko_integer}
_DIGITS: dict[str, Callable[[str], str]] = {"zh": _zh_digits, "en": _en_digits, "ko": _ko_digits}


def read_integer(n: int, locale: str) -> str:
    """A count, a day number, an amount: 101 一百零一 / one hundred one / 백일."""
    return _INTEGER[language(locale)](n)


def read_digits(digits: str, locale: str) -> str:
    """A digit string one digit at a time, in groups of four from the right (phone, account tail)."""
    if not digits.isascii() or not digits.isdigit():
        raise ValueError(f"not a digit string: {digits!r}")
    return _DIGITS[language(locale)](digits)


def read_decimal(value: str, locale: str) -> str:
    """``12.5`` 十二点五 / twelve point five / 십이 점 오; ``-0.25`` keeps its sign."""
    lang = language(locale)
    sign, body = ("-", value[1:]) if value[:1] in "-−" else ("", value)
    whole, _, frac = body.replace(",", "").partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        raise ValueError(f"not a decimal number: {value!r}")
    n = int(whole)
    if lang == "zh":
        out = _zh_integer(n) + (f"点{_zh_fraction(frac)}" if frac else "")
        return ("负" + out) if sign else out
    if lang == "en":
        out = _en_integer(n) + (f" point {_en_fraction(frac)}" if frac else "")
        return ("minus " + out) if sign else out
    out = _ko_integer(n) + (f" 점 {_ko_fraction(frac)}" if frac else "")
    return ("마이너스 " + out) if sign else out


# Money. Per language and currency: (major name, minor name or None, minor digits).
# minor None: the fraction is read as a decimal ("一点五港元", "one point five yuan").
_MONEY: dict[str, dict[str, tuple[str, str | None]]] = {
    "zh": {"CNY": ("元", "角分"), "USD": ("美元", "美分"), "EUR": ("欧元", "欧分"), "KRW": ("韩元", None),
           "JPY": ("日元", None), "HKD": ("港元", None)},
    "en": {"CNY": ("yuan", None), "USD": ("dollar", "cent"), "EUR": ("euro", "cent"), "KRW": ("won", None),
           "JPY": ("yen", None), "HKD": ("Hong Kong dollar", "cent")},
    "ko": {"CNY": ("위안", None), "USD": ("달러", "센트"), "EUR": ("유로", "센트"), "KRW": ("원", None),
           "JPY": ("엔", None), "HKD": ("홍콩 달러", None)},
}  # fmt: skip
_CURRENCY_ALIASES = {"RMB": "CNY", "$": "USD", "¥": "CNY", "￥": "CNY", "₩": "KRW", "€": "EUR"}
_EN_NO_PLURAL = {"yuan", "won", "yen"}


def _en_unit(name: str, count: int) -> str:
    return name if count == 1 or name in _EN_NO_PLURAL else name + "s"


def read_money(amount: Decimal | str, currency: str, locale: str) -> str:
    """``1234.56 CNY`` 一千二百三十四元五角六分 / ``1234.56 USD`` one thousand two hundred thirty-four
    dollars and fifty-six cents / ``12340000 KRW`` 천이백삼십사만 원. Cents are rounded to 2 places."""
    lang = language(locale)
    code = _CURRENCY_ALIASES.get(currency.upper(), currency.upper())
    try:
        value = Decimal(str(amount).replace(",", ""))
    except InvalidOperation as exc:
        raise ValueError(f"not an amount: {amount!r}") from exc
    negative = value < 0
    value = abs(value)
    entry = _MONEY[lang].get(code)
    if entry is None:  # an unknown currency: the number, then the code as written
        words = read_decimal(_plain(value), locale)
        return ({"zh": "负", "en": "minus ", "ko": "마이너스 "}[lang] if negative else "") + f"{words} {code}"
    major_name, minor_name = entry
    if minor_name is None:
        return _money_decimal(value, negative, major_name, lang, locale)
    cents_total = int((value * 100).quantize(Decimal(1), rounding="ROUND_HALF_UP"))
    major, minor = divmod(cents_total, 100)
    if lang == "zh":
        out = _zh_money(major, minor, major_name, minor_name)
        return ("负" + out) if negative else out
    if lang == "en":
        parts = []
        if major or not minor:
            parts.append(f"{_en_integer(major)} {_en_unit(major_name, major)}")
        if minor:
            parts.append(f"{_en_integer(minor)} {_en_unit(minor_name, minor)}")
        out = " and ".join(parts)
        return ("minus " + out) if negative else out
    parts = []
    if major or not minor:
        parts.append(f"{_ko_integer(major)} {major_name}")
    if minor:
        parts.append(f"{_ko_integer(minor)} {minor_name}")
    out = " ".join(parts)
    return ("마이너스 " + out) if negative else out


def _plain(value: Decimal) -> str:
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def _money_decimal(value: Decimal, negative: bool, name: str, lang: str, locale: str) -> str:
    text = _plain(value)
    words = read_decimal(text, locale)
    if lang == "zh":
        return ("负" if negative else "") + ("两" if text == "2" else words) + name
    if lang == "en":
        count = 1 if text == "1" else 2
        return ("minus " if negative else "") + f"{words} {_en_unit(name, count)}"
    return ("마이너스 " if negative else "") + f"{words} {name}"


def _zh_money(major: int, minor: int, major_name: str, minor_name: str) -> str:
    """元/角/分 for CNY (一千二百三十四元零五分); 美元 … 美分 for the others."""
    whole = "两" if major == 2 else _zh_integer(major)
    if minor_name == "角分":
        jiao, fen = divmod(minor, 10)
        out = f"{whole}{major_name}" if major or not minor else ""
        if jiao:
            out += f"{_ZH_DIGITS[jiao]}角"
        if fen:
            out += ("零" if major and not jiao else "") + f"{_ZH_DIGITS[fen]}分"
        return out
    out = f"{whole}{major_name}" if major or not minor else ""
    if minor:
        out += _zh_integer(minor) + minor_name
    return out


def read_date(date: dt.date, locale: str) -> str:
    """2026-12-15: 二零二六年十二月十五日 / December fifteenth, twenty twenty-six / 이천이십육년 십이월 십오일."""
    lang = language(locale)
    if lang == "zh":
        year = "".join(_ZH_DIGITS[int(c)] for c in str(date.year))
        return f"{year}年{_zh_integer(date.month)}月{_zh_integer(date.day)}日"
    if lang == "en":
        return f"{_EN_MONTHS[date.month - 1]} {_en_ordinal(date.day)}, {_en_year(date.year)}"
    return f"{_ko_integer(date.year)}년 {_KO_MONTHS[date.month - 1]}월 {_ko_integer(date.day)}일"


def _percent(words: str, lang: str) -> str:
    return {"zh": f"百分之{words}", "en": f"{words} percent", "ko": f"{words} 퍼센트"}[lang]


# ---------------------------------------------------------------- the text scanner
# Order matters: money, then dates, then grouped/decimal numbers, then digit strings, then small integers.
# (?<![0-9A-Za-z]) before a sign: "3-5" is no minus; digits never start or end inside another number.
_CODES = "|".join(sorted({*(c for table in _MONEY.values() for c in table), "RMB"}, key=len, reverse=True))
_SIGN = r"(?:(?<![0-9A-Za-z.,])(?P<{name}>[-−]))?"
_NUMBER = r"(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?"
_TOKEN = re.compile(
    "|".join(
        (
            _SIGN.format(name="msign")
            + rf"(?<![0-9.,])(?P<money>{_NUMBER})[ \u00a0]?(?P<code>{_CODES})(?![A-Za-z])",
            _SIGN.format(name="ssign") + rf"(?P<sym>[$¥￥₩€])[ \u00a0]?(?P<smoney>{_NUMBER})(?![0-9])",
            r"(?<![0-9.,])(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})(?![0-9])",
            _SIGN.format(name="nsign")
            + r"(?<![0-9.,])(?P<number>[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?|[0-9]+\.[0-9]+|[0-9]{1,3})"
            r"(?![0-9]|[.,][0-9])(?P<pct>%)?",
            r"(?<![0-9.,])(?P<digits>[0-9]{4,})(?![0-9])",
        )
    )
)


def speakable(text: str, locale: str) -> str:
    """The text with every number in words, as the locale's speaker would read it."""
    lang = language(locale)

    def replace(m: re.Match[str]) -> str:
        if m.group("money") is not None:
            return read_money(("-" if m.group("msign") else "") + m.group("money"), m.group("code"), locale)
        if m.group("smoney") is not None:
            return read_money(("-" if m.group("ssign") else "") + m.group("smoney"), m.group("sym"), locale)
        if m.group("date") is not None:
            try:
                return read_date(dt.date.fromisoformat(m.group("date")), locale)
            except ValueError:  # 2026-13-45 is no date: its parts, one by one
                return "-".join(read_digits(p, locale) for p in m.group("date").split("-"))
        if m.group("number") is not None:
            number = m.group("number")
            sign = "-" if m.group("nsign") else ""
            if "." in number or "," in number:
                words = read_decimal(sign + number, locale)
            elif len(number) > 1 and number.startswith("0"):  # "007": a code, not a count
                return read_digits(number, locale) + (m.group("pct") or "")
            else:
                value = int(sign + number)
                words = _INTEGER[lang](value)
                if lang == "zh" and value == 2 and not m.group("pct") and _before_measure_word(m):
                    words = "两"
            return _percent(words, lang) if m.group("pct") else words
        digits = m.group("digits")
        if lang == "zh" and len(digits) == 4 and m.string[m.end() :].startswith("年"):
            return "".join(_ZH_DIGITS[int(c)] for c in digits)  # 2026年: 二零二六年, years have no 幺
        return read_digits(digits, locale)

    return _TOKEN.sub(replace, text)


def _before_measure_word(m: re.Match[str]) -> bool:
    rest = m.string[m.end() :].lstrip()
    return rest.startswith(_ZH_MEASURE_WORDS)
