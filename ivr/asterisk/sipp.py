"""Real SIP callers with SIPp (Debian's ``sip-tester``): the caller's audio as a pcap, the scenario, the run.

SIPp places the calls (UDP, digest auth) and sends each caller's media with ``play_pcap_audio``:
RTP packets replayed from a pcap file at the pace of their time stamps. ``CallerAudio`` writes such
a file from the project's own 8 kHz recordings, without any capture tool: G.711 u-law RTP (payload
type 0) in UDP/IPv4/Ethernet frames, keys as RFC 4733 telephone events (payload type 101) in the same
RTP stream, silence where the caller says nothing.

A caller does not know when the robot listens, so ``uac_scenario`` makes each turn wait for a SIP
NOTIFY inside the call (sent by whoever watches the robot, e.g. the test through AMI
``PJSIPNotify`` when the robot starts ``RECORD FILE``); until then, and after each turn, the caller
sends silence so that Asterisk's silence detection runs. ``run_sipp`` runs one SIPp process for a
batch of calls and reads back what it reports (exit status, per-call answer times).

Everything here is for loopback test traffic: SIPp needs root for ``play_pcap_audio`` (raw sockets).
"""

from __future__ import annotations

import audioop
import dataclasses
import html
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
import wave
from collections.abc import Sequence
from pathlib import Path

SAMPLE_RATE = 8000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000  # 160 samples = 160 u-law bytes per packet
PCMU = 0
TELEPHONE_EVENT = 101
ULAW_SILENCE = b"\xff"  # u-law of linear 0
DTMF_EVENTS = {**{d: int(d) for d in "0123456789"}, "*": 10, "#": 11, "A": 12, "B": 13, "C": 14, "D": 15}
# Addresses written into the pcap: SIPp keeps only the UDP part and replaces both ports and addresses.
_PCAP_SRC = ("127.0.0.1", 6000)
_PCAP_DST = ("127.0.0.1", 16000)


class SippError(RuntimeError):
    """SIPp is missing, or it could not run the scenario."""


# ---------------------------------------------------------------- RTP and pcap
def rtp_packet(payload_type: int, seq: int, timestamp: int, ssrc: int, payload: bytes, *, marker: bool = False) -> bytes:
    """One RTP packet (RFC 3550): version 2, no padding, extension or CSRC."""
    return (
        struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | payload_type, seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc)
        + payload
    )


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _frame(udp_payload: bytes, src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    """Ethernet + IPv4 + UDP around one RTP packet (checksums filled in, as a capture would show them)."""
    src_ip, dst_ip = bytes(map(int, src[0].split("."))), bytes(map(int, dst[0].split(".")))
    udp_len = 8 + len(udp_payload)
    pseudo = src_ip + dst_ip + struct.pack("!BBH", 0, 17, udp_len)
    udp = struct.pack("!HHHH", src[1], dst[1], udp_len, 0) + udp_payload
    udp = udp[:6] + struct.pack("!H", _checksum(pseudo + udp) or 0xFFFF) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0x4000, 64, 17, 0, src_ip, dst_ip)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    ethernet = b"\x00" * 12 + b"\x08\x00"  # no MAC addresses needed; EtherType IPv4
    return ethernet + ip + udp


def write_pcap(path: Path, packets: Sequence[tuple[float, bytes]]) -> Path:
    """A classic pcap file (link type Ethernet) of RTP packets, each with its send time in seconds."""
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for at, rtp in packets:
            frame = _frame(rtp, _PCAP_SRC, _PCAP_DST)
            seconds, micros = divmod(round(at * 1_000_000), 1_000_000)
            out.write(struct.pack("<IIII", seconds, micros, len(frame), len(frame)) + frame)
    return path


def read_wav_8k(path: Path) -> bytes:
    """16-bit linear samples of an 8 kHz mono WAV (the project's recordings and prompts)."""
    with wave.open(str(path), "rb") as w:
        if (w.getnchannels(), w.getsampwidth(), w.getframerate()) != (1, 2, SAMPLE_RATE):
            raise ValueError(f"{path}: not 8 kHz mono 16-bit")
        return w.readframes(w.getnframes())


