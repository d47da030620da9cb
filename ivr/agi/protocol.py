"""The AGI protocol without I/O: bytes in, typed events out; commands out as bytes.

Asterisk opens a FastAGI connection with an environment block (``agi_name: value`` lines ended by a
blank line), then answers each command with one line (``200 result=N (data) endpos=M``, ``510 ...``,
``511 ...``) or, for a usage error, a ``520-`` block ended by ``520 End of proper usage.``. When the
caller hangs up, Asterisk sends a ``HANGUP`` line at any point between replies. EOF is an event too.
Lines and the header are capped: a peer cannot make us buffer without bound.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from ivr.parts import CallerHangup

MAX_LINE_BYTES = 8192
MAX_HEADER_LINES = 256
MAX_USAGE_LINES = 64


# ---------------------------------------------------------------- errors that mirror the wire
class AgiError(Exception):
    """Base of everything the AGI layer raises."""


class AgiProtocolError(AgiError):
    """The peer sent something that is not AGI (too long, malformed, out of order)."""


class AgiHangup(AgiError, CallerHangup):
    """The caller hung up (HANGUP line, ``(hangup)`` result, or the connection closed). Normal flow."""


class AgiDeadChannel(AgiHangup):
    """``511``: the channel is dead; every later command fails the same way."""


class AgiInvalidCommand(AgiError):
    """``510``: Asterisk does not know the command (a bug on our side)."""


class AgiUsageError(AgiError):
    """``520``: the command's arguments were wrong (a bug on our side)."""


# ---------------------------------------------------------------- events
@dataclass(frozen=True)
class AgiEnvironment:
    variables: dict[str, str]

    @property
    def request(self) -> str:
        return self.variables.get("agi_request", "")

    @property
    def caller_id(self) -> str:
        """The caller's number, "" when withheld (Asterisk writes ``unknown`` then)."""
        value = self.variables.get("agi_callerid", "").strip()
        return "" if value.lower() in ("", "unknown", "anonymous", "restricted") else value

    @property
    def unique_id(self) -> str:
        return self.variables.get("agi_uniqueid", "")

    @property
    def script(self) -> str:
        """The script path of ``agi://host:port/ivr?lang=zh-CN``: ``ivr``."""
        return urlsplit(self.request).path.lstrip("/")

    @property
    def params(self) -> dict[str, str]:
        """Query parameters of the script URL, e.g. ``{"lang": "zh-CN"}``."""
        return {k: v[-1] for k, v in parse_qs(urlsplit(self.request).query).items()}


@dataclass(frozen=True)
class AgiResponse:
    code: int
    result: str = ""  # the raw ``result=`` value (may be empty, e.g. GET DATA with no digits)
    data: str = ""  # the text in parentheses, e.g. ``timeout``, ``dtmf``, ``hangup``
    endpos: int | None = None
    text: str = ""  # the whole line (or usage block) as received
    usage: tuple[str, ...] = field(default=())

    @property
    def result_int(self) -> int:
        try:
            return int(self.result)
        except ValueError:
            return 0


@dataclass(frozen=True)
class Hangup:
    """The ``HANGUP`` line: the caller is gone; a pending command still gets its reply."""


@dataclass(frozen=True)
class Eof:
    """The peer closed the connection."""


Event = AgiEnvironment | AgiResponse | Hangup | Eof


class _State(enum.Enum):
    HEADER = "header"
    COMMANDS = "commands"
    USAGE = "usage"
    CLOSED = "closed"


_RESPONSE = re.compile(
    r"^(?P<code>\d{3})(?=\s|$)(?: result=(?P<result>[^ ]*))?(?: \((?P<data>[^)]*)\))?(?: endpos=(?P<endpos>-?\d+))?"
)


