"""No call goes unanswered: each part fails in turn, on the real robot, and the caller is still served.

Every test places a call through the replay harness (a scripted Asterisk over TCP) against a robot
built from the real parts, with one part wrapped so that it fails the way the test names. The call
must be answered, hear an apology where something failed, and end transferred (or served), never
in silence. The wrappers are the only stand-ins here, and each injects exactly one fault.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ivr.accounts.store import SqlAccountStore
from ivr.config import Settings
from ivr.parts import CallInfo, DialogueError, Recognition, RecognizerError, SynthesisError, UserInput
from ivr.testing.callfile import CallFile, Expectation, Turn
from ivr.testing.harness import CallReport, ScriptedAsterisk
from ivr.testing.replay import running_robot
from ivr.testing.textinput import SidecarTextRecognizer

APOLOGY_ZH = "抱歉"  # every zh-CN apology prompt starts with an apology word; checked below


def balance_call(*extra: Turn, caller_id: str = "13800000001") -> CallFile:
    turns = (Turn("say", "我想查一下余额"), Turn("dtmf", "4821#"), *extra, Turn("say", "再见"))
    return CallFile(Path("fault.yaml"), caller_id, "zh-CN", turns, Expectation())


async def place(settings: Settings, call: CallFile, **parts: Any) -> tuple[CallReport, Any]:
    async with running_robot(settings, text_input=True, **parts) as (host, port, robot):
        report = await ScriptedAsterisk(call, locale="zh-CN", text_mode=True).run(host, port)
        return report, robot


def apology(settings: Settings) -> str:
    from ivr.dialogue.prompts import PromptBook

    return PromptBook(settings.dialogs_dir).text("utter_apology", "zh-CN")


def assert_apologised_and_transferred(report: CallReport, settings: Settings, reason: str) -> None:
    assert report.answered
    assert report.outcome == "transfer", report.to_json()
    assert report.transfer_reason == reason
    assert report.events[-1]["who"] == "robot"
    assert report.events[-1]["text"] == apology(settings)
    assert "1,234.56" not in report.robot_text


# ---------------------------------------------------------------- fault wrappers around real parts
class FailingDialogue:
    """The real engine, except that ``handle`` raises (or hangs) from the given turn on."""

    def __init__(self, real: Any, *, hang: bool = False) -> None:
        self.real = real
        self.hang = hang

    async def start(self, call: CallInfo) -> Any:
        return await self.real.start(call)

    async def handle(self, call: CallInfo, user: UserInput) -> Any:
        if self.hang:
            await asyncio.Event().wait()  # never answers
        raise DialogueError("injected: the dialogue engine raised")

    async def classify(self, text: str, locale: str) -> tuple[str, float]:
        return await self.real.classify(text, locale)

    async def close(self, call: CallInfo | None = None) -> None:
        await self.real.close(call)

    async def warm_up(self) -> None:
        await self.real.warm_up(["zh-CN"])


class FailingRecognizer:
    def transcribe(self, wav: Path, locale: str, grammar: Sequence[str] | None = None) -> Recognition:
        raise RecognizerError("injected: the recognizer raised")


class DynamicSynthesisFails:
    """The real synthesizer, except that any text with a digit in it fails to render."""

    def __init__(self, real: Any) -> None:
        self.real = real

    async def render(self, text: str, locale: str) -> Path:
        if any(ch.isdigit() for ch in text):
            raise SynthesisError("injected: synthesis failed")
        return await self.real.render(text, locale)

    def fallback(self, key: str, locale: str) -> Path | None:
        return self.real.fallback(key, locale)

    def close(self) -> None:
        self.real.close()


def engine(settings: Settings) -> Any:
    from ivr.dialogue.engine import RasaEngine

    return RasaEngine(settings, SqlAccountStore.from_settings(settings), locales=["zh-CN"])


# ---------------------------------------------------------------- the dialogue engine
async def test_dialogue_raises(demo_settings: Settings) -> None:
    report, _ = await place(demo_settings, balance_call(), dialogue=FailingDialogue(engine(demo_settings)))
    assert_apologised_and_transferred(report, demo_settings, "dialogue_failed")


async def test_dialogue_hangs_past_its_timeout(demo_settings: Settings) -> None:
    settings = dataclasses.replace(demo_settings, dialogue_timeout_s=0.5)
    report, _ = await place(settings, balance_call(), dialogue=FailingDialogue(engine(settings), hang=True))
    assert_apologised_and_transferred(report, settings, "dialogue_failed")


async def test_remote_dialogue_server_down(demo_settings: Settings, unused_tcp_port: int) -> None:
    settings = dataclasses.replace(demo_settings, dialogue_url=f"http://127.0.0.1:{unused_tcp_port}", dialogue_token="t")
    report, _ = await place(settings, balance_call())
    assert report.answered
    assert report.outcome == "transfer"
    assert report.transfer_reason == "dialogue_failed"
    assert report.events[-1]["text"] == apology(settings)


# ---------------------------------------------------------------- the account database
async def test_database_unreachable_from_the_start(demo_settings: Settings, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the database's folder should be")
    settings = dataclasses.replace(demo_settings, database_url=f"sqlite:///{blocker}/accounts.db")
    async with running_robot(settings, text_input=True) as (host, port, robot):
        report = await ScriptedAsterisk(balance_call(), locale="zh-CN", text_mode=True).run(host, port)
        from ivr.metrics import HealthServer

        ok, parts = await HealthServer(robot.parts.metrics, {"database": robot.store.healthy}).health()
    assert not ok and parts["database"] == "down"
    assert report.answered
    assert report.outcome == "transfer"
    assert "1,234.56" not in report.robot_text
    assert apology(settings) in report.robot_text or report.transfer_reason == "lookup_failed"


async def test_database_locked_during_the_lookup(demo_settings: Settings) -> None:
    path = demo_settings.database_url.removeprefix("sqlite:///")
    settings = dataclasses.replace(demo_settings, lookup_timeout_s=1.0)
    holder = sqlite3.connect(path, timeout=0.1)
    holder.execute("BEGIN EXCLUSIVE")  # nobody else may read or write until we let go
    try:
        report, _ = await place(settings, balance_call())
    finally:
        holder.rollback()
        holder.close()
    assert report.answered
    assert report.outcome == "transfer"
    assert "1,234.56" not in report.robot_text


HUNG_CALLS = 8  # more than the default thread pool's 6 workers on this 2-core machine


class HangingStore:
    """The real store; balance look-ups for one customer block until released (a hung database session)."""

    def __init__(self, real: SqlAccountStore, customer_id: str) -> None:
        self.real = real
        self.customer_id = customer_id
        self.hung = threading.Semaphore(0)  # released once per look-up that hangs
        self.release = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def accounts(self, customer_id: str) -> Any:
        if customer_id == self.customer_id:
            self.hung.release()
            self.release.wait(120)
        return self.real.accounts(customer_id)


def zh_balance_call(caller_id: str, digits: str, first: str = "我想查一下余额") -> CallFile:
    """A zh-CN balance call: every call below is in the same locale, so on the same Rasa agent."""
    turns = (Turn("say", first), Turn("dtmf", f"{digits}#"), Turn("say", "再见"))
    return CallFile(Path("same-locale.yaml"), caller_id, "zh-CN", turns, Expectation())


async def wait_for_hung(semaphore: threading.Semaphore, count: int) -> None:
    for _ in range(count):
        assert await asyncio.to_thread(semaphore.acquire, True, 60), "a hung call never reached its hang"


async def test_hung_lookups_do_not_stall_other_calls_in_the_same_locale(demo_settings: Settings) -> None:
    """Eight calls of C001 hang in their balance look-up; C002 and C003, calling in the same locale
    (the same agent, its loop and its look-up threads), complete while all eight are still hung."""
    from ivr.dialogue.engine import RasaEngine

    settings = dataclasses.replace(demo_settings, lookup_timeout_s=90.0, dialogue_timeout_s=100.0)
    store = HangingStore(SqlAccountStore.from_settings(settings), "C001")
    dialogue = RasaEngine(settings, store, locales=["zh-CN"])  # type: ignore[arg-type]
    async with running_robot(settings, text_input=True, dialogue=dialogue, store=store) as (host, port, _):
        hung = [
            asyncio.create_task(ScriptedAsterisk(zh_balance_call("13800000001", "4821"), locale="zh-CN",
                                                 text_mode=True).run(host, port))
            for _ in range(HUNG_CALLS)
        ]
        await wait_for_hung(store.hung, HUNG_CALLS)
        others = [zh_balance_call("15550000002", "7305"), zh_balance_call("01012345678", "6193")]
        reports = await asyncio.wait_for(asyncio.gather(
            *(ScriptedAsterisk(c, locale="zh-CN", text_mode=True).run(host, port) for c in others)), 60)
        assert not any(t.done() for t in hung)  # still hung while the others were served
        store.release.set()
        hung_reports = await asyncio.gather(*hung)
    assert [r.outcome for r in reports] == ["completed", "completed"], [r.to_json() for r in reports]
    assert "2,500.75 USD" in reports[0].robot_text
    assert "1,234,000 KRW" in reports[1].robot_text
    assert all(r.answered and "1,234.56 CNY" in r.robot_text for r in hung_reports)


class HangingRecognizer(SidecarTextRecognizer):
    """Text input; a caller who says HANG_WORD hangs the decoder (a stuck recognizer thread)."""

    HANG_WORD = "卡住"

    def __init__(self) -> None:
        self.hung = threading.Semaphore(0)
        self.release = threading.Event()

    def transcribe(self, wav: Path, locale: str, grammar: Sequence[str] | None = None) -> Recognition:
        result = super().transcribe(wav, locale, grammar)
        if result.text == self.HANG_WORD:
            self.hung.release()
            self.release.wait(120)
        return result


async def test_hung_decodes_do_not_stall_other_calls(demo_settings: Settings) -> None:
    """Eight calls hang in speech recognition (past their own timeout: the threads stay stuck); two more
    calls in the same locale are recognized and served meanwhile."""
    settings = dataclasses.replace(demo_settings, asr_timeout_s=1.0)
    recognizer = HangingRecognizer()
    async with running_robot(settings, text_input=True, recognizer=recognizer) as (host, port, _):
        hung_call = CallFile(Path("hung.yaml"), "13800000001", "zh-CN",
                             (Turn("say", HangingRecognizer.HANG_WORD), Turn("dtmf", "1"), Turn("dtmf", "4821#")),
                             Expectation())
        hung = [
            asyncio.create_task(ScriptedAsterisk(hung_call, locale="zh-CN", text_mode=True).run(host, port))
            for _ in range(HUNG_CALLS)
        ]
        await wait_for_hung(recognizer.hung, HUNG_CALLS)
        hung_reports = await asyncio.gather(*hung)  # each timed out: the keypad menu served them
        others = [zh_balance_call("15550000002", "7305"), zh_balance_call("01012345678", "6193")]
        reports = await asyncio.wait_for(asyncio.gather(
            *(ScriptedAsterisk(c, locale="zh-CN", text_mode=True).run(host, port) for c in others)), 60)
        recognizer.release.set()
    assert all("1,234.56 CNY" in r.robot_text for r in hung_reports), hung_reports[0].to_json()
    assert [r.outcome for r in reports] == ["completed", "completed"], [r.to_json() for r in reports]
    assert "2,500.75 USD" in reports[0].robot_text


# ---------------------------------------------------------------- speech
def keypad_call() -> CallFile:
    """The caller asks by voice; when speech fails, the menu is read and they go on by keys."""
    turns = (Turn("say", "我想查一下余额"), Turn("dtmf", "1"), Turn("dtmf", "4821#"), Turn("dtmf", "0"))
    return CallFile(Path("keypad.yaml"), "13800000001", "zh-CN", turns, Expectation())


def assert_served_by_keypad(report: CallReport, settings: Settings) -> None:
    """Speech failed, yet the caller was served: the menu, verification by keys, the balance; then "0"
    for a person, which is the caller's request, not a failure."""
    from ivr.dialogue.prompts import PromptBook

    assert report.answered
    assert PromptBook(settings.dialogs_dir).text("utter_keypad_menu", "zh-CN") in report.robot_text
    assert "1,234.56 CNY" in report.robot_text, report.to_json()
    assert apology(settings) not in report.robot_text
    assert (report.outcome, report.transfer_reason) == ("transfer", "caller_request")