class CallerAudio:
    """What one caller sends in one turn, as one RTP stream: speech, keys and silence in sequence.

    >>> audio = CallerAudio(ssrc=1).keys("12#").silence(1.0)
    >>> audio.write(Path("turn.pcap"))  # doctest: +SKIP
    """

    def __init__(self, *, ssrc: int, seq: int = 0, timestamp: int = 0) -> None:
        self.ssrc, self._seq, self._timestamp = ssrc, seq, timestamp
        self._packets: list[tuple[float, bytes]] = []
        self._at = 0.0  # send time of the next packet, seconds from the start of the turn

    @property
    def duration_s(self) -> float:
        return self._at

    def _add(self, payload_type: int, payload: bytes, *, timestamp: int, marker: bool = False, advance: bool = True) -> None:
        self._packets.append((self._at, rtp_packet(payload_type, self._seq, timestamp, self.ssrc, payload, marker=marker)))
        self._seq += 1
        if advance:
            self._at += FRAME_MS / 1000

    def linear(self, samples: bytes) -> CallerAudio:
        """16-bit linear 8 kHz samples as u-law packets of 20 ms (the last one padded with silence)."""
        ulaw = audioop.lin2ulaw(samples, 2)
        for start in range(0, len(ulaw), FRAME_SAMPLES):
            chunk = ulaw[start : start + FRAME_SAMPLES].ljust(FRAME_SAMPLES, ULAW_SILENCE)
            self._add(PCMU, chunk, timestamp=self._timestamp)
            self._timestamp += FRAME_SAMPLES
        return self

    def speech(self, wav: Path) -> CallerAudio:
        return self.linear(read_wav_8k(wav))

    def silence(self, seconds: float) -> CallerAudio:
        return self.linear(b"\0\0" * int(seconds * SAMPLE_RATE))

    def keys(self, digits: str, *, tone_ms: int = 200, gap_ms: int = 400) -> CallerAudio:
        """Each key as an RFC 4733 event of ``tone_ms`` (an update every 20 ms, three end packets), then
        ``gap_ms`` of silence: keys 600 ms apart by default, as Asterisk's test caller sends them."""
        for digit in digits:
            event = DTMF_EVENTS[digit.upper()]
            start = self._timestamp
            steps = max(1, tone_ms // FRAME_MS)
            for step in range(1, steps + 1):
                duration = step * FRAME_SAMPLES
                self._add(TELEPHONE_EVENT, struct.pack("!BBH", event, 10, duration), timestamp=start, marker=step == 1)
            for _ in range(3):  # the end of the event, sent three times (RFC 4733 2.5.1.4)
                self._add(TELEPHONE_EVENT, struct.pack("!BBH", event, 0x80 | 10, duration), timestamp=start, advance=False)
            self._timestamp = start + steps * FRAME_SAMPLES
            self.silence(gap_ms / 1000)
        return self

    def write(self, path: Path) -> Path:
        if not self._packets:
            raise ValueError("a caller's turn needs at least one packet")
        return write_pcap(path, self._packets)


# ---------------------------------------------------------------- the scenario
@dataclasses.dataclass(frozen=True)
class Caller:
    """One call of a batch: the caller's number (sent as P-Asserted-Identity) and the number dialled."""

    number: str
    dialled: str


def _send(message: str, extra: str = "") -> str:
    return f"  <send retrans=\"500\"{extra}>\n    <![CDATA[\n{message}\n    ]]>\n  </send>\n"


def _ok_to_last_request() -> str:
    return _send(
        "      SIP/2.0 200 OK\n      [last_Via:]\n      [last_From:]\n      [last_To:]\n      [last_Call-ID:]\n"
        "      [last_CSeq:]\n      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>\n"
        "      Content-Length: 0\n"
    ).replace(' retrans="500"', "")


def _play(pcap: Path) -> str:
    return f'  <nop>\n    <action>\n      <exec play_pcap_audio="{html.escape(str(pcap))}"/>\n    </action>\n  </nop>\n'


def uac_scenario(
    *,
    user: str,
    password: str,
    idle: Path,
    turns: Sequence[Path] = (),
    hangup_after_ms: int | None = None,
    wait_s: float = 120.0,
) -> str:
    """The SIPp scenario of one caller (UAC): INVITE, the digest challenge, INVITE with credentials,
    200/ACK; then the ``idle`` audio (silence) at once, and one ``turns`` pcap per NOTIFY received
    (answered with 200); finally either the caller hangs up after ``hangup_after_ms`` (BYE), or it
    waits for Asterisk's BYE (the robot hung up or handed over) and answers it. The caller's number
    and the number dialled come from the injection file (fields 0 and 1, see ``run_sipp``).

    The answer time (authenticated INVITE → 200) is measured as response time "answer", the wait for the
    challenge (first INVITE → 401; longer when a proxy in front fails over) as "challenge"."""
    if turns and hangup_after_ms is not None:
        raise ValueError("a caller either takes turns until Asterisk hangs up, or hangs up itself")
    if any(c in password for c in "]\r\n") or any(c in user for c in "]@ \r\n"):
        raise ValueError("user and password must fit in SIPp's [authentication] keyword")
    sdp = (
        "      v=0\n      o=sipp 1 1 IN IP[local_ip_type] [local_ip]\n      s=-\n"
        "      c=IN IP[media_ip_type] [media_ip]\n      t=0 0\n"
        f"      m=audio [auto_media_port] RTP/AVP {PCMU} {TELEPHONE_EVENT}\n"
        f"      a=rtpmap:{PCMU} PCMU/8000\n      a=rtpmap:{TELEPHONE_EVENT} telephone-event/8000\n"
        f"      a=fmtp:{TELEPHONE_EVENT} 0-16\n      a=ptime:20\n      a=sendrecv"
    )

    def invite(cseq: int, auth: str = "") -> str:
        return (
            "      INVITE sip:[field1]@[remote_ip]:[remote_port] SIP/2.0\n"
            "      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]\n"
            f"      From: \"Test caller\" <sip:{user}@[local_ip]:[local_port]>;tag=[pid]SIPpTag[call_number]\n"
            "      To: <sip:[field1]@[remote_ip]:[remote_port]>\n"
            "      Call-ID: [call_id]\n"
            f"      CSeq: {cseq} INVITE\n"
            f"      Contact: <sip:{user}@[local_ip]:[local_port];transport=[transport]>\n"
            "      P-Asserted-Identity: <sip:[field0]@[local_ip]>\n"
            f"{auth}"
            "      Max-Forwards: 70\n"
            "      User-Agent: ivr-test-sipp\n"
            "      Content-Type: application/sdp\n"
            "      Content-Length: [len]\n"
            "\n" + sdp
        )

    wait_ms = int(wait_s * 1000)
    parts = ['<?xml version="1.0" encoding="ISO-8859-1" ?>\n<!DOCTYPE scenario SYSTEM "sipp.dtd">\n']
    parts.append('<scenario name="ivr hotline caller">\n')
    parts.append(_send(invite(1), ' start_rtd="challenge"'))
    parts.append('  <recv response="100" optional="true"/>\n')
    parts.append(f'  <recv response="401" auth="true" rtd="challenge" timeout="{wait_ms}"/>\n')
    parts.append(_send(
        "      ACK sip:[field1]@[remote_ip]:[remote_port] SIP/2.0\n      [last_Via:]\n      [last_From:]\n"
        "      [last_To:]\n      [last_Call-ID:]\n      CSeq: 1 ACK\n      Max-Forwards: 70\n      Content-Length: 0\n"
    ).replace(' retrans="500"', ""))
    parts.append(_send(invite(2, f"      [authentication username={user} password={password}]\n"), ' start_rtd="answer"'))
    parts.append('  <recv response="100" optional="true"/>\n')
    parts.append('  <recv response="180" optional="true"/>\n')
    parts.append('  <recv response="183" optional="true"/>\n')
    parts.append(f'  <recv response="200" rrs="true" rtd="answer" timeout="{wait_ms}"/>\n')
    parts.append(_send(
        "      ACK [next_url] SIP/2.0\n      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]\n"
        "      [routes]\n      [last_From:]\n      [last_To:]\n      [last_Call-ID:]\n      CSeq: 2 ACK\n"
        f"      Contact: <sip:{user}@[local_ip]:[local_port];transport=[transport]>\n      Max-Forwards: 70\n"
        "      Content-Length: 0\n"
    ).replace(' retrans="500"', ""))
    parts.append(_play(idle))
    for turn in turns:
        # Asterisk may hang up instead (the robot handed over or gave up): then straight to the end
        parts.append('  <recv request="BYE" optional="true" next="bye"/>\n')
        parts.append(f'  <recv request="NOTIFY" timeout="{wait_ms}"/>\n')
        parts.append(_ok_to_last_request())
        parts.append(_play(turn))
    if hangup_after_ms is not None:
        parts.append(f'  <pause milliseconds="{hangup_after_ms}"/>\n')
        parts.append(_send(
            "      BYE [next_url] SIP/2.0\n      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]\n"
            "      [routes]\n      [last_From:]\n      [last_To:]\n      [last_Call-ID:]\n      CSeq: 3 BYE\n"
            f"      Contact: <sip:{user}@[local_ip]:[local_port];transport=[transport]>\n      Max-Forwards: 70\n"
            "      Content-Length: 0\n"
        ))
        parts.append(f'  <recv response="200" timeout="{wait_ms}"/>\n')
    else:
        parts.append('  <label id="bye"/>\n')
        parts.append(f'  <recv request="BYE" timeout="{wait_ms}"/>\n')
        parts.append(_ok_to_last_request())
    parts.append('  <ResponseTimeRepartition value="10, 20, 50, 100, 200, 500, 1000, 2000"/>\n')
    parts.append("</scenario>\n")
    return "".join(parts)


# ---------------------------------------------------------------- the run
@dataclasses.dataclass(frozen=True)
class SippRun:
    """What one SIPp process reported for a batch of calls."""

    returncode: int  # 0: every call succeeded; 1: at least one failed; other: SIPp could not run
    answer_ms: list[float]  # per successful answer: authenticated INVITE sent -> 200 OK received
    errors: str  # unexpected messages (SIPp's error log), and its stderr
    wall_s: float
    media_ports: list[int]  # call number n (from 1) announced media port media_ports[n - 1]
    challenge_ms: list[float] = dataclasses.field(default_factory=list)  # first INVITE sent -> 401 received
    successful: int | None = None  # calls SIPp counted as successful / failed (its final screen); None: unknown
    failed: int | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def sipp_binary() -> str | None:
    return shutil.which("sipp")


def run_sipp(
    scenario: str,
    callers: Sequence[Caller],
    *,
    workdir: Path,
    server: tuple[str, int] = ("127.0.0.1", 5060),
    media_port: int = 30000,
    simultaneous: int | None = None,
    timeout_s: float = 300.0,
    call_ids: str | None = None,
) -> SippRun:
    """Place ``len(callers)`` calls with SIPp, all at once (or ``simultaneous`` at a time), on loopback.

    The scenario and the injection file are written into ``workdir`` (0600: the scenario holds the
    SIP password); SIPp's logs stay there too. ``call_ids``: SIPp's ``-cid_str`` (default ``%u-%p@%s``;
    ``%u`` is the call number), for Call-IDs that do not depend on SIPp's process ID (a proxy hashes them)."""
    binary = sipp_binary()
    if binary is None:
        raise SippError("SIPp is not installed: apt-get install sip-tester")
    if not callers:
        raise ValueError("no calls to place")
    for caller in callers:
        if not (caller.number.isdigit() and caller.dialled.lstrip("+").isdigit()):
            raise ValueError(f"caller and dialled numbers must be digits: {caller}")
    workdir.mkdir(parents=True, exist_ok=True)
    scenario_file = workdir / "scenario.xml"
    fd = os.open(scenario_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="iso-8859-1") as out:
        out.write(scenario)
    injection = workdir / "callers.csv"
    injection.write_text("SEQUENTIAL\n" + "".join(f"{c.number};{c.dialled};\n" for c in callers), encoding="ascii")
    at_once = simultaneous or len(callers)
    command = [
        binary, f"{server[0]}:{server[1]}",
        "-sf", str(scenario_file), "-inf", str(injection),
        "-i", "127.0.0.1", "-mi", "127.0.0.1", "-mp", str(media_port),
        "-m", str(len(callers)), "-l", str(at_once), "-r", str(at_once), "-rp", "1000",
        "-nostdin", "-timeout", f"{int(timeout_s)}s", "-timeout_error",
        "-trace_err", "-error_file", str(workdir / "errors.log"),
        "-trace_rtt", "-rtt_freq", "1",
        "-trace_screen", "-screen_file", str(workdir / "screen.log"),
    ]  # fmt: skip
    if call_ids is not None:
        if "%u" not in call_ids or any(c.isspace() for c in call_ids):
            raise ValueError("call_ids needs %u (the call number) and no white space")
        command += ["-cid_str", call_ids]
    for stale in (workdir / "errors.log", *workdir.glob("*_rtt.csv")):
        stale.unlink(missing_ok=True)  # SIPp writes them only when it has something to say
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            timeout=timeout_s + 30, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise SippError(f"SIPp did not finish within {timeout_s + 30:.0f} s") from exc
    wall = time.monotonic() - started
    errors = done.stderr.decode("utf-8", errors="replace")
    error_log = workdir / "errors.log"
    if error_log.exists():
        errors = error_log.read_text(encoding="utf-8", errors="replace") + errors
    successful, failed = _screen_counts(workdir / "screen.log")
    return SippRun(
        returncode=done.returncode,
        answer_ms=_response_times(workdir, "answer"),
        challenge_ms=_response_times(workdir, "challenge"),
        errors=errors,
        wall_s=wall,
        media_ports=[media_port + (4 * n) % 10000 for n in range(len(callers))],
        successful=successful,
        failed=failed,
    )


def _screen_counts(screen: Path) -> tuple[int | None, int | None]:
    """The cumulative "Successful call" and "Failed call" counts of SIPp's last screen (-trace_screen)."""
    try:
        text = screen.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None, None
    counts: dict[str, int] = {}
    for line in text.splitlines():
        label, _, rest = line.partition("|")
        label = label.strip()
        if label in ("Successful call", "Failed call"):
            last = rest.rsplit("|", 1)[-1].strip()
            if last.isdigit():
                counts[label] = int(last)  # the last screen printed wins
    return counts.get("Successful call"), counts.get("Failed call")


def _response_times(workdir: Path, name: str) -> list[float]:
    """SIPp's -trace_rtt file (3.6: ``Date_ms;response_time_ms;rtd_no``, one line per measured response)."""
    times = []
    for path in workdir.glob("*_rtt.csv"):
        lines = path.read_text(encoding="ascii", errors="replace").splitlines()
        if not lines:
            continue
        header = lines[0].strip().rstrip(";").split(";")
        at, which = header.index("response_time_ms"), header.index("rtd_no")
        for line in lines[1:]:
            fields = line.strip().rstrip(";").split(";")
            if len(fields) == len(header) and fields[which] == name:
                times.append(float(fields[at]))
    return times


# ---------------------------------------------------------------- what the callers receive
_ULAW_EXPONENT = [0, 0, 1, 1] + [2] * 4 + [3] * 8 + [4] * 16 + [5] * 32 + [6] * 64 + [7] * 128


def asterisk_ulaw(samples: bytes) -> bytes:
    """16-bit linear samples encoded as Asterisk's G.711 u-law encoder does (main/ulaw.c, its lookup
    table of 14-bit steps), so that the RTP a caller receives can be compared bit for bit with the
    prompt the robot played. (audioop.lin2ulaw rounds differently: about 7 % of bytes differ by one.)"""
    out = bytearray()
    for (value,) in struct.iter_unpack("<h", samples):
        sample = ((value & ~3) | 3) & 0xFFFF  # the table holds the encoding of the step's last value
        sample = sample - 0x10000 if sample >= 0x8000 else sample
        sign = (sample >> 8) & 0x80
        magnitude = min(-sample if sign else sample, 32635) + 0x84
        exponent = _ULAW_EXPONENT[(magnitude >> 7) & 0xFF]
        mantissa = (magnitude >> (exponent + 3)) & 0x0F
        out.append(~(sign | (exponent << 4) | mantissa) & 0xFF)
    return bytes(out)


_SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>; Python's socket module does not name it
_SOL_PACKET, _PACKET_STATISTICS = 263, 6  # <linux/if_packet.h>
_CAPTURE_BUFFER_BYTES = 64 << 20


class RtpCapture:
    """Every UDP packet Asterisk sends to the callers' media ports, captured on the loopback interface
    (a packet socket: root only) as SIPp receives it, per destination port.

    Use as a context manager around the calls; ``payload(port)`` is then that call's received audio."""

    def __init__(self, ports: Sequence[int]) -> None:
        self.ports = frozenset(ports)
        self.packets: dict[int, list[bytes]] = {port: [] for port in self.ports}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rtp-capture", daemon=True)
        self.dropped = 0  # packets the kernel dropped because this capture fell behind (read at exit)
        self._socket = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
        # the loopback carries everything twice, and a busy machine can stall this thread for a second:
        # a large buffer (forced past rmem_max, root only) so that no packet of a call is missed
        self._socket.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _CAPTURE_BUFFER_BYTES)
        self._socket.bind(("lo", 0))
        self._socket.settimeout(0.2)

    def __enter__(self) -> RtpCapture:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        stats = self._socket.getsockopt(_SOL_PACKET, _PACKET_STATISTICS, 8)  # struct tpacket_stats
        self.dropped = struct.unpack("II", stats)[1]
        self._socket.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame, address = self._socket.recvfrom(65535)
            except TimeoutError:
                continue
            # loopback shows each packet twice (sent and received): keep the received copy
            if address[2] != socket.PACKET_HOST or frame[12:14] != b"\x08\x00" or frame[23] != 17:
                continue
            udp = frame[14 + (frame[14] & 0x0F) * 4 :]
            port = struct.unpack("!H", udp[2:4])[0]
            if port in self.ports:
                self.packets[port].append(udp[8:])

    def payload(self, port: int, payload_type: int = PCMU) -> bytes:
        """The payloads of one port's RTP packets of ``payload_type``, in sequence-number order."""
        return b"".join(p[12:] for _, p in self._in_order(port, payload_type))

    def missing(self, port: int, payload_type: int = PCMU) -> int:
        """How many sequence numbers between the port's first and last packet never arrived."""
        numbers = [n for n, _ in self._in_order(port, payload_type)]
        return numbers[-1] - numbers[0] + 1 - len(set(numbers)) if numbers else 0

    def diagnosis(self, port: int) -> str:
        """What a failed comparison should say about the capture itself."""
        return (
            f"{len(self.packets.get(port, []))} packets to port {port}, {self.missing(port)} sequence numbers"
            f" missing, {self.dropped} packets dropped by this capture"
        )

    def _in_order(self, port: int, payload_type: int) -> list[tuple[int, bytes]]:
        """The packets with their sequence numbers unwrapped: Asterisk starts a stream at a random
        number, so a call's numbers can pass 65535 and start again at 0."""
        numbered: list[tuple[int, bytes]] = []
        for packet in self.packets.get(port, []):
            if len(packet) <= 12 or packet[1] & 0x7F != payload_type:
                continue
            number = struct.unpack("!H", packet[2:4])[0]
            if numbered:
                previous = numbered[-1][0]
                step = (number - previous) % 65536
                number = previous + (step - 65536 if step >= 32768 else step)  # late packets step back
            numbered.append((number, packet))
        numbered.sort(key=lambda item: item[0])
        return numbered
