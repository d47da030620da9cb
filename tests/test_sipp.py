"""Real SIP callers: SIPp (Debian's sip-tester) calls the robot through the suite's local Asterisk.

Every part is real: SIPp places the calls over UDP on loopback with digest auth as the `sipp`
account (asterisk_conf/pjsip_local.conf), sends G.711 u-law RTP replayed from pcap files this test
builds from the robot's own voice, and keys as RFC 4733 events; Asterisk runs the shipped dialplan;
the robot is `ivr serve` in its own process (real Vosk, Rasa, pyttsx3 prompts, a demo SQLite
database), with its /metrics over HTTP. What SIPp receives is captured on the loopback interface.

A caller cannot know when the robot listens: the test watches AMI and, when the robot starts a
RECORD FILE on a SIPp call, sends that call an in-dialog NOTIFY (PJSIPNotify), on which the SIPp
scenario plays its next turn. The person on the phone hearing the prompt end, in SIP.

The robot's default language here is zh-CN, and the Korean calls dial the Korean number (1082): a
Korean greeting proves that the dialled number chose the language.
"""

from __future__ import annotations

import asyncio
import collections
import csv
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from ivr.asterisk.ami import AmiClient, AmiEvent
from ivr.asterisk.local import CDR_CSV, MESSAGES_LOG
from ivr.asterisk.sipp import (
    Caller,
    CallerAudio,
    RtpCapture,
    SippRun,
    asterisk_ulaw,
    read_wav_8k,
    run_sipp,
    uac_scenario,
)
from ivr.config import Settings
from ivr.dialogue.prompts import PromptBook
from ivr.masking import mask_text
from tests.conftest import RunningAsterisk, SuiteDirs, make_demo_db

pytestmark = [pytest.mark.asterisk, pytest.mark.slow]

DEFAULT_LOCALE = "zh-CN"  # the robot's default here: only the dialled number makes a call Korean
KOREAN_NUMBER, ENGLISH_NUMBER, CHINESE_NUMBER, DEFAULT_NUMBER = "1082", "1001", "1086", "100"
CALLER = "01012345678"  # C003, the Korean demo customer (ID last four 6193)
GOODBYE = "바이바이"  # a goodbye Vosk's Korean model recognizes in the robot's synthetic voice
SSRC = 0x51AE0001  # the callers' RTP stream
TURN_PACKETS = 16000  # each turn's sequence numbers start this far after the previous one's (320 s)
MEDIA_PORT = 30000  # SIPp's media ports: 30000, 30004, ... (outside Asterisk's RTP range 10000-20000)


# ---------------------------------------------------------------- the robot, SIPp, AMI
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclasses.dataclass
class ServedRobot:
    """`ivr serve` in its own process, as `make run` starts it."""

    settings: Settings
    agi_port: int
    http_port: int
    log_file: Path
    process: subprocess.Popen[bytes]

    def metrics(self) -> dict[str, float]:
        """/metrics over HTTP: each sample line as name{labels} -> value."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def transcript(self, uniqueid: str) -> tuple[str, list[dict[str, object]]]:
        """The robot's call ID and transcript of the call Asterisk knows as ``uniqueid``."""
        stem = re.sub(r"[^0-9A-Za-z_-]", "_", uniqueid)
        deadline = time.monotonic() + 10
        while not (found := list(self.settings.transcripts_dir.glob(f"*/{stem}-*.jsonl"))):
            assert time.monotonic() < deadline, f"no transcript of {uniqueid}"
            time.sleep(0.1)  # written when the robot's session ends, just after the hang-up
        [path] = found
        return path.stem, [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def part_errors(metrics: dict[str, float]) -> float:
    return sum(v for k, v in metrics.items() if k.startswith("ivr_part_errors_total"))


@pytest.fixture(scope="module")
def sipp_binary() -> str:
    """SIPp from Debian's sip-tester (`make test` installs it; as root, this installs it when missing)."""
    found = shutil.which("sipp")
    if found is None and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "sip-tester"],
                       capture_output=True, check=False, timeout=600, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip
        found = shutil.which("sipp")
    if found is None:
        pytest.skip("INFRASTRUCTURE: SIPp (Debian package sip-tester) is not installed and could not be")
    return found


