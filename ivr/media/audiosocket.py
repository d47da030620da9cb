"""The AudioSocket protocol without I/O: bytes in, typed events out; frames out as bytes.

A frame is a kind (1 byte), a payload length (2 bytes, big-endian) and the payload. What Asterisk
(``app_audiosocket``/``res_audiosocket``, 22.x) sends the robot:

* ``0x01`` UUID, 16 bytes, always the first frame (the UUID given to ``AudioSocket(<uuid>,host:port)``);
* ``0x10`` audio: signed linear 16-bit little-endian, 8 kHz mono; 20 ms = 320 bytes per frame;
* ``0x03`` DTMF: one ASCII key per frame, on key release (since Asterisk 20.14 / 22.4);
* ``0xff`` error (an optional code; Asterisk's own: 1 hang-up, 2 frame forwarding, 4 memory) and
  ``0x00`` terminate are defined by the protocol, but Asterisk 22 sends neither: **a caller hang-up
  arrives as TCP EOF**, which the parser reports as an ``Eof`` event.

What the robot sends: ``0x10`` audio and ``0x00`` terminate, nothing else. Asterisk ends the application
on any other kind or on a zero-length payload, so ``audio_frame`` refuses empty or odd-sized audio and
there is no encoder for other kinds on the robot's side (the ``asterisk_*`` encoders exist for test
peers that play Asterisk's part).

``AudioSocketParser(peer=Peer.ASTERISK)`` parses what Asterisk sends (the robot's side);
``AudioSocketParser(peer=Peer.SERVER)`` parses what a server sends (a test peer playing Asterisk),
and refuses what Asterisk would refuse. Payloads are capped before they are buffered: a peer cannot
make us hold more than one header and ``max_payload`` bytes.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

KIND_HANGUP = 0x00
KIND_UUID = 0x01
KIND_DTMF = 0x03
KIND_AUDIO = 0x10
KIND_ERROR = 0xFF

SAMPLE_RATE_HZ = 8000
SAMPLE_BYTES = 2
FRAME_MS = 20
FRAME_BYTES = SAMPLE_RATE_HZ * FRAME_MS // 1000 * SAMPLE_BYTES  # 320
HEADER_BYTES = 3
MAX_PAYLOAD_BYTES = 16000  # 1 s of 8 kHz audio; Asterisk sends 20 ms (320 bytes) frames
DTMF_KEYS = frozenset("0123456789*#ABCD")
SILENCE_FRAME = b"\x00" * FRAME_BYTES

_KIND_NAMES = {
    KIND_HANGUP: "hang-up",
    KIND_UUID: "UUID",
    KIND_DTMF: "DTMF",
    KIND_AUDIO: "audio",
    KIND_ERROR: "error",
}


class AudioSocketError(Exception):
    """Base of everything the AudioSocket layer raises."""


class AudioSocketProtocolError(AudioSocketError):
    """The peer sent something that is not AudioSocket as we accept it (unknown kind, bad size, order)."""


class Peer(enum.Enum):
    """Whose frames a parser reads."""

    ASTERISK = "asterisk"  # the robot reads Asterisk: UUID first, then audio, DTMF (error, hang-up)
    SERVER = "server"  # a test peer reads the robot: audio and hang-up only, never empty


# ---------------------------------------------------------------- events
@dataclass(frozen=True)
class Uuid:
    """The call's stream identifier, Asterisk's first frame."""

    uuid: uuid.UUID


@dataclass(frozen=True)
class Audio:
    """Caller audio: 16-bit little-endian samples at 8 kHz (usually 320 bytes, 20 ms)."""

    pcm: bytes

    @property
    def duration_ms(self) -> float:
        return len(self.pcm) / SAMPLE_BYTES * 1000 / SAMPLE_RATE_HZ


@dataclass(frozen=True)
class Dtmf:
    """One key the caller pressed (sent on release): ``0``-``9``, ``*``, ``#``, ``A``-``D``."""

    key: str


@dataclass(frozen=True)
class Hangup:
    """A ``0x00`` frame: the peer ends the stream (the connection closes after it)."""


@dataclass(frozen=True)
class Error:
    """A ``0xff`` frame; ``code`` is its payload as a big-endian number, None when it had none."""

    code: int | None


@dataclass(frozen=True)
class Eof:
    """The connection closed. ``partial``: it closed in the middle of a frame (that frame is lost)."""

    partial: bool = False


Event = Uuid | Audio | Dtmf | Hangup | Error | Eof


class _State(enum.Enum):
    AWAIT_UUID = "await-uuid"
    STREAMING = "streaming"
    ENDED = "ended"  # after a 0x00 frame: only EOF may follow
    CLOSED = "closed"  # after EOF


