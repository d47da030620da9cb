"""Several pods behind Kamailio (#16 part 4): real SIP callers, a real Kamailio, two real pods, one killed.

Every part is real: Kamailio 5.6 (Debian's ``kamailio``) runs the configuration ``ivr pod kamailio-config``
generates, on a private port; each pod is its own Asterisk instance from the local chroot (``pod-a``,
``pod-b``: their own configuration, SIP port, AMI port, RTP range, run/log folders) with its own robot
(``ivr serve``, one process each); SIPp places the calls to Kamailio's address (digest auth by the pods'
Asterisk, G.711 RTP straight to the pod that answered). The suite's shared Asterisk (tests/conftest.py)
is neither used nor disturbed: other ports, other folders, and its shared mounts stay.

What is measured and printed (not asserted: no timed assertions): the seconds from ``kill -9`` of pod B's
Asterisk until Kamailio marks it down, and the calls affected (lost with it, or answered late).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ivr.asterisk.local import LocalAsterisk, _process_alive, new_secret
from ivr.asterisk.sipp import Caller, CallerAudio, RtpCapture, SippRun, run_sipp, uac_scenario
from ivr.config import Settings
from ivr.dialogue.prompts import PromptBook
from ivr.pod import kamailio
from tests.conftest import SuiteDirs, make_demo_db, start_local_asterisk
from tests.test_sipp import ServedRobot, _free_port, greeting, sipp_binary  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.asterisk, pytest.mark.slow]

CALLER = "01012345678"  # C003, the Korean demo customer
KOREAN_NUMBER = "1082"
SSRC = 0x51AE0002
# SIP and RTP ports of this module: away from the shared Asterisk (5060, RTP 10000-20000) and from the
# kernel's ephemeral ports (32768 and up); SIPp's media ports are 30000 + 4n
KAMAILIO_PORT = 5170
POD_SIP_PORTS = {"pod-a": 5171, "pod-b": 5172}
POD_RTP = {"pod-a": (21000, 21998), "pod-b": (22000, 22998)}
INVITE_TIMEOUT_S = 2.0
PING_INTERVAL_S = 1
HOLD_MS = 6000  # the held calls' length; the caller hangs up (BYE) while the greeting still plays
THRESHOLD = 2
HEALTH_INTERVAL_S = 1  # Kamailio asks each pod's robot /health?part=dialogue every second
HEALTH_TIMEOUT_S = 1


@dataclasses.dataclass
class RunningPod:
    name: str
    asterisk: LocalAsterisk
    pid: int
    robot: ServedRobot

    @property
    def uri(self) -> str:
        return f"sip:127.0.0.1:{POD_SIP_PORTS[self.name]}"

    def answered(self) -> float:
        return self.robot.metrics().get("ivr_calls_answered_total", 0.0)


@dataclasses.dataclass
class RunningKamailio:
    process: subprocess.Popen[bytes]
    log_file: Path

    def log(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace")

    def lines(self, needle: str) -> list[str]:
        return [line for line in self.log().splitlines() if needle in line]


@pytest.fixture(scope="module")
def kamailio_binary() -> str:
    """Debian's kamailio (`make setup` installs it; as root, this installs it when missing)."""
    found = kamailio.kamailio_binary()
    if found is None and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "kamailio"],
                       capture_output=True, check=False, timeout=600, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip
        found = kamailio.kamailio_binary()
    if found is None:
        pytest.skip("INFRASTRUCTURE: Kamailio (Debian package kamailio) is not installed and could not be")
    return found


