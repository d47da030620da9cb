"""A pod (#16): ``ivr pod up`` (``ivr serve --workers N``) behind a real HAProxy, on a real PostgreSQL, with faults.

The pod is a real process tree (supervisor, HAProxy, 3 workers with text input) shared by the module's
tests; calls are the replay harness playing Asterisk's side of FastAGI against HAProxy's port. What
Asterisk's dialplan does with a call's ending is what ``ending`` says: a result the robot set (served,
or a person it asked for), or a connection that ended without one (the dialplan's apology, then a
person). A call that does not end is "silent": the one thing that must never happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.client
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ivr.config import load_settings
from ivr.dialogue.servers import free_block
from ivr.pod.haproxy import check_config, render_config, stats, worker_backends, write_config
from ivr.pod.metrics import merge_expositions
from ivr.pod.supervisor import worker_count, worker_settings
from ivr.testing.callfile import CallFile, Expectation, Turn, load_call_file
from ivr.testing.harness import CallReport, ScriptedAsterisk
from tests.conftest import FIXED_DATE, SuiteDirs
from tests.services import PostgresServer, postgres_server

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
BALANCE = load_call_file(ROOT / "tests" / "calls" / "text" / "zh-CN" / "balance.yaml")
WORKERS = 3
CALL_TIMEOUT_S = 40.0  # a call still open after this is "silent" (the stuck ones are cut within seconds)


# ---------------------------------------------------------------- the configuration (no processes)
def test_the_generated_haproxy_config_is_accepted_by_haproxy(tmp_path: Path) -> None:
    settings = dataclasses.replace(load_settings(environ={}), pod_dir=tmp_path, agi_allowed_peers=("10.0.0.0/24", "::1"))
    text = render_config(settings, worker_backends(settings, 4))
    check_config(write_config(settings, text))  # haproxy -c
    assert "balance leastconn" in text and "on-marked-down shutdown-sessions" in text and "option redispatch" in text
    assert "option httpchk GET /health?part=dialogue" in text
    assert "server worker3 127.0.0.1:4603 check port 8103" in text
    assert "reject unless { src 10.0.0.0/24 ::1 }" in text


def test_worker_count_and_ports() -> None:
    assert worker_count("3") == 3
    assert worker_count("auto") == len(os.sched_getaffinity(0))
    with pytest.raises(ValueError, match="--workers"):
        worker_count("0")
    settings = load_settings(environ={"IVR_AGI_HOST": "0.0.0.0", "IVR_AGI_ALLOWED_PEERS": "10.1.2.3"})
    one = worker_settings(settings, 1)
    assert (one.agi_host, one.agi_port, one.http_port, one.audiosocket_port) == ("127.0.0.1", 4601, 8101, 4701)
    assert one.agi_allowed_peers == ("127.0.0.1", "::1")  # HAProxy connects from loopback
    assert one.tts_dynamic_subfolder == "worker1"  # its dynamic renders: only its own calls delete them


def test_the_pods_metrics_label_each_workers_samples() -> None:
    from ivr.metrics import Metrics

    first, second = Metrics(), Metrics()
    first.calls_answered.inc()
    second.calls_answered.inc(2)
    second.calls_transferred.labels(reason="caller_request").inc()
    text = merge_expositions({"0": first.exposition().decode(), "1": second.exposition().decode()}).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("ivr_calls_answered_total", (("worker", "0"),))] == 1
    assert samples[("ivr_calls_answered_total", (("worker", "1"),))] == 2
    assert samples[("ivr_calls_transferred_total", (("reason", "caller_request"), ("worker", "1")))] == 1


# ---------------------------------------------------------------- a real pod
@dataclasses.dataclass
class Pod:
    pid: int  # the supervisor's
    front_port: int
    http_port: int
    pod_dir: Path
    log: Path
    database: PostgresServer | None = None  # the workers' shared account store, when PostgreSQL

    def _get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def health(self) -> dict[str, Any]:
        return dict(json.loads(self._get("/health")[1]))

    def worker(self, index: int) -> dict[str, Any]:
        return dict(self.health()["workers"][index])

    def samples(self, name: str) -> dict[str, float]:
        """One metric's value per worker label (summed over its other labels)."""
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(self._get("/metrics")[1].decode()):
            for s in family.samples:
                if s.name == name and "worker" in s.labels:
                    out[s.labels["worker"]] = out.get(s.labels["worker"], 0.0) + s.value
        return out

    def haproxy_status(self, server: str) -> str:
        rows = stats(self.pod_dir / "haproxy.sock")
        return next((r["status"] for r in rows if r.get("svname") == server), "")

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def wait_for(self, predicate: Callable[[], bool], what: str, timeout_s: float) -> None:
        """Polls the pod (a separate process tree) until ``predicate`` holds."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert _process_state(self.pid) not in ("", "Z"), f"the pod exited:\n{self.log_tail()}"
            with contextlib.suppress(OSError, ValueError, KeyError, http.client.HTTPException):
                if predicate():
                    return
            time.sleep(0.2)  # polling another process tree
        raise AssertionError(f"not within {timeout_s:.0f} s: {what}\n{self.log_tail()}")

    def all_up(self) -> bool:
        document = self.health()
        return document["front_door"]["running"] and all(w["state"] == "up" and w["haproxy"] == "UP"
                                                         for w in document["workers"])


def _demo_into(url: str) -> None:
    from ivr.accounts.store import SqlAccountStore

    store = SqlAccountStore(url)
    try:
        store.init_schema()
        store.import_file(ROOT / "ivr" / "accounts" / "demo.yaml")
    finally:
        store.close()


@pytest.fixture(scope="module")
def pod(suite_dirs: SuiteDirs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    """HAProxy + 3 workers sharing one private PostgreSQL, started by ``ivr pod up --workers 3 --text-input
    --no-asterisk`` (which returns once HAProxy sees every worker UP), stopped by ``ivr pod down``."""
    work = tmp_path_factory.mktemp("pod")
    with postgres_server() as database:
        url = database.url
        _demo_into(url)
        base = free_block(3 * WORKERS + 2)
        front, http_port = base, base + 1
        agi_base, http_base, audio_base = base + 2, base + 2 + WORKERS, base + 2 + 2 * WORKERS
        env = {k: v for k, v in os.environ.items() if not k.startswith("IVR_")}
        env.update({
            "IVR_DATABASE_URL": url, "IVR_AGI_PORT": str(front), "IVR_HTTP_PORT": str(http_port),
            "IVR_WORKER_AGI_PORT": str(agi_base), "IVR_WORKER_HTTP_PORT": str(http_base),
            "IVR_WORKER_AUDIOSOCKET_PORT": str(audio_base), "IVR_POD_DIR": str(work / "pod"),
            "IVR_SOUNDS_DIR": str(suite_dirs.sounds), "IVR_SPOOL_DIR": str(suite_dirs.spool),
            "IVR_TRANSCRIPTS_DIR": str(suite_dirs.transcripts), "IVR_LOG_DIR": str(suite_dirs.log_file.parent),
            "IVR_TTS_DYNAMIC_SIDECARS": "true", "IVR_FIXED_DATE": FIXED_DATE, "IVR_STOP_GRACE_S": "5",
            "IVR_RETENTION_DAYS": "0",
        })
        log = suite_dirs.log_file.parent / "pod.log"  # the supervisor's and workers' JSON lines (`ivr pod up`)

        def ivr(*argv: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "ivr", *argv], cwd=work, env=env, capture_output=True,
                                  text=True, timeout=timeout_s, check=False)

        up = ivr("pod", "up", "--workers", str(WORKERS), "--text-input", "--no-asterisk", "--timeout", "600",
                 timeout_s=700)
        pid_file = work / "pod" / "pod.pid"
        pid = int(pid_file.read_text().strip()) if pid_file.exists() else 0
        running = Pod(pid, front, http_port, work / "pod", log, database)
        try:
            assert up.returncode == 0, f"{up.stdout}{up.stderr}\n{running.log_tail()}"
            assert all(f"worker {i}: up" in up.stdout for i in range(WORKERS)), up.stdout
            status = ivr("pod", "status")
            assert status.returncode == 0 and status.stdout.count("(HAProxy: UP)") == WORKERS, status.stdout
            yield running
        finally:
            down = ivr("pod", "down")
            if _process_state(pid) not in ("", "Z"):
                os.killpg(pid, signal.SIGKILL)
            assert down.returncode == 0 and "pod stopped" in down.stdout, f"{down.stdout}{down.stderr}\n{running.log_tail()}"
            assert not pid_file.exists()
            deadline = time.monotonic() + 15  # the workers' helpers (the TTS worker) end at EOF from their worker
            while (leftover := _group(pid)) and time.monotonic() < deadline:
                time.sleep(0.2)  # polling processes that are not our children
            assert leftover == [], f"processes of the pod left running: {leftover}"


def _group(pgid: int) -> list[str]:
    """The live (not zombie) processes of a process group, as ``ps`` lines."""
    found = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True, check=False).stdout.split()
    alive = [p for p in found if _process_state(int(p)) not in ("", "Z")]
    if not alive:
        return []
    return subprocess.run(["ps", "-o", "pid,stat,args", "-p", ",".join(alive)], capture_output=True, text=True,
                          check=False).stdout.splitlines()[1:]


class SlowCaller(ScriptedAsterisk):
    """A caller who takes ``hold_s`` to say the first thing: the call is in progress on its worker."""

    def __init__(self, call: CallFile, *, hold_s: float) -> None:
        super().__init__(call, locale=call.locale or "zh-CN", text_mode=True, timeout_s=CALL_TIMEOUT_S)
        self._hold_s = hold_s

    async def _record_file(self, args: list[str]) -> str:
        hold, self._hold_s = self._hold_s, 0.0
        if hold:
            await asyncio.sleep(hold)  # the caller speaking
        return await super()._record_file(args)


def ending(report: CallReport) -> str:
    """What the caller gets: "served" (the robot completed the call), "person" (the robot put the caller
    through, or the dialplan did because the AGI session ended without a result or could not start),
    "silent" (the call never ended)."""
    if any("did not end within" in e for e in report.errors):
        return "silent"
    return "served" if report.outcome == "completed" else "person"


async def _calls(port: int, count: int, *, hold_s: float = 0.0) -> list[CallReport]:
    return list(await asyncio.gather(*(SlowCaller(BALANCE, hold_s=hold_s).run("127.0.0.1", port) for _ in range(count))))


def _run_with_fault(pod: Pod, fault: Callable[[], None], *, slow: int, hold_s: float,
                    before: Callable[[], bool]) -> list[CallReport]:
    """``slow`` calls in progress; when ``before`` holds (e.g. the target worker has a call), ``fault``."""
    async def scenario() -> list[CallReport]:
        calls = asyncio.ensure_future(_calls(pod.front_port, slow, hold_s=hold_s))
        deadline = time.monotonic() + 20
        while not await asyncio.to_thread(before):
            assert time.monotonic() < deadline, "the calls did not reach the workers"
            await asyncio.sleep(0.1)  # polling the pod's metrics
        await asyncio.to_thread(fault)
        return await calls

    return asyncio.run(scenario())


def _process_state(pid: int) -> str:
    """The state letter of /proc/<pid>/stat (T: stopped), "" when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _active(pod: Pod, index: int) -> float:
    return pod.samples("ivr_calls_active").get(str(index), 0.0)


