"""The AGI protocol as tables of bytes in and events out; no sockets."""

from __future__ import annotations

import pytest

from ivr.agi.protocol import (
    AgiDeadChannel,
    AgiEnvironment,
    AgiHangup,
    AgiInvalidCommand,
    AgiParser,
    AgiProtocolError,
    AgiResponse,
    AgiUsageError,
    Eof,
    Hangup,
    check,
    command,
    quote,
)
from ivr.testing.harness import parse_arguments

ENV = (
    b"agi_network: yes\n"
    b"agi_request: agi://127.0.0.1:4573/ivr?lang=ko-KR\n"
    b"agi_channel: PJSIP/softphone-00000001\n"
    b"agi_uniqueid: 1700000000.42\n"
    b"agi_callerid: 13800000001\n"
    b"\n"
)


def parse(*chunks: bytes, eof: bool = False) -> list[object]:
    parser = AgiParser()
    out: list[object] = []
    for chunk in chunks:
        parser.feed(chunk)
        out.extend(parser.events())
    if eof:
        parser.feed_eof()
        out.extend(parser.events())
    return out


def test_environment_block_becomes_one_event() -> None:
    (event,) = parse(ENV)
    assert isinstance(event, AgiEnvironment)
    assert event.caller_id == "13800000001"
    assert event.script == "ivr"
    assert event.params == {"lang": "ko-KR"}
    assert event.unique_id == "1700000000.42"


def test_environment_split_at_every_byte_gives_the_same_event() -> None:
    chunks = [ENV[i : i + 1] for i in range(len(ENV))]
    (event,) = parse(*chunks)
    assert isinstance(event, AgiEnvironment)
    assert event.variables["agi_channel"] == "PJSIP/softphone-00000001"


@pytest.mark.parametrize("value", ["unknown", "", "anonymous"])
def test_withheld_caller_id_is_empty(value: str) -> None:
    (event,) = parse(f"agi_callerid: {value}\n\n".encode())
    assert isinstance(event, AgiEnvironment)
    assert event.caller_id == ""


RESPONSES = [
    (b"200 result=0\n", AgiResponse(200, "0", "", None, "200 result=0")),
    (b"200 result=1 (timeout) endpos=12345\n", AgiResponse(200, "1", "timeout", 12345, "200 result=1 (timeout) endpos=12345")),
    (b"200 result=35 (dtmf) endpos=800\r\n", AgiResponse(200, "35", "dtmf", 800, "200 result=35 (dtmf) endpos=800")),
    (b"200 result= (timeout)\n", AgiResponse(200, "", "timeout", None, "200 result= (timeout)")),
    (b"200 result=-1 (hangup) endpos=0\n", AgiResponse(200, "-1", "hangup", 0, "200 result=-1 (hangup) endpos=0")),
    (b"510 Invalid or unknown command\n", AgiResponse(510, "", "", None, "510 Invalid or unknown command")),
    (
        b"511 Command Not Permitted on a dead channel or intercepted\n",
        AgiResponse(511, "", "", None, "511 Command Not Permitted on a dead channel or intercepted"),
    ),
]


@pytest.mark.parametrize(("wire", "expected"), RESPONSES)
def test_command_responses(wire: bytes, expected: AgiResponse) -> None:
    events = parse(ENV, wire)
    assert events[1] == expected


def test_usage_reply_is_one_event_with_its_lines() -> None:
    wire = (
        b"520-Invalid command syntax.  Proper usage follows:\n"
        b"Usage: STREAM FILE <filename> <escape digits> [sample offset]\n"
        b"520 End of proper usage.\n"
    )
    events = parse(ENV, wire)
    assert len(events) == 2
    usage = events[1]
    assert isinstance(usage, AgiResponse)
    assert usage.code == 520
    assert usage.usage[1].startswith("Usage: STREAM FILE")
    with pytest.raises(AgiUsageError):
        check(usage)


