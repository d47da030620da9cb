"""Speech in: digits, grammars, the vocabulary check, error rates, and (marked ``audio``) real Vosk
recognition in ko-KR, the one locale whose model is installed here.

The Korean model recognizes espeak-ng's synthetic Korean poorly, so the audio tests never assert what
was "really said": they assert what the system does with the recognizer's actual output
(reproducibility, grammar confinement, digits, timings, errors).
"""

from __future__ import annotations

import io
import json
import re
import shutil
import struct
import subprocess
import threading
import time
import wave
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from ivr.asr import commands
from ivr.asr.digits import DIGIT_WORDS, digits_from_words
from ivr.asr.evaluate import edit_distance, evaluate_dir, tokens
from ivr.asr.grammar import (
    GrammarError,
    build_grammars,
    check_grammars,
    check_locale_grammars,
    load_grammars,
    load_nlu_examples,
    missing_words,
    model_vocabulary,
    phrase,
    split_in_vocabulary,
)
from ivr.asr.models import model_path
from ivr.asr.recognizer import (
    LEAD_MS,
    UNK_WORD,
    SpeechFeed,
    VoskRecognizer,
    _compile_grammar,
    _recognition,
    _set_option,
    _tuned_copy,
    heard_nothing,
    join_words,
)
from ivr.config import Settings
from ivr.parts import Expect, Recognition, RecognizerError, Word
from ivr.testing.asrchunks import pad_with_line_noise

KO_MODEL = model_path("ko-KR", Settings())

KO_NLU = """\
version: "3.1"
nlu:
- intent: affirm
  examples: |
    - 네
    - 예 맞아
- intent: deny
  examples: |
    - 아니요
- intent: check_balance
  examples: |
    - 잔액 확인
    - [계좌](account_type) 잔액을 알려주세요
    - 잔액이 [얼마]{"entity": "amount"} 인가요
- intent: request_human
  examples: |
    - 상담원 연결
- synonym: 계좌
  examples: |
    - 통장
- regex: id_digits
  examples: |
    - \\d{4}
"""


# ---------------------------------------------------------------- digits
@pytest.mark.parametrize(
    ("text", "locale", "digits"),
    [
        ("일 이 삼 사", "ko-KR", "1234"),
        ("공 일 공 영", "ko-KR", "0100"),
        ("[일] 이삼 <UNK> 사", "ko-KR", "1234"),  # bracket forms, digit runs, unknown words skipped
        ("하나 둘 셋", "ko-KR", "123"),
        ("잔액 일", "ko-KR", "1"),
        ("四 八 二 一", "zh-CN", "4821"),
        ("幺三八零零", "zh-CN", "13800"),
        ("两 〇 九", "zh-CN", "209"),
        ("尾号是四八二一", "zh-CN", "4821"),
        ("等一下，尾号四八二一", "zh-CN", "4821"),
        ("我要查一下余额", "zh-CN", "1"),
        ("four eight two one", "en-US", "4821"),
        ("Seven Three oh Five", "en-US", "7305"),
        ("one five five five double zero triple two", "en-US", "155500222"),
        ("1 2 3 4", "en-US", "1234"),
        ("1 2 3 4", "zh-CN", "1234"),
        ("６１９３", "ko-KR", "6193"),
        ("my number is", "en-US", ""),
        ("", "ko-KR", ""),
    ],
)
def test_digits_from_words(text: str, locale: str, digits: str) -> None:
    assert digits_from_words(text, locale) == digits


# ---------------------------------------------------------------- NLU examples and grammars
@pytest.fixture
def dialogs(tmp_path: Path) -> Path:
    data = tmp_path / "dialogs" / "ko-KR" / "data"
    data.mkdir(parents=True)
    (data / "nlu.yml").write_text(KO_NLU, encoding="utf-8")
    return tmp_path / "dialogs"


def test_nlu_examples_are_read_by_intent_without_entity_annotations(dialogs: Path) -> None:
    examples = load_nlu_examples(dialogs, "ko-KR")
    assert examples == {
        "affirm": ["네", "예 맞아"],
        "deny": ["아니요"],
        "check_balance": ["잔액 확인", "계좌 잔액을 알려주세요", "잔액이 얼마 인가요"],
        "request_human": ["상담원 연결"],
    }


def test_broken_nlu_data_is_reported_with_its_file(dialogs: Path) -> None:
    nlu = dialogs / "ko-KR" / "data" / "nlu.yml"
    nlu.write_text("nlu:\n- intent: x\n  examples: |\n    - a\n   bad: [\n", encoding="utf-8")
    with pytest.raises(GrammarError, match=re.escape(str(nlu))):
        load_nlu_examples(dialogs, "ko-KR")
    with pytest.raises(GrammarError, match="no NLU data"):
        load_nlu_examples(dialogs, "en-US")


def test_grammars_per_expectation(dialogs: Path) -> None:
    grammars = build_grammars(load_nlu_examples(dialogs, "ko-KR"), "ko-KR")
    assert set(grammars) == {Expect.SPEECH, Expect.YES_NO, Expect.DIGITS}
    for phrases in grammars.values():
        assert phrases[-1] == "<UNK>"
        assert len(phrases) == len(set(phrases))
    assert grammars[Expect.DIGITS] == [*DIGIT_WORDS["ko-KR"], "상담원 연결", "<UNK>"]
    yes_no = grammars[Expect.YES_NO]
    assert {"네", "아니요", "예 맞아", "상담원 연결"} <= set(yes_no)
    assert "잔액 확인" not in yes_no
    assert {"잔액 확인", "계좌 잔액을 알려주세요", "네"} <= set(grammars[Expect.SPEECH])
    # no examples at all: no SPEECH grammar, so the recognizer falls back to free recognition
    assert Expect.SPEECH not in build_grammars({}, "ko-KR")
    en = build_grammars({"affirm": ["Yes, please!"]}, "en-US")
    assert "yes please" in en[Expect.YES_NO] and en[Expect.YES_NO][-1] == "[unk]"
    assert "double" in en[Expect.DIGITS]