@pytest.fixture(scope="module")
def log_start(local_asterisk: RunningAsterisk) -> dict[str, int]:
    """Where Asterisk's log and call records stood before this module's calls (they outlive a session)."""
    sizes = {}
    for name in (MESSAGES_LOG, CDR_CSV):
        path = local_asterisk.local.root / name.lstrip("/")
        sizes[name] = path.stat().st_size if path.exists() else 0
    return sizes


def written_since(local_asterisk: RunningAsterisk, log_start: dict[str, int], name: str) -> str:
    with open(local_asterisk.local.root / name.lstrip("/"), "rb") as file:
        file.seek(log_start[name])
        return file.read().decode("utf-8", errors="replace")


@pytest.fixture(scope="module")
def robot(
    local_asterisk: RunningAsterisk,
    suite_dirs: SuiteDirs,
    tmp_path_factory: pytest.TempPathFactory,
    log_start: dict[str, int],
) -> Iterator[ServedRobot]:
    from ivr.tts.synth import PromptSynthesizer

    settings = dataclasses.replace(
        local_asterisk.settings,
        database_url=make_demo_db(tmp_path_factory.mktemp("sipp-db") / "accounts.db"),
        locale=DEFAULT_LOCALE,
        asr_dither=False,
    )
    synth = PromptSynthesizer(settings)  # the prompts `ivr serve` will play, rendered ahead (a cache)
    try:
        synth.build_all(PromptBook(settings.dialogs_dir))
    finally:
        synth.close()
    agi_port, http_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IVR_")}
    env.update(
        IVR_DATABASE_URL=settings.database_url, IVR_SOUNDS_DIR=str(settings.sounds_dir),
        IVR_SPOOL_DIR=str(settings.spool_dir), IVR_TRANSCRIPTS_DIR=str(settings.transcripts_dir),
        IVR_LOG_DIR=str(suite_dirs.log_file.parent), IVR_LOCALE=DEFAULT_LOCALE, IVR_FIXED_DATE=settings.fixed_date,
        IVR_ASR_DITHER="false", IVR_AGI_HOST="127.0.0.1", IVR_AGI_PORT=str(agi_port),
        IVR_HTTP_HOST="127.0.0.1", IVR_HTTP_PORT=str(http_port), IVR_LOG_LEVEL="INFO",
        RASA_TELEMETRY_ENABLED="false", TF_CPP_MIN_LOG_LEVEL="3",
    )  # fmt: skip
    log_file = suite_dirs.log_file.parent / "sipp-robot.jsonl"  # scanned by test_zz_privacy.py
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ivr", "serve"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=log, start_new_session=True,
        )  # fmt: skip
    served = ServedRobot(settings, agi_port, http_port, log_file, process)
    try:
        deadline = time.monotonic() + 300
        while b"FastAGI server listening" not in log_file.read_bytes():
            assert process.poll() is None, f"`ivr serve` exited with {process.returncode}: see {log_file}"
            assert time.monotonic() < deadline, "`ivr serve` did not listen within 300 s"
            time.sleep(0.2)
        creds = local_asterisk.local.ami_credentials()
        with AmiClient(creds.host, creds.port, creds.user, creds.secret) as ami:
            previous = ami.getvar("IVR_AGI_URL")
            ami.setvar("IVR_AGI_URL", f"agi://127.0.0.1:{agi_port}/ivr")  # the hotline's calls go to this robot
            try:
                yield served
            finally:
                ami.setvar("IVR_AGI_URL", previous)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclasses.dataclass
class SippCall:
    """One SIPp call as Asterisk saw it."""

    channel: str
    uniqueid: str
    media_port: int = 0
    listens: int = 0  # RECORD FILEs the robot started
    notified: int = 0  # NOTIFYs sent (turns the caller took)


