"""The Asterisk side: the shipped configuration, and real calls through a local Asterisk.

The ``asterisk`` tests install Debian sid's Asterisk into a chroot (debootstrap, about a minute the
first time), start it, place calls through AMI and stop it by its PID at the end. When the sid
download fails twice, they are skipped with a reason starting with "INFRASTRUCTURE:"; any other
failure fails them.

Until the real FastAGI server is wired in here, the robot's side of a call is ``StandInRobot``: a
throwaway FastAGI responder that answers, plays a prompt (a 1 kHz tone with a ``.txt`` sidecar),
records the caller with RECORD FILE (or reads keys), and sets IVR_RESULT.
"""

from __future__ import annotations

import asyncio
import audioop
import contextlib
import dataclasses
import math
import os
import re
import socket
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ivr.asterisk.ami import AmiClient, AmiError
from ivr.asterisk.local import (
    ETC_IN_CHROOT,
    LOCAL_FILES,
    PRODUCTION_FILES,
    AsteriskUnavailable,
    LocalAsterisk,
    _process_alive,
    agi_url,
    config_values,
    render_config,
)
from ivr.asterisk.testcall import AsteriskCaller, AsteriskCallReport
from ivr.config import PROJECT_ROOT, Settings
from ivr.testing.callfile import CallFile, Expect, Turn

CONF = PROJECT_ROOT / "asterisk_conf"


# ---------------------------------------------------------------- audio helpers
def write_tone(path: Path, hz: float, seconds: float, amplitude: float = 0.4) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = bytearray()
    for i in range(int(8000 * seconds)):
        frames += int(amplitude * 32767 * math.sin(2 * math.pi * hz * i / 8000)).to_bytes(2, "little", signed=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(bytes(frames))


def read_wav(path: Path) -> tuple[bytes, int]:
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2), f"{path}: not mono 16-bit"
        return w.readframes(w.getnframes()), w.getframerate()


def tone_share(path: Path, hz: float) -> float:
    """The largest share of a 100 ms window's energy at ``hz`` (Goertzel), over the whole file: 0..1."""
    frames, rate = read_wav(path)
    samples = [int.from_bytes(frames[i : i + 2], "little", signed=True) for i in range(0, len(frames), 2)]
    window = rate // 10
    coeff = 2 * math.cos(2 * math.pi * hz / rate)
    best = 0.0
    for start in range(0, len(samples) - window, window):
        chunk = samples[start : start + window]
        energy = sum(s * s for s in chunk)
        if energy < window * 100**2:  # quieter than RMS 100: silence
            continue
        s1 = s2 = 0.0
        for sample in chunk:
            s1, s2 = sample + coeff * s1 - s2, s1
        power = s1 * s1 + s2 * s2 - coeff * s1 * s2
        best = max(best, 2 * power / (window * energy))
    return best


def rms(path: Path) -> int:
    frames, _ = read_wav(path)
    return audioop.rms(frames, 2) if frames else 0


def duration_s(path: Path) -> float:
    frames, rate = read_wav(path)
    return len(frames) / 2 / rate


# ---------------------------------------------------------------- the configuration (no Asterisk needed)
def test_shipped_files_exist_and_commit_no_secrets() -> None:
    for name in LOCAL_FILES:
        assert (CONF / name).is_file(), f"asterisk_conf/{name} is missing"
    manager = (CONF / "manager.conf").read_text(encoding="utf-8")
    assert "secret = @@AMI_SECRET@@" in manager
    assert "bindaddr = 127.0.0.1" in manager
    assert "password = @@SIP_SECRET@@" in (CONF / "pjsip.conf").read_text(encoding="utf-8")