def test_hangup_line_then_reply_then_eof() -> None:
    events = parse(ENV, b"HANGUP\n200 result=-1 (hangup) endpos=0\n", eof=True)
    assert isinstance(events[1], Hangup)
    assert isinstance(events[2], AgiResponse)
    assert isinstance(events[3], Eof)


def test_eof_in_the_middle_of_the_header_is_an_eof_event() -> None:
    events = parse(b"agi_network: yes\nagi_req", eof=True)
    assert events == [Eof()]


@pytest.mark.parametrize(
    "wire",
    [
        b"this is not agi\n\n",  # not an agi_ line
        b"agi_network yes\n\n",  # no colon
        b"\n",  # empty environment
        b"agi_x: " + b"a" * 9000 + b"\n",  # endless line
        b"agi_x: 1\n" * 300 + b"\n",  # header too long
    ],
)
def test_malformed_or_oversized_header_is_a_protocol_error(wire: bytes) -> None:
    with pytest.raises(AgiProtocolError):
        parse(wire)


def test_endless_line_without_newline_is_refused_before_it_grows() -> None:
    parser = AgiParser()
    parser.feed(ENV)
    with pytest.raises(AgiProtocolError):
        for _ in range(10):
            parser.feed(b"x" * 1000)


@pytest.mark.parametrize("wire", [b"hello\n", b"2000 result=1\n", b"\x00\xff\xfe\n"])
def test_garbage_reply_is_a_protocol_error(wire: bytes) -> None:
    with pytest.raises(AgiProtocolError):
        parse(ENV, wire)


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (AgiResponse(511, text="511 dead"), AgiDeadChannel),
        (AgiResponse(510, text="510 x"), AgiInvalidCommand),
        (AgiResponse(200, "-1", "hangup"), AgiHangup),
        (AgiResponse(404, text="404"), AgiProtocolError),
    ],
)
def test_failure_replies_raise_the_matching_exception(response: AgiResponse, error: type[Exception]) -> None:
    with pytest.raises(error):
        check(response)


def test_a_dead_channel_is_a_hangup() -> None:
    assert issubclass(AgiDeadChannel, AgiHangup)


COMMANDS = [
    (("ANSWER",), b"ANSWER\n"),
    (("STREAM FILE", "/var/sounds/x", ""), b'STREAM FILE "/var/sounds/x" ""\n'),
    (("RECORD FILE", "/spool/a", "wav", "#", 15000, 0, "s=1"), b'RECORD FILE "/spool/a" "wav" "#" 15000 0 "s=1"\n'),
    (("SET VARIABLE", "IVR_RESULT", "transfer"), b'SET VARIABLE "IVR_RESULT" "transfer"\n'),
    (("SET VARIABLE", "X", 'say "hi"'), b'SET VARIABLE "X" "say \\"hi\\""\n'),
    (("SET VARIABLE", "X", "a\\b"), b'SET VARIABLE "X" "a\\\\b"\n'),
    (("VERBOSE", "line one\nHANGUP"), b'VERBOSE "line one HANGUP"\n'),
]


@pytest.mark.parametrize(("call", "wire"), COMMANDS)
def test_commands_are_quoted(call: tuple[str, ...], wire: bytes) -> None:
    assert command(*call) == wire


@pytest.mark.parametrize(
    "text", ["plain", "with space", 'a "quote"', "back\\slash", "new\nline", "semi;colon $(rm -rf /)", ""]
)
def test_quoted_argument_survives_asterisks_argument_parser(text: str) -> None:
    line = command("SET VARIABLE", "NAME", text).decode().rstrip("\n")
    assert "\n" not in line  # one command, never two
    assert parse_arguments(line) == ["SET", "VARIABLE", "NAME", text.replace("\n", " ")]


def test_command_names_cannot_carry_arguments() -> None:
    with pytest.raises(ValueError):
        command("ANSWER\nHANGUP")


def test_overlong_command_is_refused() -> None:
    with pytest.raises(ValueError):
        command("VERBOSE", "x" * 10000)


def test_quote_keeps_unicode() -> None:
    assert quote("您好") == '"您好"'