def test_written_digits_become_spoken_digit_words_and_carrier_phrases_join_the_digits_grammar() -> None:
    examples = {"inform_digits": ["4821", "the last four are 7 3 0 5"], "human": ["agent"], "greet": ["hi"]}
    grammars = build_grammars(examples, "en-US")
    assert "four eight two one" in grammars[Expect.DIGITS]
    assert "the last four are seven three zero five" in grammars[Expect.DIGITS]
    assert "agent" in grammars[Expect.DIGITS] and "agent" in grammars[Expect.YES_NO]
    assert "hi" not in grammars[Expect.DIGITS] and "hi" in grammars[Expect.SPEECH]
    assert {"zero", "nine", "double"} <= set(grammars[Expect.SPEECH])
    assert phrase("6193", "ko-KR") == "육 일 구 삼"
    assert phrase("尾号4821", "zh-CN", {"尾号", "四", "八", "二", "一"}) == "尾号 四 八 二 一"


def test_load_grammars_reads_the_settings_dialogs(dialogs: Path, tmp_path: Path) -> None:
    settings = Settings(dialogs_dir=dialogs, models_dir=tmp_path / "models")
    assert load_grammars(settings, "ko-KR") == build_grammars(load_nlu_examples(dialogs, "ko-KR"), "ko-KR")
    zh = dialogs / "zh-CN" / "data"
    zh.mkdir(parents=True)
    (zh / "nlu.yml").write_text(
        "nlu:\n- intent: ask_balance\n  examples: |\n    - 查余额\n", encoding="utf-8"
    )
    # the Chinese model is not pulled here: jieba's segmentation alone
    assert "查 余额" in load_grammars(settings, "zh-CN")[Expect.SPEECH]


def test_the_robot_uses_grammars_unless_settings_turn_them_off(dialogs: Path, tmp_path: Path) -> None:
    from ivr.app import GrammarBook

    settings = Settings(dialogs_dir=dialogs, models_dir=tmp_path / "models")
    expected = build_grammars(load_nlu_examples(dialogs, "ko-KR"), "ko-KR")
    assert GrammarBook(settings)("ko-KR", Expect.SPEECH) == expected[Expect.SPEECH]
    free = GrammarBook(replace(settings, asr_grammars=False))
    assert all(free("ko-KR", expect) is None for expect in Expect)  # None: free recognition


def test_chinese_phrases_are_segmented_into_model_words() -> None:
    vocabulary = {"我", "想", "查询", "余", "额", "的", "贷款", "还款", "日期"}
    # jieba's word 余额 is not in this model: it is split into the longest words the model has
    assert phrase("我想查询余额。", "zh-CN", vocabulary) == "我 想 查询 余 额"
    assert phrase("贷款的还款日期？", "zh-CN", vocabulary) == "贷款 的 还款 日期"
    assert " " in phrase("我想查询余额", "zh-CN")  # without a vocabulary: jieba's words
    grammars = build_grammars({"check_balance": ["我想查询余额"]}, "zh-CN", vocabulary=vocabulary)
    assert "我 想 查询 余 额" in grammars[Expect.SPEECH]
    assert grammars[Expect.DIGITS][:3] == ["零", "一", "幺"]


@pytest.fixture(scope="session")
def ko_vocabulary() -> set[str]:
    return model_vocabulary(KO_MODEL)


def test_korean_model_vocabulary_comes_from_its_grammar_fst(ko_vocabulary: set[str]) -> None:
    assert not (KO_MODEL / "graph" / "words.txt").exists()
    assert len(ko_vocabulary) > 400_000
    assert {"네", "아니요", "잔액", "<UNK>", "[일]", *DIGIT_WORDS["ko-KR"]} <= ko_vocabulary
    assert "[unk]" not in ko_vocabulary and "<eps>" not in ko_vocabulary


def test_words_txt_is_used_when_a_model_has_one(tmp_path: Path) -> None:
    (tmp_path / "graph").mkdir()
    (tmp_path / "graph" / "words.txt").write_text("<eps> 0\nhello 1\nworld 2\n", encoding="utf-8")
    assert model_vocabulary(tmp_path) == {"<eps>", "hello", "world"}
    with pytest.raises(GrammarError, match=r"no graph/words\.txt and no graph/Gr\.fst"):
        model_vocabulary(tmp_path / "graph")


def test_words_missing_from_the_model_split_into_words_it_has(ko_vocabulary: set[str]) -> None:
    assert "얼마예요" not in ko_vocabulary and "맞아요" not in ko_vocabulary
    assert split_in_vocabulary("얼마예요", ko_vocabulary.__contains__) == ["얼마", "예요"]
    pieces = split_in_vocabulary("맞아요", ko_vocabulary.__contains__)
    assert pieces is not None and len(pieces) == 2 and "".join(pieces) == "맞아요"
    assert set(pieces) <= ko_vocabulary
    assert split_in_vocabulary("xyzzy", ko_vocabulary.__contains__) is None
    # Korean phrases keep their words (the recognizer splits and joins them); digits are spelled out
    assert phrase("제 계좌 잔액이 얼마예요?", "ko-KR", ko_vocabulary) == "제 계좌 잔액이 얼마예요"
    assert phrase("번호는 1357이에요", "ko-KR", ko_vocabulary) == "번호는 일 삼 오 칠 이에요"


