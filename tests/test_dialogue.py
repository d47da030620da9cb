"""The dialogue engine on the real trained models, real custom actions and a real SQLite account store.

Calls are replayed turn by turn through ``RasaEngine`` (the same object the call session drives) in
each locale: verification by caller ID or by keyed phone number, real answers from the store, wrong
digits that never disclose, three failures → transfer, a person at any point, store failures, the
lockout, and one conversation per call that is forgotten when the call closes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from ivr.accounts.api import AccountStore, VerifyStatus
from ivr.accounts.store import SqlAccountStore
from ivr.config import LOCALES, PROJECT_ROOT, Settings, load_settings
from ivr.dialogue.engine import RasaEngine, build_reply, message_text
from ivr.dialogue.prompts import PromptBook
from ivr.dialogue.train import train_locales
from ivr.parts import (
    AccountStoreError,
    CallInfo,
    DialogueEngine,
    DialogueError,
    Expect,
    Outcome,
    Reply,
    UserInput,
)

DEMO = PROJECT_ROOT / "ivr" / "accounts" / "demo.yaml"
TODAY = dt.datetime(2026, 11, 28, 12, 0)  # the store's clock: days overdue are stable


# ---------------------------------------------------------------- what callers say, per locale
@dataclasses.dataclass(frozen=True)
class Caller:
    phone: str  # registered caller ID
    phone_said: str  # the phone number as the recognizer writes it
    digits: str  # the right ID digits, keyed
    digits_said: str  # ... and spoken
    wrong_said: str
    balance: str  # the balance as the robot says it
    ask_balance: str
    ask_repayment: str
    ask_loan: str
    ask_transactions: str
    human: str
    repeat: str
    go_back: str
    no_more: str
    yes: str
    thanks: str
    out_of_scope: str
    transactions: tuple[str, ...]  # what the first transaction line holds


CALLERS: dict[str, Caller] = {
    "zh-CN": Caller("13800000001", "幺 三 八 零 零 零 零 零 零 零 幺", "4821", "四 八 二 一", "一 二 三 四",
                    "1,234.56 CNY", "我想查一下余额", "下次还款是什么时候", "我的贷款状态", "最近的交易记录",
                    "转人工", "再说一遍", "返回", "没有了", "好的", "谢谢", "今天天气怎么样",
                    ("2026-11-20", "-300.00 CNY", "还款")),
    "en-US": Caller("15550000002", "one five five five zero zero zero zero zero zero two", "7305",
                    "seven three zero five", "one two three four", "2,500.75 USD", "what's my account balance",
                    "when is my next payment due", "what is my loan status", "recent transactions please",
                    "i want to talk to a person", "can you repeat that", "go back", "no thanks", "yes",
                    "thank you very much", "what's the weather like today",
                    ("2026-11-21", "-45.20 USD", "Grocery store")),
    "ko-KR": Caller("01012345678", "공 일 공 일 이 삼 사 오 육 칠 팔", "6193", "육 일 구 삼", "일 이 삼 사",
                    "1,234,000 KRW", "잔액 알려 주세요", "다음 상환일이 언제예요", "대출 상태 조회", "최근 거래 내역",
                    "상담원 연결해 주세요", "다시 말씀해 주세요", "처음으로", "아니요 없습니다", "네", "감사합니다",
                    "오늘 날씨 어때요", ("2026-11-19", "-52,000 KRW", "마트")),
}


# ---------------------------------------------------------------- a store the tests can break
class SwitchableStore:
    """The real store, with switches: fail every call, or block until released (to test timeouts)."""

    def __init__(self, target: AccountStore) -> None:
        self.target = target
        self.fail = False
        self.block: threading.Event | None = None
        self.entered = threading.Event()

    def _gate(self) -> None:
        self.entered.set()
        if self.fail:
            raise AccountStoreError("account store: test failure")
        if self.block is not None:
            self.block.wait()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.target, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._gate()
            return attr(*args, **kwargs)

        return call


# ---------------------------------------------------------------- fixtures
def base_settings(**changes: Any) -> Settings:
    # Generous limits on a loaded 2-core machine; the timeout tests set their own.
    values: dict[str, Any] = {"dialogue_timeout_s": 60.0, "lookup_timeout_s": 10.0, **changes}
    return dataclasses.replace(load_settings(environ={}), **values)


@pytest.fixture(scope="session")
def trained_models() -> Path:
    """Train what is missing or changed (skipped when the data is unchanged)."""
    settings = load_settings(environ={})
    train_locales(settings.dialogs_dir, settings.models_dir)
    return settings.models_dir


def make_store(path: Path, **kwargs: Any) -> SqlAccountStore:
    store = SqlAccountStore(f"sqlite:///{path}", clock=lambda: TODAY, **kwargs)
    store.init_schema()
    store.import_file(DEMO)
    return store


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dialogue") / "accounts.db"


@pytest.fixture(scope="module")
def store(db_path: Path) -> Iterator[SwitchableStore]:
    # Many calls share this database: keep the cross-call lockout and the limit on keyed phone numbers
    # out of the way (they have their own tests).
    real = make_store(db_path, lockout_failures=10_000, phone_lookup_limit=10_000, phone_lookup_limit_withheld=10_000)
    yield SwitchableStore(real)
    real.close()


@pytest.fixture(scope="module")
def engine(trained_models: Path, store: SwitchableStore) -> Iterator[RasaEngine]:
    eng = RasaEngine(base_settings(), store)
    asyncio.run(eng.warm_up())
    yield eng
    asyncio.run(eng.aclose())


@pytest.fixture
def overdue_days() -> str:
    """Days the en-US demo loan (due 2026-11-16) is overdue on the clock of the store the actions use."""
    return str((TODAY.date() - dt.date(2026, 11, 16)).days)


@pytest.fixture(autouse=True)
def healthy_store(store: SwitchableStore) -> Iterator[None]:
    store.fail = False
    store.block = None
    yield
    if store.block is not None:
        store.block.set()
    store.fail = False
    store.block = None


_counter = iter(range(1_000_000))


def new_call(locale: str, caller_id: str) -> CallInfo:
    return CallInfo(f"test-{locale}-{next(_counter)}", caller_id, locale)


async def say(engine: DialogueEngine, call: CallInfo, words: str, *, keypad: bool = False) -> Reply:
    return await engine.handle(call, UserInput(words, keypad=keypad))


def prompt(name: str, locale: str, **values: str) -> str:
    return PromptBook(PROJECT_ROOT / "dialogs").text(name, locale, **values)


def disclosures(db: Path, call_id: str) -> list[str]:
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT what FROM disclosures WHERE call_id = :c ORDER BY id"), {"c": call_id})
        found = [str(r[0]) for r in rows]
    engine.dispose()
    return found


def attempts(db: Path, call_id: str) -> list[str]:
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT result FROM verification_attempts WHERE call_id = :c ORDER BY id"),
                            {"c": call_id})
        found = [str(r[0]) for r in rows]
    engine.dispose()
    return found


def assert_asks_digits(reply: Reply, max_digits: int) -> None:
    assert reply.expect is Expect.DIGITS
    assert reply.secret is True
    assert reply.max_digits == max_digits
    assert reply.outcome is None


# ---------------------------------------------------------------- calls in every locale
@pytest.mark.parametrize("locale", LOCALES)
async def test_known_caller_verifies_and_hears_the_real_balance(engine: RasaEngine, db_path: Path, locale: str) -> None:
    c = CALLERS[locale]
    call = new_call(locale, c.phone)
    greeting = await engine.start(call)
    assert greeting.texts == (prompt("utter_greet", locale),)
    assert greeting.expect is Expect.SPEECH and greeting.outcome is None

    ask = await say(engine, call, c.ask_balance)
    assert ask.intent == "ask_balance"
    assert ask.texts == (prompt("utter_ask_id_last4", locale),)  # caller ID known: straight to the ID digits
    assert_asks_digits(ask, 4)
    assert disclosures(db_path, call.call_id) == []

    answer = await say(engine, call, c.digits_said)
    assert answer.intent == "inform_digits"
    assert answer.texts == (
        prompt("utter_verified", locale),
        prompt("utter_balance", locale, balance=c.balance),
        prompt("utter_anything_else", locale),
    )
    assert answer.expect is Expect.SPEECH and not answer.secret and answer.outcome is None
    assert disclosures(db_path, call.call_id) == ["balance"]
    assert attempts(db_path, call.call_id) == ["ok"]

    bye = await say(engine, call, c.no_more)
    assert bye.texts == (prompt("utter_goodbye", locale),)
    assert bye.outcome is Outcome.COMPLETED
    await engine.close(call)


@pytest.mark.parametrize("locale", LOCALES)
async def test_verified_caller_is_not_asked_again_in_the_same_call(
    engine: RasaEngine, db_path: Path, locale: str, overdue_days: str
) -> None:
    c = CALLERS[locale]
    call = new_call(locale, c.phone)
    await engine.start(call)
    assert_asks_digits(await say(engine, call, c.ask_repayment), 4)
    repayment = await say(engine, call, c.digits, keypad=True)
    assert repayment.confidence == 1.0 and repayment.intent == "inform_digits"
    loan = await say(engine, call, c.ask_loan)
    transactions = await say(engine, call, c.ask_transactions)
    assert loan.intent == "ask_loan_status" and transactions.intent == "ask_transactions"
    assert prompt("utter_ask_id_last4", locale) not in loan.texts + transactions.texts
    assert attempts(db_path, call.call_id) == ["ok"]  # one verification for the whole call
    assert disclosures(db_path, call.call_id) == ["next_repayment", "loan_status", "transactions"]

    if locale == "zh-CN":  # active loan
        assert repayment.texts[1] == prompt("utter_next_repayment", locale, date="2026-12-15", amount="1,500.00 CNY")
        assert loan.texts[0] == prompt("utter_loan_active", locale, outstanding="20,000.00 CNY")
    elif locale == "en-US":  # overdue since 2026-11-16, counted on the store's clock
        assert repayment.texts[1] == prompt("utter_repayment_overdue", locale, amount="450.00 USD",
                                            date="2026-11-16", days=overdue_days)
        assert loan.texts[0] == prompt("utter_loan_overdue", locale, days=overdue_days, outstanding="8,000.00 USD")
    else:  # closed loan, nothing due
        assert repayment.texts[1] == prompt("utter_no_repayment", locale)
        assert loan.texts[0] == prompt("utter_loan_closed", locale)
    assert transactions.texts[0] == prompt("utter_transactions_intro", locale, count="3")
    date, amount, description = c.transactions
    assert transactions.texts[1] == prompt("utter_transaction", locale, date=date, amount=amount,
                                           description=description)
    assert len(transactions.texts) == 5  # intro, three transactions, anything else

    # A new call always verifies again, even from the same number.
    again = new_call(locale, c.phone)
    await engine.start(again)
    assert_asks_digits(await say(engine, again, c.ask_balance), 4)
    await engine.close(call)
    await engine.close(again)


@pytest.mark.parametrize("locale", LOCALES)
async def test_wrong_digits_never_disclose_and_three_failures_transfer(
    engine: RasaEngine, db_path: Path, locale: str
) -> None:
    c = CALLERS[locale]
    call = new_call(locale, c.phone)
    await engine.start(call)
    await say(engine, call, c.ask_balance)
    first = await say(engine, call, c.wrong_said)
    # Not "wrong ID digits": the caller may be calling from a number that is not theirs (see
    # test_an_unregistered_number_is_answered_like_a_registered_one), so the registered number again.
    assert first.texts == (prompt("utter_wrong_digits", locale), prompt("utter_ask_phone", locale))
    assert_asks_digits(first, 15)
    assert_asks_digits(await say(engine, call, c.phone, keypad=True), 4)
    second = await say(engine, call, "0000", keypad=True)
    assert_asks_digits(second, 15)
    assert_asks_digits(await say(engine, call, c.phone, keypad=True), 4)
    third = await say(engine, call, "9999", keypad=True)
    assert third.outcome is Outcome.TRANSFER
    assert third.transfer_reason == "verification_failed"
    assert third.texts == (prompt("utter_verify_failed", locale), prompt("utter_transfer", locale))
    for reply in (first, second, third):
        assert not any(c.balance in t for t in reply.texts)
    assert disclosures(db_path, call.call_id) == []
    assert attempts(db_path, call.call_id) == ["wrong", "wrong", "wrong"]
    await engine.close(call)


@pytest.mark.parametrize("locale", LOCALES)
async def test_a_person_at_any_point(engine: RasaEngine, locale: str) -> None:
    c = CALLERS[locale]
    for steps in ([], [c.ask_balance], [c.ask_balance, c.digits]):
        call = new_call(locale, c.phone)
        await engine.start(call)
        for step in steps:
            await say(engine, call, step, keypad=step.isdigit())
        reply = await say(engine, call, c.human)
        assert reply.intent == "human"
        assert reply.outcome is Outcome.TRANSFER and reply.transfer_reason == "caller_request"
        assert reply.texts == (prompt("utter_transfer", locale),)
        await engine.close(call)


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("caller_id", ["", "19999999999"], ids=["withheld", "unknown"])
async def test_withheld_or_unknown_number_keys_the_registered_phone(
    engine: RasaEngine, db_path: Path, locale: str, caller_id: str
) -> None:
    c = CALLERS[locale]
    call = new_call(locale, caller_id)
    await engine.start(call)
    ask = await say(engine, call, c.ask_transactions)
    if caller_id:
        # An unregistered caller ID is asked exactly what a registered one is; the check then fails.
        assert ask.texts == (prompt("utter_ask_id_last4", locale),)
        assert_asks_digits(ask, 4)
        ask = await say(engine, call, c.digits, keypad=True)
        assert ask.texts == (prompt("utter_wrong_digits", locale), prompt("utter_ask_phone", locale))
    else:
        assert ask.texts == (prompt("utter_ask_phone", locale),)
    assert_asks_digits(ask, 15)
    id_prompt = await say(engine, call, c.phone, keypad=True)
    assert id_prompt.texts == (prompt("utter_ask_id_last4", locale),)
    assert_asks_digits(id_prompt, 4)
    answer = await say(engine, call, c.digits_said)
    assert answer.texts[0] == prompt("utter_verified", locale)
    assert answer.texts[1] == prompt("utter_transactions_intro", locale, count="3")
    assert disclosures(db_path, call.call_id) == ["transactions"]
    await engine.close(call)


async def test_spoken_phone_number_is_taken_like_a_keyed_one(engine: RasaEngine) -> None:
    c = CALLERS["zh-CN"]
    call = new_call("zh-CN", "")
    await engine.start(call)
    await say(engine, call, c.ask_balance)
    spoken = await say(engine, call, c.phone_said)  # said, not keyed
    assert spoken.texts == (prompt("utter_ask_id_last4", "zh-CN"),)
    verified = await say(engine, call, c.digits, keypad=True)
    assert verified.texts[:2] == (prompt("utter_verified", "zh-CN"), prompt("utter_balance", "zh-CN", balance=c.balance))
    await engine.close(call)


def _seen(reply: Reply) -> tuple[Any, ...]:
    """Everything a caller can observe of a reply."""
    return (reply.texts, reply.expect, reply.secret, reply.max_digits, reply.outcome, reply.transfer_reason)


@pytest.mark.parametrize("locale", LOCALES)
async def test_an_unregistered_number_is_answered_like_a_registered_one(
    engine: RasaEngine, db_path: Path, locale: str
) -> None:
    """A stranger cannot tell which numbers are customers': keyed or as caller ID, a registered number
    with wrong ID digits and a number nobody has get the same replies, turn by turn, up to the transfer."""
    c = CALLERS[locale]
    unregistered = "12345678901"

    async def keyed(number: str, digits: str) -> list[tuple[Any, ...]]:
        call = new_call(locale, "")
        await engine.start(call)
        seen = [_seen(await say(engine, call, c.ask_balance))]
        for _ in range(3):
            seen.append(_seen(await say(engine, call, number, keypad=True)))
            seen.append(_seen(await say(engine, call, digits, keypad=True)))
        assert disclosures(db_path, call.call_id) == []
        assert attempts(db_path, call.call_id) == ["wrong", "wrong", "wrong"]  # the stand-in is checked too
        await engine.close(call)
        return seen

    async def by_caller_id(number: str, digits: str) -> list[tuple[Any, ...]]:
        call = new_call(locale, number)
        await engine.start(call)
        seen = [_seen(await say(engine, call, c.ask_balance)), _seen(await say(engine, call, digits, keypad=True))]
        await engine.close(call)
        return seen

    registered = await keyed(c.phone, "0000")
    assert registered == await keyed(unregistered, "0000") == await keyed(unregistered, c.digits)
    assert registered[1][0] == (prompt("utter_ask_id_last4", locale),)  # the same request either way
    assert registered[2][0] == (prompt("utter_wrong_digits", locale), prompt("utter_ask_phone", locale))
    assert registered[-1][4:] == (Outcome.TRANSFER, "verification_failed")
    assert await by_caller_id(c.phone, "0000") == await by_caller_id(unregistered, "0000")


async def test_keyed_phone_numbers_are_limited_per_caller_id(trained_models: Path, tmp_path: Path) -> None:
    """Past ``phone_lookup_limit`` keyed numbers per hour, a caller ID is put through to a person, in
    this call and the next ones (the count is in the database), registered number or not."""
    real = make_store(tmp_path / "limits.db", phone_lookup_limit=2)
    c = CALLERS["en-US"]
    eng = RasaEngine(base_settings(), real, locales=["en-US"])
    prober = "13912345678"
    try:
        await eng.warm_up()
        call = new_call("en-US", prober)
        await eng.start(call)
        await say(eng, call, c.ask_balance)
        for number in ("12345678901", "12345678902"):  # two look-ups: each "wrong", the number never named
            assert_asks_digits(await say(eng, call, "0000", keypad=True), 15)
            assert_asks_digits(await say(eng, call, number, keypad=True), 4)
        await eng.close(call)

        for number in (c.phone, "12345678903"):  # the next call: a registered number or not, refused alike
            call = new_call("en-US", prober)
            await eng.start(call)
            assert_asks_digits(await say(eng, call, c.ask_balance), 4)  # its own caller ID: not counted
            assert_asks_digits(await say(eng, call, "0000", keypad=True), 15)
            limited = await say(eng, call, number, keypad=True)
            assert limited.outcome is Outcome.TRANSFER and limited.transfer_reason == "phone_lookup_limit"
            assert limited.texts == (prompt("utter_transfer", "en-US"),)
            await eng.close(call)

        # Another caller ID has its own budget.
        call = new_call("en-US", "13987654321")
        await eng.start(call)
        await say(eng, call, c.ask_balance)
        await say(eng, call, "0000", keypad=True)
        assert_asks_digits(await say(eng, call, c.phone, keypad=True), 4)
        answer = await say(eng, call, c.digits, keypad=True)
        assert prompt("utter_balance", "en-US", balance=c.balance) in answer.texts
        await eng.close(call)
    finally:
        await eng.aclose()
        real.close()


@pytest.mark.parametrize("locale", LOCALES)
async def test_repeat_go_back_and_out_of_scope(engine: RasaEngine, locale: str) -> None:
    c = CALLERS[locale]
    call = new_call(locale, c.phone)
    await engine.start(call)
    ask = await say(engine, call, c.ask_balance)
    again = await say(engine, call, c.repeat)
    assert again.intent == "repeat"
    assert again.texts == ask.texts
    assert_asks_digits(again, 4)  # still waiting for the digits
    back = await say(engine, call, c.go_back)
    assert back.texts == (prompt("utter_go_back", locale),)
    assert back.expect is Expect.SPEECH
    off = await say(engine, call, c.out_of_scope)
    assert off.intent == "out_of_scope"  # the session counts it as "not understood"
    assert off.texts == (prompt("utter_out_of_scope", locale),)
    # verification resumes where it was: the caller ID is looked up again, the failures are kept
    assert_asks_digits(await say(engine, call, c.ask_balance), 4)
    answer = await say(engine, call, c.digits, keypad=True)
    assert prompt("utter_balance", locale, balance=c.balance) in answer.texts
    assert (await say(engine, call, c.repeat)).texts == answer.texts  # the whole previous turn, word for word
    more = await say(engine, call, c.yes)
    assert more.texts == (prompt("utter_how_can_i_help", locale),)
    bye = await say(engine, call, c.thanks)
    assert bye.outcome is Outcome.COMPLETED and bye.texts == (prompt("utter_goodbye", locale),)
    await engine.close(call)


NOISE = {"en-US": ["xq zzv blorp", "asdf", "um"], "zh-CN": ["那个那个", "呃", "哈哈哈"], "ko-KR": ["음", "흠", "그러니까 그게"]}


@pytest.mark.parametrize("locale", LOCALES)
async def test_noise_and_fillers_are_not_understood(engine: RasaEngine, locale: str) -> None:
    call = new_call(locale, CALLERS[locale].phone)
    await engine.start(call)
    for words in NOISE[locale]:
        reply = await say(engine, call, words)
        assert reply.intent in ("nlu_fallback", "out_of_scope")  # the session counts both as not understood
        expected = "utter_not_understood" if reply.intent == "nlu_fallback" else "utter_out_of_scope"
        assert reply.texts == (prompt(expected, locale),)
        assert reply.outcome is None
        # ... and never as a yes or a no (the session confirms low-confidence speech with classify())
        assert (await engine.classify(words, locale))[0] not in ("affirm", "deny")


async def test_speech_cannot_use_rasa_intent_syntax(engine: RasaEngine) -> None:
    c = CALLERS["en-US"]
    call = new_call("en-US", c.phone)
    await engine.start(call)
    await say(engine, call, c.ask_balance)
    assert message_text(UserInput('/inform_digits{"digits":"7305"}')) == 'inform_digits{"digits":"7305"}'
    reply = await say(engine, call, '/inform_digits{"digits":"7305"}')
    assert not reply.verified
    assert not any(c.balance in t for t in reply.texts)
    assert message_text(UserInput("73#05*", keypad=True)) == '/inform_digits{"digits":"7305"}'


# ---------------------------------------------------------------- conversations and memory
async def test_closed_calls_are_forgotten(engine: RasaEngine) -> None:
    before = engine.conversations("en-US")
    calls = [new_call("en-US", CALLERS["en-US"].phone) for _ in range(5)]
    for call in calls:
        await engine.start(call)
        await say(engine, call, CALLERS["en-US"].ask_balance)
    assert engine.conversations("en-US") == before + 5
    for call in calls:
        await engine.close(call)
    assert engine.conversations("en-US") == before


async def test_a_conversation_is_kept_as_its_json_would_rebuild_it(engine: RasaEngine) -> None:
    """The engine keeps each conversation's tracker object (``ivr.dialogue.lean.ObjectTrackerStore``,
    issue #16) instead of Rasa's JSON copy: what the next turn starts from is exactly what Rasa's own
    in-memory store would rebuild from that JSON (events, slots, the states the policies read)."""
    from rasa.core.tracker_store import InMemoryTrackerStore
    from rasa.shared.core.trackers import EventVerbosity

    from ivr.dialogue.engine import _memory_store

    c = CALLERS["en-US"]
    call = new_call("en-US", c.phone)
    await engine.start(call)
    await say(engine, call, c.ask_balance)
    await say(engine, call, c.digits, keypad=True)
    runner = engine._agents["en-US"]
    kept = await runner.agent.tracker_store.retrieve(call.call_id)
    json_store = InMemoryTrackerStore(runner.agent.domain)
    await json_store.save(kept)
    rebuilt = await json_store.retrieve(call.call_id)
    assert rebuilt is not None and kept is _memory_store(runner).store[call.call_id]
    # as JSON: the kept parse data holds its token spans as tuples, the JSON copy as lists
    as_json = [json.loads(json.dumps(t.current_state(EventVerbosity.ALL))) for t in (kept, rebuilt)]
    assert as_json[0] == as_json[1] and len(as_json[0]["events"]) > 10
    assert kept.current_slot_values() == rebuilt.current_slot_values() and kept.get_slot("verified") is True
    domain = runner.agent.domain
    assert kept.past_states(domain) == rebuilt.past_states(domain)
    reply = await say(engine, call, c.ask_loan)  # the next turn goes on from the kept state: no new check
    assert reply.verified and prompt("utter_ask_id_last4", "en-US") not in reply.texts
    await engine.close(call)


def test_action_answers_are_checked_as_rasa_checks_them() -> None:
    """Rasa validates every custom action's answer against its JSON schema; the engine's cached check
    (``ivr.dialogue.lean``, issue #16) accepts and refuses exactly what ``jsonschema.validate`` does."""
    import jsonschema
    from rasa.core.actions.action import RemoteAction

    from ivr.dialogue.lean import cache_action_response_validation

    cache_action_response_validation()
    schema = RemoteAction.action_response_format_spec()
    check = RemoteAction("action_x", None)._validate_action_result
    answers: list[Any] = [
        {"events": [{"event": "slot", "name": "verified", "value": True}], "responses": [{"response": "utter_x"}]},
        {"events": [], "responses": []},
        {},
        {"events": [{"event": "slot", "name": "awaiting", "value": None, "timestamp": None}]},
        {"events": "not a list"},
        {"events": [{"event": "no_such_event"}]},
        {"events": [{"event": "slot", "value": 1}]},  # a slot event without a name
        {"responses": ["not an object"]},
        [],
    ]
    refused = 0
    for answer in answers:
        try:
            jsonschema.validate(answer, schema)
        except jsonschema.ValidationError:
            refused += 1
            with pytest.raises(jsonschema.ValidationError, match="Failed to validate Action server response"):
                check(answer)
        else:
            assert check(answer) is True
    assert 3 <= refused < len(answers)


async def test_classify(engine: RasaEngine) -> None:
    assert (await engine.classify("yes", "en-US"))[0] == "affirm"
    assert (await engine.classify("不是", "zh-CN"))[0] == "deny"
    intent, confidence = await engine.classify("네", "ko-KR")
    assert intent == "affirm" and 0.0 < confidence <= 1.0


async def test_unknown_locale_is_a_dialogue_error(engine: RasaEngine) -> None:
    with pytest.raises(DialogueError):
        await engine.start(CallInfo("x", "", "fr-FR"))


@pytest.mark.parametrize(("locale", "said", "digits"), [
    ("zh-CN", "四 八 二 一", "4821"),
    ("zh-CN", "幺三八 零零零零 零零零幺", "13800000001"),
    ("en-US", "seven three oh five", "7305"),
    ("en-US", "double five 0 1", "5501"),
    ("ko-KR", "육 일 구 삼", "6193"),
    ("ko-KR", "공일공 일이삼사", "0101234"),
])
def test_spoken_digits_go_as_digits_while_digits_are_awaited(locale: str, said: str, digits: str) -> None:
    expected = '/inform_digits{"digits":"' + digits + '"}'
    assert message_text(UserInput(said), digits_expected=True, locale=locale) == expected
    assert message_text(UserInput(said), digits_expected=False, locale=locale) == said  # otherwise: the NLU


@pytest.mark.parametrize(("locale", "said"), [
    ("zh-CN", "转人工"), ("zh-CN", "四 八 [unk] 一"), ("en-US", "my id ends in four eight two one"),
    ("en-US", "i want a person"), ("ko-KR", "상담원 연결해 주세요"), ("ko-KR", ""),
])
def test_other_speech_goes_to_the_nlu_even_while_digits_are_awaited(locale: str, said: str) -> None:
    assert message_text(UserInput(said), digits_expected=True, locale=locale) == said


async def test_missing_model_is_a_dialogue_error_until_it_is_trained(tmp_path: Path, trained_models: Path) -> None:
    from ivr.dialogue.train import model_path

    eng = RasaEngine(base_settings(), make_store(tmp_path / "a.db"), locales=["en-US"], models_dir=tmp_path)
    try:
        with pytest.raises(DialogueError, match="no trained dialogue model"):
            await eng.warm_up()
        with pytest.raises(DialogueError, match="ivr train --locale en-US"):
            await eng.start(new_call("en-US", ""))
        target = model_path(tmp_path, "en-US")
        target.parent.mkdir(parents=True)
        target.write_bytes(b"not a model")
        with pytest.raises(DialogueError, match="cannot load the model"):
            await eng.start(new_call("en-US", ""))
        target.write_bytes(model_path(trained_models, "en-US").read_bytes())  # now it is trained
        reply = await eng.start(new_call("en-US", ""))
        assert reply.texts == (prompt("utter_greet", "en-US"),)
    finally:
        await eng.aclose()


@pytest.mark.parametrize(("amount", "currency", "said"), [
    ("1234.56", "CNY", "1,234.56 CNY"), ("-300", "CNY", "-300.00 CNY"), ("2500.75", "USD", "2,500.75 USD"),
    ("1234000", "KRW", "1,234,000 KRW"), ("-52000.00", "KRW", "-52,000 KRW"), ("0", "USD", "0.00 USD"),
])
def test_money_is_said_per_the_number_conventions(amount: str, currency: str, said: str) -> None:
    from decimal import Decimal

    from ivr.dialogue.actions import format_money

    assert format_money(Decimal(amount), currency) == said


def action_call(action: str, slots: dict[str, Any], intent: str, text: str, caller_id: str = "") -> dict[str, Any]:
    """What Rasa posts to an action server (the parts our actions read)."""
    metadata = {"call_id": "direct", "caller_id": caller_id, "locale": "en-US"}
    return {
        "next_action": action,
        "sender_id": "direct",
        "tracker": {
            "sender_id": "direct",
            "slots": slots,
            "latest_message": {"intent": {"name": intent, "confidence": 1.0}, "entities": [], "text": text},
            "events": [{"event": "user", "text": text, "metadata": metadata}],
            "paused": False, "followup_action": None, "active_loop": {}, "latest_action_name": "action_listen",
        },
    }


@pytest.mark.parametrize("slots", [
    {"verified": False, "customer_id": "C002"},  # a candidate from the caller ID is not a verified caller
    {"verified": True, "customer_id": None},
    {"verified": "true", "customer_id": "C002"},  # only the boolean True counts
])
async def test_answering_actions_check_verification_themselves(store: SwitchableStore, slots: dict[str, Any]) -> None:
    from ivr.dialogue.actions import build_executor
    from ivr.pools import PartPool

    executor = build_executor(store, base_settings(), PartPool("lookup", 4))
    for action, intent in (("action_answer_or_verify", "ask_balance"), ("action_verify_digits", "inform_digits")):
        result = await executor.run(action_call(action, {**slots, "requested_info": "balance"}, intent, "7305"))
        assert result is not None
        said = [m.get("response") for m in result["responses"]]
        assert not {"utter_balance", "utter_balance_account"} & set(said), (action, said)


def test_reply_from_slots() -> None:
    reply = build_reply(["a"], {"awaiting": "phone"}, "ask_balance", 0.9)
    assert (reply.expect, reply.secret, reply.max_digits) == (Expect.DIGITS, True, 15)
    reply = build_reply(["a"], {"call_outcome": "transfer", "transfer_reason": "locked"}, "inform_digits", 1.0)
    assert (reply.outcome, reply.transfer_reason) == (Outcome.TRANSFER, "locked")
    with pytest.raises(DialogueError):
        build_reply([], {}, "greet", 1.0)  # silence is never an answer


# ---------------------------------------------------------------- the store misbehaving
async def test_store_failure_apologises_and_transfers(engine: RasaEngine, store: SwitchableStore, db_path: Path) -> None:
    c = CALLERS["zh-CN"]
    call = new_call("zh-CN", c.phone)
    await engine.start(call)
    await say(engine, call, c.ask_balance)
    store.fail = True
    reply = await say(engine, call, c.digits, keypad=True)
    assert reply.texts == (prompt("utter_apology", "zh-CN"),)
    assert reply.outcome is Outcome.TRANSFER and reply.transfer_reason == "lookup_failed"
    assert disclosures(db_path, call.call_id) == []


async def test_failing_disclosure_record_means_no_disclosure(engine: RasaEngine, store: SwitchableStore) -> None:
    c = CALLERS["en-US"]
    call = new_call("en-US", c.phone)
    await engine.start(call)
    await say(engine, call, c.ask_balance)
    await say(engine, call, c.digits, keypad=True)

    real_record = store.target.record_disclosure

    def broken(*args: Any, **kwargs: Any) -> None:
        raise AccountStoreError("account store: recording a disclosure failed")

    store.target.record_disclosure = broken  # type: ignore[method-assign]
    try:
        reply = await say(engine, call, c.ask_loan)
    finally:
        store.target.record_disclosure = real_record  # type: ignore[method-assign]
    assert reply.texts == (prompt("utter_apology", "en-US"),)
    assert reply.transfer_reason == "lookup_failed"


async def test_lookup_timeout_and_dialogue_timeout(trained_models: Path, store: SwitchableStore) -> None:
    c = CALLERS["en-US"]
    # A store that does not answer: the action gives up after lookup_timeout_s and apologises.
    slow_lookup = RasaEngine(base_settings(lookup_timeout_s=0.2), store, locales=["en-US"])
    # ... and a dialogue that does not answer: the engine gives up after dialogue_timeout_s.
    slow_dialogue = RasaEngine(base_settings(dialogue_timeout_s=0.5), store, locales=["en-US"])
    try:
        await slow_lookup.warm_up()
        await slow_dialogue.warm_up()
        store.block = threading.Event()

        call = new_call("en-US", c.phone)
        await slow_lookup.start(call)
        reply = await slow_lookup.handle(call, UserInput(c.ask_balance))
        assert reply.outcome is Outcome.TRANSFER and reply.transfer_reason == "lookup_failed"
        assert reply.texts == (prompt("utter_apology", "en-US"),)

        call = new_call("en-US", c.phone)
        await slow_dialogue.start(call)
        with pytest.raises(DialogueError):
            await slow_dialogue.handle(call, UserInput(c.ask_balance))
    finally:
        if store.block is not None:
            store.block.set()
        await slow_lookup.aclose()
        await slow_dialogue.aclose()


async def test_the_agent_does_not_block_the_event_loop(engine: RasaEngine, store: SwitchableStore) -> None:
    c = CALLERS["ko-KR"]
    call = new_call("ko-KR", c.phone)
    await engine.start(call)
    store.entered.clear()
    store.block = threading.Event()
    turn = asyncio.create_task(engine.handle(call, UserInput(c.ask_balance)))
    # The turn is stuck inside a custom action; this loop still runs.
    await asyncio.to_thread(store.entered.wait)
    assert not turn.done()
    store.block.set()
    reply = await turn
    assert reply.texts == (prompt("utter_ask_id_last4", "ko-KR"),)


async def test_locked_customer_is_transferred_without_a_reason(trained_models: Path, tmp_path: Path) -> None:
    real = make_store(tmp_path / "locking.db", lockout_failures=2)
    c = CALLERS["en-US"]
    eng = RasaEngine(base_settings(), real, locales=["en-US"])
    try:
        await eng.warm_up()
        # Earlier calls got the digits wrong twice; now even the right digits are refused.
        for _ in range(2):
            assert real.verify_id_last4("C002", "0000", call_id="earlier", caller_id="") is VerifyStatus.WRONG
        call = new_call("en-US", c.phone)
        await eng.start(call)
        await eng.handle(call, UserInput(c.ask_balance))
        reply = await eng.handle(call, UserInput(c.digits, keypad=True))
        assert reply.outcome is Outcome.TRANSFER and reply.transfer_reason == "locked"
        assert reply.texts == (prompt("utter_transfer", "en-US"),)
        assert attempts(tmp_path / "locking.db", call.call_id) == ["locked"]
    finally:
        await eng.aclose()
        real.close()


async def test_responses_marked_not_interruptible_reach_the_reply() -> None:
    """``metadata: {interruptible: false}`` on a response in domain.yml: Rasa hands the metadata to the
    output channel with the text, and the reply lists that text as one the caller must hear in full."""
    from ivr.dialogue.engine import _prompt_output, build_reply

    output = _prompt_output()
    await output.send_response("call", {"text": "Calls are recorded.", "metadata": {"interruptible": False},
                                        "utter_action": "utter_notice"})
    await output.send_response("call", {"text": "Hello.", "metadata": {"interruptible": True}})
    await output.send_response("call", {"text": "Anything else?", "utter_action": "utter_more"})
    assert [m["text"] for m in output.messages] == ["Calls are recorded.", "Hello.", "Anything else?"]
    reply = build_reply([m["text"] for m in output.messages], {}, "greet", 1.0, output.must_hear)
    assert reply.must_hear == ("Calls are recorded.",)
