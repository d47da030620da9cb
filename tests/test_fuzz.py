"""Fuzzing the AGI parser and the call session (hypothesis, bounded examples; CI runs it).

The parser must turn any bytes into events or a protocol error, never anything else, and never buffer
past its caps. The server, with the real robot behind it, must survive any sequence of replies a
broken or hostile Asterisk could send (garbage, wrong codes, HANGUP anywhere, EOF) and keep serving
good calls afterwards.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivr.agi.protocol import MAX_LINE_BYTES, AgiParser, AgiProtocolError
from ivr.config import Settings
from ivr.testing.callfile import CallFile, Expectation, Turn
from ivr.testing.harness import ScriptedAsterisk
from ivr.testing.replay import RobotInThread
from tests.conftest import make_demo_db

AGI_LINES = [
    b"200 result=0\n",
    b"200 result=1\n",
    b"200 result=-1\n",
    b"200 result=-1 (hangup) endpos=0\n",
    b"200 result=49 (dtmf) endpos=800\n",
    b"200 result=35 (dtmf) endpos=800\n",
    b"200 result=0 (timeout) endpos=8000\n",
    b"200 result= (timeout)\n",
    b"200 result=-1 (writefile)\n",
    b"HANGUP\n",
    b"510 Invalid or unknown command\n",
    b"511 Command Not Permitted on a dead channel or intercepted\n",
    b"520-Invalid command syntax.  Proper usage follows:\nUsage: X\n520 End of proper usage.\n",
    b"\n",
    b"agi_network: yes\n",
]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(AGI_LINES), st.binary(max_size=64)), max_size=20), st.integers(1, 64))
def test_parser_never_fails_with_anything_but_a_protocol_error(chunks: list[bytes], cut: int) -> None:
    parser = AgiParser()
    stream = b"agi_network: yes\nagi_callerid: 1\n\n" + b"".join(chunks)
    try:
        for i in range(0, len(stream), cut):
            parser.feed(stream[i : i + cut])
            parser.events()
        parser.feed_eof()
        parser.events()
    except AgiProtocolError:
        pass
    assert len(parser._buffer) <= MAX_LINE_BYTES + 64


@pytest.fixture(scope="module")
def robot(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RobotInThread]:
    root = tmp_path_factory.mktemp("fuzz")
    s = dataclasses.replace(
        base_settings, database_url=make_demo_db(root / "accounts.db"), command_timeout_s=1.0, header_timeout_s=1.0, record_max_s=2.0
    )
    r = RobotInThread(s, text_input=True).start()
    yield r
    r.stop()


async def hostile_call(port: int, replies: list[bytes], env: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(env)
        for reply in replies:
            line = await asyncio.wait_for(reader.readline(), 30)
            if not line:
                return  # the server ended the call: fine
            writer.write(reply)
            await writer.drain()
    finally:
        writer.close()


ENVS = [
    b"agi_network: yes\nagi_request: agi://127.0.0.1/ivr?lang=zh-CN\nagi_callerid: 13800000001\n\n",
    b"agi_request: agi://127.0.0.1/ivr?lang=xx-XX\nagi_callerid: 1'; DROP TABLE customers;--\n\n",
    b"agi_request: agi://x/ivr?lang=ko-KR&lang=\nagi_callerid: $(rm -rf /)`id`\n\n",
    b"agi_callerid: " + b"9" * 3000 + b"\n\n",
    b"agi_callerid: \n\n",
]


def serves_a_normal_call(port: int) -> None:
    call = CallFile(Path("after-fuzz.yaml"), "13800000001", "zh-CN",
                    (Turn("say", "查余额"), Turn("dtmf", "4821#"), Turn("say", "再见")), Expectation())
    report = asyncio.run(ScriptedAsterisk(call, locale="zh-CN", text_mode=True).run("127.0.0.1", port))
    assert report.outcome == "completed", report.to_json()
    assert "1,234.56 CNY" in report.robot_text


def test_session_survives_any_replies(robot: RobotInThread) -> None:
    """A hostile Asterisk answers the robot's commands with anything; afterwards the same server still
    serves a normal call to the end."""

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        st.lists(st.one_of(st.sampled_from(AGI_LINES), st.binary(min_size=1, max_size=40)), max_size=12),
        st.sampled_from(ENVS),
    )
    def hostile(replies: list[bytes], env: bytes) -> None:
        asyncio.run(asyncio.wait_for(hostile_call(robot.port, replies, env), 60))

    hostile()
    serves_a_normal_call(robot.port)
