"""The FastAGI server over real loopback sockets: concurrency, hang-ups, bad peers, admission, stop.

These tests drive the server with a small handler of their own (answer, listen, set a variable): they
test the transport and its protections; the robot's full calls are in test_replay_*.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from ivr.agi.connection import AgiChannel
from ivr.agi.protocol import AgiEnvironment
from ivr.agi.server import FastAgiServer, peer_allowed
from ivr.config import Settings, load_settings

ENV = b"agi_network: yes\nagi_request: agi://127.0.0.1/ivr\nagi_callerid: 13800000001\nagi_uniqueid: 1.1\n\n"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return dataclasses.replace(
        load_settings(environ={}), header_timeout_s=0.5, command_timeout_s=5.0, max_calls=50, stop_grace_s=2.0
    )


class Recorder:
    """A handler that answers, waits for one digit, and reports what happened to each call."""

    def __init__(self) -> None:
        self.started = 0
        self.finished = 0
        self.hangups = 0
        self.over_capacity = 0
        self.release = asyncio.Event()
        self.release.set()
        self._changed = asyncio.Condition()

    async def wait_started(self, count: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.started >= count)

    async def handle(self, env: AgiEnvironment, channel: AgiChannel) -> None:
        self.started += 1
        async with self._changed:
            self._changed.notify_all()
        try:
            await channel.answer()
            await self.release.wait()
            await channel.wait_digit(1.0)
            await channel.set_variable("IVR_RESULT", "completed")
            self.finished += 1
        except Exception:
            self.hangups += 1
            raise

    async def hold(self, env: AgiEnvironment, channel: AgiChannel) -> None:
        self.over_capacity += 1
        await channel.answer()
        await channel.set_variable("IVR_RESULT", "transfer")


async def asterisk_peer(port: int, *, hangup_after_answer: bool = False) -> list[str]:
    """A minimal Asterisk side: sends the environment, answers every command with success."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(ENV)
    seen: list[str] = []
    try:
        while True:
            line = await reader.readline()
            if not line:
                return seen
            seen.append(line.decode().strip())
            if hangup_after_answer and len(seen) == 2:
                writer.write(b"HANGUP\n200 result=-1 endpos=0\n")
            elif seen[-1].startswith("WAIT FOR DIGIT"):
                writer.write(b"200 result=49\n")
            else:
                writer.write(b"200 result=0\n")
            await writer.drain()
    finally:
        writer.close()


async def start(settings: Settings, recorder: Recorder) -> FastAgiServer:
    server = FastAgiServer(settings, recorder.handle, recorder.hold)
    await server.start("127.0.0.1", 0)
    return server


async def test_many_simultaneous_calls_are_all_served(settings: Settings) -> None:
    recorder = Recorder()
    server = await start(settings, recorder)
    try:
        results = await asyncio.gather(*(asterisk_peer(server.port) for _ in range(40)))
    finally:
        await server.stop()
    assert recorder.finished == 40
    assert all(r[0] == "ANSWER" and r[-1].startswith('SET VARIABLE "IVR_RESULT" "completed"') for r in results)


async def test_hangup_mid_call_ends_the_session_and_the_server_keeps_serving(settings: Settings) -> None:
    recorder = Recorder()
    server = await start(settings, recorder)
    try:
        await asterisk_peer(server.port, hangup_after_answer=True)
        ok = await asterisk_peer(server.port)
    finally:
        await server.stop()
    assert recorder.hangups == 1
    assert recorder.finished == 1
    assert ok[-1].startswith("SET VARIABLE")


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # the wrong protocol
        b"\x00\x01\x02\xff" * 100 + b"\n\n",  # binary noise
        b"agi_x: " + b"y" * 20000,  # an endless line
        b"agi_network: yes\n",  # no blank line, then silence: the header timeout
        b"",  # connect and close at once
    ],
)
async def test_bad_peers_are_dropped_and_good_calls_still_work(settings: Settings, garbage: bytes) -> None:
    recorder = Recorder()
    server = await start(settings, recorder)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(garbage)
        if not garbage:
            writer.close()
        # The server closes the connection on its side: EOF, within the header timeout.
        leftover = await asyncio.wait_for(reader.read(), 5.0)
        writer.close()
        ok = await asterisk_peer(server.port)
    finally:
        await server.stop()
    assert leftover == b""
    assert recorder.started == 1
    assert ok[-1].startswith("SET VARIABLE")


async def test_peer_that_closes_during_a_command_is_a_hangup(settings: Settings) -> None:
    recorder = Recorder()
    server = await start(settings, recorder)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(ENV)
        assert (await reader.readline()).startswith(b"ANSWER")
        writer.close()  # gone without a reply
    finally:
        await server.stop()  # waits for the call's task, which ends on the hang-up
    assert recorder.hangups == 1


async def test_calls_beyond_the_admission_limit_are_told_to_hold_and_transferred(settings: Settings) -> None:
    recorder = Recorder()
    recorder.release.clear()  # the first calls stay in progress
    server = await start(dataclasses.replace(settings, max_calls=3), recorder)
    try:
        busy = [asyncio.create_task(asterisk_peer(server.port)) for _ in range(3)]
        await recorder.wait_started(3)
        extra = await asterisk_peer(server.port)
        recorder.release.set()
        await asyncio.gather(*busy)
    finally:
        await server.stop()
    assert recorder.over_capacity == 1
    assert extra == ["ANSWER", 'SET VARIABLE "IVR_RESULT" "transfer"']
    assert recorder.finished == 3


async def test_graceful_stop_lets_live_calls_finish(settings: Settings) -> None:
    recorder = Recorder()
    recorder.release.clear()
    server = await start(settings, recorder)
    port = server.port
    call = asyncio.create_task(asterisk_peer(port))
    await recorder.wait_started(1)
    stopping = asyncio.create_task(server.stop(grace_s=5))
    await asyncio.sleep(0.1)
    with pytest.raises(OSError):  # no new calls once stopping
        await asyncio.open_connection("127.0.0.1", port)
    recorder.release.set()
    await stopping
    assert (await call)[-1].startswith("SET VARIABLE")
    assert recorder.finished == 1


@pytest.mark.parametrize(
    ("peer", "allowed", "ok"),
    [
        ("127.0.0.1", ("127.0.0.1",), True),
        ("10.0.0.7", ("127.0.0.1",), False),
        ("10.0.0.7", ("10.0.0.0/24",), True),
        ("::1", ("::1",), True),
        ("not-an-ip", ("127.0.0.1",), False),
        # a server bound to "::" sees IPv4 peers as IPv4-mapped IPv6 addresses
        ("::ffff:127.0.0.1", ("127.0.0.1",), True),
        ("::ffff:10.0.0.7", ("10.0.0.0/24",), True),
        ("::ffff:10.0.0.7", ("127.0.0.1",), False),
        ("fe80::1%eth0", ("fe80::/64",), True),
    ],
)
def test_peer_filter(peer: str, allowed: tuple[str, ...], ok: bool) -> None:
    assert peer_allowed(peer, allowed) is ok


async def test_a_peer_not_allowed_is_refused(settings: Settings) -> None:
    recorder = Recorder()
    server = await start(dataclasses.replace(settings, agi_allowed_peers=("10.9.9.9",)), recorder)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(ENV)
        try:
            leftover = await asyncio.wait_for(reader.read(), 5.0)
        except ConnectionResetError:  # closed before it read what we sent: also a refusal
            leftover = b""
        writer.close()
        assert leftover == b""
    finally:
        await server.stop()
    assert recorder.started == 0
    assert server.rejected_peers == 1
