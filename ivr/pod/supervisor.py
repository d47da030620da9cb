"""``ivr serve --workers N``: N robot processes behind HAProxy, supervised by this (parent) process.

The parent loads the Vosk models first, while it runs no other thread, then forks the workers: the
models' pages are shared copy-on-write. Each worker builds everything else itself after the fork (Rasa
and TensorFlow start threads, and forking a process that runs threads is unsafe), listens on its own
FastAGI, HTTP and AudioSocket ports, and serves calls as a single ``ivr serve`` would. The parent stays
single-threaded (no asyncio, no thread pool) so that it can fork a replacement at any time:

- a worker that exits (crash, ``kill -9``) is forked again (after a growing pause when it keeps dying
  before it ever answered);
- a worker that stops answering its ``/health`` (hung, ``kill -STOP``) for ``UNANSWERED_LIMIT`` probes
  in a row is killed and replaced; HAProxy has already routed around it and cut its calls by then (its
  own check: ~2.5 s); one answering 503 (its dialogue down) for ``DEGRADED_LIMIT_S`` is replaced too;
- HAProxy, if it dies, is started again.

The parent's HTTP port (``http_port``) serves ``/metrics`` (every worker's, labelled ``worker="i"``) and
``/health`` (the pod: workers, HAProxy, memory); ``pod_dir/pod.pid`` names the parent for ``ivr pod``.
SIGTERM/SIGINT: HAProxy stops taking calls (soft stop), workers finish theirs (``stop_grace_s``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import http.client
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ivr.config import Settings
from ivr.parts import Recognizer
from ivr.pod import haproxy
from ivr.pod.metrics import merge_expositions

log = logging.getLogger(__name__)

PROBE_EVERY_S = 1.0
PROBE_TIMEOUT_S = 2.0
UNANSWERED_LIMIT = 3  # probes in a row without an HTTP answer: hung, replaced (~6-9 s)
DEGRADED_LIMIT_S = 30.0  # answering 503 (its own dialogue down) this long: replaced
START_TIMEOUT_S = 600.0  # a new worker must answer its first probe within this (it loads Rasa)
MAX_BACKOFF_S = 30.0


def worker_count(value: str) -> int:
    """``"auto"``: one worker per core this process may use; else the number (1 or more)."""
    if value == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"--workers: {value!r} is not a number of processes (1 or more) or 'auto'")
    return int(value)


def worker_settings(settings: Settings, index: int) -> Settings:
    """Worker ``index``'s settings: its own ports on loopback. Only HAProxy (same machine) connects to
    it; which Asterisk servers may call is HAProxy's check (``agi_allowed_peers`` in its config)."""
    return dataclasses.replace(
        settings, agi_host="127.0.0.1", agi_port=settings.worker_agi_port + index,
        agi_allowed_peers=("127.0.0.1", "::1"), http_host="127.0.0.1", http_port=settings.worker_http_port + index,
        audiosocket_port=settings.worker_audiosocket_port + index, tts_dynamic_subfolder=f"worker{index}",
    )


