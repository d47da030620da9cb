"""The AGI protocol over an asyncio stream, and the call ``Channel`` built on it.

``AgiConnection`` owns the reader/writer and the sans-IO parser; ``AgiChannel`` maps the session's
channel operations (play, record, read digits, set a variable, hang up) to AGI commands. The arrow
runs agi → session: the session knows only the ``Channel`` protocol.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from ivr.agi.protocol import (
    AgiDeadChannel,
    AgiEnvironment,
    AgiError,
    AgiHangup,
    AgiParser,
    AgiProtocolError,
    AgiResponse,
    Eof,
    Hangup,
    check,
    command,
)
from ivr.parts import RecordingError

log = logging.getLogger(__name__)

READ_CHUNK = 4096


class AgiConnection:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        header_timeout_s: float = 5.0,
        command_timeout_s: float = 120.0,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._parser = AgiParser()
        self._pending: list[AgiEnvironment | AgiResponse | Hangup | Eof] = []
        self._header_timeout_s = header_timeout_s
        self.command_timeout_s = command_timeout_s  # a reply later than this: the peer is broken
        self.hung_up = False
        self.closed = False

    async def _next_event(self) -> AgiEnvironment | AgiResponse | Hangup | Eof:
        while not self._pending:
            if self.closed:
                return Eof()
            data = await self._reader.read(READ_CHUNK)
            if data:
                self._parser.feed(data)
            else:
                self._parser.feed_eof()
                self.closed = True
            self._pending.extend(self._parser.events())
        return self._pending.pop(0)

    async def read_environment(self) -> AgiEnvironment:
        """The ``agi_*`` block; a peer that stalls mid-header is cut off after ``header_timeout_s``."""

        async def read() -> AgiEnvironment:
            while True:
                event = await self._next_event()
                if isinstance(event, AgiEnvironment):
                    return event
                if isinstance(event, Eof):
                    raise AgiHangup("connection closed before the AGI environment was complete")
                if isinstance(event, Hangup):
                    self.hung_up = True

        try:
            return await asyncio.wait_for(read(), self._header_timeout_s)
        except asyncio.TimeoutError:
            raise AgiProtocolError(f"no complete AGI environment within {self._header_timeout_s} s") from None

    async def execute(self, name: str, *arguments: str | int, timeout_s: float | None = None) -> AgiResponse:
        """Send one command and wait for its reply; raise the exception that mirrors a failure."""
        if self.hung_up or self.closed:
            raise AgiDeadChannel("the channel is already hung up")
        self._writer.write(command(name, *arguments))
        try:
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            self.closed = True
            raise AgiHangup(f"connection lost while sending {name}") from exc
        limit = self.command_timeout_s if timeout_s is None else timeout_s
        try:
            response = await asyncio.wait_for(self._reply(), limit)
        except asyncio.TimeoutError:
            raise AgiProtocolError(f"no reply to {name} within {limit} s") from None
        checked = check(response)
        if self.hung_up and name != "HANGUP":
            raise AgiHangup(f"caller hung up during {name}")
        return checked

    async def _reply(self) -> AgiResponse:
        while True:
            event = await self._next_event()
            if isinstance(event, AgiResponse):
                return event
            if isinstance(event, Hangup):
                self.hung_up = True  # the reply to the pending command still follows
            elif isinstance(event, Eof):
                raise AgiHangup("connection closed by Asterisk")
            else:
                raise AgiProtocolError("a second AGI environment block")

    @property
    def local_address(self) -> tuple[str, int]:
        sockname = self._writer.get_extra_info("sockname") or ("127.0.0.1", 0)
        host = str(sockname[0])
        return (host.removeprefix("::ffff:"), int(sockname[1]))

    async def close(self) -> None:
        self.closed = True
        if self._writer.is_closing():
            return
        self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), 2.0)
        except (asyncio.TimeoutError, ConnectionError, OSError):
            pass


def without_extension(path: Path) -> str:
    """Asterisk names sound files without their extension (it picks the format itself)."""
    return str(path)[: -len(path.suffix)] if path.suffix in (".wav", ".wav16", ".gsm", ".ulaw") else str(path)


def _digit(response: AgiResponse) -> str:
    """The key a ``result=`` ASCII code stands for; "" for 0 (no key)."""
    code = response.result_int
    return chr(code) if 0 < code < 128 and chr(code) in "0123456789*#ABCD" else ""


@dataclass(frozen=True)
class Recording:
    path: Path  # the WAV Asterisk wrote (may be missing or empty if the caller pressed a key at once)
    digit: str = ""  # the key that ended the recording, "" when silence or the time limit ended it


class AgiChannel:
    """One call's AGI commands, each mapped to what it means (a key, a recording, a hang-up); the
    session's conversation-level ``Channel`` in record mode is ``ivr.agi.record_mode`` on top of it."""

    def __init__(self, connection: AgiConnection) -> None:
        self._agi = connection
        # The call's ID as the robot's logs show it (masked), set by the call handler: ANSWER hands it
        # to Asterisk as IVR_CALL_ID, which the dialplan writes into Asterisk's log and the call's CDR.
        self.call_id = ""

    async def answer(self) -> None:
        await self._agi.execute("ANSWER")
        if self.call_id:
            await self._agi.execute("SET VARIABLE", "IVR_CALL_ID", self.call_id)

    async def play(self, sound: Path, escape_digits: str = "") -> tuple[str, int | None]:
        """Play a prompt (path without extension); return the key that interrupted it ("" if none) and
        how far it played (``endpos``, in 8 kHz samples, when Asterisk says)."""
        response = await self._agi.execute("STREAM FILE", without_extension(sound), escape_digits)
        if response.result == "-1":
            await self._hung_up_or_failed(f"Asterisk could not play {sound.name}")
        return _digit(response), response.endpos

    async def _hung_up_or_failed(self, problem: str) -> NoReturn:
        """``result=-1`` is both "the caller hung up" (Asterisk's ``HANGUP`` line may come only after the
        reply) and "the command failed" (a missing sound file). A harmless command tells which: on a
        hung-up channel Asterisk refuses it (511) or the HANGUP line arrives first, and ``execute``
        raises ``AgiHangup``: normal flow, not a part failure."""
        await self._agi.execute("CHANNEL STATUS")
        raise AgiError(problem)

    async def record(self, path: Path, *, escape_digits: str, max_s: float, silence_s: int) -> Recording:
        """RECORD FILE with silence detection; the caller may instead press a key (escape digit)."""
        response = await self._agi.execute(
            "RECORD FILE",
            without_extension(path),
            "wav",
            escape_digits,
            int(max_s * 1000),
            0,
            f"s={silence_s}",
            timeout_s=max_s + self._agi.command_timeout_s,
        )
        if response.result == "-1":
            if response.data == "writefile":
                raise RecordingError("Asterisk could not write the recording (writefile)")
            await self._hung_up_or_failed(f"RECORD FILE failed ({response.data or 'error'})")
        digit = _digit(response) if response.data == "dtmf" else ""
        return Recording(path=path.with_suffix(".wav"), digit=digit)

    async def wait_digit(self, timeout_s: float) -> str:
        response = await self._agi.execute(
            "WAIT FOR DIGIT", int(timeout_s * 1000), timeout_s=timeout_s + self._agi.command_timeout_s
        )
        if response.result == "-1":
            await self._hung_up_or_failed("WAIT FOR DIGIT failed")
        return _digit(response)

    async def set_variable(self, name: str, value: str) -> None:
        await self._agi.execute("SET VARIABLE", name, value)

    async def report(self, outcome: str, reason: str = "") -> None:
        """The robot's result for the dialplan: ``IVR_RESULT`` (transfer, completed, error) and, with a
        reason, ``IVR_TRANSFER_REASON``; a completed call is hung up. The dialplan queues a transfer
        and apologises itself for an error (asterisk_conf/extensions.conf)."""
        if outcome == "transfer" or reason:
            await self.set_variable("IVR_TRANSFER_REASON", reason or "unspecified")
        await self.set_variable("IVR_RESULT", outcome)
        if outcome == "completed":
            await self.hangup()

    async def exec_app(self, application: str, options: str, *, timeout_s: float) -> AgiResponse:
        """``EXEC`` a dialplan application (e.g. AudioSocket); the reply comes when it returns."""
        return await self._agi.execute("EXEC", application, options, timeout_s=timeout_s)

    @property
    def local_address(self) -> tuple[str, int]:
        """Where Asterisk reached this server (so it can reach this process again, e.g. for AudioSocket)."""
        return self._agi.local_address

    async def hangup(self) -> None:
        await self._agi.execute("HANGUP")
