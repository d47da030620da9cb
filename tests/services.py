"""Real database servers for tests: a private PostgreSQL cluster and a private Redis, each on its own
loopback port and data folder, started and stopped by the test that needs them (by PID / pg_ctl).

PostgreSQL and Redis come from Debian (``postgresql``, ``redis-server``; the Makefile installs them).
When one is missing and this process is root, it is installed with apt-get; when that is impossible
(not root, no network), the test is skipped with a reason that says so, never silently passed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ivr.dialogue.servers import free_port

READY_WITHIN_S = 60.0


def _apt_install(package: str) -> str | None:
    """Install a Debian package as root; the problem as text when it cannot be done."""
    if os.geteuid() != 0:
        return f"the Debian package {package} is not installed and this is not root (run `make setup` as root)"
    if shutil.which("apt-get") is None:
        return f"the Debian package {package} is not installed and there is no apt-get here"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"],
                 ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package]):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            return f"`{' '.join(argv)}` failed ({done.returncode}): {(done.stderr or done.stdout)[-500:]}"
    return None


def _skip_loudly(reason: str) -> None:
    warnings.warn(reason, stacklevel=2)
    pytest.skip(f"NOT TESTED: {reason}")


def postgres_bin() -> Path:
    """The folder of Debian's PostgreSQL server binaries (initdb, pg_ctl), installing them if needed."""
    def find() -> Path | None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                       key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
        return found[-1].parent if found else None

    folder = find()
    if folder is None:
        problem = _apt_install("postgresql")
        folder = find()
        if folder is None:
            _skip_loudly(f"a real PostgreSQL is needed: {problem or 'installed, but no pg_ctl was found'}")
    assert folder is not None
    return folder


@dataclasses.dataclass
class PostgresServer:
    """A private PostgreSQL cluster: its database ``ivr``'s URL, and its server stopped and started again
    (fault tests: the database going away under running calls, then coming back on the same port)."""

    url: str
    _pg_ctl: Callable[..., None]

    def stop(self) -> None:
        self._pg_ctl("-m", "immediate", "-w", "stop")  # as a crash: connections cut, no shutdown checkpoint

    def start(self) -> None:
        self._pg_ctl("-w", "-t", str(int(READY_WITHIN_S)), "start")


@contextlib.contextmanager
def postgres_cluster() -> Iterator[str]:
    """A fresh PostgreSQL cluster on a private port and data folder; yields the URL of its database
    ``ivr`` (user ``ivr``, password-less on loopback). See ``postgres_server``."""
    with postgres_server() as server:
        yield server.url


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A fresh PostgreSQL cluster on a private port and data folder (database ``ivr``, user ``ivr``,
    password-less on loopback). Stopped with ``pg_ctl stop`` and deleted at exit.

    PostgreSQL refuses to run as root: as root, the cluster belongs to the ``postgres`` system user that
    Debian's package creates."""
    bin_dir = postgres_bin()
    run_as: list[str] = []
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            _skip_loudly("a real PostgreSQL is needed: running as root and there is no 'postgres' user to run it as")
        run_as = ["runuser", "-u", "postgres", "--"]
    work = Path(tempfile.mkdtemp(prefix="ivr-pg-"))
    data, log = work / "data", work / "postgres.log"
    if owner is not None:
        os.chown(work, owner.pw_uid, owner.pw_gid)
    port = free_port()

    def run(*argv: str) -> None:
        done = subprocess.run([*run_as, *argv], capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr or done.stdout}\n{tail}")

    options = f"-p {port} -k {work} -c listen_addresses=127.0.0.1 -c fsync=off"

    def pg_ctl(*argv: str) -> None:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, *argv)

    started = False
    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", "ivr", "-A", "trust", "-E", "UTF8", "--no-sync")
        pg_ctl("-w", "-t", str(int(READY_WITHIN_S)), "start")
        started = True
        run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "ivr", "ivr")
        yield PostgresServer(f"postgresql+psycopg2://ivr@127.0.0.1:{port}/ivr", pg_ctl)
    finally:
        if started:
            with contextlib.suppress(RuntimeError):  # a test may have stopped it already
                run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(work, ignore_errors=True)


def redis_server_path() -> str:
    found = shutil.which("redis-server")
    if found is None:
        problem = _apt_install("redis-server")
        found = shutil.which("redis-server")
        if found is None:
            _skip_loudly(f"a real Redis is needed: {problem or 'installed, but no redis-server was found'}")
    assert found is not None
    return found


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[str, int]]:
    """A private Redis on a loopback port, nothing written to disk; yields (host, port); stopped by PID."""
    binary = redis_server_path()
    work = Path(tempfile.mkdtemp(prefix="ivr-redis-"))
    port = free_port()
    with (work / "redis.log").open("wb") as out:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(work), "--daemonize", "no"],
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + READY_WITHIN_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(work / 'redis.log').read_text(errors='replace')[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer on port {port} within {READY_WITHIN_S:.0f} s")
            time.sleep(0.1)  # polling a starting server, not a synchronisation
        yield "127.0.0.1", port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
