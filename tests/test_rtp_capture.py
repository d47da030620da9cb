"""The loopback RTP capture the SIP tests compare the robot's audio with (ivr.asterisk.sipp.RtpCapture):
real UDP packets sent on loopback and captured by it, as Asterisk's would be."""

from __future__ import annotations

import os
import socket
import struct
import time

import pytest

from ivr.asterisk.sipp import PCMU, RtpCapture

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a packet socket needs root (the suite runs as root)")


def rtp(number: int, payload: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, PCMU, number, 160 * number, 0x1234) + payload


def captured(numbers: list[int]) -> RtpCapture:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        port = receiver.getsockname()[1]
        with RtpCapture([port]) as capture, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for number in numbers:
                sender.sendto(rtp(number, bytes([number % 256]) * 160), ("127.0.0.1", port))
            deadline = time.monotonic() + 5
            while len(capture.packets[port]) < len(numbers) and time.monotonic() < deadline:
                time.sleep(0.01)
    return capture


def test_a_stream_that_passes_65535_comes_out_in_the_order_it_was_sent() -> None:
    # Asterisk starts each stream at a random sequence number; one packet arrives late
    sent = [65533, 65534, 0, 65535, 1, 2]
    capture = captured(sent)
    [port] = capture.ports
    expected = b"".join(bytes([n % 256]) * 160 for n in (65533, 65534, 65535, 0, 1, 2))
    assert capture.payload(port) == expected
    assert capture.missing(port) == 0
    assert capture.dropped == 0


def test_a_packet_that_never_arrived_is_counted_missing() -> None:
    capture = captured([65534, 65535, 1, 2])  # 0 lost on the way
    [port] = capture.ports
    assert capture.missing(port) == 1
    assert "1 sequence numbers missing" in capture.diagnosis(port)