def test_grammar_words_are_split_for_vosk_and_joined_again_in_the_result() -> None:
    known = {"네", "맞아", "요", "잔액", "얼마", "예요", "<UNK>"}.__contains__
    compiled = _compile_grammar(["네 맞아요", "[unk]", "잔액 얼마예요", "xyzzy"], "<UNK>", known)
    assert compiled is not None
    assert json.loads(compiled.json) == ["네 맞아 요", "<UNK>", "잔액 얼마 예요", "xyzzy"]
    assert compiled.joins == {("맞아", "요"): "맞아요", ("얼마", "예요"): "얼마예요"}
    raw = [
        {"word": "네", "conf": 0.9, "start": 0.0, "end": 0.2},
        {"word": "맞아", "conf": 0.8, "start": 0.2, "end": 0.4},
        {"word": "요", "conf": 0.6, "start": 0.4, "end": 0.5},
        {"word": "요", "conf": 1.0, "start": 0.6, "end": 0.7},  # a piece on its own stays as it is
    ]
    result = _recognition(raw, compiled.joins)
    assert result.text == "네 맞아요 요"
    assert result.words[1] == Word("맞아요", 0.6, 0.2, 0.5)
    assert result.confidence == pytest.approx((0.9 + 0.6 + 1.0) / 3)


def test_chinese_results_are_written_without_spaces() -> None:
    assert join_words(["我", "想", "查询", "余额"]) == "我想查询余额"
    assert join_words(["我", "要", "ATM", "卡"]) == "我要 ATM 卡"
    assert join_words(["잔액", "알려", "주세요"]) == "잔액 알려 주세요"
    assert digits_from_words(join_words(["尾号", "四", "八", "二", "一"]), "zh-CN") == "4821"


def test_vocabulary_check_lists_the_words_the_model_lacks(ko_vocabulary: set[str]) -> None:
    assert missing_words(["네 맞아요", "잔액 확인", "틀려요 맞아요"], ko_vocabulary) == ["맞아요", "틀려요"]
    problems = check_grammars(
        {"affirm": ["네", "네 맞아요 xyzzy"], "check_balance": ["잔액 확인"]},
        "ko-KR",
        ko_vocabulary,
        source="nlu.yml",
    )
    assert problems == [
        "nlu.yml: intent affirm, example '네 맞아요 xyzzy': not in the ko-KR model's vocabulary: xyzzy"
    ]
    # the built-in words are checked too, and the unknown-word token
    problems = check_grammars({}, "ko-KR", {"네"})
    assert any("'아니요'" in p for p in problems)
    assert problems[-1] == "unknown-word token '<UNK>': not in the ko-KR model's vocabulary"


def test_locale_check_uses_the_installed_model(dialogs: Path, tmp_path: Path) -> None:
    settings = Settings(dialogs_dir=dialogs, models_dir=tmp_path / "models")
    nlu = dialogs / "ko-KR" / "data" / "nlu.yml"
    nlu.write_text(KO_NLU.replace("- 잔액 확인", "- 잔액 확인 xyzzy"), encoding="utf-8")
    assert check_locale_grammars(settings, "ko-KR") == [
        f"{nlu}: intent check_balance, example '잔액 확인 xyzzy': not in the ko-KR model's vocabulary: xyzzy"
    ]
    (problem,) = check_locale_grammars(settings, "en-US")
    assert problem.startswith("en-US: speech model not available") and "ivr models pull en-US" in problem


# ---------------------------------------------------------------- results and error rates
def test_unknown_words_stay_out_of_the_text_and_count_as_zero_confidence() -> None:
    raw = [
        {"word": "<UNK>", "conf": 0.9, "start": 0.1, "end": 0.3},
        {"word": "네", "conf": 0.8, "start": 0.3, "end": 0.5},
        {"word": "[일]", "conf": 1.0, "start": 0.5, "end": 0.7},
    ]
    result = _recognition(raw)
    assert result.text == "네 일"
    assert result.confidence == pytest.approx((0.8 + 1.0) / 3)
    assert [w.word for w in result.words] == [UNK_WORD, "네", "일"]
    only_unknown = _recognition([{"word": "<UNK>", "conf": 1.0, "start": 0.0, "end": 0.4}])
    assert only_unknown.text == "" and only_unknown.confidence == 0.0 and not heard_nothing(only_unknown)
    assert heard_nothing(_recognition([]))


@pytest.mark.parametrize(
    ("ref", "hyp", "errors"),
    [
        ("a b c", "a b c", 0),
        ("a b c", "a x c", 1),
        ("a b c", "a c", 1),
        ("a b", "a b c d", 2),
        ("", "a", 1),
        ("a b c", "", 3),
    ],
)
def test_edit_distance(ref: str, hyp: str, errors: int) -> None:
    assert edit_distance(ref.split(), hyp.split()) == errors


def test_error_units_per_locale() -> None:
    assert tokens("Yes, I'd like that.", "en-US") == ["yes", "i'd", "like", "that"]
    assert tokens("我想 查询余额。", "zh-CN") == list("我想查询余额")
    assert tokens("잔액을 알려주세요!", "ko-KR") == ["잔액을", "알려주세요"]


@pytest.mark.parametrize(
    ("value", "phrases"),
    [
        ("네, 아니요", ["네", "아니요"]),
        ('["잔액 확인", "네"]', ["잔액 확인", "네"]),
        ("是，不是", ["是", "不是"]),
    ],
)
def test_grammar_option(value: str, phrases: list[str]) -> None:
    assert commands.parse_grammar(value) == phrases


def test_grammar_option_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "g.txt").write_text("네\n\n잔액 확인\n", encoding="utf-8")
    assert commands.parse_grammar(f"@{tmp_path / 'g.txt'}") == ["네", "잔액 확인"]