class AgiParser:
    """Feed bytes, take events. One instance per connection; holds all protocol state."""

    def __init__(self, max_line: int = MAX_LINE_BYTES, max_header_lines: int = MAX_HEADER_LINES) -> None:
        self._buffer = bytearray()
        self._state = _State.HEADER
        self._max_line = max_line
        self._max_header_lines = max_header_lines
        self._header: dict[str, str] = {}
        self._header_lines = 0
        self._usage: list[str] = []
        self._eof = False
        self._events: list[Event] = []

    def feed(self, data: bytes) -> None:
        if self._eof:
            raise AgiProtocolError("data after EOF")
        self._buffer += data
        self._drain()

    def feed_eof(self) -> None:
        self._eof = True
        self._drain()
        if self._state is not _State.CLOSED:
            self._state = _State.CLOSED
            self._events.append(Eof())

    def events(self) -> list[Event]:
        """The events parsed so far, oldest first; each is returned once."""
        out, self._events = self._events, []
        return out

    def _drain(self) -> None:
        while self._state is not _State.CLOSED:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                if len(self._buffer) > self._max_line:
                    raise AgiProtocolError(f"line longer than {self._max_line} bytes")
                return
            if newline > self._max_line:
                raise AgiProtocolError(f"line longer than {self._max_line} bytes")
            raw = bytes(self._buffer[:newline])
            del self._buffer[: newline + 1]
            line = raw.decode("utf-8", errors="replace").rstrip("\r")
            self._line(line)

    def _line(self, line: str) -> None:
        if self._state is _State.HEADER:
            self._header_line(line)
        elif self._state is _State.USAGE:
            self._usage_line(line)
        else:
            self._command_line(line)

    def _header_line(self, line: str) -> None:
        if line == "":
            if not self._header:
                raise AgiProtocolError("empty AGI environment")
            self._state = _State.COMMANDS
            self._events.append(AgiEnvironment(dict(self._header)))
            return
        self._header_lines += 1
        if self._header_lines > self._max_header_lines:
            raise AgiProtocolError(f"AGI environment longer than {self._max_header_lines} lines")
        if line == "HANGUP":  # the caller left before we read the whole header
            self._events.append(Hangup())
            return
        name, sep, value = line.partition(":")
        if not sep or not name.startswith("agi_") or not re.fullmatch(r"agi_[A-Za-z0-9_]+", name):
            raise AgiProtocolError(f"malformed AGI environment line: {line[:80]!r}")
        self._header[name] = value.strip()

    def _command_line(self, line: str) -> None:
        if line == "HANGUP":
            self._events.append(Hangup())
            return
        if line == "":
            return  # stray blank line between replies: harmless
        if line.startswith("520-"):
            self._state = _State.USAGE
            self._usage = [line[4:]]
            return
        match = _RESPONSE.match(line)
        if match is None:
            raise AgiProtocolError(f"malformed AGI reply: {line[:80]!r}")
        endpos = match.group("endpos")
        self._events.append(
            AgiResponse(
                code=int(match.group("code")),
                result=match.group("result") or "",
                data=match.group("data") or "",
                endpos=int(endpos) if endpos is not None else None,
                text=line,
            )
        )

    def _usage_line(self, line: str) -> None:
        if line.startswith("520 "):
            usage = tuple(self._usage)
            self._usage = []
            self._state = _State.COMMANDS
            self._events.append(AgiResponse(code=520, text="\n".join(usage), usage=usage))
            return
        if len(self._usage) >= MAX_USAGE_LINES:
            raise AgiProtocolError(f"520 usage block longer than {MAX_USAGE_LINES} lines")
        self._usage.append(line)


# ---------------------------------------------------------------- commands out
def quote(argument: str) -> str:
    """One AGI argument, always double-quoted, with quotes and backslashes escaped.

    Asterisk splits a command line on spaces outside quotes and ends it at the newline, so a newline
    in an argument would start a second command: control characters become spaces.
    """
    cleaned = re.sub(r"[\x00-\x1f\x7f]", " ", argument)
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


def command(name: str, *arguments: str | int) -> bytes:
    """Build one command line. ``name`` is ours (a constant); arguments may carry caller data."""
    if not re.fullmatch(r"[A-Z]+(?: [A-Z]+)*", name):
        raise ValueError(f"not an AGI command name: {name!r}")
    parts = [name]
    for argument in arguments:
        parts.append(str(argument) if isinstance(argument, int) else quote(argument))
    line = " ".join(parts) + "\n"
    encoded = line.encode("utf-8")
    if len(encoded) > MAX_LINE_BYTES:
        raise ValueError(f"AGI command longer than {MAX_LINE_BYTES} bytes")
    return encoded


def check(response: AgiResponse) -> AgiResponse:
    """Raise the exception that mirrors a failure reply; return a 200 reply unchanged."""
    if response.code == 200:
        if response.result == "-1" and response.data == "hangup":
            raise AgiHangup(response.text)
        return response
    if response.code == 511:
        raise AgiDeadChannel(response.text)
    if response.code == 510:
        raise AgiInvalidCommand(response.text)
    if response.code == 520:
        raise AgiUsageError(response.text)
    raise AgiProtocolError(f"unexpected AGI reply: {response.text[:80]!r}")