class AudioSocketParser:
    """Feed bytes in any chunking, take events. One instance per connection; holds all protocol state."""

    def __init__(self, peer: Peer = Peer.ASTERISK, *, max_payload: int = MAX_PAYLOAD_BYTES) -> None:
        if not 1 <= max_payload <= 0xFFFF:
            raise ValueError(f"max_payload must be 1..65535, got {max_payload}")
        self._peer = peer
        self._max_payload = max_payload
        self._buffer = bytearray()
        self._state = _State.AWAIT_UUID if peer is Peer.ASTERISK else _State.STREAMING
        self._events: list[Event] = []

    @property
    def ended(self) -> bool:
        """True once a hang-up frame or EOF was parsed."""
        return self._state in (_State.ENDED, _State.CLOSED)

    def feed(self, data: bytes) -> None:
        """Parse ``data``; raises ``AudioSocketProtocolError`` on anything malformed (the events parsed
        before the bad frame stay available from ``events``)."""
        if self._state is _State.CLOSED:
            raise AudioSocketProtocolError("data after EOF")
        self._buffer += data
        self._drain()

    def feed_eof(self) -> None:
        """The peer closed the connection: an ``Eof`` event (once)."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        self._events.append(Eof(partial=bool(self._buffer)))
        self._buffer.clear()

    def events(self) -> list[Event]:
        """The events parsed so far, oldest first; each is returned once."""
        out, self._events = self._events, []
        return out

    def _drain(self) -> None:
        while len(self._buffer) >= HEADER_BYTES:
            kind = self._buffer[0]
            length = int.from_bytes(self._buffer[1:3], "big")
            self._check_header(kind, length)  # before the payload is buffered
            if len(self._buffer) < HEADER_BYTES + length:
                return
            payload = bytes(self._buffer[HEADER_BYTES : HEADER_BYTES + length])
            del self._buffer[: HEADER_BYTES + length]
            self._events.append(self._frame(kind, payload))

    def _check_header(self, kind: int, length: int) -> None:
        name = _KIND_NAMES.get(kind)
        if self._state is _State.ENDED:
            raise AudioSocketProtocolError(f"{name or hex(kind)} frame after the hang-up frame")
        if name is None:
            raise AudioSocketProtocolError(f"unknown AudioSocket frame kind 0x{kind:02x} ({length} bytes)")
        if length > self._max_payload:
            raise AudioSocketProtocolError(
                f"{name} frame of {length} bytes is larger than the {self._max_payload}-byte limit"
            )
        if self._peer is Peer.SERVER:
            if kind not in (KIND_AUDIO, KIND_HANGUP):
                raise AudioSocketProtocolError(f"a server may send only audio and hang-up, not {name}")
            if kind == KIND_AUDIO and length == 0:
                raise AudioSocketProtocolError("empty audio frame (Asterisk ends the application on it)")
        if self._state is _State.AWAIT_UUID and kind != KIND_UUID:
            raise AudioSocketProtocolError(f"{name} frame before the UUID frame")
        if self._state is _State.STREAMING and kind == KIND_UUID:
            raise AudioSocketProtocolError("a second UUID frame")
        expected = {KIND_UUID: 16, KIND_DTMF: 1, KIND_HANGUP: 0}.get(kind)
        if expected is not None and length != expected:
            raise AudioSocketProtocolError(f"{name} frame of {length} bytes, expected {expected}")
        if kind == KIND_AUDIO and length % SAMPLE_BYTES:
            raise AudioSocketProtocolError(f"audio frame of {length} bytes: not whole 16-bit samples")

    def _frame(self, kind: int, payload: bytes) -> Event:
        if kind == KIND_AUDIO:
            return Audio(payload)
        if kind == KIND_UUID:
            self._state = _State.STREAMING
            return Uuid(uuid.UUID(bytes=payload))
        if kind == KIND_DTMF:
            key = chr(payload[0]).upper()
            if key not in DTMF_KEYS:
                raise AudioSocketProtocolError(f"DTMF frame with {payload!r}: not a key")
            return Dtmf(key)
        if kind == KIND_ERROR:
            return Error(int.from_bytes(payload, "big") if payload else None)
        self._state = _State.ENDED
        return Hangup()


# ---------------------------------------------------------------- frames out (the robot's side)
def _frame_bytes(kind: int, payload: bytes) -> bytes:
    return bytes((kind,)) + len(payload).to_bytes(2, "big") + payload


def audio_frame(pcm: bytes) -> bytes:
    """One audio frame (header and payload in one ``bytes``: write it with one call). ``pcm``: 16-bit
    little-endian samples at 8 kHz, not empty (Asterisk ends the application on an empty payload)."""
    if not pcm:
        raise ValueError("empty audio frame: Asterisk ends the application on it")
    if len(pcm) % SAMPLE_BYTES:
        raise ValueError(f"{len(pcm)} bytes of audio: not whole 16-bit samples")
    if len(pcm) > 0xFFFF:
        raise ValueError(f"{len(pcm)} bytes of audio do not fit one frame")
    return _frame_bytes(KIND_AUDIO, pcm)


def hangup_frame() -> bytes:
    """The terminate frame: Asterisk ends ``AudioSocket()`` and the dialplan (or AGI) goes on."""
    return _frame_bytes(KIND_HANGUP, b"")


def split_frames(pcm: bytes, frame_bytes: int = FRAME_BYTES) -> Iterator[bytes]:
    """``pcm`` cut into ``frame_bytes`` payloads; the last one is padded with silence to full size."""
    if frame_bytes <= 0 or frame_bytes % SAMPLE_BYTES:
        raise ValueError(f"frame size must be a positive number of whole samples, got {frame_bytes}")
    if len(pcm) % SAMPLE_BYTES:
        raise ValueError(f"{len(pcm)} bytes of audio: not whole 16-bit samples")
    for start in range(0, len(pcm), frame_bytes):
        chunk = pcm[start : start + frame_bytes]
        yield chunk + b"\x00" * (frame_bytes - len(chunk))


# ---------------------------------------------------------------- Asterisk's side (test peers only)
def asterisk_uuid_frame(value: uuid.UUID) -> bytes:
    """What Asterisk sends first. For test peers: the robot never sends it."""
    return _frame_bytes(KIND_UUID, value.bytes)


def asterisk_dtmf_frame(key: str) -> bytes:
    """A key as Asterisk sends it. For test peers: the robot never sends it."""
    if key not in DTMF_KEYS:
        raise ValueError(f"not a DTMF key: {key!r}")
    return _frame_bytes(KIND_DTMF, key.encode("ascii"))


def asterisk_audio_frame(pcm: bytes) -> bytes:
    """Caller audio as Asterisk sends it (same layout as ``audio_frame``). For test peers."""
    return audio_frame(pcm)