def test_tuned_copy_changes_only_the_two_settings_in_conf() -> None:
    copy = _tuned_copy(KO_MODEL, dither=False, frames_per_chunk=51)
    try:
        assert (copy / "graph").is_symlink() and (copy / "graph").resolve() == (KO_MODEL / "graph").resolve()
        assert not (copy / "conf").is_symlink()
        lines = (copy / "conf" / "mfcc.conf").read_text(encoding="utf-8").splitlines()
        assert lines[-1] == "--dither=0.0"
        original = (KO_MODEL / "conf" / "mfcc.conf").read_text(encoding="utf-8")
        assert "dither" not in original and lines[:-1] == original.splitlines()
        model_conf = (copy / "conf" / "model.conf").read_text(encoding="utf-8").splitlines()
        assert model_conf[-1] == "--frames-per-chunk=51"
        assert model_conf[:-1] == (KO_MODEL / "conf" / "model.conf").read_text(encoding="utf-8").splitlines()
    finally:
        shutil.rmtree(copy)
    dithered = _tuned_copy(KO_MODEL, dither=True, frames_per_chunk=0)
    try:  # dither on, frames per chunk 0: both files as installed (Vosk's own choice is not "20" written out)
        assert (dithered / "conf" / "mfcc.conf").read_text(encoding="utf-8") == original
        installed = (KO_MODEL / "conf" / "model.conf").read_text(encoding="utf-8")
        assert (dithered / "conf" / "model.conf").read_text(encoding="utf-8") == installed
        # an earlier --frames-per-chunk is replaced, not repeated
        _set_option(dithered / "conf" / "model.conf", "--frames-per-chunk", "99")
        _set_option(dithered / "conf" / "model.conf", "--frames-per-chunk", "150")
        model_conf = (dithered / "conf" / "model.conf").read_text(encoding="utf-8").splitlines()
        assert [line for line in model_conf if "frames-per-chunk" in line] == ["--frames-per-chunk=150"]
    finally:
        shutil.rmtree(dithered)


# ---------------------------------------------------------------- audio (real Vosk, ko-KR)
@dataclass(frozen=True)
class Clips:
    balance: Path  # "잔액을 확인하고 싶어요"
    yes: Path  # "네"
    digits: Path  # "사 팔 이 일"
    yes_right: Path  # "네 맞아요"
    two_parts: Path  # two sentences with 2 s of silence between
    first_part_s: float  # where the second sentence starts in two_parts
    silence: Path
    extensible: Path  # the digits clip as WAVE_FORMAT_EXTENSIBLE
    at_16k: Path  # the balance clip at 16 kHz

    def speech(self) -> list[Path]:
        return [self.balance, self.yes, self.digits, self.two_parts]


def synth(text: str, out: Path, rate: int = 8000) -> Path:
    raw = out.with_suffix(".espeak.wav")
    subprocess.run(["espeak-ng", "-v", "ko", "-w", str(raw), text], check=True, capture_output=True)
    subprocess.run(
        ["sox", str(raw), "-r", str(rate), "-c", "1", "-b", "16", "-e", "signed-integer", str(out)],
        check=True,
        capture_output=True,
    )
    raw.unlink()
    return out