def _udp_port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _stop(process: subprocess.Popen[bytes], grace_s: float = 60.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    with contextlib.suppress(ProcessLookupError):  # nothing of its group may stay (Kamailio's children)
        os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def pods(
    sipp_binary: str,  # noqa: F811
    kamailio_binary: str,
    base_settings: Settings,
    suite_dirs: SuiteDirs,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, RunningPod]]:
    """Two pods, each one Asterisk instance and one `ivr serve`, started in parallel; stopped by PID."""
    from ivr.tts.synth import PromptSynthesizer

    for port in (KAMAILIO_PORT, *POD_SIP_PORTS.values()):
        assert _udp_port_free(port), f"UDP port {port} on 127.0.0.1 is taken: another run of this test?"
    settings = dataclasses.replace(base_settings, locale="zh-CN", asr_dither=False, ami_secret="")
    synth = PromptSynthesizer(settings)  # the prompts both robots will play, rendered ahead (a cache)
    try:
        synth.build_all(PromptBook(settings.dialogs_dir))
    finally:
        synth.close()
    robots: dict[str, ServedRobot] = {}
    started: dict[str, RunningPod] = {}
    sipp_secret = new_secret()  # SIPp has one password: the `sipp` account of both pods gets it
    try:
        for name in POD_SIP_PORTS:  # both robots load their models at the same time
            robot_settings = dataclasses.replace(
                settings, database_url=make_demo_db(tmp_path_factory.mktemp(f"kam-{name}") / "accounts.db")
            )
            robots[name] = _spawn_robot(robot_settings, suite_dirs, name)
        for name, robot in robots.items():
            _wait_listening(robot)
            rtp_start, rtp_end = POD_RTP[name]
            environ = {
                "IVR_SIP_PORT": str(POD_SIP_PORTS[name]), "IVR_RTP_START": str(rtp_start), "IVR_RTP_END": str(rtp_end),
                "IVR_AGI_URL": f"agi://127.0.0.1:{robot.agi_port}/ivr", "IVR_SIPP_SECRET": sipp_secret,
            }  # fmt: skip
            instance_settings = dataclasses.replace(settings, ami_port=_free_port())
            local = LocalAsterisk(instance_settings, environ=environ, instance=name)
            status = start_local_asterisk(local)
            assert status.pid is not None
            started[name] = RunningPod(name, local, status.pid, robot)
        yield started
    finally:
        survivors = []
        for pod in started.values():
            try:
                pod.asterisk.down()
            finally:
                if _process_alive(pod.pid):
                    survivors.append(f"{pod.name}'s Asterisk (PID {pod.pid})")
        for robot in robots.values():
            _stop(robot.process)
        assert not survivors, f"survived `down`: {survivors}"


def _spawn_robot(settings: Settings, suite_dirs: SuiteDirs, name: str) -> ServedRobot:
    agi_port, http_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IVR_")}
    env.update(
        IVR_DATABASE_URL=settings.database_url, IVR_SOUNDS_DIR=str(settings.sounds_dir),
        IVR_SPOOL_DIR=str(settings.spool_dir), IVR_TRANSCRIPTS_DIR=str(settings.transcripts_dir),
        IVR_LOG_DIR=str(suite_dirs.log_file.parent), IVR_LOCALE=settings.locale, IVR_FIXED_DATE=settings.fixed_date,
        IVR_ASR_DITHER="false", IVR_AGI_HOST="127.0.0.1", IVR_AGI_PORT=str(agi_port),
        IVR_HTTP_HOST="127.0.0.1", IVR_HTTP_PORT=str(http_port), IVR_LOG_LEVEL="INFO",
        RASA_TELEMETRY_ENABLED="false", TF_CPP_MIN_LOG_LEVEL="3",
    )  # fmt: skip
    log_file = suite_dirs.log_file.parent / f"kamailio-{name}-robot.jsonl"  # scanned by test_zz_privacy.py
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ivr", "serve"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=log, start_new_session=True,
        )  # fmt: skip
    return ServedRobot(settings, agi_port, http_port, log_file, process)


