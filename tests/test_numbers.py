"""Number reading per locale: tables of (input, what a person says)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from ivr.tts.numbers import read_date, read_digits, read_integer, read_money, speakable

ZH_INTEGERS = [
    (0, "零"),
    (1, "一"),
    (2, "二"),
    (10, "十"),
    (11, "十一"),
    (15, "十五"),
    (20, "二十"),
    (99, "九十九"),
    (100, "一百"),
    (101, "一百零一"),
    (110, "一百一十"),
    (999, "九百九十九"),
    (1000, "一千"),
    (1001, "一千零一"),
    (1010, "一千零一十"),
    (1100, "一千一百"),
    (1234, "一千二百三十四"),
    (2000, "两千"),
    (10000, "一万"),
    (10001, "一万零一"),
    (10010, "一万零一十"),
    (12000, "一万二千"),
    (20000, "两万"),
    (100000, "十万"),
    (100010, "十万零一十"),
    (150000, "十五万"),
    (1000000, "一百万"),
    (12340000, "一千二百三十四万"),
    (100000000, "一亿"),
    (100000001, "一亿零一"),
    (100010000, "一亿零一万"),
    (1234567890, "十二亿三千四百五十六万七千八百九十"),
    (-5, "负五"),
]

EN_INTEGERS = [
    (0, "zero"),
    (7, "seven"),
    (10, "ten"),
    (11, "eleven"),
    (15, "fifteen"),
    (20, "twenty"),
    (21, "twenty-one"),
    (100, "one hundred"),
    (101, "one hundred one"),
    (999, "nine hundred ninety-nine"),
    (1000, "one thousand"),
    (1001, "one thousand one"),
    (1234, "one thousand two hundred thirty-four"),
    (10000, "ten thousand"),
    (100000, "one hundred thousand"),
    (1234000, "one million two hundred thirty-four thousand"),
    (100000000, "one hundred million"),
    (2000000001, "two billion one"),
    (-12, "minus twelve"),
]

KO_INTEGERS = [
    (0, "영"),
    (1, "일"),
    (10, "십"),
    (11, "십일"),
    (15, "십오"),
    (20, "이십"),
    (100, "백"),
    (101, "백일"),
    (110, "백십"),
    (1000, "천"),
    (1001, "천일"),
    (1234, "천이백삼십사"),
    (10000, "만"),
    (10001, "만 일"),
    (12000, "만 이천"),
    (100000, "십만"),
    (1234000, "백이십삼만 사천"),
    (12340000, "천이백삼십사만"),
    (100000000, "일억"),
    (100010000, "일억 만"),
    (1234567890, "십이억 삼천사백오십육만 칠천팔백구십"),
    (-300, "마이너스 삼백"),
]


@pytest.mark.parametrize(
    ("locale", "table"), [("zh-CN", ZH_INTEGERS), ("en-US", EN_INTEGERS), ("ko-KR", KO_INTEGERS)]
)
def test_integers(locale: str, table: list[tuple[int, str]]) -> None:
    assert [(n, read_integer(n, locale)) for n, _ in table] == table


MONEY = [
    # Mandarin: 元 角 分
    ("zh-CN", "1234.56", "CNY", "一千二百三十四元五角六分"),
    ("zh-CN", "0", "CNY", "零元"),
    ("zh-CN", "0.00", "CNY", "零元"),
    ("zh-CN", "0.56", "CNY", "五角六分"),
    ("zh-CN", "0.05", "CNY", "五分"),
    ("zh-CN", "0.50", "CNY", "五角"),
    ("zh-CN", "10.05", "CNY", "十元零五分"),
    ("zh-CN", "2", "CNY", "两元"),
    ("zh-CN", "-300.00", "CNY", "负三百元"),
    ("zh-CN", "-89.90", "CNY", "负八十九元九角"),
    ("zh-CN", "20000.00", "CNY", "两万元"),
    ("zh-CN", "100000000.05", "CNY", "一亿元零五分"),
    ("zh-CN", "2500.75", "USD", "两千五百美元七十五美分"),
    ("zh-CN", "1234000", "KRW", "一百二十三万四千韩元"),
    # English
    ("en-US", "1234.56", "USD", "one thousand two hundred thirty-four dollars and fifty-six cents"),
    ("en-US", "0", "USD", "zero dollars"),
    ("en-US", "0.56", "USD", "fifty-six cents"),
    ("en-US", "1.01", "USD", "one dollar and one cent"),
    ("en-US", "2500.75", "USD", "two thousand five hundred dollars and seventy-five cents"),
    ("en-US", "-45.20", "USD", "minus forty-five dollars and twenty cents"),
    ("en-US", "100000000.05", "USD", "one hundred million dollars and five cents"),
    ("en-US", "1234.56", "CNY", "one thousand two hundred thirty-four point five six yuan"),
    ("en-US", "1234000", "KRW", "one million two hundred thirty-four thousand won"),
    # Korean
    ("ko-KR", "1234", "KRW", "천이백삼십사 원"),
    ("ko-KR", "12340000", "KRW", "천이백삼십사만 원"),
    ("ko-KR", "1234000", "KRW", "백이십삼만 사천 원"),
    ("ko-KR", "0", "KRW", "영 원"),
    ("ko-KR", "-52000", "KRW", "마이너스 오만 이천 원"),
    ("ko-KR", "3100000", "KRW", "삼백십만 원"),
    ("ko-KR", "100000000", "KRW", "일억 원"),
    ("ko-KR", "2500.75", "USD", "이천오백 달러 칠십오 센트"),
    ("ko-KR", "0.05", "USD", "오 센트"),
]


@pytest.mark.parametrize(("locale", "amount", "code", "spoken"), MONEY)
def test_money(locale: str, amount: str, code: str, spoken: str) -> None:
    assert read_money(Decimal(amount), code, locale) == spoken


DATES = [
    ("zh-CN", dt.date(2026, 12, 15), "二零二六年十二月十五日"),
    ("zh-CN", dt.date(2026, 1, 1), "二零二六年一月一日"),
    ("zh-CN", dt.date(2030, 10, 20), "二零三零年十月二十日"),
    ("en-US", dt.date(2026, 12, 15), "December fifteenth, twenty twenty-six"),
    ("en-US", dt.date(2026, 11, 1), "November first, twenty twenty-six"),
    ("en-US", dt.date(2026, 3, 22), "March twenty-second, twenty twenty-six"),
    ("en-US", dt.date(2026, 5, 30), "May thirtieth, twenty twenty-six"),
    ("en-US", dt.date(2005, 7, 3), "July third, two thousand five"),
    ("en-US", dt.date(1999, 12, 31), "December thirty-first, nineteen ninety-nine"),
    ("ko-KR", dt.date(2026, 12, 15), "이천이십육년 십이월 십오일"),
    ("ko-KR", dt.date(2026, 6, 10), "이천이십육년 유월 십일"),
    ("ko-KR", dt.date(2026, 10, 3), "이천이십육년 시월 삼일"),
]


@pytest.mark.parametrize(("locale", "date", "spoken"), DATES)
def test_dates(locale: str, date: dt.date, spoken: str) -> None:
    assert read_date(date, locale) == spoken


DIGITS = [
    ("zh-CN", "4821", "四八二幺"),
    ("zh-CN", "0000", "零零零零"),
    ("zh-CN", "13800000001", "幺三八，零零零零，零零零幺"),
    ("en-US", "7305", "seven three zero five"),
    ("en-US", "15550000002", "one five five, five zero zero zero, zero zero zero two"),
    (
        "en-US",
        "4111110000009012",
        "four one one one, one one zero zero, zero zero zero zero, nine zero one two",
    ),
    ("ko-KR", "6193", "육 일 구 삼"),
    ("ko-KR", "01012345678", "공 일 공, 일 이 삼 사, 오 육 칠 팔"),
]


@pytest.mark.parametrize(("locale", "digits", "spoken"), DIGITS)
def test_digit_strings(locale: str, digits: str, spoken: str) -> None:
    assert read_digits(digits, locale) == spoken


# Whole robot texts, as the actions write them (the README's number conventions).
TEXTS = [
    ("zh-CN", "您的余额是1,234.56 CNY。", "您的余额是一千二百三十四元五角六分。"),
    ("zh-CN", "尾号5678的账户余额为1,234.56 CNY", "尾号五六七八的账户余额为一千二百三十四元五角六分"),
    ("zh-CN", "2026-11-20 -300.00 CNY 还款", "二零二六年十一月二十日 负三百元 还款"),
    (
        "zh-CN",
        "下一期还款日是2026-12-15，应还1,500.00 CNY。",
        "下一期还款日是二零二六年十二月十五日，应还一千五百元。",
    ),
    ("zh-CN", "您已逾期 12 天。", "您已逾期 十二 天。"),
    ("zh-CN", "您已逾期2天，共3笔交易。", "您已逾期两天，共三笔交易。"),
    ("zh-CN", "2月的账单", "二月的账单"),
    ("zh-CN", "贷款余额 0 CNY", "贷款余额 零元"),
    ("zh-CN", "100,000,000.05 CNY", "一亿元零五分"),
    ("zh-CN", "利率12.5%", "利率百分之十二点五"),
    ("zh-CN", "2026年", "二零二六年"),
    (
        "en-US",
        "Your balance is 2,500.75 USD.",
        "Your balance is two thousand five hundred dollars and seventy-five cents.",
    ),
    (
        "en-US",
        "Your payment of 450.00 USD was due on 2026-11-16; you are 12 days overdue.",
        "Your payment of four hundred fifty dollars was due on November sixteenth, twenty twenty-six; "
        "you are twelve days overdue.",
    ),
    ("en-US", "the account ending 9012", "the account ending nine zero one two"),
    ("en-US", "-45.20 USD Grocery store", "minus forty-five dollars and twenty cents Grocery store"),
    ("en-US", "You have 3 transactions and 1 loan.", "You have three transactions and one loan."),
    ("en-US", "1,234 points", "one thousand two hundred thirty-four points"),
    ("en-US", "Code 007", "Code zero zero seven"),
    ("en-US", "Pay $12.50 now", "Pay twelve dollars and fifty cents now"),
    ("en-US", "from 3-5 days", "from three-five days"),
    ("ko-KR", "잔액은 1,234,000 KRW입니다.", "잔액은 백이십삼만 사천 원입니다."),
    ("ko-KR", "12,340,000 KRW", "천이백삼십사만 원"),
    ("ko-KR", "다음 납부일은 2026-12-15입니다.", "다음 납부일은 이천이십육년 십이월 십오일입니다."),
    ("ko-KR", "-150,000 KRW 대출 상환", "마이너스 십오만 원 대출 상환"),
    ("ko-KR", "연체 12일", "연체 십이일"),
    ("ko-KR", "전화번호 01012345678", "전화번호 공 일 공, 일 이 삼 사, 오 육 칠 팔"),
    ("ko-KR", "거래 3건", "거래 삼건"),
]


@pytest.mark.parametrize(("locale", "text", "spoken"), TEXTS)
def test_speakable(locale: str, text: str, spoken: str) -> None:
    assert speakable(text, locale) == spoken


@pytest.mark.parametrize("locale", ["zh-CN", "en-US", "ko-KR"])
def test_text_without_numbers_is_unchanged(locale: str) -> None:
    text = "Hello, 您好, 안녕하세요."
    assert speakable(text, locale) == text


def test_money_accepts_the_forms_actions_may_write() -> None:
    for text in ("1,234.56 CNY", "1234.56 CNY", "1234.56CNY", "1,234.56 RMB", "¥1,234.56"):
        assert speakable(text, "zh-CN") == "一千二百三十四元五角六分", text


def test_not_a_date_is_read_digit_by_digit() -> None:
    assert speakable("2026-13-45", "en-US") == "two zero two six-one three-four five"


def test_unknown_locale_is_an_error() -> None:
    with pytest.raises(ValueError, match="fr-FR"):
        speakable("12", "fr-FR")
    with pytest.raises(ValueError, match="digit string"):
        read_digits("12a4", "en-US")