def duration_s(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Clips:
    d = tmp_path_factory.mktemp("clips")
    balance = synth("잔액을 확인하고 싶어요", d / "balance.wav")
    yes = synth("네", d / "yes.wav")
    digits = synth("사 팔 이 일", d / "digits.wav")
    yes_right = synth("네 맞아요", d / "yes_right.wav")
    second = synth("대출 상환 날짜를 알려 주세요", d / "second.wav")
    first_s = duration_s(balance) + 2.0
    two_parts = d / "two_parts.wav"
    subprocess.run(["sox", str(balance), str(d / "padded.wav"), "pad", "0", "2.0"], check=True)
    subprocess.run(["sox", str(d / "padded.wav"), str(second), "-b", "16", str(two_parts)], check=True)
    silence = d / "silence.wav"
    with wave.open(str(silence), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\0\0" * 12000)
    extensible = d / "extensible.wav"
    write_extensible(digits, extensible)
    at_16k = synth("잔액을 확인하고 싶어요", d / "balance16k.wav", rate=16000)
    return Clips(balance, yes, digits, yes_right, two_parts, first_s, silence, extensible, at_16k)


def write_extensible(src: Path, dst: Path) -> None:
    with wave.open(str(src)) as w:
        rate, frames = w.getframerate(), w.readframes(w.getnframes())
    pcm_guid = bytes.fromhex("0100000000001000800000aa00389b71")
    fmt = struct.pack("<HHIIHHHHI", 0xFFFE, 1, rate, rate * 2, 2, 16, 22, 16, 4) + pcm_guid
    body = (
        b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", len(frames))
        + frames
    )
    dst.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


@pytest.fixture(scope="session")
def recognizer() -> VoskRecognizer:
    """The Korean model, loaded once for the whole test session (~2 s, ~530 MB), dither off."""
    rec = VoskRecognizer(Settings(asr_dither=False))
    with ThreadPoolExecutor(2) as pool:  # two first users at once still load it once
        list(pool.map(rec.load, ["ko-KR", "ko-KR"]))
    assert rec.loaded_locales() == ("ko-KR",)
    return rec


@pytest.fixture(scope="session")
def ko_grammars() -> dict[Expect, list[str]]:
    examples = {
        "affirm": ["네", "예 맞아", "네 맞아요"],  # 맞아요: not in the model, split and joined again
        "deny": ["아니요"],
        "check_balance": ["잔액 확인", "잔액을 알려주세요", "잔액이 얼마예요"],
        "request_human": ["상담원 연결"],
    }
    return build_grammars(examples, "ko-KR")


@pytest.mark.audio
def test_without_dither_the_same_audio_gives_the_same_result(
    recognizer: VoskRecognizer, clips: Clips, ko_grammars: dict[Expect, list[str]]
) -> None:
    # free recognition costs ~10x grammar decoding: one short clip is enough for it
    free = recognizer.transcribe(clips.digits, "ko-KR")
    assert free.words, "the model returned no words at all for speech"
    assert recognizer.transcribe(clips.digits, "ko-KR") == free
    for wav in clips.speech():
        first = recognizer.transcribe(wav, "ko-KR", ko_grammars[Expect.SPEECH])
        assert first.words, f"{wav.name}: the model returned no words at all for speech"
        assert recognizer.transcribe(wav, "ko-KR", ko_grammars[Expect.SPEECH]) == first


@pytest.mark.audio
def test_grammar_results_hold_only_grammar_words(
    recognizer: VoskRecognizer, clips: Clips, ko_grammars: dict[Expect, list[str]], ko_vocabulary: set[str]
) -> None:
    for expect, grammar in ko_grammars.items():
        allowed = {w for p in grammar for w in p.split()} - {"<UNK>"}
        # a grammar word the model lacks is decoded as its pieces: a lone piece may come out
        allowed |= {
            piece
            for w in allowed - ko_vocabulary
            for piece in split_in_vocabulary(w, ko_vocabulary.__contains__) or []
        }
        for wav in clips.speech():
            result = recognizer.transcribe(wav, "ko-KR", grammar)
            assert {w.word for w in result.words} <= allowed | {UNK_WORD}, (expect, wav.name, result)
            assert set(result.text.split()) <= allowed
            assert "<UNK>" not in result.text
            known = [w for w in result.words if w.word != UNK_WORD]
            assert result.text == " ".join(w.word for w in known)
            mean = sum(w.confidence for w in known) / len(result.words) if result.words else 0.0
            assert result.confidence == pytest.approx(mean, abs=1e-6)
            assert 0.0 <= result.confidence <= 1.0


@pytest.mark.audio
def test_split_grammar_words_come_back_whole(recognizer: VoskRecognizer, clips: Clips) -> None:
    grammar = ["네 맞아요", "아니요", "잔액이 얼마예요", "<UNK>"]
    compiled = recognizer._grammar("ko-KR", grammar)
    assert compiled is not None and set(compiled.joins.values()) == {"맞아요", "얼마예요"}
    for wav in [clips.yes_right, *clips.speech()]:
        words = [w.word for w in recognizer.transcribe(wav, "ko-KR", grammar).words]
        for pieces in compiled.joins:
            n = len(pieces)
            assert all(tuple(words[i : i + n]) != pieces for i in range(len(words))), (wav.name, words)


@pytest.mark.audio
def test_spoken_digits_under_the_digits_grammar(
    recognizer: VoskRecognizer, clips: Clips, ko_grammars: dict[Expect, list[str]]
) -> None:
    result = recognizer.transcribe(clips.digits, "ko-KR", ko_grammars[Expect.DIGITS])
    digit_words = [w.word for w in result.words if w.word in DIGIT_WORDS["ko-KR"]]
    assert digit_words, f"no digit word recognized under the digits grammar: {result}"
    digits = digits_from_words(result.text, "ko-KR")
    assert digits == "".join(DIGIT_WORDS["ko-KR"][w] for w in digit_words)
    assert digits.isdigit()


@pytest.mark.audio
def test_silence_gives_no_text_and_no_confidence(recognizer: VoskRecognizer, clips: Clips) -> None:
    for grammar in (None, ["네", "아니요"]):
        result = recognizer.transcribe(clips.silence, "ko-KR", grammar)
        assert result == Recognition(text="", confidence=0.0, words=())
        assert heard_nothing(result)


@pytest.mark.audio
def test_word_timings_fit_the_8khz_recording_and_both_parts_are_kept(
    recognizer: VoskRecognizer, clips: Clips
) -> None:
    result = recognizer.transcribe(
        clips.two_parts, "ko-KR", ["잔액 확인", "대출 상환", "날짜", "알려 주세요", "<UNK>"]
    )
    total = duration_s(clips.two_parts)
    for w in result.words:
        assert 0.0 <= w.start_s <= w.end_s <= total + 0.05
    # the pause ends the first utterance inside Vosk; the words after it are still in the result
    assert any(w.end_s <= clips.first_part_s - 2.0 + 0.1 for w in result.words)
    assert any(w.start_s >= clips.first_part_s - 0.3 for w in result.words)


@pytest.mark.audio
def test_other_pcm_layouts_and_rates_are_accepted(recognizer: VoskRecognizer, clips: Clips) -> None:
    grammar = [*DIGIT_WORDS["ko-KR"], "잔액 확인", "<UNK>"]
    assert recognizer.transcribe(clips.extensible, "ko-KR", grammar) == recognizer.transcribe(
        clips.digits, "ko-KR", grammar
    )
    result = recognizer.transcribe(clips.at_16k, "ko-KR", grammar)
    assert result.words and all(w.end_s <= duration_s(clips.at_16k) + 0.05 for w in result.words)


@pytest.fixture
def bad_files(tmp_path: Path, clips: Clips) -> Iterator[dict[str, Path]]:
    files = {
        "text": tmp_path / "notes.wav",
        "stereo": tmp_path / "stereo.wav",
        "8bit": tmp_path / "8bit.wav",
        "alaw": tmp_path / "alaw.wav",
        "missing": tmp_path / "missing.wav",
        "empty": tmp_path / "empty.wav",
    }
    files["text"].write_text("this is not audio", encoding="utf-8")
    files["empty"].write_bytes(b"")
    subprocess.run(["sox", str(clips.yes), "-c", "2", str(files["stereo"])], check=True)
    subprocess.run(
        ["sox", str(clips.yes), "-b", "8", "-e", "unsigned-integer", str(files["8bit"])], check=True
    )
    subprocess.run(["sox", str(clips.yes), "-e", "a-law", str(files["alaw"])], check=True)
    yield files


@pytest.mark.audio
@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("text", "not a WAV file"),
        ("empty", "not a WAV file"),
        ("missing", "no such audio file"),
        ("stereo", "expected a mono 16-bit PCM WAV at 8-48 kHz, got 2 channels"),
        ("8bit", "got 8-bit samples"),
        ("alaw", "format A-law"),
    ],
)
def test_unusable_files_raise_an_error_naming_the_file(
    recognizer: VoskRecognizer, bad_files: dict[str, Path], kind: str, message: str
) -> None:
    path = bad_files[kind]
    with pytest.raises(RecognizerError, match=message) as info:
        recognizer.transcribe(path, "ko-KR")
    assert str(info.value).startswith(f"{path}: ")