@pytest.mark.slow
def test_calls_are_spread_over_the_workers_and_served(pod: Pod) -> None:
    before = pod.samples("ivr_calls_answered_total")
    reports = asyncio.run(_calls(pod.front_port, 2 * WORKERS, hold_s=1.0))
    assert [ending(r) for r in reports] == ["served"] * (2 * WORKERS), [r.errors for r in reports]
    after = pod.samples("ivr_calls_answered_total")
    per_worker = {w: after.get(w, 0) - before.get(w, 0) for w in map(str, range(WORKERS))}
    assert per_worker == {w: 2 for w in per_worker}, per_worker  # leastconn: 2 simultaneous calls each
    tagged = set()
    for line in pod.log.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError, AttributeError):  # HAProxy's own lines are not JSON
            tagged.add(json.loads(line).get("worker"))
    assert set(range(WORKERS)) <= tagged, "each worker's log lines say which worker wrote them"


@pytest.mark.slow
def test_a_worker_killed_mid_call_costs_no_call_and_is_replaced(pod: Pod) -> None:
    victim = pod.worker(0)

    def kill() -> None:
        os.kill(victim["pid"], signal.SIGKILL)

    reports = _run_with_fault(pod, kill, slow=2 * WORKERS, hold_s=3.0, before=lambda: _active(pod, 0) >= 1)
    endings = [ending(r) for r in reports]
    assert "silent" not in endings, endings
    assert 1 <= endings.count("person") <= 2, endings  # the killed worker's calls: the dialplan's person
    # new calls at once: the dead worker refuses, HAProxy retries them on another (redispatch)
    fresh = asyncio.run(_calls(pod.front_port, 3))
    assert [ending(r) for r in fresh] == ["served"] * 3, [r.errors for r in fresh]
    pod.wait_for(lambda: pod.worker(0)["pid"] not in (0, victim["pid"]), "worker 0 forked again", 10)
    assert pod.worker(0)["restarts"] == victim["restarts"] + 1
    assert pod.samples("ivr_pod_worker_restarts_total")["0"] >= 1


