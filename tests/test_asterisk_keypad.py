"""Keypad calls and "no agent available" through the real local Asterisk, to the real robot (issue #20).

zh-CN and en-US have no Vosk model on this machine, so the robot serves their calls by keypad: it offers
its keypad menu and listens with ``WAIT FOR DIGIT``. The AMI test caller (ivr/asterisk/testcall.py)
answers each of those questions with keys sent as AMI ``PlayDTMF`` (never a dialplan step, so Asterisk's
log never holds them). Each call is also replayed through the FastAGI harness: through Asterisk the
robot must do exactly the same.

When the caller asks for a person and nobody can answer (outside opening hours, no agent logged in,
every agent paused), the dialplan says so in the call's language and offers "1 a message, 2 the menu"
([ivr-no-agent] in asterisk_conf/extensions.conf); the caller is never left waiting for an empty queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ivr.asterisk.ami import AmiClient
from ivr.asterisk.local import MESSAGES_LOG
from ivr.asterisk.testcall import AsteriskCaller, AsteriskCallReport
from ivr.config import Settings
from ivr.testing.callfile import CallFile, Expectation, Turn
from ivr.testing.harness import ScriptedAsterisk
from ivr.testing.replay import RobotInThread
from tests.conftest import RunningAsterisk
from tests.test_asterisk import (  # noqa: F401
    assert_heard,
    heard_within,
    prompt,
    robot_settings,
    speech_of,
    url_of,
    without_playback,
)
from tests.test_zz_privacy import ID_DIGITS, leaks_in_text

pytestmark = [pytest.mark.asterisk, pytest.mark.slow]

NEVER_OPEN = "*,*,31,feb"  # a GotoIfTime() spec no day matches: the queue is closed ("at night")
NO_SUCH_QUEUE = "hotline-nobody"  # QUEUE_MEMBER(...,logged) of a queue nobody is in: 0
TEST_AGENT = "Local/s@ivr-test-agent/n"  # the local queue's only member (ivr/asterisk/local.py)
QUEUE = "hotline-agents"

# demo customers (ivr/accounts/demo.yaml): caller ID, ID digits
WANG_FANG = ("13800000001", "4821")  # C001, zh-CN
JOHN_SMITH = ("15550000002", "7305")  # C002, en-US
KIM = ("01012345678", "6193")  # C003, ko-KR




def keys(*values: str) -> tuple[Turn, ...]:
    return tuple(Turn("dtmf", v) for v in values)


def call(name: str, customer: tuple[str, str], locale: str, *turns: Turn, **params: str | None) -> CallFile:
    return CallFile(Path(f"{name}.yaml"), customer[0], locale, turns, Expectation(), dict(params))


# ---------------------------------------------------------------- the robot and the calls
@pytest.fixture(scope="module")
def keypad_robot(robot_settings: Settings) -> Iterator[RobotInThread]:  # noqa: F811
    """The real robot (real recognizer: no zh-CN or en-US model here, so those calls go by keypad);
    this module's own, so that its metrics count only these calls."""
    robot = RobotInThread(robot_settings, text_input=False).start()
    yield robot
    robot.stop()


def robot_said(report: AsteriskCallReport) -> list[str]:
    return [e["text"] for e in report.events if e["who"] == "robot" and e["text"]]


def robot_sessions(settings: Settings, report: AsteriskCallReport) -> list[list[dict[str, Any]]]:
    """The robot's transcripts of this call, first session first (a call that went back to the menu
    from [ivr-no-agent] has two: the AGI ran twice on the same channel)."""
    paths = sorted(settings.transcripts_dir.glob(f"*/{report.channel_id}-*.jsonl"), key=lambda p: p.stat().st_mtime)
    return [[json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()] for p in paths]


def last_line(session: list[dict[str, Any]]) -> dict[str, Any]:
    end = session[-1]
    return {k: end.get(k) or "" for k in ("outcome", "reason", "served_by", "menu_reason")}


