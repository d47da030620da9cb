"""The AudioSocket protocol as tables of bytes in and events out; no sockets."""

from __future__ import annotations

import uuid

import pytest

from ivr.media.audiosocket import (
    FRAME_BYTES,
    SILENCE_FRAME,
    Audio,
    AudioSocketParser,
    AudioSocketProtocolError,
    Dtmf,
    Eof,
    Error,
    Hangup,
    Peer,
    Uuid,
    asterisk_dtmf_frame,
    asterisk_uuid_frame,
    audio_frame,
    hangup_frame,
    split_frames,
)

CALL = uuid.UUID("3f2c1b4a-9d8e-4f70-a1b2-c3d4e5f60718")
UUID_WIRE = b"\x01\x00\x10" + bytes.fromhex("3f2c1b4a9d8e4f70a1b2c3d4e5f60718")
PCM = bytes(range(256)) + bytes(64)  # 320 bytes, 20 ms
AUDIO_WIRE = b"\x10\x01\x40" + PCM


def parse(*chunks: bytes, peer: Peer = Peer.ASTERISK, eof: bool = False) -> list[object]:
    parser = AudioSocketParser(peer)
    out: list[object] = []
    for chunk in chunks:
        parser.feed(chunk)
        out.extend(parser.events())
    if eof:
        parser.feed_eof()
        out.extend(parser.events())
    return out


# ---------------------------------------------------------------- what Asterisk sends
FRAMES_FROM_ASTERISK = [
    (UUID_WIRE, [Uuid(CALL)]),
    (UUID_WIRE + AUDIO_WIRE, [Uuid(CALL), Audio(PCM)]),
    (UUID_WIRE + b"\x10\x00\x04\x01\x00\xff\x7f", [Uuid(CALL), Audio(b"\x01\x00\xff\x7f")]),
    (UUID_WIRE + b"\x03\x00\x011", [Uuid(CALL), Dtmf("1")]),
    (UUID_WIRE + b"\x03\x00\x01#\x03\x00\x01*", [Uuid(CALL), Dtmf("#"), Dtmf("*")]),
    (UUID_WIRE + b"\x03\x00\x01b", [Uuid(CALL), Dtmf("B")]),
    (UUID_WIRE + b"\xff\x00\x01\x02", [Uuid(CALL), Error(2)]),
    (UUID_WIRE + b"\xff\x00\x00", [Uuid(CALL), Error(None)]),
    (UUID_WIRE + b"\x00\x00\x00", [Uuid(CALL), Hangup()]),
    (UUID_WIRE + b"\x10\x00\x00", [Uuid(CALL), Audio(b"")]),  # tolerated from Asterisk, harmless
]


@pytest.mark.parametrize(("wire", "expected"), FRAMES_FROM_ASTERISK)
def test_frames_from_asterisk(wire: bytes, expected: list[object]) -> None:
    assert parse(wire) == expected


@pytest.mark.parametrize(("wire", "expected"), FRAMES_FROM_ASTERISK)
def test_frames_split_at_every_byte_give_the_same_events(wire: bytes, expected: list[object]) -> None:
    assert parse(*[wire[i : i + 1] for i in range(len(wire))]) == expected


def test_an_incomplete_frame_waits_for_the_rest() -> None:
    parser = AudioSocketParser()
    parser.feed(UUID_WIRE + AUDIO_WIRE[:100])
    assert parser.events() == [Uuid(CALL)]
    parser.feed(AUDIO_WIRE[100:])
    assert parser.events() == [Audio(PCM)]
    assert parser.events() == []  # each event once


def test_caller_hangup_is_eof_at_a_frame_boundary() -> None:
    assert parse(UUID_WIRE, AUDIO_WIRE, eof=True) == [Uuid(CALL), Audio(PCM), Eof(partial=False)]


def test_eof_in_the_middle_of_a_frame_is_a_partial_eof() -> None:
    assert parse(UUID_WIRE, AUDIO_WIRE[:7], eof=True) == [Uuid(CALL), Eof(partial=True)]
    assert parse(b"\x01\x00", eof=True) == [Eof(partial=True)]


def test_eof_is_reported_once_and_data_after_it_is_refused() -> None:
    parser = AudioSocketParser()
    parser.feed_eof()
    parser.feed_eof()
    assert parser.events() == [Eof()]
    assert parser.ended
    with pytest.raises(AudioSocketProtocolError, match="after EOF"):
        parser.feed(UUID_WIRE)


def test_hangup_frame_then_eof() -> None:
    parser = AudioSocketParser()
    parser.feed(UUID_WIRE + b"\x00\x00\x00")
    assert parser.ended
    parser.feed_eof()
    assert parser.events() == [Uuid(CALL), Hangup(), Eof()]


