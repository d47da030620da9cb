"""The language menu (IVR_LANGUAGE_MENU) on the real robot: a call that names no language hears each
language's choice in its own voice and picks one by key; a call that names one is not asked."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ivr.config import Settings
from ivr.dialogue.prompts import PromptBook
from ivr.testing.callfile import CallFile, Expectation, Turn
from ivr.testing.harness import ScriptedAsterisk
from ivr.testing.replay import running_robot


async def test_a_caller_picks_korean_by_key_and_is_served_in_korean(demo_settings: Settings) -> None:
    settings = dataclasses.replace(demo_settings, language_menu=True, locale="zh-CN")
    prompts = PromptBook(settings.dialogs_dir)
    generic_number = CallFile(Path("menu.yaml"), "01012345678", "ko-KR",
                              (Turn("dtmf", "3"), Turn("say", "잔액 알려 주세요"), Turn("dtmf", "6193#"),
                               Turn("say", "안녕히 계세요")),
                              Expectation(), agi_params={"lang": None})
    named = CallFile(Path("named.yaml"), "15550000002", "en-US", (Turn("say", "goodbye"),), Expectation())
    async with running_robot(settings, text_input=True) as (host, port, _):
        report = await ScriptedAsterisk(generic_number, locale="ko-KR", text_mode=True).run(host, port)
        direct = await ScriptedAsterisk(named, locale="en-US", text_mode=True).run(host, port)
    said = [e["text"] for e in report.events if e["who"] == "robot"]
    choices = [prompts.text("utter_language_choice", loc) for loc in ("zh-CN", "en-US", "ko-KR")]
    assert said[:4] == [*choices, prompts.text("utter_greet", "ko-KR")]
    assert "1,234,000 KRW" in report.robot_text and report.outcome == "completed"
    assert not any(c in direct.robot_text for c in choices)  # ?lang=en-US: no menu
    assert direct.events[0]["text"] == prompts.text("utter_greet", "en-US")


async def test_no_key_at_the_language_menu_keeps_the_default_language(demo_settings: Settings) -> None:
    settings = dataclasses.replace(demo_settings, language_menu=True, locale="en-US", keypad_wait_s=1)
    prompts = PromptBook(settings.dialogs_dir)
    call = CallFile(Path("menu.yaml"), "15550000002", "en-US", (Turn("silence", 1), Turn("say", "goodbye")),
                    Expectation(), agi_params={"lang": None})
    async with running_robot(settings, text_input=True) as (host, port, _):
        report = await ScriptedAsterisk(call, locale="en-US", text_mode=True).run(host, port)
    assert prompts.text("utter_greet", "en-US") in report.robot_text
    assert report.outcome == "completed"