def part_errors(robot: RobotInThread) -> float:
    assert robot.robot is not None
    registry = robot.robot.parts.metrics.registry
    return sum(s.value for m in registry.collect() if m.name == "ivr_part_errors" for s in m.samples
               if s.name == "ivr_part_errors_total")  # fmt: skip


KEYPAD_CALLS = {
    "zh-balance": call("zh-balance", WANG_FANG, "zh-CN", *keys("1", "4821#"), Turn("hangup", True)),
    "zh-repayment": call("zh-repayment", WANG_FANG, "zh-CN", *keys("2", "4821#"), Turn("hangup", True)),
    "zh-loan": call("zh-loan", WANG_FANG, "zh-CN", *keys("3", "4821#"), Turn("hangup", True)),
    "zh-transactions": call("zh-transactions", WANG_FANG, "zh-CN", *keys("4", "4821#"), Turn("hangup", True)),
    # en-US: the repayment, then the balance (already verified), then "0": a person
    "en-repayment-person": call("en-repayment-person", JOHN_SMITH, "en-US", *keys("2", "7305#", "1", "0")),
}
# what each answer says (demo.yaml, as the robot words it)
ANSWERS = {
    "zh-balance": ["您的账户余额为 1,234.56 CNY。"],
    "zh-repayment": ["您的下期还款日为 2026-12-15，应还金额 1,500.00 CNY。"],
    "zh-loan": ["您的贷款状态正常，剩余未还金额 20,000.00 CNY。"],
    "zh-transactions": ["以下是您最近的 3 笔交易。", "2026-11-20，-300.00 CNY，还款。"],
}


@pytest.fixture(scope="module")
def messages_log_offset(local_asterisk: RunningAsterisk) -> int:
    """Where Asterisk's log stood before this module's calls: the privacy test reads what they wrote."""
    log = local_asterisk.local.root / MESSAGES_LOG.lstrip("/")
    return log.stat().st_size if log.exists() else 0


@pytest.fixture(scope="module")
def keypad_calls(
    local_asterisk: RunningAsterisk, robot_settings: Settings, keypad_robot: RobotInThread,  # noqa: F811
    messages_log_offset: int,
) -> dict[str, tuple[AsteriskCallReport, list[dict[str, Any]]]]:
    """The keypad calls all at once through Asterisk, then each through the FastAGI harness."""

    async def place_all() -> dict[str, tuple[AsteriskCallReport, list[dict[str, Any]]]]:
        async with AsteriskCaller(robot_settings, agi_url=url_of(keypad_robot)) as caller:
            reports = await asyncio.gather(*(caller.place(c, timeout_s=240) for c in KEYPAD_CALLS.values()))
        out = {}
        for (name, c), report in zip(KEYPAD_CALLS.items(), reports, strict=True):
            harness = ScriptedAsterisk(c, locale=c.locale or "", text_mode=False, speech=speech_of(keypad_robot))
            out[name] = (report, (await harness.run("127.0.0.1", keypad_robot.port)).events)
        return out

    return asyncio.run(place_all())


@pytest.mark.parametrize("name", ["zh-balance", "zh-repayment", "zh-loan", "zh-transactions"])
async def test_zh_caller_is_served_by_keypad_after_keypad_verification(
    name: str, keypad_calls: dict[str, tuple[AsteriskCallReport, list[dict[str, Any]]]],
    robot_settings: Settings, keypad_robot: RobotInThread,  # noqa: F811
) -> None:
    report, harness_events = keypad_calls[name]
    assert report.errors == []
    said = robot_said(report)
    greet, menu, ask_id, verified, anything_else = (
        prompt(robot_settings, n, "zh-CN")
        for n in ("utter_greet", "utter_keypad_menu", "utter_ask_id_last4", "utter_verified", "utter_anything_else")
    )
    # no speech model: the greeting, then the menu; the menu key asks for the ID digits, the digits
    # (keyed while the robot waited with WAIT FOR DIGIT) verify, then the answer and the menu again
    assert said[:4] == [greet, menu, ask_id, verified]
    assert said[4 : 4 + len(ANSWERS[name])] == ANSWERS[name]
    assert said[-2:] == [anything_else, menu]
    keyed = [e["text"] for e in report.events if e.get("kind") == "dtmf"]
    assert len(keyed) == 2 and "4821" not in "".join(keyed)  # the report masks them
    assert report.outcome == "caller_hangup" and not report.reached_human
    # through Asterisk, exactly what the FastAGI harness makes of the same call
    assert without_playback(report.events) == without_playback(harness_events)
    [session] = robot_sessions(robot_settings, report)
    assert last_line(session) == {
        "outcome": "caller_hangup", "reason": "", "served_by": "keypad", "menu_reason": "no_speech_model"
    }
    assert_heard(report, await speech_of(keypad_robot)(menu, "zh-CN"))