async def test_recognizer_raises(demo_settings: Settings) -> None:
    report, _ = await place(demo_settings, keypad_call(), recognizer=FailingRecognizer())
    assert_served_by_keypad(report, demo_settings)


async def test_recognizer_model_failed_to_load(demo_settings: Settings, tmp_path: Path) -> None:
    """zh-CN has no Vosk model on this machine: zh-CN calls are served by the keypad menu."""
    from ivr.asr.recognizer import VoskRecognizer

    settings = dataclasses.replace(demo_settings, models_dir=tmp_path / "no-models")
    recognizer = VoskRecognizer(settings)
    report, _ = await place(demo_settings, keypad_call(), recognizer=recognizer)
    assert_served_by_keypad(report, demo_settings)


async def test_synthesis_fails_for_a_dynamic_prompt(demo_settings: Settings) -> None:
    from ivr.tts.synth import PromptSynthesizer

    real = PromptSynthesizer(demo_settings)
    report, _ = await place(demo_settings, balance_call(), synthesizer=DynamicSynthesisFails(real))
    assert report.answered
    assert report.outcome == "transfer"
    assert report.transfer_reason == "tts_failed"
    assert report.events[-1]["text"] == apology(demo_settings)
    assert "1,234.56" not in report.robot_text


async def test_no_prompt_at_all_leaves_the_apology_to_the_dialplan(demo_settings: Settings) -> None:
    """Even the apology cannot be synthesized and none was pre-rendered: IVR_RESULT=error, so the
    dialplan plays its own apology and transfers (asterisk_conf/extensions.conf)."""

    class NothingRenders(DynamicSynthesisFails):
        async def render(self, text: str, locale: str) -> Path:
            raise SynthesisError("injected: the TTS engine is gone")

        def fallback(self, key: str, locale: str) -> Path | None:
            return None

    from ivr.tts.synth import PromptSynthesizer

    report, _ = await place(demo_settings, balance_call(), synthesizer=NothingRenders(PromptSynthesizer(demo_settings)))
    assert report.answered
    assert report.variables["IVR_RESULT"] == "error"
    assert report.outcome == "error"


# ---------------------------------------------------------------- the recording spool
async def test_unwritable_spool(demo_settings: Settings, tmp_path: Path) -> None:
    spool = tmp_path / "spool-is-a-file"
    spool.write_text("the disk is full, or the spool folder is gone")
    settings = dataclasses.replace(demo_settings, spool_dir=spool)
    report, _ = await place(settings, keypad_call(), recognizer=SidecarTextRecognizer())
    assert_served_by_keypad(report, settings)