def _wait_listening(robot: ServedRobot) -> None:
    deadline = time.monotonic() + 300
    while b"FastAGI server listening" not in robot.log_file.read_bytes():
        assert robot.process.poll() is None, f"`ivr serve` exited with {robot.process.returncode}: see {robot.log_file}"
        assert time.monotonic() < deadline, "`ivr serve` did not listen within 300 s"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def proxy(pods: dict[str, RunningPod], suite_dirs: SuiteDirs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningKamailio]:
    """Kamailio with the generated configuration, on 127.0.0.1:KAMAILIO_PORT; stopped by PID."""
    folder = tmp_path_factory.mktemp("kamailio")
    config = kamailio.KamailioConfig(
        pods=tuple(
            kamailio.Pod("127.0.0.1", POD_SIP_PORTS[name], f"http://127.0.0.1:{pod.robot.http_port}/health?part=dialogue")
            for name, pod in pods.items()
        ),
        listen=kamailio.Pod("127.0.0.1", KAMAILIO_PORT), list_file=folder / "dispatcher.list",
        ping_interval_s=PING_INTERVAL_S, threshold=THRESHOLD, invite_timeout_s=INVITE_TIMEOUT_S,
        health_interval_s=HEALTH_INTERVAL_S, health_timeout_s=HEALTH_TIMEOUT_S,
    )
    cfg, _ = kamailio.write(config, folder)
    checked = kamailio.check(cfg)
    assert checked.returncode == 0, checked.stderr
    log_file = folder / "kamailio.log"
    with open(log_file, "ab") as out:
        process = subprocess.Popen(
            kamailio.command_line(cfg, pid_file=folder / "kamailio.pid"), stdin=subprocess.DEVNULL, stdout=out,
            stderr=out, start_new_session=True,
        )  # fmt: skip
    running = RunningKamailio(process, log_file)
    try:
        deadline = time.monotonic() + 30
        while not _keepalive(KAMAILIO_PORT):
            assert process.poll() is None, f"kamailio exited with {process.returncode}:\n{running.log()[-3000:]}"
            assert time.monotonic() < deadline, "kamailio did not answer OPTIONS within 30 s"
            time.sleep(0.2)
        yield running
    finally:
        _stop(process, grace_s=10.0)
        assert not _process_alive(process.pid)