def process_memory_kb(pid: int) -> dict[str, int]:
    """RSS, PSS (shared pages split between the processes that share them) and private memory, in kB."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
            for line in rollup:
                name, _, rest = line.partition(":")
                if name in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
                    out[name] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return {"rss_kb": out.get("Rss", 0), "pss_kb": out.get("Pss", 0),
            "private_kb": out.get("Private_Clean", 0) + out.get("Private_Dirty", 0)}


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


@dataclasses.dataclass
class Worker:
    index: int
    agi_port: int
    http_port: int
    pid: int = 0
    started: float = 0.0
    state: str = "stopped"  # starting | up | degraded | unanswered | stopped
    ready: bool = False  # answered a probe since it was forked
    unanswered: int = 0
    degraded_since: float | None = None
    restarts: int = 0
    quick_exits: int = 0  # exits in a row before ever answering
    start_at: float = 0.0  # when to fork it (again)

    def to_json(self) -> dict[str, Any]:
        return {"worker": self.index, "pid": self.pid, "state": self.state, "agi_port": self.agi_port,
                "http_port": self.http_port, "restarts": self.restarts, **process_memory_kb(self.pid)}


class Supervisor:
    def __init__(self, settings: Settings, count: int, *, host: str | None = None, port: int | None = None,
                 text_input: bool = False) -> None:
        self.settings = settings
        self.host = host or settings.agi_host
        self.port = settings.agi_port if port is None else port
        self.text_input = text_input
        self.workers = [Worker(i, settings.worker_agi_port + i, settings.worker_http_port + i) for i in range(count)]
        self.recognizer: Recognizer | None = None
        self.haproxy: subprocess.Popen[bytes] | None = None
        self.haproxy_restarts = 0
        self._haproxy_start_at = 0.0
        self._stopping = False
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = -1, -1
        self.pid_file = settings.pod_dir / "pod.pid"

    # ------------------------------------------------------------ start
    def run(self) -> int:
        self._preload()
        config = haproxy.write_config(self.settings, haproxy.render_config(
            self.settings, haproxy.worker_backends(self.settings, len(self.workers)), host=self.host, port=self.port))
        haproxy.check_config(config)
        self._listener = socket.create_server((self.settings.http_host, self.settings.http_port), reuse_port=False)
        self._listener.setblocking(False)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake select() (the wakeup fd)
        signal.signal(signal.SIGHUP, self._on_reload)
        self.pid_file.write_text(f"{os.getpid()}\n", encoding="ascii")
        try:
            self.haproxy = haproxy.start_haproxy(config)
            log.info("pod: HAProxy (PID %d) on %s:%d in front of %d workers; the pod's /metrics and /health on %s:%d",
                     self.haproxy.pid, self.host, self.port, len(self.workers), self.settings.http_host,
                     self._listener.getsockname()[1])
            for worker in self.workers:
                self._fork(worker)
            self._loop(config)
            return self._shutdown()
        finally:
            self.pid_file.unlink(missing_ok=True)
            signal.set_wakeup_fd(-1)

    def _preload(self) -> None:
        """Load what may be shared by forking: the Vosk models (with no thread running yet). The account
        database's schema is checked once here, as ``ivr serve`` does (exit 2 naming the problem)."""
        from ivr.accounts.source import open_store

        store = open_store(self.settings)
        try:
            store.start_check()
        finally:
            store.close()
        if not self.text_input:
            from ivr.asr.recognizer import VoskRecognizer

            recognizer = VoskRecognizer(self.settings, reuse=True)  # as build_robot makes the robot's
            started = time.monotonic()
            recognizer.warm_up()
            log.info("pod: speech models %s loaded in %.1f s, shared by the workers",
                     ", ".join(recognizer.loaded_locales()) or "(none)", time.monotonic() - started)
            self.recognizer = recognizer
        if _threads() > 1:  # never expected; forking then risks a lock held by a thread that is not copied
            log.warning("pod: %d threads run in the supervisor before the fork", _threads())

    def _fork(self, worker: Worker) -> None:
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the supervisor's code
            code = 1
            try:
                code = self._worker_main(worker)
            except Exception:  # the last resort of a forked child: log it, exit non-zero (finally)
                log.exception("worker %d failed", worker.index)
            finally:
                logging.shutdown()
                os._exit(code)
        worker.pid, worker.started, worker.state, worker.ready = pid, time.monotonic(), "starting", False
        worker.unanswered, worker.degraded_since = 0, None
        log.info("pod: worker %d started (PID %d): FastAGI 127.0.0.1:%d, HTTP 127.0.0.1:%d",
                 worker.index, pid, worker.agi_port, worker.http_port)

    def _worker_main(self, worker: Worker) -> int:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        if self._listener is not None:
            self._listener.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        from ivr.agi.commands import serve_robot

        tag = _WorkerTag(worker.index)  # every log line of this process says which worker wrote it
        for handler in logging.getLogger().handlers:
            handler.addFilter(tag)
        settings = worker_settings(self.settings, worker.index)
        # worker 0 purges and pulls the releases published elsewhere for the pod (ivr.releases_pull): the
        # workers share this models folder, and this process stays without threads and database connections
        return asyncio.run(serve_robot(settings, None, None, self.text_input, recognizer=self.recognizer,
                                  housekeeping=worker.index == 0))

    # ------------------------------------------------------------ supervision
    def _on_stop(self, signum: int, _frame: object) -> None:
        self._stopping = True

    def _on_reload(self, _signum: int, _frame: object) -> None:
        for worker in self.workers:
            if worker.pid:
                _signal(worker.pid, signal.SIGHUP)

    def _loop(self, config: Path) -> None:
        assert self._listener is not None
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ, "http")
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        next_probe = time.monotonic() + PROBE_EVERY_S
        while not self._stopping:
            self._reap()
            self._restart_due(config)
            now = time.monotonic()
            if now >= next_probe:
                self._probe_all()
                next_probe = time.monotonic() + PROBE_EVERY_S
            for key, _ in selector.select(max(0.0, next_probe - time.monotonic())):
                if key.data == "wake":
                    _drain(self._wake_r)
                elif not self._stopping:
                    self._serve_http()
        selector.close()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.haproxy is not None and pid == self.haproxy.pid:
                self.haproxy.returncode = os.waitstatus_to_exitcode(status)
                if not self._stopping:
                    log.error("pod: HAProxy exited (%s); starting it again", _how(status))
                    self._haproxy_start_at = time.monotonic() + min(MAX_BACKOFF_S, 0.2 * 2 ** min(self.haproxy_restarts, 8))
                continue
            for worker in self.workers:
                if worker.pid == pid:
                    worker.pid, worker.state = 0, "stopped"
                    if self._stopping:
                        break
                    worker.quick_exits = 0 if worker.ready else worker.quick_exits + 1
                    pause = 0.0 if worker.ready else min(MAX_BACKOFF_S, 2.0 ** worker.quick_exits - 1)
                    worker.start_at = time.monotonic() + pause
                    log.error("pod: worker %d (PID %d) exited (%s); replaced in %.0f s", worker.index, pid,
                              _how(status), pause)
                    break

    def _restart_due(self, config: Path) -> None:
        now = time.monotonic()
        for worker in self.workers:
            if not worker.pid and now >= worker.start_at:
                worker.restarts += 1
                self._fork(worker)
        if self.haproxy is not None and self.haproxy.returncode is not None and now >= self._haproxy_start_at:
            self.haproxy_restarts += 1
            self.haproxy = haproxy.start_haproxy(config)
            log.info("pod: HAProxy started again (PID %d)", self.haproxy.pid)

    def _probe_all(self) -> None:
        for worker in self.workers:
            if worker.pid:
                self._probe(worker)

    def _probe(self, worker: Worker) -> None:
        status = _get_status(worker.http_port, "/health?part=dialogue", PROBE_TIMEOUT_S)
        now = time.monotonic()
        if status is None:
            if not worker.ready:
                if now - worker.started > START_TIMEOUT_S:
                    self._replace(worker, f"not ready after {START_TIMEOUT_S:.0f} s")
                return
            worker.unanswered += 1
            worker.state = "unanswered"
            if worker.unanswered >= UNANSWERED_LIMIT:
                self._replace(worker, f"no answer to {worker.unanswered} health checks in a row (hung)")
            return
        worker.ready, worker.unanswered, worker.quick_exits = True, 0, 0
        if status == 200:
            worker.state, worker.degraded_since = "up", None
            return
        worker.state = "degraded"
        worker.degraded_since = worker.degraded_since or now
        if now - worker.degraded_since >= DEGRADED_LIMIT_S:
            self._replace(worker, f"its dialogue has been down for {DEGRADED_LIMIT_S:.0f} s")

    def _replace(self, worker: Worker, why: str) -> None:
        """Kill the worker; ``_reap`` forks its replacement (at once: it had been serving)."""
        log.error("pod: worker %d (PID %d): %s; killing and replacing it", worker.index, worker.pid, why)
        worker.ready = True  # a replacement of a worker that had served: no back-off
        _signal(worker.pid, signal.SIGKILL)
        _signal(worker.pid, signal.SIGCONT)

    # ------------------------------------------------------------ HTTP: /metrics, /health
    def health(self) -> tuple[bool, dict[str, Any]]:
        haproxy_up = self.haproxy is not None and self.haproxy.returncode is None  # reaped by _reap
        seen: dict[str, str] = {}  # HAProxy's own view of each worker (UP, DOWN, ...)
        if haproxy_up:
            try:
                seen = {row.get("svname", ""): row.get("status", "") for row in haproxy.stats(self.settings.pod_dir / "haproxy.sock")}
            except OSError:
                haproxy_up = False
        workers = [{**w.to_json(), "haproxy": seen.get(f"worker{w.index}", "")} for w in self.workers]
        ok = haproxy_up and any(w["state"] == "up" and w["haproxy"] == "UP" for w in workers)
        document = {
            "status": "ok" if ok else "degraded", "supervisor_pid": os.getpid(),
            "front_door": {"host": self.host, "port": self.port, "haproxy_pid": self.haproxy.pid if self.haproxy else 0,
                           "running": haproxy_up, "restarts": self.haproxy_restarts},
            "workers": workers, "supervisor": process_memory_kb(os.getpid()),
        }
        return ok, document

    def metrics(self) -> bytes:
        texts = {}
        for worker in self.workers:
            if worker.pid and worker.state in ("up", "degraded"):
                body = _get_body(worker.http_port, "/metrics", 1.0)
                if body is not None:
                    texts[str(worker.index)] = body
        up = GaugeMetricFamily("ivr_pod_workers_up", "Workers answering their health check", labels=[])
        up.add_metric([], sum(1 for w in self.workers if w.state == "up"))
        restarts = CounterMetricFamily("ivr_pod_worker_restarts", "Workers replaced (exited or hung)", labels=["worker"])
        for worker in self.workers:
            restarts.add_metric([str(worker.index)], worker.restarts)
        front = CounterMetricFamily("ivr_pod_haproxy_restarts", "Times HAProxy was started again", value=self.haproxy_restarts)
        return merge_expositions(texts, [up, restarts, front])

    def _serve_http(self) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(2.0)
            try:
                request = conn.recv(4096).decode("latin-1")
                path = request.split(" ", 2)[1] if request.count(" ") >= 2 else ""
                if path == "/metrics":
                    body, status, ctype = self.metrics(), "200 OK", "text/plain; version=0.0.4"
                elif path.partition("?")[0] == "/health":
                    ok, document = self.health()
                    body, ctype = json.dumps(document).encode(), "application/json"
                    status = "200 OK" if ok else "503 Service Unavailable"
                else:
                    body, status, ctype = b"not found\n", "404 Not Found", "text/plain"
                conn.sendall(f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
                             .encode() + body)
            except OSError:
                pass

    # ------------------------------------------------------------ stop
    def _shutdown(self) -> int:
        """HAProxy stops accepting (soft stop: its calls go on), the workers finish their calls."""
        log.info("pod: stopping: no new calls, live calls get up to %.0f s", self.settings.stop_grace_s)
        if self.haproxy is not None and self.haproxy.returncode is None:
            _signal(self.haproxy.pid, signal.SIGUSR1)
        for worker in self.workers:
            if worker.pid:
                _signal(worker.pid, signal.SIGCONT)  # a stopped one could not hear SIGTERM
                _signal(worker.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.stop_grace_s + 15
        while any(w.pid for w in self.workers) and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.1)
        for worker in self.workers:
            if worker.pid:
                log.error("pod: worker %d (PID %d) did not stop; killed", worker.index, worker.pid)
                _signal(worker.pid, signal.SIGKILL)
        if self.haproxy is not None:
            try:
                self.haproxy.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.haproxy.terminate()
                self.haproxy.wait(timeout=10)
        while True:  # every child reaped
            try:
                if os.waitpid(-1, 0)[0] == 0:
                    break
            except ChildProcessError:
                break
        log.info("pod: stopped")
        return 0


def run_pod(settings: Settings, count: int, *, host: str | None = None, port: int | None = None,
            text_input: bool = False) -> int:
    """``ivr serve --workers N`` (N > 1): runs until SIGTERM/SIGINT; the exit code."""
    try:
        return Supervisor(settings, count, host=host, port=port, text_input=text_input).run()
    except haproxy.HaproxyError as exc:
        log.error("%s", exc)
        return 2


# ------------------------------------------------------------ small helpers
class _WorkerTag(logging.Filter):
    """Adds ``worker`` (its index) to every record: the JSON log lines carry it."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
            raise


def _how(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _get(port: int, path: str, timeout_s: float) -> tuple[int, bytes] | None:
    """GET on a worker's loopback HTTP port: (status, body), or None when it does not answer in time."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _get_status(port: int, path: str, timeout_s: float) -> int | None:
    got = _get(port, path, timeout_s)
    return None if got is None else got[0]


def _get_body(port: int, path: str, timeout_s: float) -> str | None:
    got = _get(port, path, timeout_s)
    return None if got is None or got[0] != 200 else got[1].decode("utf-8", errors="replace")