BAD_FROM_ASTERISK = [
    (AUDIO_WIRE, "before the UUID"),
    (b"\x03\x00\x011", "before the UUID"),
    (b"\x01\x00\x0f" + bytes(15), "expected 16"),
    (UUID_WIRE + UUID_WIRE, "second UUID"),
    (UUID_WIRE + b"\x02\x00\x06" + bytes(6), "unknown AudioSocket frame kind 0x02"),
    (UUID_WIRE + b"\x12\x01\x40", "unknown AudioSocket frame kind 0x12"),  # slin16 of newer Asterisk
    (UUID_WIRE + b"\x10\xff\xff", "larger than the 16000-byte limit"),
    (UUID_WIRE + b"\x10\x00\x03abc", "not whole 16-bit samples"),
    (UUID_WIRE + b"\x03\x00\x02" + b"12", "expected 1"),
    (UUID_WIRE + b"\x03\x00\x01x", "not a key"),
    (UUID_WIRE + b"\x00\x00\x01\x00", "expected 0"),
    (UUID_WIRE + b"\x00\x00\x00" + AUDIO_WIRE, "after the hang-up"),
]


@pytest.mark.parametrize(("wire", "message"), BAD_FROM_ASTERISK)
def test_malformed_frames_are_protocol_errors(wire: bytes, message: str) -> None:
    with pytest.raises(AudioSocketProtocolError, match=message):
        parse(wire)


def test_an_oversized_frame_is_refused_from_its_header_before_its_payload_arrives() -> None:
    parser = AudioSocketParser(max_payload=640)
    parser.feed(UUID_WIRE)
    with pytest.raises(AudioSocketProtocolError, match="larger than the 640-byte limit"):
        parser.feed(b"\x10\x02\x82")  # 642 bytes announced, none sent yet


def test_events_before_a_bad_frame_are_kept() -> None:
    parser = AudioSocketParser()
    with pytest.raises(AudioSocketProtocolError):
        parser.feed(UUID_WIRE + AUDIO_WIRE + b"\x77\x00\x00")
    assert parser.events() == [Uuid(CALL), Audio(PCM)]


@pytest.mark.parametrize("limit", [0, 70000])
def test_the_payload_cap_must_fit_the_wire(limit: int) -> None:
    with pytest.raises(ValueError):
        AudioSocketParser(max_payload=limit)


# ---------------------------------------------------------------- what the robot sends
FRAMES_FROM_THE_ROBOT = [
    (audio_frame(PCM), AUDIO_WIRE),
    (audio_frame(b"\x01\x00"), b"\x10\x00\x02\x01\x00"),
    (audio_frame(SILENCE_FRAME), b"\x10\x01\x40" + bytes(320)),
    (hangup_frame(), b"\x00\x00\x00"),
    (asterisk_uuid_frame(CALL), UUID_WIRE),
    (asterisk_dtmf_frame("#"), b"\x03\x00\x01#"),
]


@pytest.mark.parametrize(("frame", "wire"), FRAMES_FROM_THE_ROBOT)
def test_encoders(frame: bytes, wire: bytes) -> None:
    assert frame == wire


@pytest.mark.parametrize("pcm", [b"", b"\x01", bytes(65536)])
def test_audio_that_asterisk_would_refuse_is_never_encoded(pcm: bytes) -> None:
    with pytest.raises(ValueError):
        audio_frame(pcm)


def test_a_test_peer_reads_what_the_robot_sends() -> None:
    wire = audio_frame(PCM) + audio_frame(SILENCE_FRAME) + hangup_frame()
    assert parse(wire, peer=Peer.SERVER, eof=True) == [Audio(PCM), Audio(SILENCE_FRAME), Hangup(), Eof()]


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"\x10\x00\x00", "empty audio"),
        (UUID_WIRE, "only audio and hang-up"),
        (b"\x03\x00\x011", "only audio and hang-up"),
        (b"\xff\x00\x00", "only audio and hang-up"),
    ],
)
def test_what_asterisk_would_refuse_from_a_server_is_a_protocol_error(wire: bytes, message: str) -> None:
    with pytest.raises(AudioSocketProtocolError, match=message):
        parse(wire, peer=Peer.SERVER)


def test_round_trip_of_a_prompt_cut_into_frames() -> None:
    prompt = bytes(range(256)) * 5  # 1280 bytes: four 20 ms frames, the last one short
    frames = list(split_frames(prompt[:-100]))
    assert [len(f) for f in frames] == [FRAME_BYTES] * 4
    assert frames[-1].endswith(bytes(100))
    events = parse(b"".join(audio_frame(f) for f in frames), peer=Peer.SERVER)
    assert b"".join(e.pcm for e in events if isinstance(e, Audio)) == prompt[:-100] + bytes(100)


def test_split_frames_refuses_half_samples() -> None:
    with pytest.raises(ValueError):
        list(split_frames(b"\x00\x01\x02"))
    with pytest.raises(ValueError):
        list(split_frames(PCM, frame_bytes=321))


def test_audio_duration() -> None:
    assert Audio(PCM).duration_ms == 20.0