class TurnDriver:
    """Watches AMI for the robot's commands on SIPp calls: notes each call's uniqueid and media port (the
    address Asterisk sends its RTP to), and sends a NOTIFY when the robot starts listening, for as many
    turns as the scenario has."""

    def __init__(self, ami: AmiClient, turns: int) -> None:
        self.ami, self.turns = ami, turns
        self.calls: dict[str, SippCall] = {}
        self.errors: list[str] = []
        self._sub = ami.subscribe(lambda e: e.name == "AGIExecStart" and e.get("Channel").startswith("PJSIP/sipp-"))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="turn-driver", daemon=True)

    def __enter__(self) -> TurnDriver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.ami.unsubscribe(self._sub)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                event = self._sub.get(0.2)
            except TimeoutError:
                continue
            try:
                self._on(event)
            except Exception as exc:  # reported by the test, never lost in the thread
                self.errors.append(f"{event.get('Channel')}: {exc!r}")

    def _on(self, event: AmiEvent) -> None:
        channel = event.get("Channel")
        call = self.calls.get(channel)
        if call is None:  # the robot's first command (ANSWER): the call is up, RTP flows
            call = self.calls[channel] = SippCall(channel, event.uniqueid)
            destination = self.ami.getvar("CHANNEL(rtp,dest)", channel)  # "127.0.0.1:30004"
            call.media_port = int(destination.rsplit(":", 1)[1])
        if event.get("Command").upper().startswith("RECORD FILE"):
            call.listens += 1
            if call.notified < self.turns:
                call.notified += 1
                self.ami.action("PJSIPNotify", Channel=channel, variables={"Event": "talk"})


@dataclasses.dataclass
class Batch:
    run: SippRun
    calls: list[SippCall]
    capture: RtpCapture
    metrics_before: dict[str, float]
    metrics_after: dict[str, float]

    def delta(self, name: str) -> float:
        return self.metrics_after.get(name, 0.0) - self.metrics_before.get(name, 0.0)


def place_calls(
    local_asterisk: RunningAsterisk,
    robot: ServedRobot,
    workdir: Path,
    callers: list[Caller],
    *,
    turns: Sequence[Callable[[CallerAudio], CallerAudio]] = (),
    hangup_after_ms: int | None = None,
) -> Batch:
    """One SIPp run: all ``callers`` at once, each taking ``turns`` (or hanging up after a pause).

    The idle audio and each turn are one RTP stream, as a phone sends it: one SSRC, and each turn's
    sequence numbers and time stamps ahead of everything sent before it (the idle audio is shorter)."""
    workdir.mkdir(parents=True, exist_ok=True)
    password = (local_asterisk.local.etc_dir / "sipp_secret").read_text(encoding="ascii").strip()
    idle = CallerAudio(ssrc=SSRC).silence(150).write(workdir / "idle.pcap")
    turn_files = []
    for i, turn in enumerate(turns, start=1):
        audio = turn(CallerAudio(ssrc=SSRC, seq=TURN_PACKETS * i, timestamp=TURN_PACKETS * i * 160))
        assert audio.duration_s < TURN_PACKETS * 0.02 / 2, "a turn's packets would overtake the next turn's"
        turn_files.append(audio.write(workdir / f"turn{i}.pcap"))
    scenario = uac_scenario(user="sipp", password=password, idle=idle, turns=turn_files, hangup_after_ms=hangup_after_ms)
    creds = local_asterisk.local.ami_credentials()
    before = robot.metrics()
    ports = [MEDIA_PORT + 4 * n for n in range(len(callers))]
    with AmiClient(creds.host, creds.port, creds.user, creds.secret) as ami, TurnDriver(ami, len(turn_files)) as driver:
        with RtpCapture(ports) as capture:
            run = run_sipp(scenario, callers, workdir=workdir, media_port=MEDIA_PORT, timeout_s=240)
    assert driver.errors == []
    assert run.media_ports == ports
    time.sleep(0.5)  # the robot writes its transcript and counts the call just after the hang-up
    return Batch(run, list(driver.calls.values()), capture, before, robot.metrics())


def greeting(robot: ServedRobot, locale: str) -> bytes:
    """The robot's greeting in ``locale`` as Asterisk's u-law encoder sends it."""
    from ivr.tts.synth import PromptSynthesizer

    synth = PromptSynthesizer(robot.settings)
    try:
        wav = asyncio.run(synth.render(PromptBook(robot.settings.dialogs_dir).text("utter_greet", locale), locale))
    finally:
        synth.close()
    return asterisk_ulaw(read_wav_8k(wav))


def said(transcript: list[dict[str, object]], who: str = "robot") -> list[object]:
    return [line["text"] for line in transcript if line["who"] == who]


def asterisk_log_lines(local_asterisk: RunningAsterisk, needle: str) -> list[str]:
    log = local_asterisk.local.root / MESSAGES_LOG.lstrip("/")
    return [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if needle in line]