async def test_en_caller_is_served_by_keypad_then_reaches_a_person_with_0(
    keypad_calls: dict[str, tuple[AsteriskCallReport, list[dict[str, Any]]]],
    robot_settings: Settings,  # noqa: F811
) -> None:
    report, harness_events = keypad_calls["en-repayment-person"]
    assert report.errors == []
    said = robot_said(report)
    greet, menu, ask_id, verified, transfer = (
        prompt(robot_settings, n, "en-US")
        for n in ("utter_greet", "utter_keypad_menu", "utter_ask_id_last4", "utter_verified", "utter_transfer")
    )
    assert said[:4] == [greet, menu, ask_id, verified]
    assert "2026-11-16" in said[4] and "450.00 USD" in said[4]  # C002's next repayment (overdue)
    assert any("2,500.75 USD" in s for s in said[5:])  # the balance, keyed after verification
    assert said[-1] == transfer
    assert (report.outcome, report.transfer_reason) == ("transfer", "caller_request")
    assert report.reached_human and report.agent_answered  # "0": the queue's agent answered
    assert without_playback(report.events) == without_playback(harness_events)
    [session] = robot_sessions(robot_settings, report)
    assert last_line(session) == {
        "outcome": "transfer", "reason": "caller_request", "served_by": "keypad", "menu_reason": "no_speech_model"
    }


def test_no_part_failed_in_the_keypad_calls(
    keypad_calls: dict[str, tuple[AsteriskCallReport, list[dict[str, Any]]]], keypad_robot: RobotInThread
) -> None:
    assert keypad_calls and part_errors(keypad_robot) == 0


# ---------------------------------------------------------------- nobody to answer
async def test_at_night_the_caller_hears_no_agent_and_goes_back_to_the_keypad_menu(
    local_asterisk: RunningAsterisk, robot_settings: Settings, keypad_robot: RobotInThread,  # noqa: F811
    messages_log_offset: int,
) -> None:
    # "0" (a person) at the menu; the queue is closed; "2" (back to the menu); the balance; hang up
    night = call("night", WANG_FANG, "zh-CN", *keys("0", "2", "1", "4821#"), Turn("hangup", True))
    async with AsteriskCaller(robot_settings, agi_url=url_of(keypad_robot)) as caller:
        report = await caller.place(night, timeout_s=240, variables={"IVR_OPEN_HOURS": NEVER_OPEN})
    assert report.errors == []
    no_agent = robot_settings.sounds_dir.resolve() / "fallback" / "zh-CN" / "no_agent"
    assert report.telephony == [
        {"who": "dialplan", "kind": "to_human", "reason": "caller_request"},
        {"who": "dialplan", "kind": "no_agent", "reason": "closed", "sound": str(no_agent)},
        {"who": "dialplan", "kind": "back_to_menu", "reason": "closed"},
    ]
    assert not report.agent_answered  # nobody was rung, nobody waited for
    assert_heard(report, no_agent.with_suffix(".wav"))
    said = robot_said(report)
    menu = prompt(robot_settings, "utter_keypad_menu", "zh-CN")
    assert said.count(prompt(robot_settings, "utter_greet", "zh-CN")) == 2  # the robot again, from the start
    assert "您的账户余额为 1,234.56 CNY。" in said and said[-1] == menu, "\n".join(said)
    first, second = robot_sessions(robot_settings, report)
    assert last_line(first)["outcome"] == "transfer" and last_line(first)["reason"] == "caller_request"
    assert last_line(second) == {  # ?input=keypad: the robot's keypad menu, whatever the locale's speech
        "outcome": "caller_hangup", "reason": "", "served_by": "keypad", "menu_reason": "input_keypad"
    }