@pytest.mark.audio
def test_a_model_that_fails_to_load_raises_recognizer_errors(tmp_path: Path, clips: Clips) -> None:
    (tmp_path / "not-a-model").mkdir()
    rec = VoskRecognizer(
        Settings(asr_dither=False),
        model_dirs={"ko-KR": tmp_path / "not-a-model", "en-US": tmp_path / "nowhere"},
    )
    for _ in range(2):  # the failure is remembered, not retried at every call
        with pytest.raises(RecognizerError, match="not-a-model: the ko-KR speech model failed to load"):
            rec.transcribe(clips.yes, "ko-KR")
    with pytest.raises(RecognizerError, match="nowhere: the en-US speech model is not there"):
        rec.load("en-US")
    with pytest.raises(RecognizerError, match="no Vosk model is registered for locale 'xx-XX'"):
        rec.transcribe(clips.yes, "xx-XX")
    assert rec.loaded_locales() == ()


@pytest.mark.audio
def test_parallel_decoding_on_the_shared_model_matches_sequential(
    recognizer: VoskRecognizer, clips: Clips, ko_grammars: dict[Expect, list[str]]
) -> None:
    jobs: list[tuple[Path, list[str] | None]] = [
        (wav, g) for wav in clips.speech() for g in (ko_grammars[Expect.SPEECH], ko_grammars[Expect.YES_NO])
    ]
    jobs.append((clips.yes, None))
    sequential = [recognizer.transcribe(wav, "ko-KR", g) for wav, g in jobs]
    with ThreadPoolExecutor(2) as pool:
        parallel = list(pool.map(lambda job: recognizer.transcribe(job[0], "ko-KR", job[1]), jobs))
    assert parallel == sequential


@pytest.mark.audio
def test_a_reused_recognizer_hears_what_a_new_one_hears(
    recognizer: VoskRecognizer, clips: Clips, ko_grammars: dict[Expect, list[str]]
) -> None:
    """The robot's recognizer keeps grammar recognizers for later utterances (issue #16): the same words
    and confidences as a new recognizer every time, word times from the file's start (within the
    microseconds of Vosk's single-precision offset), one recognizer per grammar when decodes come one
    after another, none kept for free recognition."""
    reusing = VoskRecognizer(Settings(asr_dither=False), reuse=True)
    reusing._loaded = recognizer._loaded  # the session's loaded model (~530 MB), not a second copy
    jobs = [(wav, ko_grammars[e]) for e in (Expect.SPEECH, Expect.YES_NO) for wav in clips.speech()]
    for _ in range(3):
        for wav, grammar in jobs:
            new, reused = recognizer.transcribe(wav, "ko-KR", grammar), reusing.transcribe(wav, "ko-KR", grammar)
            assert (reused.text, reused.confidence) == (new.text, new.confidence), wav.name
            assert [(w.word, w.confidence) for w in reused.words] == [(w.word, w.confidence) for w in new.words]
            for r, n in zip(reused.words, new.words, strict=True):
                assert r.start_s == pytest.approx(n.start_s, abs=1e-4) and r.end_s == pytest.approx(n.end_s, abs=1e-4)
    assert sorted(len(idle) for idle in reusing._idle.values()) == [1, 1]  # one per grammar, reused 15 times
    reusing.transcribe(clips.yes, "ko-KR")
    assert len(reusing._idle) == 2  # free recognition: a new recognizer each time (its graph is large)


@pytest.mark.audio
def test_the_quiet_line_around_a_recording_s_speech_is_not_decoded(
    recognizer: VoskRecognizer, clips: Clips, ko_grammars: dict[Expect, list[str]], tmp_path: Path
) -> None:
    """A recording holds a pause before the caller speaks and the second Asterisk waits after the last
    word (issue #16): only the speech, with stream mode's lead and trailing silence, goes through Vosk.
    So the words no longer depend on how long the caller waited or the recorder listened (the Korean
    model hears other words after a long lead, as without trimming below), their times count from the
    file's start, and a recording with no loud frame at all is silence without a decode."""
    grammar = ko_grammars[Expect.SPEECH]
    short, long = tmp_path / "short.wav", tmp_path / "long.wav"
    subprocess.run(["sox", str(clips.balance), str(short), "pad", "0.3", "0.5"], check=True)
    subprocess.run(["sox", str(clips.balance), str(long), "pad", "2.0", "1.5"], check=True)
    whole = VoskRecognizer(Settings(asr_dither=False, asr_trim_silence=False), reuse=True)
    trimmed = VoskRecognizer(Settings(asr_dither=False), reuse=True)
    whole._loaded = trimmed._loaded = recognizer._loaded  # the session's loaded model, not another copy
    after_short, after_long = trimmed.transcribe(short, "ko-KR", grammar), trimmed.transcribe(long, "ko-KR", grammar)
    assert after_short.words and [(w.word, w.confidence) for w in after_long.words] == [
        (w.word, w.confidence) for w in after_short.words
    ]
    for s, lg in zip(after_short.words, after_long.words, strict=True):
        assert lg.start_s == pytest.approx(s.start_s + 1.7, abs=1e-3) and lg.end_s == pytest.approx(s.end_s + 1.7, abs=1e-3)
    untrimmed = whole.transcribe(short, "ko-KR", grammar), whole.transcribe(long, "ko-KR", grammar)
    assert untrimmed[0].words != untrimmed[1].words, "this model hears the same words after any lead: pick another clip"

    [(kept,)] = trimmed._idle.values()
    speech_s = duration_s(clips.balance) + (LEAD_MS + Settings().endpoint_silence_ms) / 1000
    assert kept.fed_samples <= 2 * speech_s * 8000 < (duration_s(short) + duration_s(long)) * 8000
    [(kept_whole,)] = whole._idle.values()
    assert kept_whole.fed_samples == (duration_s(short) + duration_s(long)) * 8000

    quiet = tmp_path / "quiet.wav"
    shutil.copy(clips.silence, quiet)
    pad_with_line_noise(quiet, 1.0, 1.0, seed=2)
    fresh = VoskRecognizer(Settings(asr_dither=False), reuse=True)
    fresh._loaded = recognizer._loaded
    assert heard_nothing(fresh.transcribe(quiet, "ko-KR", grammar))
    assert not fresh._idle  # no recognizer was even made