def ended_lines(local_asterisk: RunningAsterisk, call: SippCall) -> list[str]:
    """The line the hangup handler [ivr-call-log] wrote for the call (not the step that logged it)."""
    lines = asterisk_log_lines(local_asterisk, f"IVR call ended: uniqueid={call.uniqueid} ")
    return [line for line in lines if "NOTICE[" in line]


def cdr_rows(local_asterisk: RunningAsterisk) -> dict[str, list[str]]:
    """The call records of cdr-custom/ivr-calls.csv by uniqueid (column 10)."""
    path = local_asterisk.local.root / CDR_CSV.lstrip("/")
    with open(path, encoding="utf-8", newline="") as table:
        return {row[9]: row for row in csv.reader(table)}


@pytest.fixture(scope="module")
def korean_voice(robot: ServedRobot, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The caller's "바이바이", in the robot's own (espeak-ng) voice, 8 kHz."""
    from ivr.testing.harness import copy_as_8k
    from ivr.tts.synth import PromptSynthesizer

    synth = PromptSynthesizer(robot.settings)
    try:
        wav = asyncio.run(synth.render(GOODBYE, "ko-KR"))
    finally:
        synth.close()
    target = tmp_path_factory.mktemp("sipp-voice") / "goodbye.wav"
    copy_as_8k(wav, target)
    return target


# ---------------------------------------------------------------- the calls
def assert_heard_whole(batch: Batch, call: SippCall, prompt: bytes) -> None:
    received = batch.capture.payload(call.media_port)
    whole = prompt[: len(prompt) // 160 * 160]  # the last, partial 20 ms frame may be padded
    assert whole in received, (
        f"{call.channel}: the greeting did not come back bit-exact as RTP ({len(received)} bytes received;"
        f" {batch.capture.diagnosis(call.media_port)})"
    )


def test_keys_and_speech_over_sip_reach_the_robot(
    sipp_binary: str, local_asterisk: RunningAsterisk, robot: ServedRobot, korean_voice: Path, tmp_path: Path
) -> None:
    turns = [lambda a: a.keys("6193#").silence(90), lambda a: a.speech(korean_voice).silence(90)]
    batch = place_calls(local_asterisk, robot, tmp_path, [Caller(CALLER, KOREAN_NUMBER)], turns=turns)
    assert batch.run.ok, batch.run.errors
    [call] = batch.calls
    call_id, transcript = robot.transcript(call.uniqueid)
    assert call.notified == 2 and call.listens == 2, transcript
    assert_heard_whole(batch, call, greeting(robot, "ko-KR"))  # Korean: by the number dialled
    book = PromptBook(robot.settings.dialogs_dir)
    # the keys arrived as RFC 4733 events: the robot took a keypad entry (what it makes of the keys is
    # the dialogue's business: an ID entry, or the keypad menu when a key interrupts a spoken turn)
    keyed = [line for line in transcript if line["who"] == "caller" and line.get("keypad")]
    assert keyed and all(str(line["text"])[:1] in "6*" for line in keyed), transcript
    robot_said = said(transcript)
    assert robot_said[0] == book.text("utter_greet", "ko-KR") and robot_said[-1] == book.text("utter_goodbye", "ko-KR")
    assert len(robot_said) == 3  # greeting, the answer to the keys, goodbye
    assert said(transcript, "caller")[-1] == GOODBYE
    assert "6193" not in json.dumps(transcript, ensure_ascii=False)  # keys are masked in the transcript
    assert transcript[-1]["outcome"] == "completed"
    assert batch.delta("ivr_calls_completed_total") == 1
    # one call followed on both sides: the robot's call ID (as its logs show it) is in Asterisk's log
    [ended] = ended_lines(local_asterisk, call)
    assert f"robot_call_id={mask_text(call_id)} number={KOREAN_NUMBER} lang=ko-KR" in ended
    assert "result=completed" in ended and "caller_last4=5678" in ended
    assert f'"call_id": "{mask_text(call_id)}"' in robot.log_file.read_text(encoding="utf-8")
    row = cdr_rows(local_asterisk)[call.uniqueid]
    assert row[5] == "ANSWERED" and row[8] == call.channel
    assert row[11:] == [KOREAN_NUMBER, "ko-KR", mask_text(call_id), "completed", "", "5678"]


def test_twenty_simultaneous_sip_callers_are_answered_understood_and_completed(
    sipp_binary: str, local_asterisk: RunningAsterisk, robot: ServedRobot, korean_voice: Path, tmp_path: Path
) -> None:
    callers = [Caller(CALLER, KOREAN_NUMBER)] * 20
    batch = place_calls(local_asterisk, robot, tmp_path, callers, turns=[lambda a: a.speech(korean_voice).silence(90)])
    assert batch.run.ok, batch.run.errors
    assert len(batch.run.answer_ms) == 20, "every call answered (200 OK to the authenticated INVITE)"
    assert len(batch.calls) == 20 and sorted(c.media_port for c in batch.calls) == batch.run.media_ports
    korean = greeting(robot, "ko-KR")
    book = PromptBook(robot.settings.dialogs_dir)
    rows = cdr_rows(local_asterisk)
    for call in batch.calls:
        assert_heard_whole(batch, call, korean)
        call_id, transcript = robot.transcript(call.uniqueid)
        assert said(transcript) == [book.text("utter_greet", "ko-KR"), book.text("utter_goodbye", "ko-KR")], call
        assert transcript[-1]["outcome"] == "completed"
        assert rows[call.uniqueid][13:15] == [mask_text(call_id), "completed"]
    assert batch.delta("ivr_calls_completed_total") == 20
    assert batch.delta("ivr_calls_answered_total") == 20
    assert part_errors(batch.metrics_after) == part_errors(batch.metrics_before)
    print(
        f"20 SIPp calls: answered within {max(batch.run.answer_ms):.0f} ms (max), "
        f"all completed in {batch.run.wall_s:.1f} s"
    )


def test_hanging_up_mid_prompt_is_a_caller_hangup_and_the_number_picks_the_language(
    sipp_binary: str, local_asterisk: RunningAsterisk, robot: ServedRobot, tmp_path: Path
) -> None:
    numbers = {DEFAULT_NUMBER: DEFAULT_LOCALE, CHINESE_NUMBER: "zh-CN", ENGLISH_NUMBER: "en-US", KOREAN_NUMBER: "ko-KR"}
    callers = [Caller(CALLER, number) for number in numbers]
    batch = place_calls(local_asterisk, robot, tmp_path, callers, hangup_after_ms=3000)  # greetings last 8-15 s
    assert batch.run.ok, batch.run.errors
    assert len(batch.calls) == len(numbers)
    by_port = {c.media_port: c for c in batch.calls}
    for port, (number, locale) in zip(batch.run.media_ports, numbers.items(), strict=True):
        call = by_port[port]
        received = batch.capture.payload(port)
        start = greeting(robot, locale)[: 160 * 50]  # the greeting's first second, bit-exact
        assert start in received, f"{number}: no {locale} greeting in the first 3 s ({batch.capture.diagnosis(port)})"
        _, transcript = robot.transcript(call.uniqueid)
        assert transcript[-1]["outcome"] == "caller_hangup", (number, transcript[-1])
        [ended] = ended_lines(local_asterisk, call)
        assert f"number={number} lang={'' if number == DEFAULT_NUMBER else locale} " in ended
    assert batch.delta("ivr_calls_caller_hangup_total") == len(numbers)
    # a caller hanging up is normal flow: no part of the robot counts an error for it
    assert part_errors(batch.metrics_after) == part_errors(batch.metrics_before), {
        k: v for k, v in batch.metrics_after.items() if k.startswith("ivr_part_errors")
    }


def test_asterisk_logs_hold_no_caller_number_in_clear(
    local_asterisk: RunningAsterisk, robot: ServedRobot, log_start: dict[str, int]
) -> None:
    """After the calls above: the caller's number is in neither Asterisk's log nor the call records
    (only its last 4 digits), and no keypad digit was logged."""
    log = written_since(local_asterisk, log_start, MESSAGES_LOG)
    records = written_since(local_asterisk, log_start, CDR_CSV)
    assert "IVR call ended" in log and "sipp" in records  # the calls were logged
    assert CALLER not in log and CALLER not in records
    assert not [line for line in log.splitlines() if "PJSIP/sipp-" in line and "DTMF" in line.upper()]
    counts = collections.Counter(row[8].split("-")[0] for row in csv.reader(records.splitlines()))
    assert counts["PJSIP/sipp"] >= 1, counts  # (a full run: 25, one per SIPp call of this module)

