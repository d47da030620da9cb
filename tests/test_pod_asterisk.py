"""A pod's faults through the real local Asterisk (#16 part 5): what callers on real calls get.

The pod is ``ivr pod up --workers 2 --text-input --no-asterisk`` (HAProxy + 2 workers on a shared SQLite
database, private ports); the calls are real calls placed through the suite's local Asterisk, whose
``AGI()`` reaches HAProxy's port and whose shipped dialplan handles a call the robot could not finish
(the apology, then the human queue and the test agent). The same faults as ``tests/test_pod.py`` (which
plays Asterisk's side with the harness): a worker killed, a worker hung, HAProxy killed. Each call must
end served by the robot or with a person who answers, never in silence, and the next calls are served.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from ivr.asterisk.ami import AmiClient
from ivr.asterisk.testcall import AsteriskCaller, AsteriskCallReport
from ivr.config import Settings
from ivr.console.publishing import settings_env
from ivr.dialogue.servers import free_block
from ivr.testing.callfile import CallFile, Turn
from tests.conftest import SuiteDirs
from tests.test_asterisk import DEMO_CALLER, GOODBYE, ami, call_file, robot_settings  # noqa: F401 (fixtures)
from tests.test_pod import Pod, _process_state

pytestmark = [pytest.mark.asterisk, pytest.mark.slow]

WORKERS = 2
CALL_TIMEOUT_S = 90.0  # a call still open after this is "silent" (the stuck ones end within seconds)


@pytest.fixture(scope="module")
def asterisk_pod(robot_settings: Settings, suite_dirs: SuiteDirs,  # noqa: F811 (the fixture imported above)
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    work = tmp_path_factory.mktemp("asterisk-pod")
    base = free_block(3 * WORKERS + 2)
    settings = dataclasses.replace(
        robot_settings, agi_host="127.0.0.1", agi_port=base, http_host="127.0.0.1", http_port=base + 1,
        worker_agi_port=base + 2, worker_http_port=base + 2 + WORKERS, worker_audiosocket_port=base + 2 + 2 * WORKERS,
        pod_dir=work / "pod", log_dir=suite_dirs.log_file.parent, stop_grace_s=5.0,
    )
    env = settings_env(settings)
    log = settings.log_dir / "pod.log"

    def ivr(*argv: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ivr", *argv], cwd=work, env=env, capture_output=True,
                              text=True, timeout=timeout_s, check=False)

    up = ivr("pod", "up", "--workers", str(WORKERS), "--text-input", "--no-asterisk", "--timeout", "600", timeout_s=700)
    pid_file = settings.pod_dir / "pod.pid"
    pid = int(pid_file.read_text().strip()) if pid_file.exists() else 0
    running = Pod(pid, base, base + 1, settings.pod_dir, log)  # one SQLite database, no PostgreSQL
    try:
        assert up.returncode == 0, f"{up.stdout}{up.stderr}\n{running.log_tail()}"
        yield running
    finally:
        down = ivr("pod", "down")
        if pid and _process_state(pid) not in ("", "Z"):
            os.killpg(pid, signal.SIGKILL)
        assert down.returncode == 0, f"{down.stdout}{down.stderr}\n{running.log_tail()}"


@contextlib.asynccontextmanager
async def caller(settings: Settings, ami: AmiClient, pod: Pod) -> AsyncIterator[AsteriskCaller]:  # noqa: F811
    async with AsteriskCaller(settings, ami=ami, text_mode=True, agi_url=f"agi://127.0.0.1:{pod.front_port}/ivr") as c:
        yield c


def ending(report: AsteriskCallReport) -> str:
    """What the caller on the real call got: "served" (the robot finished the call), "person" (a person
    answered: the robot put the caller through, or the dialplan did after the robot's session ended
    without a result), "silent" (the call did not end, or ended with nobody)."""
    if report.errors:
        return "silent"
    if report.outcome == "completed" and report.answered:
        return "served"
    return "person" if report.reached_human and report.agent_answered else "silent"


def in_progress(name: str) -> CallFile:
    """A caller who stays silent for a while: the call is in a worker's hands until the fault."""
    return call_file(name, *[Turn("silence", 3)] * 3, caller_id=DEMO_CALLER)


def goodbye(name: str) -> CallFile:
    return call_file(name, Turn("say", GOODBYE), caller_id=DEMO_CALLER)


async def _fault_under_calls(c: AsteriskCaller, fault: Callable[[], None], *, calls: int,
                             before: Callable[[], bool]) -> list[AsteriskCallReport]:
    """``calls`` calls in progress; when ``before`` holds, ``fault``."""
    tasks = [asyncio.create_task(c.place(in_progress(f"in-progress-{i}"), timeout_s=CALL_TIMEOUT_S))
             for i in range(calls)]
    deadline = time.monotonic() + 60
    while not await asyncio.to_thread(before):
        assert time.monotonic() < deadline, "the calls did not reach the workers"
        await asyncio.sleep(0.2)  # polling the pod's metrics
    await asyncio.to_thread(fault)
    return list(await asyncio.gather(*tasks))


def _active(pod: Pod, index: int) -> float:
    return pod.samples("ivr_calls_active").get(str(index), 0.0)