def test_rendering_fills_every_placeholder(tmp_path: Path) -> None:
    settings = Settings(agi_host="0.0.0.0", agi_port=4599, ami_user="robot", ami_port=5999)
    values = config_values(settings, {}, local=True, ami_secret="s3cret", sip_secret="p4ss")
    written = render_config(tmp_path, values, local=True)
    assert sorted(p.name for p in written) == sorted(LOCAL_FILES)
    for path in written:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"@@[A-Z_]+@@", text), f"{path.name} still has a placeholder"
        assert path.stat().st_mode & 0o077 == 0o040, f"{path.name} must not be world-readable (secrets)"
    extensions = (tmp_path / "extensions.conf").read_text(encoding="utf-8")
    assert "IVR_AGI_URL = agi://127.0.0.1:4599/ivr" in extensions  # 0.0.0.0 is reached on loopback
    assert "IVR_OPEN_HOURS = *,*,*,*" in extensions  # the local queue is always open
    manager = (tmp_path / "manager.conf").read_text(encoding="utf-8")
    assert "[robot]" in manager and "secret = s3cret" in manager and "port = 5999" in manager
    assert f"astetcdir => {ETC_IN_CHROOT}" in (tmp_path / "asterisk.conf").read_text(encoding="utf-8")
    assert "member => Local/s@ivr-test-agent/n" in (tmp_path / "queues.conf").read_text(encoding="utf-8")


def test_production_rendering_has_no_test_contexts(tmp_path: Path) -> None:
    env = {"IVR_QUEUE_MEMBERS": "PJSIP/agent1, PJSIP/agent2", "IVR_OPEN_HOURS": "09:00-18:00,mon-fri,*,*"}
    values = config_values(Settings(), env, local=False, ami_secret="a", sip_secret="b")
    written = render_config(tmp_path, values, local=False)
    assert sorted(p.name for p in written) == sorted(PRODUCTION_FILES)
    assert not (tmp_path / "extensions_local.conf").exists()
    queues = (tmp_path / "queues.conf").read_text(encoding="utf-8")
    assert "member => PJSIP/agent1\nmember => PJSIP/agent2" in queues
    assert "IVR_OPEN_HOURS = 09:00-18:00,mon-fri,*,*" in (tmp_path / "extensions.conf").read_text(encoding="utf-8")


def test_agi_url_from_settings_or_environment() -> None:
    assert agi_url(Settings(agi_host="127.0.0.1", agi_port=4573), {}) == "agi://127.0.0.1:4573/ivr"
    assert agi_url(Settings(agi_host="::1", agi_port=4573), {}) == "agi://[::1]:4573/ivr"
    assert agi_url(Settings(), {"IVR_AGI_URL": "hagi://ivr.example.com/ivr"}) == "hagi://ivr.example.com/ivr"
    with pytest.raises(ValueError, match="IVR_AGI_URL"):
        agi_url(Settings(), {"IVR_AGI_URL": "http://example.com"})


@pytest.mark.parametrize("bad", ["abc;def", "two\nlines"])
def test_values_cannot_inject_configuration(bad: str) -> None:
    with pytest.raises(ValueError, match="one line without"):
        config_values(Settings(), {}, local=False, ami_secret=bad, sip_secret="x")
    with pytest.raises(ValueError, match="IVR_QUEUE_MEMBERS"):
        config_values(Settings(), {"IVR_QUEUE_MEMBERS": bad}, local=False, ami_secret="a", sip_secret="b")