class SpyRecognizers:
    """Stands in for ``vosk.KaldiRecognizer`` (real ones inside): notes, for every chunk fed, whether the
    recording had already ended."""

    def __init__(self, real: Any, ended: threading.Event) -> None:
        self.real, self.ended = real, ended
        self.made = 0
        self.fed_after_end: list[bool] = []

    def __call__(self, *args: Any) -> Any:
        self.made += 1
        spy, rec = self, self.real(*args)

        class Spy:
            def AcceptWaveform(self, data: bytes) -> bool:
                spy.fed_after_end.append(spy.ended.is_set())
                return bool(rec.AcceptWaveform(data))

            def __getattr__(self, name: str) -> Any:
                return getattr(rec, name)

        return Spy()


def record_like_asterisk(
    target: Path, pcm: bytes, ended: threading.Event, spy: SpyRecognizers, *, keep_bytes: int | None = None
) -> None:
    """Asterisk's RECORD FILE, fast: the header with the sizes unset, the audio in 4 KB writes, then (once
    the recognizer has had time to read it) the sizes, and the command returns. ``keep_bytes``: the file is
    cut back to that much audio first, as Asterisk cuts the silence it waited for when s > 1."""
    time.sleep(0.2)  # the file appears a little after the recording starts
    with open(target, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", 0) + b"WAVE" + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 16000, 2, 16))
        f.write(b"data" + struct.pack("<I", 0))
        for i in range(0, len(pcm), 4096):
            f.write(pcm[i : i + 4096])
            f.flush()
            time.sleep(0.005)
        deadline, seen = time.monotonic() + 30, -1
        while seen != len(spy.fed_after_end) and time.monotonic() < deadline:  # until it stops decoding
            seen = len(spy.fed_after_end)
            time.sleep(0.5)
        size = len(pcm) if keep_bytes is None else keep_bytes
        f.truncate(44 + size)
        f.seek(4)
        f.write(struct.pack("<I", 36 + size))
        f.seek(40)
        f.write(struct.pack("<I", size))
    ended.set()


def test_a_recording_is_decoded_while_asterisk_writes_it(
    recognizer: VoskRecognizer, clips: Clips, ko_grammars: dict[Expect, list[str]], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Record mode (issue #16): the recognizer reads the recording as Asterisk writes it, so when the
    caller's turn ends only the last chunk is left to decode; the same samples in the same chunks as the
    finished file's, so the very same result (words, confidences, times)."""
    import vosk

    finished = tmp_path / "finished.wav"
    subprocess.run(["sox", str(clips.two_parts), str(finished), "pad", "0.5", "1.0"], check=True)
    grammar = ko_grammars[Expect.SPEECH]
    expected = recognizer.transcribe(finished, "ko-KR", grammar)
    assert expected.words
    with wave.open(str(finished)) as w:
        pcm = w.readframes(w.getnframes())
    ended = threading.Event()
    spy = SpyRecognizers(vosk.KaldiRecognizer, ended)
    monkeypatch.setattr(vosk, "KaldiRecognizer", spy)
    growing = VoskRecognizer(Settings(asr_dither=False))
    growing._loaded = recognizer._loaded
    target = tmp_path / "growing.wav"
    writer = threading.Thread(target=record_like_asterisk, args=(target, pcm, ended, spy))
    writer.start()
    result = growing.transcribe_while_recorded(target, "ko-KR", grammar, ended)
    writer.join()
    assert result == expected
    assert spy.made == 1 and len(spy.fed_after_end) >= 6
    # the last chunks hold the trailing silence, kept back until the recording says it is the end
    assert spy.fed_after_end.count(True) <= 2, spy.fed_after_end


def test_a_recording_asterisk_cuts_back_is_decoded_as_it_was_kept(
    recognizer: VoskRecognizer, clips: Clips, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vosk

    speech = tmp_path / "speech.wav"
    subprocess.run(["sox", str(clips.balance), str(speech), "pad", "0", "3.0"], check=True)
    with wave.open(str(speech)) as w:
        pcm = w.readframes(w.getnframes())
    kept = len(pcm) - 2 * 16000  # the last 2 s cut back
    ended = threading.Event()
    spy = SpyRecognizers(vosk.KaldiRecognizer, ended)
    monkeypatch.setattr(vosk, "KaldiRecognizer", spy)
    untrimmed = VoskRecognizer(Settings(asr_dither=False, asr_trim_silence=False))
    untrimmed._loaded = recognizer._loaded
    target = tmp_path / "growing.wav"
    writer = threading.Thread(target=record_like_asterisk, args=(target, pcm, ended, spy), kwargs={"keep_bytes": kept})
    writer.start()
    result = untrimmed.transcribe_while_recorded(target, "ko-KR", None, ended)
    writer.join()
    assert spy.made == 2  # the audio read while it grew was longer than the file kept: decoded again
    assert result == untrimmed.transcribe(target, "ko-KR", None)


def test_a_recording_that_never_appears_is_a_recognizer_error(recognizer: VoskRecognizer, tmp_path: Path) -> None:
    ended = threading.Event()
    threading.Timer(0.3, ended.set).start()
    with pytest.raises(RecognizerError, match="no such audio file"):
        recognizer.transcribe_while_recorded(tmp_path / "never.wav", "ko-KR", ["네"], ended)


def speech_span(pcm: bytes, rate: int, *, lead_ms: int, trail_ms: int) -> tuple[int, int]:
    """The samples of a finished recording that ``SpeechFeed`` decodes, as ``(first, last)`` indexes;
    ``(0, 0)`` when no frame is loud."""
    feed = SpeechFeed(rate, lead_ms=lead_ms, trail_ms=trail_ms)
    decoded = sum(len(c) for c in [*feed.add(pcm), *feed.finish()]) // 2
    return (feed.first, feed.first + decoded) if decoded else (0, 0)


def test_speech_span_keeps_the_lead_and_the_trail_around_the_loud_frames() -> None:
    quiet, loud = b"\0\0" * 160, struct.pack("<h", 3000) * 160  # 20 ms frames at 8 kHz
    pcm = quiet * 50 + loud * 10 + quiet * 5 + loud * 3 + quiet * 100
    assert speech_span(pcm, 8000, lead_ms=140, trail_ms=440) == ((50 - 7) * 160, (68 + 22) * 160)
    assert speech_span(loud * 2 + quiet, 8000, lead_ms=140, trail_ms=440) == (0, 3 * 160)  # clipped to the file
    assert speech_span(quiet * 20, 8000, lead_ms=140, trail_ms=440) == (0, 0)
    assert speech_span(struct.pack("<h", 255) * 8000, 8000, lead_ms=0, trail_ms=0) == (0, 0)  # below Asterisk's threshold


def test_model_word_lookup_agrees_with_the_vocabulary(
    recognizer: VoskRecognizer, ko_vocabulary: set[str]
) -> None:
    for word in ("네", "아니요", "<UNK>", "[unk]", "맞아요", "[일]"):
        assert recognizer.has_word("ko-KR", word) == (word in ko_vocabulary)


@pytest.mark.audio
def test_transcribe_command_prints_what_the_recognizer_returned(
    recognizer: VoskRecognizer, clips: Clips
) -> None:
    out, err = io.StringIO(), io.StringIO()
    missing = clips.yes.with_name("nope.wav")
    status = commands.transcribe_files(
        recognizer, [clips.yes, missing, clips.digits], "ko-KR", ["네", "사"], as_json=True, out=out, err=err
    )
    assert status == 1
    assert f"{missing}: no such audio file" in err.getvalue()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["file"] for line in lines] == [str(clips.yes), str(clips.digits)]
    for line, wav in zip(lines, [clips.yes, clips.digits], strict=True):
        expected = recognizer.transcribe(wav, "ko-KR", ["네", "사"])
        assert line["text"] == expected.text and line["confidence"] == expected.confidence
        assert [(w["word"], w["confidence"], w["start_s"], w["end_s"]) for w in line["words"]] == [
            (w.word, w.confidence, w.start_s, w.end_s) for w in expected.words
        ]
    out = io.StringIO()
    assert commands.transcribe_files(recognizer, [clips.silence], "ko-KR", None, out=out) == 0
    assert "(nothing recognized)" in out.getvalue()


@pytest.mark.audio
def test_eval_scores_the_real_output_against_references(
    recognizer: VoskRecognizer, clips: Clips, tmp_path: Path
) -> None:
    d = tmp_path / "eval"
    d.mkdir()
    for name, wav, ref in [
        ("a", clips.balance, "잔액을 확인하고 싶어요"),
        ("b", clips.yes, "네"),
        ("c", clips.digits, "사 팔 이 일"),
    ]:
        shutil.copy(wav, d / f"{name}.wav")
        (d / f"{name}.txt").write_text(ref + "\n", encoding="utf-8")
    (d / "broken.wav").write_text("not audio", encoding="utf-8")
    (d / "broken.txt").write_text("네 네", encoding="utf-8")
    shutil.copy(clips.yes, d / "unreferenced.wav")

    grammar = ["잔액을 확인하고 싶어요", "네", *DIGIT_WORDS["ko-KR"], "<UNK>"]
    report = evaluate_dir(d, recognizer, "ko-KR", grammar)
    assert [f.wav.name for f in report.files] == ["a.wav", "b.wav", "broken.wav", "c.wav"]
    assert [p.name for p in report.unreferenced] == ["unreferenced.wav"]
    for f in report.files:
        if f.wav.name == "broken.wav":
            assert "not a WAV file" in f.error and f.errors == f.ref_units == 2 and not f.sentence_ok
            continue
        hyp = recognizer.transcribe(f.wav, "ko-KR", grammar).text
        assert f.hypothesis == hyp
        assert f.errors == edit_distance(tokens(f.reference, "ko-KR"), tokens(hyp, "ko-KR"))
        assert f.sentence_ok == (tokens(f.reference, "ko-KR") == tokens(hyp, "ko-KR"))
    assert report.ref_units == 3 + 1 + 2 + 4
    assert report.error_rate == pytest.approx(report.errors / report.ref_units)
    assert report.sentence_error_rate == sum(not f.sentence_ok for f in report.files) / 4

    out = io.StringIO()
    commands.print_report(report, out=out)
    assert f"WER {100 * report.error_rate:.1f}%" in out.getvalue()
    assert "without a .txt reference: unreferenced.wav" in out.getvalue()