@pytest.mark.slow
def test_a_hung_worker_is_cut_out_its_calls_reach_a_person_and_it_is_replaced(pod: Pod) -> None:
    victim = pod.worker(1)
    stopped_at: list[float] = []

    def stop() -> None:
        os.kill(victim["pid"], signal.SIGSTOP)
        stopped_at.append(time.monotonic())

    try:
        reports = _run_with_fault(pod, stop, slow=4, hold_s=2.0, before=lambda: _active(pod, 1) >= 1)
        # the calls ended while the worker was still there, stopped: HAProxy cut them (~2-3 s), not the
        # supervisor's kill (~6-9 s), which would also end them
        assert _process_state(victim["pid"]) == "T", "the stuck calls ended only when the hung worker was killed"
        log.info("hung worker: its calls were cut %.1f s after SIGSTOP", time.monotonic() - stopped_at[0])
        endings = [ending(r) for r in reports]
        # the stuck calls are cut when HAProxy marks the worker down (on-marked-down shutdown-sessions):
        # the dialplan puts them through; without that they would hang (CALL_TIMEOUT_S: "silent")
        assert "silent" not in endings, endings
        assert "person" in endings, endings
        pod.wait_for(lambda: pod.haproxy_status("worker1").startswith("DOWN"), "HAProxy marks worker 1 down", 5)
        fresh = asyncio.run(_calls(pod.front_port, 3))
        assert [ending(r) for r in fresh] == ["served"] * 3, [r.errors for r in fresh]
        pod.wait_for(lambda: pod.worker(1)["pid"] not in (0, victim["pid"]), "the hung worker replaced", 20)
        assert _process_state(victim["pid"]) in ("", "Z"), "the hung worker was not killed"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim["pid"], signal.SIGCONT)


