"""Stream mode (AudioSocket, full duplex) through the real local Asterisk, to the real robot (issue #12).

The robot's half of each call runs the hotline dialplan as always; the robot answers over FastAGI and
sends ``EXEC AudioSocket`` to its own media server. The caller's half is in [ivr-test-caller-stream]: its
audio goes both ways over its own AudioSocket to the test runner (``ivr.asterisk.testcall._StreamCall``),
so what the robot said, which prompts were cut and when are heard at the caller's ear, after Asterisk's
bridging. The stream goldens of the replay harness must hold here too, and 20 callers interrupting the
greeting at once must all be served.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ivr.asterisk.ami import AmiClient
from ivr.asterisk.testcall import AsteriskCaller, AsteriskCallReport
from ivr.config import Settings
from ivr.testing.callfile import CallFile, Expectation, Turn, load_call_file
from ivr.testing.replay import RobotInThread
from tests.test_asterisk import ami, robot_settings, speech_of, url_of  # noqa: F401
from tests.test_stream import CALLS, STOP_WITHIN_S

pytestmark = [pytest.mark.asterisk, pytest.mark.audio, pytest.mark.slow]

GOODBYE = Path(__file__).parent / "calls" / "audio" / "ko-KR" / "audio" / "goodbye.wav"


@pytest.fixture(scope="module")
def stream_robot(robot_settings: Settings) -> Iterator[RobotInThread]:  # noqa: F811
    robot = RobotInThread(dataclasses.replace(robot_settings, media="stream", audiosocket_port=0), text_input=False)
    robot.start()
    yield robot
    robot.stop()


async def place(calls: list[CallFile], settings: Settings, ami: AmiClient, robot: RobotInThread) -> list[AsteriskCallReport]:  # noqa: F811
    async with AsteriskCaller(settings, ami=ami, speech=speech_of(robot), agi_url=url_of(robot)) as caller:
        return list(await asyncio.gather(*(caller.place(c, timeout_s=240) for c in calls)))


@pytest.mark.parametrize("path", sorted(CALLS.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.stem}")
async def test_stream_golden_through_asterisk(
    path: Path, robot_settings: Settings, ami: AmiClient, stream_robot: RobotInThread  # noqa: F811
) -> None:
    call = load_call_file(path)
    [report] = await place([call], robot_settings, ami, stream_robot)
    assert report.media == "stream", report.errors
    assert report.failures(call) == [], json.dumps(report.to_json(), ensure_ascii=False, indent=1)
    golden = json.loads(path.with_suffix(".golden.json").read_text(encoding="utf-8"))
    actual = report.golden(cut_prompts_heard=False)
    assert {k: actual[k] for k in golden} == golden
    assert all(s <= STOP_WITHIN_S for s in report.barge_in_stops_s), report.barge_in_stops_s


async def test_twenty_simultaneous_stream_calls_interrupt_the_greeting(
    robot_settings: Settings, ami: AmiClient, stream_robot: RobotInThread  # noqa: F811
) -> None:
    # 20 callers at once say goodbye 2 s into the greeting: 20 barge-ins, 20 streamed turns, 20 goodbyes
    calls = [
        CallFile(Path(f"stream-twenty-{i}.yaml"), "01012345678", "ko-KR",
                 (Turn("audio", GOODBYE, during_prompt=2.0),), Expectation(), {"media": "stream"})
        for i in range(20)
    ]
    reports = await place(calls, robot_settings, ami, stream_robot)
    assert [r.errors for r in reports] == [[]] * 20
    assert [r.media for r in reports] == ["stream"] * 20
    assert all(r.answered for r in reports)
    assert [r.outcome for r in reports] == ["completed"] * 20, [r.transfer_reason for r in reports]
    # All 20 barge in at the same instant (the worst case): each greeting stops, none is played out.
    # How soon, under that load, is a figure of `ivr bench --asterisk --media stream`, not a test bound.
    for report in reports:
        greeting = next(e for e in report.events if e["who"] == "robot")
        assert greeting["interrupted"] is True and 2.0 <= greeting["heard_s"] < 10.0, greeting
    assert len([s for r in reports for s in r.barge_in_stops_s]) == 20
    assert len({r.channel_id for r in reports}) == 20