async def test_with_nobody_logged_in_the_caller_hears_no_agent_and_reaches_voicemail(
    robot_settings: Settings, keypad_robot: RobotInThread,  # noqa: F811
) -> None:
    person = call("nobody", JOHN_SMITH, "en-US", *keys("0", "1"))  # a person; nobody there; "1": a message
    async with AsteriskCaller(robot_settings, agi_url=url_of(keypad_robot)) as caller:
        report = await caller.place(person, timeout_s=180, variables={"IVR_QUEUE": NO_SUCH_QUEUE})
    assert report.errors == []
    no_agent = robot_settings.sounds_dir.resolve() / "fallback" / "en-US" / "no_agent"
    assert report.telephony == [
        {"who": "dialplan", "kind": "to_human", "reason": "caller_request"},
        {"who": "dialplan", "kind": "no_agent", "reason": "nobody_logged_in", "sound": str(no_agent)},
        {"who": "dialplan", "kind": "voicemail", "reason": "caller_request"},
    ]
    assert not report.agent_answered
    assert_heard(report, no_agent.with_suffix(".wav"))


async def test_with_every_agent_paused_the_queue_is_not_joined(
    robot_settings: Settings, keypad_robot: RobotInThread, ami: AmiClient,  # noqa: F811
) -> None:
    """The agent is logged in but paused: Queue() itself refuses the caller (joinempty=paused,...)."""
    person = call("paused", KIM, "ko-KR", *keys("0"))  # ko-KR: speech on; "0" ends the recording at once
    await ami.aaction("QueuePause", Queue=QUEUE, Interface=TEST_AGENT, Paused="true")
    try:
        async with AsteriskCaller(robot_settings, ami=ami, agi_url=url_of(keypad_robot)) as caller:
            report = await caller.place(person, timeout_s=120)
    finally:
        await ami.aaction("QueuePause", Queue=QUEUE, Interface=TEST_AGENT, Paused="false")
    assert report.errors == []
    no_agent = robot_settings.sounds_dir.resolve() / "fallback" / "ko-KR" / "no_agent"
    assert report.telephony[:2] == [
        {"who": "dialplan", "kind": "to_human", "reason": "caller_request"},
        {"who": "dialplan", "kind": "no_agent", "reason": "queue_joinempty", "sound": str(no_agent)},
    ]
    assert not report.agent_answered
    assert_heard(report, no_agent.with_suffix(".wav"))


@pytest.fixture
async def ami(local_asterisk: RunningAsterisk) -> Any:
    creds = local_asterisk.local.ami_credentials()
    client = AmiClient(creds.host, creds.port, creds.user, creds.secret)
    await client.aconnect()
    yield client
    with contextlib.suppress(Exception):
        await client.aclose()


# ---------------------------------------------------------------- the keys stay out of Asterisk's log
def test_the_keys_callers_sent_are_not_in_asterisks_log(
    local_asterisk: RunningAsterisk, keypad_calls: dict[str, tuple[AsteriskCallReport, list[dict[str, Any]]]],
    messages_log_offset: int,
) -> None:
    """Every call above keyed ID digits (4821, 7305); Asterisk logs each dialplan step with its arguments
    (verbose 3): the test caller's keys must not be one (the privacy scan, test_zz_privacy.py, reads it)."""
    log = local_asterisk.local.root / MESSAGES_LOG.lstrip("/")
    with log.open("rb") as f:
        f.seek(messages_log_offset)
        written = f.read().decode("utf-8", errors="replace")
    assert "ivr-hotline" in written  # the calls' steps are in it: the log is the right one, and was written
    assert leaks_in_text(written, str(log), ID_DIGITS) == []
