"""The scale-out setup started on loopback: a Rasa action server and one Rasa HTTP server per locale.

Exactly what ``dialogs/server/README.md`` documents, as child processes of this one: ``rasa run actions
--actions ivr.dialogue.action_server`` (custom actions on ``settings.database_url``) and ``rasa run
--enable-api --auth-token TOKEN`` per locale with the shipped ``dialogs/server/endpoints.yml`` and
``credentials.yml`` (the token-protected ``ivr_rest`` channel). Used by ``ivr bench --compare`` (in-process
vs HTTP Rasa) and by ``tests/test_remote_dialogue.py``. Every process listens on loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from ivr.config import PROJECT_ROOT, Settings
from ivr.dialogue import rasa_environment
from ivr.dialogue.train import model_path
from ivr.retention import private_dir

SERVER_DIR = PROJECT_ROOT / "dialogs" / "server"
READY_WITHIN_S = 300.0  # several processes importing TensorFlow on a shared 2-core machine


class RasaServerError(RuntimeError):
    """A Rasa server or the action server did not start (the message carries the end of its log)."""


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports: all held open until all are chosen (one at a time, the
    kernel may hand out the same port twice, and two Rasa servers would then share it)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]



def free_block(count: int) -> int:
    """The first of ``count`` consecutive TCP ports on loopback that are free now (a pod's ports are numbered
    from a base: its front door, its HTTP port, then each worker's)."""
    for base in range(21000 + os.getpid() % 2000 * 10, 60000, 37):
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + count):
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", port))
            except OSError:
                continue
        return base
    raise OSError(f"no {count} consecutive free ports on loopback")


class _Process:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        self._out = open(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")  # owner-only
        self.popen = subprocess.Popen(argv, env=env, cwd=PROJECT_ROOT, stdout=self._out, stderr=subprocess.STDOUT)

    def failed(self) -> str | None:
        if self.popen.poll() is None:
            return None
        return f"{self.name} exited with {self.popen.returncode}:\n" + self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self._out.close()


@dataclass
class RasaServers:
    token: str
    ports: dict[str, int]  # Rasa server per locale
    actions_port: int
    work: Path
    pids: list[int]

    def url(self, locale: str) -> str:
        return f"http://127.0.0.1:{self.ports[locale]}"


async def _wait_ready(processes: list[_Process], urls: list[str], within_s: float) -> None:
    """Poll the health endpoints until every server answers (or a process dies, or the deadline passes)."""
    import aiohttp

    deadline = time.monotonic() + within_s
    pending = list(urls)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while pending:
            for process in processes:
                problem = process.failed()
                if problem:
                    raise RasaServerError(problem)
            still = []
            for url in pending:
                try:
                    async with session.get(url) as response:
                        if response.status != 200:
                            still.append(url)
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    still.append(url)
            pending = still
            if pending:
                if time.monotonic() > deadline:
                    raise RasaServerError(f"not ready within {within_s:.0f} s: {[u.split('?')[0] for u in pending]}")
                await asyncio.sleep(0.5)  # polling interval of a readiness check, not a synchronisation


@contextlib.contextmanager
def rasa_servers(
    settings: Settings,
    locales: Iterable[str],
    work: Path,
    *,
    extra_env: Mapping[str, str] | None = None,
    endpoints: Path | None = None,
    ready_within_s: float = READY_WITHIN_S,
) -> Iterator[RasaServers]:
    """Start the action server and a Rasa server per locale (trained models must exist); stop them at exit.

    ``extra_env``: more environment for all of them (e.g. an ``IVR_*`` lockout threshold for the action
    server, or the ``${...}`` values an endpoints file reads). ``endpoints``: the Rasa servers' endpoints
    file, by default ``dialogs/server/endpoints.yml`` (in-memory tracker store); the shipped
    ``endpoints-sql.yml`` and ``endpoints-redis.yml`` select a shared tracker store. The logs are
    ``actions-<port>.log`` and ``rasa-<locale>-<port>.log`` in ``settings.log_dir`` (owner-only; purged
    with the transcripts past ``retention_days``). Blocks while the servers start (up to a few
    minutes): call it off the event loop.
    """
    rasa = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "rasa"
    if not rasa.exists():
        rasa = Path("rasa")
    work.mkdir(parents=True, exist_ok=True)
    logs = private_dir(settings.log_dir)
    token = secrets.token_hex(16)
    locales = list(locales)
    actions_port, *locale_ports = free_ports(1 + len(locales))
    ports = dict(zip(locales, locale_ports, strict=True))
    env = rasa_environment(settings.models_dir)
    env.update({
        "IVR_DATABASE_URL": settings.database_url,
        "IVR_FIXED_DATE": settings.fixed_date,
        "IVR_CONFIG": str(work / "no-ivr.toml"),  # the settings come from here, not a local ivr.toml
        "SANIC_HOST": "127.0.0.1",  # rasa_sdk's bind address (default 0.0.0.0); it has no authentication
        "IVR_DIALOGUE_TOKEN": token,  # credentials.yml: the ivr_rest channel's token
        "IVR_ACTION_SERVER_URL": f"http://127.0.0.1:{actions_port}/webhook",  # endpoints.yml
        **(extra_env or {}),
    })
    env.pop("IVR_DIALOGUE_URL", None)
    Path(env["HOME"]).mkdir(parents=True, exist_ok=True)
    processes = [_Process("rasa run actions", [str(rasa), "run", "actions", "--actions", "ivr.dialogue.action_server",
                                               "--port", str(actions_port)], env, logs / f"actions-{actions_port}.log")]
    try:
        for locale, port in ports.items():
            processes.append(_Process(f"rasa run ({locale})", [
                str(rasa), "run", "--enable-api", "--auth-token", token, "-i", "127.0.0.1", "-p", str(port),
                "-m", str(model_path(settings.models_dir, locale)),
                "--endpoints", str(endpoints or SERVER_DIR / "endpoints.yml"),
                "--credentials", str(SERVER_DIR / "credentials.yml"),
            ], env, logs / f"rasa-{locale}-{port}.log"))
        urls = [f"http://127.0.0.1:{actions_port}/health"]
        urls += [f"http://127.0.0.1:{port}/status?token={token}" for port in ports.values()]
        asyncio.run(_wait_ready(processes, urls, ready_within_s))
        yield RasaServers(token, ports, actions_port, work, [p.popen.pid for p in processes])
    finally:
        for process in processes:
            process.stop()