@pytest.mark.slow
def test_haproxy_killed_its_calls_reach_a_person_and_it_is_started_again(pod: Pod) -> None:
    pod.wait_for(lambda: sum(w["haproxy"] == "UP" for w in pod.health()["workers"]) >= 2, "two workers up", 300)
    old = pod.health()["front_door"]["haproxy_pid"]

    def kill() -> None:
        os.kill(old, signal.SIGKILL)

    reports = _run_with_fault(pod, kill, slow=3, hold_s=3.0,
                              before=lambda: sum(pod.samples("ivr_calls_active").values()) >= 3)
    endings = [ending(r) for r in reports]
    assert endings == ["person"] * 3, endings  # cut with HAProxy: the dialplan's apology and a person
    pod.wait_for(lambda: pod.health()["front_door"]["haproxy_pid"] not in (0, old)
                 and pod.health()["front_door"]["running"], "HAProxy started again", 10)
    pod.wait_for(lambda: any(pod.haproxy_status(f"worker{i}") == "UP" for i in range(WORKERS)), "a worker UP", 10)
    fresh = asyncio.run(_calls(pod.front_port, 3))
    assert [ending(r) for r in fresh] == ["served"] * 3, [r.errors for r in fresh]


@pytest.mark.slow
def test_postgresql_down_calls_reach_a_person_and_are_served_again_once_it_is_back(pod: Pod) -> None:
    """The shared account database crashes (``pg_ctl stop -m immediate``): every call still ends with a
    person (the robot's apology and transfer when it cannot look the caller up), none silent, and no worker
    leaves the balancer (their health check is their own dialogue, not the shared database). Once
    PostgreSQL is back on its port, the next calls are served: the workers reconnect by themselves."""
    pod.wait_for(pod.all_up, "every worker up", 300)
    assert pod.database is not None
    pod.database.stop()
    try:
        down = asyncio.run(_calls(pod.front_port, WORKERS))
        endings = [ending(r) for r in down]
        assert endings == ["person"] * WORKERS, [(r.outcome, r.transfer_reason, r.errors) for r in down]
        assert {r.transfer_reason for r in down} == {"lookup_failed"}, [r.transfer_reason for r in down]
        assert all(pod.haproxy_status(f"worker{i}") == "UP" for i in range(WORKERS)), pod.health()
    finally:
        pod.database.start()
    back_at = time.monotonic()
    fresh = asyncio.run(_calls(pod.front_port, WORKERS))
    assert [ending(r) for r in fresh] == ["served"] * WORKERS, [(r.outcome, r.transfer_reason, r.errors) for r in fresh]
    log.info("PostgreSQL back: %d calls served %.1f s after it answered again", WORKERS, time.monotonic() - back_at)
    # A restart between calls (a failover, a maintenance window): the workers' pooled connections are dead,
    # and the next calls must not be the ones to find out (the pool checks a connection before lending it).
    pod.database.stop()
    pod.database.start()
    after_restart = asyncio.run(_calls(pod.front_port, WORKERS))
    assert [ending(r) for r in after_restart] == ["served"] * WORKERS, [
        (r.outcome, r.transfer_reason, r.errors) for r in after_restart]