async def test_a_worker_killed_under_real_calls(robot_settings: Settings, ami: AmiClient,  # noqa: F811
                                                asterisk_pod: Pod) -> None:
    pod = asterisk_pod
    pod.wait_for(pod.all_up, "every worker up", 300)
    victim = pod.worker(0)
    async with caller(robot_settings, ami, pod) as c:
        reports = await _fault_under_calls(c, lambda: os.kill(victim["pid"], signal.SIGKILL), calls=4,
                                           before=lambda: _active(pod, 0) >= 1 and _active(pod, 1) >= 1)
        fresh = await asyncio.gather(*(c.place(goodbye(f"after-kill-{i}"), timeout_s=CALL_TIMEOUT_S)
                                       for i in range(3)))
    endings = [ending(r) for r in reports]
    assert "silent" not in endings, [(r.outcome, r.transfer_reason, r.errors) for r in reports]
    cut = [r for r in reports if r.transfer_reason == "robot_error"]
    # the killed worker's calls: the dialplan's apology and a person (leastconn gave it 2 of the 4)
    assert 1 <= len(cut) <= 2 and all(r.answered and r.agent_answered for r in cut), [r.transfer_reason for r in reports]
    assert [ending(r) for r in fresh] == ["served"] * 3, [(r.outcome, r.transfer_reason, r.errors) for r in fresh]
    pod.wait_for(lambda: pod.worker(0)["pid"] not in (0, victim["pid"]), "worker 0 forked again", 10)


async def test_a_hung_worker_under_real_calls(robot_settings: Settings, ami: AmiClient,  # noqa: F811
                                              asterisk_pod: Pod) -> None:
    pod = asterisk_pod
    pod.wait_for(pod.all_up, "every worker up (the replaced one loaded)", 300)
    victim = pod.worker(1)
    try:
        async with caller(robot_settings, ami, pod) as c:
            # the moment the dialplan takes the first call back from the robot (its AGI() returned)
            apology = ami.subscribe_async(lambda e: e.name == "UserEvent" and e.get("UserEvent") == "IvrApology"
                                          and e.get("Reason") == "robot_error")

            async def state_when_cut() -> tuple[str, str]:
                await apology.next(CALL_TIMEOUT_S)
                return _process_state(victim["pid"]), await asyncio.to_thread(pod.haproxy_status, "worker1")

            cut_while = asyncio.create_task(state_when_cut())
            reports = await _fault_under_calls(c, lambda: os.kill(victim["pid"], signal.SIGSTOP), calls=4,
                                               before=lambda: _active(pod, 1) >= 1)
            ami.unsubscribe(apology)
            # HAProxy marked it down and cut its calls (~2-3 s after the SIGSTOP) while the worker was still
            # there, stopped; not the supervisor's kill (~6-9 s), which would also end them
            process, balancer = await cut_while
            assert process == "T", "its calls ended only when the hung worker was killed"
            assert balancer.startswith("DOWN"), balancer
            fresh = await asyncio.gather(*(c.place(goodbye(f"after-hang-{i}"), timeout_s=CALL_TIMEOUT_S)
                                           for i in range(3)))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim["pid"], signal.SIGCONT)
    endings = [ending(r) for r in reports]
    assert "silent" not in endings, [(r.outcome, r.transfer_reason, r.errors) for r in reports]
    # the hung worker's calls were cut by HAProxy (on-marked-down shutdown-sessions): the dialplan's person
    assert any(r.transfer_reason == "robot_error" and r.agent_answered for r in reports), [r.transfer_reason for r in reports]
    assert [ending(r) for r in fresh] == ["served"] * 3, [(r.outcome, r.transfer_reason, r.errors) for r in fresh]


async def test_haproxy_killed_under_real_calls(robot_settings: Settings, ami: AmiClient,  # noqa: F811
                                               asterisk_pod: Pod) -> None:
    pod = asterisk_pod
    pod.wait_for(lambda: sum(w["haproxy"] == "UP" for w in pod.health()["workers"]) >= 1, "a worker up", 300)
    old = pod.health()["front_door"]["haproxy_pid"]
    async with caller(robot_settings, ami, pod) as c:
        reports = await _fault_under_calls(c, lambda: os.kill(old, signal.SIGKILL), calls=3,
                                           before=lambda: sum(pod.samples("ivr_calls_active").values()) >= 3)
        pod.wait_for(lambda: pod.health()["front_door"]["haproxy_pid"] not in (0, old)
                     and pod.health()["front_door"]["running"], "HAProxy started again", 10)
        pod.wait_for(lambda: any(pod.haproxy_status(f"worker{i}") == "UP" for i in range(WORKERS)), "a worker UP", 10)
        fresh = await asyncio.gather(*(c.place(goodbye(f"after-haproxy-{i}"), timeout_s=CALL_TIMEOUT_S)
                                       for i in range(3)))
    # every call in progress was cut with HAProxy: the dialplan's apology and a person, for each of them
    assert [(ending(r), r.transfer_reason) for r in reports] == [("person", "robot_error")] * 3, [
        (r.outcome, r.transfer_reason, r.errors) for r in reports]
    assert [ending(r) for r in fresh] == ["served"] * 3, [(r.outcome, r.transfer_reason, r.errors) for r in fresh]
