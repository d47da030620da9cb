"""A caller who hangs up is normal flow, whatever the robot was doing: no part error, no apology.

Asterisk answers a command that the hang-up interrupted with ``200 result=-1`` (``STREAM FILE``,
``RECORD FILE`` and ``WAIT FOR DIGIT`` alike), and may send its ``HANGUP`` line only after that reply;
every later command gets ``511``. A scripted Asterisk plays exactly that against the real robot.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from ivr.config import Settings
from ivr.testing.replay import running_robot

ENV = b"agi_network: yes\nagi_request: agi://127.0.0.1/ivr?lang=zh-CN\nagi_callerid: 13800000001\nagi_uniqueid: 1764000000.%d\n\n"
DEAD = b"511 Command Not Permitted on a dead channel or intercept routine\n"
_calls = iter(range(1000))


async def hang_up_during(port: int, command: str, *, hangup_line_first: bool) -> list[str]:
    """Answer the robot like Asterisk until it sends ``command``; the caller hangs up during it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(ENV % next(_calls))
    sent: list[str] = []
    gone = False
    try:
        while True:
            raw = await asyncio.wait_for(reader.readline(), 30)
            if not raw:
                return sent
            line = raw.decode().strip()
            sent.append(line)
            if gone:
                writer.write(DEAD)
            elif line.startswith(command):
                gone = True
                writer.write((b"HANGUP\n" if hangup_line_first else b"") + b"200 result=-1 endpos=4000\n")
            elif line.startswith("STREAM FILE"):
                writer.write(b"200 result=0 endpos=8000\n")
            elif line.startswith("RECORD FILE"):
                writer.write(b"200 result=52 (dtmf) endpos=1600\n")  # the caller presses 4
            elif line.startswith("WAIT FOR DIGIT"):
                writer.write(b"200 result=56\n")
            else:
                writer.write(b"200 result=1\n")
            await writer.drain()
    finally:
        writer.close()


def part_errors(metrics: object) -> float:
    registry = metrics.registry  # type: ignore[attr-defined]
    return sum(s.value for m in registry.collect() if m.name == "ivr_part_errors" for s in m.samples
               if s.name == "ivr_part_errors_total")


@pytest.mark.parametrize("hangup_line_first", [False, True], ids=["reply-then-HANGUP", "HANGUP-then-reply"])
@pytest.mark.parametrize("command", ["STREAM FILE", "RECORD FILE", "WAIT FOR DIGIT"])
async def test_a_hang_up_during_any_command_ends_the_call_cleanly(
    demo_settings: Settings, tmp_path: Path, command: str, hangup_line_first: bool
) -> None:
    import dataclasses

    settings = dataclasses.replace(demo_settings, transcripts_dir=tmp_path / "transcripts")
    async with running_robot(settings, text_input=True) as (_, port, robot):
        sent = await hang_up_during(port, command, hangup_line_first=hangup_line_first)
        metrics = robot.parts.metrics
        assert metrics.calls_caller_hangup._value.get() == 1
        assert part_errors(metrics) == 0
    assert any(line.startswith(command) for line in sent)
    assert not any("IVR_RESULT" in line for line in sent)  # nobody is there to transfer
    transcript = [json.loads(line) for f in (tmp_path / "transcripts").rglob("*.jsonl")
                  for line in f.read_text(encoding="utf-8").splitlines()]
    assert transcript[-1]["outcome"] == "caller_hangup"
    apology = robot.parts.prompts.text("utter_apology", "zh-CN")
    assert not [e for e in transcript if e["who"] == "robot" and e["text"] == apology]


async def test_a_prompt_asterisk_cannot_play_is_still_a_part_failure(demo_settings: Settings) -> None:
    """The other meaning of ``result=-1``: the line is up (CHANNEL STATUS answers), the file is missing."""
    async with running_robot(demo_settings, text_input=True) as (_, port, robot):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(ENV % next(_calls))
        sent: list[str] = []
        failed_once = False
        while raw := await asyncio.wait_for(reader.readline(), 30):
            line = raw.decode().strip()
            sent.append(line)
            if line.startswith("STREAM FILE") and not failed_once:
                failed_once = True
                writer.write(b"200 result=-1 endpos=0\n")
            elif line.startswith("CHANNEL STATUS"):
                writer.write(b"200 result=6\n")
            else:
                writer.write(b"200 result=0 endpos=8000\n" if line.startswith("STREAM") else b"200 result=1\n")
            await writer.drain()
        writer.close()
        assert part_errors(robot.parts.metrics) == 1
    assert 'SET VARIABLE "IVR_RESULT" "transfer"' in sent
