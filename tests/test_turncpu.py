"""The accounting of ``python -m ivr.testing.turncpu`` (its figures are in the README, not asserted here):
a stage entered inside another pauses it, so a turn's stages never count the same CPU twice, and the
session's share is what the probes did not measure."""

from __future__ import annotations

import asyncio
import time

from ivr.testing.turncpu import StageClock, summarise


def burn(cpu_s: float) -> None:
    end = time.thread_time() + cpu_s
    while time.thread_time() < end:
        pass


def test_an_inner_stage_pauses_the_outer_one() -> None:
    clock = StageClock()
    with clock.stage("outer"):
        burn(0.01)
        with clock.stage("inner"):
            burn(0.06)
        burn(0.01)
    totals = clock.take()
    assert totals["inner"] >= 0.06
    assert 0.02 <= totals["outer"] < 0.05  # its own 0.02 s, not the inner 0.06 s
    assert clock.take() == {}


def test_wrapped_methods_are_timed_on_this_object_only() -> None:
    class Part:
        def work(self) -> str:
            burn(0.02)
            return "done"

        async def awork(self) -> str:
            burn(0.02)
            await asyncio.sleep(0)
            return "adone"

    clock = StageClock()
    timed, untouched = Part(), Part()
    clock.wrap(timed, "work", "sync")
    clock.wrap(timed, "awork", "async")
    assert timed.work() == "done" and asyncio.run(timed.awork()) == "adone"
    assert untouched.work() == "done"
    totals = clock.take()
    assert set(totals) == {"sync", "async"} and totals["sync"] < 0.04 and totals["async"] >= 0.02


def test_the_session_share_is_what_the_stages_left() -> None:
    turns = [
        {"kind": "greeting", "intent": "greet", "cpu_s": 0.02, "stages": {"rasa_nlu": 0.01}},
        {"kind": "turn", "intent": "ask_balance", "cpu_s": 0.10, "stages": {"asr": 0.06, "rasa_nlu": 0.01}},
        {"kind": "turn", "intent": "goodbye", "cpu_s": 0.05, "stages": {"asr": 0.03}},
        {"kind": "call_end", "intent": "", "cpu_s": 0.01, "stages": {}},
    ]
    summary = summarise([turns])
    assert summary["caller_turns"] == 2
    assert summary["turn_cpu_s"]["median"] == 0.075
    assert summary["stage_cpu_s_mean"]["session"] == 0.025  # (0.03 + 0.02) / 2
    assert summary["greeting_cpu_s_median"] == 0.02 and summary["call_end_cpu_s_median"] == 0.01