def _wrong_digits(name: str) -> CallFile:
    """Three wrong ID answers from C002's registered number (each failure counts for the customer)."""
    turns = (Turn("say", "check my balance please"), Turn("dtmf", "0000#"), Turn("dtmf", "15550000002#"),
             Turn("dtmf", "1111#"), Turn("dtmf", "15550000002#"), Turn("dtmf", "9999#"))
    return CallFile(Path(f"{name}.yaml"), "15550000002", "en-US", turns, Expectation(outcome="transfer"))


@pytest.mark.slow
def test_the_lockout_holds_across_workers_on_postgresql(pod: Pod) -> None:
    """Two callers' wrong digits at once land on two workers (leastconn); together they pass the limit
    (5): the right digits are then refused whichever worker takes the next call."""
    pod.wait_for(lambda: sum(w["haproxy"] == "UP" for w in pod.health()["workers"]) >= 2, "two workers up", 300)
    before = pod.samples("ivr_calls_answered_total")

    async def both() -> list[CallReport]:
        return list(await asyncio.gather(*(ScriptedAsterisk(_wrong_digits(n), locale="en-US", text_mode=True,
                                                            timeout_s=CALL_TIMEOUT_S).run("127.0.0.1", pod.front_port)
                                           for n in ("first", "second"))))

    reports = asyncio.run(both())
    assert [r.outcome for r in reports] == ["transfer", "transfer"], [r.errors for r in reports]
    after = pod.samples("ivr_calls_answered_total")
    answered = {w: after[w] - before.get(w, 0) for w in after if after[w] > before.get(w, 0)}
    assert list(answered.values()) == [1, 1], answered  # the two calls were on two workers
    right = CallFile(Path("right.yaml"), "15550000002", "en-US",
                     (Turn("say", "I'd like to know my account balance"), Turn("dtmf", "7305#"),
                      Turn("say", "no thanks, goodbye")))
    for _ in range(WORKERS):  # whichever worker takes it
        report = asyncio.run(ScriptedAsterisk(right, locale="en-US", text_mode=True,
                                              timeout_s=CALL_TIMEOUT_S).run("127.0.0.1", pod.front_port))
        assert "2,500.75" not in report.robot_text, report.robot_text
        assert (report.outcome, report.transfer_reason) == ("transfer", "locked"), report.robot_text


def test_ivr_pod_config_prints_the_config_and_status_says_when_nothing_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from ivr.cli import main

    for name in [k for k in os.environ if k.startswith("IVR_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("IVR_POD_DIR", str(tmp_path / "pod"))
    monkeypatch.setenv("IVR_HTTP_PORT", str(free_block(1)))
    assert main(["pod", "config", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "server worker1 127.0.0.1:4601 check port 8101" in out and "worker2" not in out
    assert main(["pod", "status", "--json"]) == 3
    assert "pod: not running" in capsys.readouterr().out
    assert main(["pod", "down"]) == 0


def test_the_supervisors_probe_replaces_only_a_worker_that_stops_answering_or_stays_degraded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The decision alone (no processes): a starting worker's refusals do not count; once it has answered,
    3 unanswered probes in a row replace it, a 200 in between resets the count; 503s replace it only
    after DEGRADED_LIMIT_S."""
    from ivr.pod import supervisor as sup

    answers: list[int | None] = []
    killed: list[tuple[int, int]] = []
    now = [1000.0]
    monkeypatch.setattr(sup, "_get_status", lambda port, path, timeout_s: answers.pop(0))
    monkeypatch.setattr(sup, "_signal", lambda pid, sig: killed.append((pid, sig)))
    monkeypatch.setattr(sup.time, "monotonic", lambda: now[0])
    pod = sup.Supervisor(load_settings(environ={}), 1)
    worker = pod.workers[0]
    worker.pid, worker.started, worker.state = 42, now[0], "starting"

    def probe(*got: int | None) -> None:
        answers.extend(got)
        for _ in got:
            now[0] += 1
            pod._probe(worker)

    probe(None, None, None, None)  # still loading its models: not counted
    assert killed == [] and worker.state == "starting"
    probe(200, None, None, 200, None, None)  # answered, then never 3 in a row
    assert killed == [] and worker.state == "unanswered"
    probe(None)
    assert (42, signal.SIGKILL) in killed
    killed.clear()
    probe(200, *[503] * int(sup.DEGRADED_LIMIT_S))  # 503s for DEGRADED_LIMIT_S - 1 seconds
    assert killed == [] and worker.state == "degraded"
    probe(503)
    assert (42, signal.SIGKILL) in killed