def _keepalive(port: int) -> bool:
    """An OPTIONS to Kamailio itself: its "200 Keepalive" says it is up."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        local = sock.getsockname()[1]
        request = (
            f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK-ivr{time.monotonic_ns()}\r\n"
            f"From: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1:{port}>\r\nCall-ID: probe-{time.monotonic_ns()}\r\n"
            "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        sock.sendto(request.encode(), ("127.0.0.1", port))
        sock.settimeout(0.5)
        try:
            reply = sock.recv(4096)
        except OSError:
            return False
    return reply.startswith(b"SIP/2.0 200")


# ---------------------------------------------------------------- the calls
def _call(
    workdir: Path, pod: RunningPod, callers: int, hangup_after_ms: int, batch: str, media_port: int = 30000
) -> tuple[SippRun, RtpCapture]:
    """``callers`` SIPp calls at once to Kamailio, each hanging up after ``hangup_after_ms`` (BYE); their
    Call-IDs are ``<n>-<batch>@127.0.0.1`` (the same every run: the same pods take them)."""
    workdir.mkdir(parents=True, exist_ok=True)
    password = (pod.asterisk.etc_dir / "sipp_secret").read_text(encoding="ascii").strip()
    idle = CallerAudio(ssrc=SSRC).silence(60).write(workdir / "idle.pcap")
    scenario = uac_scenario(user="sipp", password=password, idle=idle, hangup_after_ms=hangup_after_ms)
    ports = [media_port + 4 * n for n in range(callers)]
    with RtpCapture(ports) as capture:
        run = run_sipp(
            scenario, [Caller(CALLER, KOREAN_NUMBER)] * callers, workdir=workdir, server=("127.0.0.1", KAMAILIO_PORT),
            media_port=media_port, timeout_s=120, call_ids=f"%u-{batch}@%s",
        )  # fmt: skip
    return run, capture


def test_generated_config_is_accepted_by_kamailio(kamailio_binary: str, tmp_path: Path) -> None:
    config = kamailio.KamailioConfig(
        pods=kamailio.parse_pods(["10.0.0.5", "pod-b.example:5080"]), list_file=tmp_path / "dispatcher.list"
    )
    cfg, listed = kamailio.write(config, tmp_path)
    checked = kamailio.check(cfg)
    assert checked.returncode == 0, checked.stderr
    assert listed.read_text().splitlines()[1:] == ["1 sip:10.0.0.5:5060 0 0 pod=0", "1 sip:pod-b.example:5080 0 0 pod=1"]
    text = cfg.read_text()
    for needle in ('ds_select_dst("1", "0")', "ds_next_dst()", 'ds_mark_dst("ip")', "record_route()", "loose_route()",
                   '"ds_probing_mode", 1', '"ds_ping_interval", 2', '"fr_timer", 2000'):  # fmt: skip
        assert needle in text, needle
    broken = cfg.read_text().replace("ds_next_dst()", "ds_next_dst(")
    cfg.write_text(broken)
    assert kamailio.check(cfg).returncode != 0, "kamailio -c must reject a broken configuration"
    with pytest.raises(ValueError, match="HOST or HOST:PORT"):
        kamailio.Pod.parse("10.0.0.5:sip")
    with pytest.raises(ValueError, match="listen on a pod"):
        kamailio.KamailioConfig(pods=(kamailio.Pod("127.0.0.1", 5070),))
    with pytest.raises(ValueError, match="listen on a pod"):  # the same address, whatever the pod's health URL
        kamailio.KamailioConfig(pods=(kamailio.Pod("127.0.0.1", 5070, "http://127.0.0.1:8089/health"),))
    assert "http_client" not in text and "ROBOT_PICK" not in text  # no robot health URL given: no robot check
    # with the robots' health URLs: a timer asks each, and new calls skip a pod whose robot is down
    health = ["http://10.0.0.5:8089/health?part=dialogue", "http://pod-b.example:8089/health?part=dialogue"]
    checked_config = dataclasses.replace(config, pods=kamailio.parse_pods(["10.0.0.5", "pod-b.example:5080"], health))
    cfg, _ = kamailio.write(checked_config, tmp_path)
    assert kamailio.check(cfg).returncode == 0, kamailio.check(cfg).stderr
    text = cfg.read_text()
    for needle in ('loadmodule "http_client.so"', '"timer=robots;route=ROBOTS"', "route(ROBOT_PICK);",
                   f'$var(pod) = "sip:10.0.0.5:5060";\n    $var(url) = "{health[0]}";'):  # fmt: skip
        assert needle in text, needle
    with pytest.raises(ValueError, match="one robot health URL per pod"):
        kamailio.parse_pods(["10.0.0.5", "10.0.0.6"], health[:1])
    with pytest.raises(ValueError, match="health URL"):
        kamailio.Pod.parse("10.0.0.5", 'http://10.0.0.5:8089/health"; exec("x")')


def test_calls_spread_over_both_pods_and_a_killed_asterisk_moves_new_calls_to_the_other(
    pods: dict[str, RunningPod], proxy: RunningKamailio, tmp_path: Path
) -> None:
    pod_a, pod_b = pods["pod-a"], pods["pod-b"]
    korean = greeting(pod_a.robot, "ko-KR")
    korean_start = korean[: 160 * 50]  # the greeting's first second, bit-exact
    # the held calls hang up before the greeting ends (else the robot would go on: listen, ask again...)
    assert len(korean) / 8000 > HOLD_MS / 1000 + 2, f"the Korean greeting lasts {len(korean) / 8000:.1f} s"

    # 1. both pods serve: 8 calls through Kamailio, each hears the greeting, hangs up after 3 s (BYE)
    before = {name: pod.answered() for name, pod in pods.items()}
    byes_before = len(proxy.lines("ivr-pod in-dialog BYE"))
    run, capture = _call(tmp_path / "spread", pod_a, 8, 3000, "spread")
    assert run.ok, run.errors
    spread = {name: pod.answered() - before[name] for name, pod in pods.items()}
    assert sum(spread.values()) == 8 and all(spread.values()), spread  # each pod's robot answered some
    for port in run.media_ports:
        assert korean_start in capture.payload(port), f"no greeting from the pod that answered: {capture.diagnosis(port)}"
    # record-route: every caller's BYE went through Kamailio to the pod that answered, not around it
    assert len(proxy.lines("ivr-pod in-dialog BYE")) - byes_before == 8

    # 2. calls in progress on both pods, then pod B's Asterisk is killed; new calls come at once
    before = {name: pod.answered() for name, pod in pods.items()}
    held_runs: list[SippRun] = []
    holder = threading.Thread(
        target=lambda: held_runs.append(_call(tmp_path / "held", pod_a, 6, HOLD_MS, "held", 30200)[0]), daemon=True
    )
    holder.start()
    deadline = time.monotonic() + 60
    while sum(pod.answered() - before[name] for name, pod in pods.items()) < 6:
        assert time.monotonic() < deadline, "the 6 held calls were not all answered"
        time.sleep(0.1)
    held = {name: pod.answered() - before[name] for name, pod in pods.items()}
    assert held["pod-a"] > 0 and held["pod-b"] > 0, held  # (the Call-IDs are fixed: the hash puts some on each)
    # pod B marked inactive: by the OPTIONS probing ("down"), or by an INVITE it did not answer ("failed")
    b_marked = rf"ivr-pod (down|failed INVITE at) {re.escape(pod_b.uri)}\b"
    with LineWatcher(proxy.log_file, b_marked) as marked:
        killed_at = time.monotonic()
        os.kill(pod_b.pid, signal.SIGKILL)
        os.waitpid(pod_b.pid, 0)  # our child (started by LocalAsterisk.up): reaped
        after_kill = {name: pod.answered() for name, pod in pods.items()}
        run, capture = _call(tmp_path / "after", pod_a, 8, 3000, "after")
        holder.join(60)
    assert not holder.is_alive()
    assert run.ok, run.errors  # every new call answered and completed
    new = {name: pod.answered() - after_kill[name] for name, pod in pods.items()}
    assert new == {"pod-a": 8, "pod-b": 0}, new
    for port in run.media_ports:
        assert korean_start in capture.payload(port), capture.diagnosis(port)
    [lost] = held_runs
    # the calls in progress on pod B are lost with it: the caller's BYE times out at Kamailio (408),
    # which SIPp counts as a failed call; pod A's held calls end normally
    assert (lost.successful, lost.failed) == (held["pod-a"], held["pod-b"]), (lost.successful, lost.failed, lost.errors)
    assert marked.seen_at is not None, proxy.log()[-3000:]
    failovers = len(proxy.lines("ivr-pod failover INVITE"))
    late = [ms for ms in run.challenge_ms if ms >= INVITE_TIMEOUT_S * 500]  # the first INVITE went to dead B
    print(
        f"\npods behind Kamailio: 8 calls spread {spread}; 6 held calls {held}; pod B's Asterisk killed: "
        f"{held['pod-b']:.0f} calls in progress lost, pod B marked inactive {marked.seen_at - killed_at:.1f} s after "
        f"the kill ({marked.line.strip()!r}), {failovers} INVITE(s) failed over; of the 8 new calls (all answered by "
        f"pod A) {len(late)} waited for the failover: first INVITE to 401 max {max(run.challenge_ms):.0f} ms, the "
        f"others {max([ms for ms in run.challenge_ms if ms not in late] or [0]):.0f} ms max; authenticated INVITE "
        f"to 200 max {max(run.answer_ms):.0f} ms"
    )

    # 3. a dead pod stays out (no reply to OPTIONS is a failure, not a sign of life) until it is back; then the
    # OPTIONS mark it up again and calls spread over both pods as before
    ups = rf"ivr-pod up {re.escape(pod_b.uri)}\b"
    time.sleep(PING_INTERVAL_S * (THRESHOLD + 2))  # several rounds of OPTIONS to the dead pod
    assert not re.search(ups, proxy.log()), "pod B was marked up while its Asterisk was dead"
    with LineWatcher(proxy.log_file, ups) as back:
        restarted_at = time.monotonic()
        status = pod_b.asterisk.up(timeout_s=60)
        assert status.pid is not None
        pod_b.pid = status.pid
        deadline = time.monotonic() + 30
        while back.seen_at is None:
            assert time.monotonic() < deadline, "pod B was not marked up within 30 s of its restart"
            time.sleep(0.1)
    before = {name: pod.answered() for name, pod in pods.items()}
    run, capture = _call(tmp_path / "again", pod_a, 8, 3000, "spread")  # the Call-IDs of step 1
    assert run.ok, run.errors
    again = {name: pod.answered() - before[name] for name, pod in pods.items()}
    assert again == spread, again
    print(f"pod B's Asterisk restarted: marked up {back.seen_at - restarted_at:.1f} s later; 8 calls spread {again}")


def test_a_pod_whose_robot_hangs_gets_no_new_calls_until_it_answers_again(
    pods: dict[str, RunningPod], proxy: RunningKamailio, tmp_path: Path
) -> None:
    """Pod B's Asterisk stays up (it answers the OPTIONS) while its robot hangs (`kill -STOP`): without the
    robot health check Kamailio would keep sending it calls, and those callers would get the dialplan's
    apology and a person instead of the robot."""
    pod_a, pod_b = pods["pod-a"], pods["pod-b"]
    korean_start = greeting(pod_a.robot, "ko-KR")[: 160 * 50]
    before = {name: pod.answered() for name, pod in pods.items()}
    robot_down = rf"ivr-pod robot down {re.escape(pod_b.uri)} "
    assert not re.search(robot_down, proxy.log()), "pod B's robot was marked down while it served"
    try:
        with LineWatcher(proxy.log_file, robot_down) as down:
            stopped_at = time.monotonic()
            os.kill(pod_b.robot.process.pid, signal.SIGSTOP)
            deadline = time.monotonic() + 30
            while down.seen_at is None:
                assert time.monotonic() < deadline, f"pod B's hung robot was not marked down within 30 s:\n{proxy.log()[-3000:]}"
                time.sleep(0.1)
        skipped_before = len(proxy.lines(f"ivr-pod robot down at {pod_b.uri}"))
        run, capture = _call(tmp_path / "hung", pod_a, 8, 3000, "spread")  # the Call-IDs that spread 4/4 over the pods
        assert run.ok, run.errors
        for port in run.media_ports:
            assert korean_start in capture.payload(port), f"no robot's greeting: {capture.diagnosis(port)}"
        assert pod_a.answered() - before["pod-a"] == 8  # every call reached pod A's robot
        skipped = len(proxy.lines(f"ivr-pod robot down at {pod_b.uri}")) - skipped_before
        assert skipped > 0, "no call was hashed to pod B: the test proves nothing"
    finally:
        os.kill(pod_b.robot.process.pid, signal.SIGCONT)
    robot_up = rf"ivr-pod robot up {re.escape(pod_b.uri)}\b"
    with LineWatcher(proxy.log_file, robot_up) as up:
        resumed_at = time.monotonic()
        deadline = time.monotonic() + 30
        while up.seen_at is None:
            assert time.monotonic() < deadline, "pod B's robot was not marked up within 30 s of SIGCONT"
            time.sleep(0.1)
    assert pod_b.answered() == before["pod-b"]  # no call waited in the hung robot's queue
    before = {name: pod.answered() for name, pod in pods.items()}
    run, _ = _call(tmp_path / "resumed", pod_a, 8, 3000, "spread")
    assert run.ok, run.errors
    again = {name: pod.answered() - before[name] for name, pod in pods.items()}
    assert sum(again.values()) == 8 and again["pod-b"] > 0, again
    print(
        f"\npod B's robot hung (SIGSTOP), its Asterisk up: robot marked down {down.seen_at - stopped_at:.1f} s later;"
        f" 8 new calls all served by pod A ({skipped} INVITE(s) moved off pod B); SIGCONT: marked up"
        f" {up.seen_at - resumed_at:.1f} s later; 8 calls spread {again}"
    )


class LineWatcher:
    """Notes the monotonic time at which a line matching ``pattern`` first appears in a log file."""

    def __init__(self, path: Path, pattern: str) -> None:
        self.path, self.pattern = path, re.compile(pattern)
        self.seen_at: float | None = None
        self.line = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="line-watcher", daemon=True)

    def __enter__(self) -> LineWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set() and self.seen_at is None:
            found = self.pattern.search(self.path.read_text(encoding="utf-8", errors="replace"))
            if found:
                self.seen_at = time.monotonic()
                self.line = found.string[found.start() : found.string.find("\n", found.start())]
            self._stop.wait(0.05)