@pytest.mark.skipif(os.geteuid() != 0, reason="installing the local Asterisk needs root")
def test_failed_download_is_retried_once_then_reported_as_infrastructure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a debootstrap that starts a target folder and then fails, as a broken mirror would
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "debootstrap"
    fake.write_text('#!/bin/sh\necho "$@" >> "$0.calls"\nmkdir -p "$4/debootstrap"\necho "E: Failed getting release file"\nexit 1\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    local = LocalAsterisk(Settings(), root=tmp_path / "state" / "root", state_dir=tmp_path / "state")
    with pytest.raises(AsteriskUnavailable, match=r"^INFRASTRUCTURE: .*after 2 attempts") as failure:
        local.install()
    assert "Failed getting release file" in str(failure.value)  # the log's tail is in the message
    calls = (bin_dir / "debootstrap.calls").read_text().splitlines()
    assert calls == [f"--variant=minbase --include=asterisk sid {tmp_path / 'state' / 'root'}"] * 2
    assert not local.installed()


# ---------------------------------------------------------------- the local Asterisk
@dataclasses.dataclass(frozen=True)
class RunningAsterisk:
    local: LocalAsterisk
    settings: Settings
    pid: int


@pytest.fixture(scope="session")
def local_asterisk(base_settings: Settings) -> Iterator[RunningAsterisk]:
    """The local Asterisk with the suite's sound and spool folders; stopped by its PID at the end."""
    settings = dataclasses.replace(base_settings, ami_secret="")  # a fresh random secret per start
    local = LocalAsterisk(settings)
    if local.pid() is not None:  # e.g. a developer's `ivr asterisk up`, with other shared folders
        local.down()
    try:
        local.install()
    except AsteriskUnavailable as exc:
        pytest.skip(str(exc))  # "INFRASTRUCTURE: ..." (the sid download failed twice)
    status = local.up(timeout_s=60)
    assert status.running and status.pid is not None
    yield RunningAsterisk(local, settings, status.pid)
    assert local.down(), "the local Asterisk was no longer running at the end of the session"
    assert not _process_alive(status.pid), f"Asterisk (PID {status.pid}) survived `down`"
    assert local.pid() is None


@pytest.fixture
async def ami(local_asterisk: RunningAsterisk) -> AsyncIterator[AmiClient]:
    creds = local_asterisk.local.ami_credentials()
    client = AmiClient(creds.host, creds.port, creds.user, creds.secret)
    await client.aconnect()
    yield client
    await client.aclose()


@dataclasses.dataclass
class StandInCall:
    uniqueid: str = ""
    caller_id: str = ""
    network_script: str = ""
    recordings: list[Path] = dataclasses.field(default_factory=list)
    replies: list[str] = dataclasses.field(default_factory=list)
    digits: str = ""
    hung_up: bool = False


class StandInRobot:
    """A throwaway FastAGI responder standing in for `ivr serve` (NOT the project's server).

    Per call: ANSWER; then ``listens`` times: STREAM FILE the prompt, RECORD FILE (speech, or the first
    key of a keypad entry, then WAIT FOR DIGIT up to '#'); then SET VARIABLE IVR_RESULT ``result``, and
    HANGUP unless the result is a transfer (the dialplan takes over).
    """

    def __init__(self, spool: Path, prompt: Path, *, listens: int = 1, result: str = "completed") -> None:
        self.spool, self.prompt, self.listens, self.result = spool, prompt, listens, result
        self.calls: list[StandInCall] = []
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"agi://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/ivr"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        call = StandInCall()
        self.calls.append(call)
        env = {}
        while line := (await reader.readline()).decode().strip():
            key, _, value = line.partition(": ")
            env[key] = value
        call.uniqueid, call.caller_id = env.get("agi_uniqueid", ""), env.get("agi_callerid", "")
        call.network_script = env.get("agi_network_script", "")

        async def command(text: str) -> str:
            writer.write(text.encode() + b"\n")
            await writer.drain()
            while True:
                reply = (await reader.readline()).decode().strip()
                if reply == "HANGUP":  # Asterisk's own line when the caller hangs up
                    call.hung_up = True
                    continue
                call.replies.append(f"{text.split()[0]}: {reply}")
                return reply

        def result_of(reply: str) -> str:
            return reply.split("result=")[1].split()[0] if "result=" in reply else ""

        try:
            await command("ANSWER")
            for n in range(1, self.listens + 1):
                await command(f'STREAM FILE {self.prompt.with_suffix("")} ""')
                target = self.spool / f"standin-{call.uniqueid.replace('.', '_')}-{n}"
                reply = await command(f'RECORD FILE {target} wav "0123456789*#" 15000 0 s=1')
                if reply.startswith("511") or call.hung_up:
                    return
                call.recordings.append(target.with_suffix(".wav"))
                if "(dtmf)" in reply:
                    key = chr(int(result_of(reply)))
                    while key not in ("#", ""):
                        call.digits += key
                        reply = await command("WAIT FOR DIGIT 3000")
                        code = result_of(reply)
                        key = chr(int(code)) if code not in ("", "0", "-1") else ""
            await command(f"SET VARIABLE IVR_RESULT {self.result}")
            if self.result != "transfer":
                await command("HANGUP")
        except (ConnectionError, IndexError, ValueError):
            return
        finally:
            writer.close()


@pytest.fixture
def prompt(local_asterisk: RunningAsterisk) -> Path:
    """The stand-in robot's prompt: 1 s of 1 kHz, in the shared sound folder, with its text sidecar."""
    path = local_asterisk.settings.sounds_dir / "standin" / "tone.wav"
    write_tone(path, 1000, 1.0)
    path.with_suffix(".txt").write_text("stand-in prompt", encoding="utf-8")
    return path


@pytest.fixture
def caller_tone(tmp_path: Path) -> Path:
    """Caller 'speech' that is easy to find again in the robot's recording: 1.5 s of 440 Hz."""
    path = tmp_path / "caller-440.wav"
    write_tone(path, 440, 1.5)
    return path


@contextlib.asynccontextmanager
async def stand_in(settings: Settings, prompt: Path, **kwargs: object) -> AsyncIterator[tuple[StandInRobot, str]]:
    robot = StandInRobot(settings.spool_dir, prompt, **kwargs)  # type: ignore[arg-type]
    url = await robot.start()
    try:
        yield robot, url
    finally:
        await robot.stop()


def call_file(name: str, *turns: Turn, caller_id: str = "13800000001", locale: str | None = "en-US") -> CallFile:
    return CallFile(Path(f"{name}.yaml"), caller_id, locale, tuple(turns), Expect())


def assert_heard(report: AsteriskCallReport) -> None:
    assert report.heard_wav is not None and report.heard_wav.exists(), report.errors
    assert report.heard_rms > 300, f"the caller heard (almost) nothing: RMS {report.heard_rms}"


@pytest.mark.asterisk
def test_asterisk_runs_by_pid_and_ami_logs_in(local_asterisk: RunningAsterisk) -> None:
    local = local_asterisk.local
    assert local.pid() == local_asterisk.pid
    assert int(local.pid_file.read_text().strip()) == local_asterisk.pid
    assert Path(f"/proc/{local_asterisk.pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"asterisk")
    status = local.status()
    assert status.running and "Asterisk 22" in status.version
    creds = local.ami_credentials()
    with AmiClient(creds.host, creds.port, creds.user, creds.secret) as client:
        assert client.action("Ping").get("Ping") == "Pong"
    with pytest.raises(AmiError, match="login"):
        AmiClient(creds.host, creds.port, creds.user, creds.secret + "-wrong").connect()


@pytest.mark.asterisk
def test_ami_listens_on_loopback_only(local_asterisk: RunningAsterisk) -> None:
    with open("/proc/net/tcp", encoding="ascii") as table:
        listening = [line.split()[1] for line in table.readlines()[1:] if line.split()[3] == "0A"]
    port = f"{local_asterisk.settings.ami_port:04X}"
    ami_sockets = [addr for addr in listening if addr.endswith(":" + port)]
    assert ami_sockets == ["0100007F:" + port], f"AMI must listen on 127.0.0.1 only, found {ami_sockets}"


@pytest.mark.asterisk
async def test_robot_down_caller_hears_apology_and_reaches_a_person(
    local_asterisk: RunningAsterisk, ami: AmiClient
) -> None:
    # a port that refuses connections: bound, never listening
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"agi://127.0.0.1:{closed.getsockname()[1]}/ivr"
        async with AsteriskCaller(local_asterisk.settings, ami=ami, agi_url=url) as caller:
            report = await caller.place(call_file("robot-down", Turn("say", "hello")), timeout_s=60)
    assert report.errors == []
    assert report.agi_status == "FAILURE"
    assert report.variables.get("AGISTATUS") == "FAILURE"
    assert report.dialplan_prompts, "the dialplan played no apology"
    assert report.reached_human and report.agent_answered
    assert (report.outcome, report.transfer_reason) == ("transfer", "robot_unreachable")
    assert not report.answered  # the robot never answered: the dialplan alone looked after the caller
    assert_heard(report)  # the apology and the agent's greeting reached the caller


@pytest.mark.asterisk
async def test_call_end_to_end_speech_and_keypad(local_asterisk: RunningAsterisk, ami: AmiClient, prompt: Path) -> None:
    settings = local_asterisk.settings
    async with stand_in(settings, prompt, listens=2) as (robot, url):
        async with AsteriskCaller(settings, ami=ami, agi_url=url) as caller:
            report = await caller.place(
                call_file("speech-and-keys", Turn("say", "I would like to know my balance"), Turn("dtmf", "1234#")),
                timeout_s=90,
            )
    assert report.errors == []
    [call] = robot.calls
    assert call.caller_id == "13800000001"
    assert call.network_script == "ivr?lang=en-US"  # the call file's locale reaches the robot
    # the caller's speech reached the robot's recording (the shared spool, written by Asterisk)
    speech = call.recordings[0]
    assert speech.exists() and duration_s(speech) > 1.0 and rms(speech) > 300
    # the keypad turn arrived as keys: the first interrupts RECORD FILE, the rest via WAIT FOR DIGIT
    assert call.digits == "1234"
    # the prompt reached the caller's recording, and its sidecar text is in the report
    assert report.heard_wav is not None and tone_share(report.heard_wav, 1000) > 0.8
    assert [e["text"] for e in report.events if e["who"] == "robot"][:2] == ["stand-in prompt"] * 2
    assert report.answered and report.outcome == "completed"
    assert report.variables["IVR_RESULT"] == "completed"
    assert report.silence_waits_s, "the robot's RECORD FILE never ended on silence after the speech"
    for path in call.recordings:
        path.unlink(missing_ok=True)


@pytest.mark.asterisk
async def test_robot_transfer_reaches_the_human_queue(
    local_asterisk: RunningAsterisk, ami: AmiClient, prompt: Path, caller_tone: Path
) -> None:
    settings = local_asterisk.settings
    async with stand_in(settings, prompt, result="transfer") as (robot, url):
        async with AsteriskCaller(settings, ami=ami, agi_url=url) as caller:
            report = await caller.place(call_file("to-a-person", Turn("audio", caller_tone)), timeout_s=60)
    assert report.errors == []
    assert report.variables["IVR_RESULT"] == "transfer"
    assert report.agi_status == "SUCCESS" and not report.dialplan_prompts  # no apology: the robot chose this
    assert report.reached_human and report.agent_answered and report.outcome == "transfer"
    assert tone_share(robot.calls[0].recordings[0], 440) > 0.8


@pytest.mark.asterisk
async def test_caller_hangup_ends_the_robot_session(
    local_asterisk: RunningAsterisk, ami: AmiClient, prompt: Path
) -> None:
    settings = local_asterisk.settings
    async with stand_in(settings, prompt, listens=2) as (robot, url):
        async with AsteriskCaller(settings, ami=ami, agi_url=url) as caller:
            report = await caller.place(call_file("hangs-up", Turn("hangup", True), caller_id=""), timeout_s=60)
    assert report.errors == []
    assert report.outcome == "caller_hangup"
    [call] = robot.calls
    assert call.caller_id == "unknown"  # withheld number
    assert call.hung_up or any(r.endswith(("HANGUP", "result=-1")) or "511" in r for r in call.replies)


@pytest.mark.asterisk
async def test_twenty_simultaneous_calls_are_answered_and_completed(
    local_asterisk: RunningAsterisk, ami: AmiClient, prompt: Path, caller_tone: Path
) -> None:
    settings = local_asterisk.settings
    calls = [call_file(f"load-{i}", Turn("audio", caller_tone)) for i in range(20)]
    async with stand_in(settings, prompt) as (robot, url):
        async with AsteriskCaller(settings, ami=ami, agi_url=url) as caller:
            reports = await asyncio.gather(*(caller.place(c, timeout_s=120) for c in calls))
    assert [r.errors for r in reports] == [[]] * 20
    assert all(r.answered for r in reports)
    assert [r.outcome for r in reports] == ["completed"] * 20
    assert len(robot.calls) == 20 and len({c.uniqueid for c in robot.calls}) == 20
    for call in robot.calls:
        [recording] = call.recordings
        assert tone_share(recording, 440) > 0.8, f"{recording}: the caller's audio did not reach the robot"
        recording.unlink()
    for report in reports:
        assert_heard(report)


class Softphone:
    """A minimal SIP user agent (UDP, digest auth, PCMU over RTP) that calls the local Asterisk the way
    a softphone configured as documented in pjsip.conf would. Blocking: run it in a worker thread."""

    def __init__(self, password: str, sip_port: int) -> None:
        self.password, self.server = password, ("127.0.0.1", sip_port)
        self.sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sip.bind(("127.0.0.1", 0))
        self.sip.settimeout(20)
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp.bind(("127.0.0.1", 0))
        self.rtp.settimeout(0.02)
        self.port, self.rtp_port = self.sip.getsockname()[1], self.rtp.getsockname()[1]
        self.call_id, self.tag = f"{os.urandom(6).hex()}@127.0.0.1", os.urandom(4).hex()
        self.heard = bytearray()  # what the softphone received, as 16-bit linear

    def _send(self, text: str) -> None:
        self.sip.sendto(text.replace("\n", "\r\n").encode(), self.server)

    def _receive(self) -> tuple[str, dict[str, str], str]:
        data = self.sip.recv(65535).decode()
        head, _, body = data.partition("\r\n\r\n")
        first, *lines = head.split("\r\n")
        headers: dict[str, str] = {}
        for line in lines:
            key, _, value = line.partition(":")
            headers.setdefault(key.strip().lower(), value.strip())
        return first, headers, body

    def _invite(self, cseq: int, branch: str, auth: str = "") -> None:
        sdp = (
            f"v=0\no=- 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\n"
            f"m=audio {self.rtp_port} RTP/AVP 0\na=rtpmap:0 PCMU/8000\na=sendrecv\n"
        ).replace("\n", "\r\n")
        self._send(
            f"INVITE sip:100@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch};rport\n"
            f"Max-Forwards: 70\nFrom: <sip:softphone@127.0.0.1>;tag={self.tag}\nTo: <sip:100@127.0.0.1>\n"
            f"Call-ID: {self.call_id}\nCSeq: {cseq} INVITE\nContact: <sip:softphone@127.0.0.1:{self.port}>\n"
            f"{auth}Content-Type: application/sdp\nContent-Length: {len(sdp)}\n\n" + sdp.replace("\r\n", "\n")
        )

    def _digest(self, challenge: str, uri: str) -> str:
        import hashlib

        fields = dict(re.findall(r'(\w+)="?([^",]+)"?', challenge))
        algorithm = fields.get("algorithm", "MD5").upper()
        digest = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}[algorithm]

        def h(text: str) -> str:
            return digest(text.encode()).hexdigest()

        ha1, ha2 = h(f"softphone:{fields['realm']}:{self.password}"), h(f"INVITE:{uri}")
        cnonce = "0a4f113b"
        response = h(f"{ha1}:{fields['nonce']}:00000001:{cnonce}:auth:{ha2}")
        opaque = f', opaque="{fields["opaque"]}"' if "opaque" in fields else ""
        return (
            f'Authorization: Digest username="softphone", realm="{fields["realm"]}", nonce="{fields["nonce"]}", '
            f'uri="{uri}", response="{response}", algorithm={algorithm}, qop=auth, nc=00000001, '
            f'cnonce="{cnonce}"{opaque}\n'
        )

    def call(self, speech: bytes) -> str:
        """Dial, answer the challenge, send ``speech`` (16-bit 8 kHz) then silence, until Asterisk hangs up."""
        self._invite(1, "z9hG4bK" + os.urandom(4).hex())
        status, headers, _ = self._receive()
        while status.startswith("SIP/2.0 1"):
            status, headers, _ = self._receive()
        assert status.startswith("SIP/2.0 401"), status
        to = headers["to"]
        self._send(  # ACK of the challenge (same transaction)
            f"ACK sip:100@127.0.0.1 SIP/2.0\nVia: {headers['via']}\nMax-Forwards: 70\n"
            f"From: <sip:softphone@127.0.0.1>;tag={self.tag}\nTo: {to}\nCall-ID: {self.call_id}\nCSeq: 1 ACK\n"
            "Content-Length: 0\n\n"
        )
        self._invite(2, "z9hG4bK" + os.urandom(4).hex(), self._digest(headers["www-authenticate"], "sip:100@127.0.0.1"))
        status, headers, body = self._receive()
        while status.startswith("SIP/2.0 1"):
            status, headers, body = self._receive()
        assert status.startswith("SIP/2.0 200"), status
        contact = re.search(r"<([^>]+)>", headers["contact"])
        assert contact is not None
        self._send(
            f"ACK {contact.group(1)} SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{os.urandom(4).hex()};rport\n"
            f"Max-Forwards: 70\nFrom: <sip:softphone@127.0.0.1>;tag={self.tag}\nTo: {headers['to']}\n"
            f"Call-ID: {self.call_id}\nCSeq: 2 ACK\nContent-Length: 0\n\n"
        )
        media = re.search(r"m=audio (\d+)", body)
        assert media is not None
        return self._media(("127.0.0.1", int(media.group(1))), speech)

    def _media(self, peer: tuple[str, int], speech: bytes) -> str:
        import time

        self.sip.settimeout(0)
        seq, stamp, ssrc, sent = 0, 0, 0x1234ABCD, 0
        deadline = time.monotonic() + 60
        next_send = time.monotonic()
        while time.monotonic() < deadline:
            chunk = speech[sent : sent + 320] if sent < len(speech) else b"\0" * 320
            sent += 320
            header = bytes([0x80, 0]) + seq.to_bytes(2, "big") + stamp.to_bytes(4, "big") + ssrc.to_bytes(4, "big")
            self.rtp.sendto(header + audioop.lin2ulaw(chunk.ljust(320, b"\0"), 2), peer)
            seq, stamp = (seq + 1) & 0xFFFF, (stamp + 160) & 0xFFFFFFFF
            next_send += 0.02  # real-time pacing of the media, as a phone sends it
            while time.monotonic() < next_send:
                with contextlib.suppress(TimeoutError, socket.timeout):
                    packet = self.rtp.recv(2048)
                    self.heard += audioop.ulaw2lin(packet[12:], 2)
            with contextlib.suppress(BlockingIOError):
                data = self.sip.recv(65535).decode()
                if data.startswith("BYE"):
                    head = data.split("\r\n\r\n")[0].split("\r\n")
                    keep = [h for h in head[1:] if h.split(":")[0].lower() in ("via", "from", "to", "call-id", "cseq")]
                    self._send("SIP/2.0 200 OK\n" + "\n".join(keep) + "\nContent-Length: 0\n\n")
                    return "BYE"
        return "timeout"

    def close(self) -> None:
        self.sip.close()
        self.rtp.close()


@pytest.mark.asterisk
async def test_softphone_on_loopback_reaches_the_robot(
    local_asterisk: RunningAsterisk, ami: AmiClient, prompt: Path, caller_tone: Path
) -> None:
    settings = local_asterisk.settings
    password = (local_asterisk.local.etc_dir / "sip_secret").read_text().strip()
    speech, _ = read_wav(caller_tone)
    previous = await ami.agetvar("IVR_AGI_URL")
    async with stand_in(settings, prompt) as (robot, url):
        await ami.asetvar("IVR_AGI_URL", url)
        phone = Softphone(password, local_asterisk.local.status().sip_port)
        try:
            ending = await asyncio.to_thread(phone.call, speech)
        finally:
            phone.close()
            await ami.asetvar("IVR_AGI_URL", previous)
    assert ending == "BYE"  # the robot completed the call and Asterisk hung up
    [call] = robot.calls
    assert call.caller_id == "13800000001"  # the softphone endpoint's caller ID: the demo customer
    [recording] = call.recordings
    assert tone_share(recording, 440) > 0.8, "the softphone's audio did not reach the robot"
    heard = caller_tone.parent / "softphone-heard.wav"
    with wave.open(str(heard), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(bytes(phone.heard))
    assert tone_share(heard, 1000) > 0.8, "the robot's prompt did not reach the softphone"
    recording.unlink()
