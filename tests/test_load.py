"""Load: 100 simultaneous calls on the real robot (text turns), none lost, memory flat, spool clean.

The robot runs in its own thread with its own event loop (as a separate server would); the callers
are the replay harness over loopback TCP.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
from pathlib import Path

import pytest

from ivr.config import Settings
from ivr.testing.bench import rss_mb
from ivr.testing.callfile import CallFile, Expectation, Turn
from ivr.testing.harness import CallReport, ScriptedAsterisk
from ivr.testing.replay import RobotInThread
from tests.conftest import make_demo_db

SCRIPTS = {
    "zh-CN": ("13800000001", (Turn("say", "查余额"), Turn("dtmf", "4821#"), Turn("say", "再见")), "1,234.56 CNY"),
    "en-US": ("15550000002", (Turn("say", "my balance"), Turn("dtmf", "7305#"), Turn("say", "goodbye")), "2,500.75 USD"),
    "ko-KR": ("01012345678", (Turn("say", "잔액 알려 주세요"), Turn("dtmf", "6193#"), Turn("say", "안녕히 계세요")), "1,234,000 KRW"),
}


def calls(n: int) -> list[tuple[CallFile, str]]:
    out = []
    for i in range(n):
        locale = list(SCRIPTS)[i % 3]
        caller, turns, answer = SCRIPTS[locale]
        out.append((CallFile(Path(f"load-{i}.yaml"), caller, locale, turns, Expectation()), answer))
    return out


async def run_batch(port: int, batch: list[tuple[CallFile, str]]) -> list[CallReport]:
    peers = [ScriptedAsterisk(c, locale=c.locale or "", text_mode=True, timeout_s=300) for c, _ in batch]
    return await asyncio.gather(*(p.run("127.0.0.1", port) for p in peers))


@pytest.fixture(scope="module")
def load_settings_(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("load")
    return dataclasses.replace(
        base_settings,
        database_url=make_demo_db(root / "accounts.db"),
        spool_dir=root / "spool",
        lockout_failures=10_000,
        dialogue_timeout_s=60.0,  # 100 calls queue on one agent per locale: slow, but never lost
        lookup_timeout_s=30.0,
        tts_timeout_s=30.0,
    )


@pytest.mark.slow
def test_100_simultaneous_calls_all_served_memory_flat_spool_clean(load_settings_: Settings) -> None:
    robot = RobotInThread(load_settings_, text_input=True).start()
    try:
        batch = calls(100)
        first = asyncio.run(run_batch(robot.port, batch))
        gc.collect()
        after_first = rss_mb()
        second = asyncio.run(run_batch(robot.port, batch))
        gc.collect()
        after_second = rss_mb()
        assert robot.robot is not None
        dialogue = robot.robot.parts.dialogue
        held = {loc: dialogue.conversations(loc) for loc in SCRIPTS}  # type: ignore[attr-defined]
        metrics = robot.robot.parts.metrics
        answered = metrics.calls_answered._value.get()
    finally:
        robot.stop()
    for reports in (first, second):
        assert all(r.answered for r in reports)
        assert [r.outcome for r in reports] == ["completed"] * 100, [r.to_json() for r in reports if r.outcome != "completed"][:2]
        for (_, answer), report in zip(batch, reports, strict=True):
            assert answer in report.robot_text
    assert answered == 200
    # No growth per call: a second hundred calls leaves the process where the first left it.
    assert after_second - after_first < 40, (after_first, after_second)
    assert held == {"zh-CN": 0, "en-US": 0, "ko-KR": 0}  # every conversation forgotten at hang-up
    assert list(load_settings_.spool_dir.iterdir()) == []  # no recording left behind


def test_calls_beyond_the_admission_limit_hear_hold_and_are_counted(load_settings_: Settings) -> None:
    settings = dataclasses.replace(load_settings_, max_calls=5)
    robot = RobotInThread(settings, text_input=True).start()
    try:
        reports = asyncio.run(run_batch(robot.port, calls(30)))
        assert robot.robot is not None
        over = robot.robot.parts.metrics.calls_over_capacity._value.get()
    finally:
        robot.stop()
    assert all(r.answered for r in reports)
    held = [r for r in reports if r.transfer_reason == "capacity"]
    served = [r for r in reports if r.outcome == "completed"]
    assert len(held) == over > 0
    assert len(held) + len(served) == 30
    hold_texts = {r.events[0]["text"] for r in held}
    assert all(text for text in hold_texts)  # each one heard the hold prompt, not silence
    assert all(r.outcome == "transfer" for r in held)
