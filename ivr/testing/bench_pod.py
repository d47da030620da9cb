"""``ivr bench --workers N``: the bench's callers against ``ivr serve --workers N`` in processes of its own.

Without ``--workers`` the bench measures an in-process robot (its turns' parts, its account look-ups, its
prompt cache). With it, the bench starts ``ivr serve --workers N`` on free loopback ports with the bench's
settings (N >= 2: the supervisor, N workers and HAProxy, as ``ivr pod up`` runs them; N = 1: one process),
waits until every worker is up and HAProxy sees it UP, and places the calls on the front door. What it
measures is what a caller or an operator sees from outside: the latencies at the caller, the CPU of every
process of the robot's process group (supervisor, workers, their TTS workers, HAProxy), their memory.
The callers' own CPU (the harness, in the bench's process) is not counted, for N = 1 as for N = 2, so
the two are compared on equal terms (the in-process bench counts it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ivr.config import Settings

START_TIMEOUT_S = 600.0  # each worker loads its Rasa agents and Vosk: ~1 min alone, more on a busy machine


class PodStartError(RuntimeError):
    """The robot processes did not come up."""


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


@dataclasses.dataclass
class RobotProcesses:
    """The running ``ivr serve --workers N``: what ``bench_once`` reads of a robot, measured from outside.
    ``results`` and ``store`` are empty: the turns' parts and the look-ups happen in the workers."""

    settings: Settings
    workers: int
    pid: int
    port: int
    http_port: int
    render: Any  # the callers' speech, rendered by the bench's own synthesizer
    results: list[Any] = dataclasses.field(default_factory=list)
    store: None = None

    @property
    def server(self) -> SimpleNamespace:
        return SimpleNamespace(port=self.port)

    @property
    def parts(self) -> SimpleNamespace:
        return SimpleNamespace(synthesizer=SimpleNamespace(render=self.render))

    def pids(self) -> list[int]:
        return _group_pids(self.pid)

    def cpu_s(self) -> float:
        from ivr.testing.bench import process_cpu_s

        return sum(process_cpu_s(pid) for pid in self.pids())

    def rss_mb(self) -> float:
        from ivr.testing.bench import rss_mb

        return sum(rss_mb(pid) for pid in self.pids())

    def peak_rss_mb(self) -> float:
        """The sum of each process's peak RSS: shared pages (the Vosk model) count once per process."""
        from ivr.testing.bench import _status_kb

        return sum(_status_kb(pid, "VmHWM") for pid in self.pids()) / 1024

    def reset_peak_rss(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as refs:
                refs.write("5")

    def calls_by_worker(self) -> dict[str, int]:
        """Calls each worker has answered since it started, from the robot's ``/metrics`` (the supervisor's
        carries each worker's series with a ``worker`` label; one process has none: worker "0")."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        calls: dict[str, int] = {}
        for line in text.splitlines():
            if line.startswith("ivr_calls_answered_total"):
                labels, _, value = line.rpartition(" ")
                worker = labels.split('worker="', 1)[1].split('"', 1)[0] if 'worker="' in labels else "0"
                calls[worker] = calls.get(worker, 0) + int(float(value))
        return calls

    def memory(self) -> dict[str, float]:
        """RSS and PSS of the whole robot now (PSS splits the shared pages between their processes)."""
        from ivr.pod.supervisor import process_memory_kb

        kb = [process_memory_kb(pid) for pid in self.pids()]
        return {"processes": len(kb), "rss_mb": round(sum(m.get("rss_kb", 0) for m in kb) / 1024, 1),
                "pss_mb": round(sum(m.get("pss_kb", 0) for m in kb) / 1024, 1)}


@contextlib.contextmanager
def robot_processes(settings: Settings, workers: int, *, text: bool, render: Any, work: Path) -> Iterator[RobotProcesses]:
    """``ivr serve --workers N`` with ``settings`` on free ports, until every worker serves; stopped (SIGTERM,
    then SIGKILL of its process group) on exit. Its log: ``work/robot.log``."""
    from ivr.console.publishing import settings_env
    from ivr.dialogue.servers import free_block
    from ivr.pod.commands import every_worker_up, pod_health

    try:
        base = free_block(2 + 3 * workers)
    except OSError as exc:
        raise PodStartError(str(exc)) from exc
    front, http_port = base, base + 1
    robot_settings = dataclasses.replace(
        settings, agi_host="127.0.0.1", agi_port=front, http_host="127.0.0.1", http_port=http_port,
        worker_agi_port=base + 2, worker_http_port=base + 2 + workers, worker_audiosocket_port=base + 2 + 2 * workers,
        audiosocket_port=base + 2 + 2 * workers if workers == 1 else settings.audiosocket_port,
        pod_dir=work / "pod",
    )
    env = settings_env(robot_settings)

    def ready() -> bool:  # one process: its /health answers 200; a pod: every worker up behind HAProxy
        got = pod_health(robot_settings, 3.0)
        return got is not None and got[0] == 200 and (workers == 1 or every_worker_up(got[1]))
    argv = [sys.executable, "-m", "ivr", "--log-format", "json", "serve", "--workers", str(workers)]
    argv += ["--text-input"] if text else []
    log_path = work / "robot.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            if process.poll() is not None:
                raise PodStartError(f"`ivr serve --workers {workers}` exited with {process.returncode}; see {log_path}")
            if time.monotonic() > deadline:
                raise PodStartError(f"`ivr serve --workers {workers}` not serving within {START_TIMEOUT_S:.0f} s; see {log_path}")
            time.sleep(1.0)
        yield RobotProcesses(settings, workers, process.pid, front, http_port, render)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # anything of the group left (none, normally)
        process.wait()
