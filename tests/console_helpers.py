"""Shared by the console tests: a workspace (a copy of the dialogs, its own console folder and databases),
``ivr console`` started as a real process on it, and a small cookie-keeping HTTP client."""

from __future__ import annotations

import dataclasses
import http.client
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ivr.config import PROJECT_ROOT, Settings
from ivr.console.publishing import settings_env

IVR = [sys.executable, "-m", "ivr"]
PASSWORDS = {"vera": "viewer-pass-1", "eddie": "editor-pass-1", "eve": "editor-pass-2",
             "paula": "publisher-pass-1", "ada": "admin-pass-1"}
ROLES = {"vera": "viewer", "eddie": "editor", "eve": "editor", "paula": "publisher", "ada": "admin"}


@dataclasses.dataclass(frozen=True)
class ConsoleWorkspace:
    root: Path
    settings: Settings

    def env(self) -> dict[str, str]:
        env = settings_env(self.settings)
        env["IVR_CONFIG"] = str(self.root / "none.toml")
        return env

    def ivr(self, *args: str, stdin: str = "", timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*IVR, *args], env=self.env(), cwd=self.root, input=stdin, capture_output=True,
                              text=True, timeout=timeout, check=False)


def make_workspace(base: Settings, root: Path, database_url: str) -> ConsoleWorkspace:
    shutil.copytree(PROJECT_ROOT / "dialogs", root / "dialogs", ignore=shutil.ignore_patterns("server"))
    settings = dataclasses.replace(base, dialogs_dir=root / "dialogs", models_dir=root / "models",
                                   console_dir=root / "console", database_url=database_url,
                                   transcripts_dir=root / "transcripts")
    ws = ConsoleWorkspace(root, settings)
    for name, password in PASSWORDS.items():
        done = ws.ivr("console", "adduser", name, "--role", ROLES[name], stdin=password + "\n")
        assert done.returncode == 0, done.stderr
    return ws


@contextmanager
def running_console(ws: ConsoleWorkspace, log: Path) -> Iterator[int]:
    from ivr.dialogue.servers import free_ports

    (port,) = free_ports(1)
    with log.open("w") as out:
        proc = subprocess.Popen([*IVR, "console", "--port", str(port)], env=ws.env(), cwd=ws.root,
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    conn.request("GET", "/login")
                    conn.getresponse().read()
                    conn.close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.2)
            yield port
        finally:
            proc.terminate()
            proc.wait(timeout=30)


class Client:
    """An HTTP client with its own cookies (one browser)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, form: dict[str, str] | None = None,
                headers: dict[str, str] | None = None, body: bytes | None = None) -> tuple[int, str, dict[str, str]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        all_headers = dict(headers or {})
        if self.cookies:
            all_headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if form is not None:
            body = urllib.parse.urlencode(form).encode()
            all_headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body=body, headers=all_headers)
            resp = conn.getresponse()
            data = resp.read()
            for key, value in resp.getheaders():
                if key.lower() == "set-cookie":
                    name, _, rest = value.partition("=")
                    cookie_value = rest.split(";")[0]
                    if "max-age=0" in value.lower() or not cookie_value:
                        self.cookies.pop(name, None)
                    else:
                        self.cookies[name] = cookie_value
            audio = resp.getheader("content-type", "").startswith("audio")
            text = "" if audio else data.decode("utf-8", errors="replace")
            self.last_body = data
            return resp.status, text, {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()

    def get(self, path: str) -> tuple[int, str]:
        status, text, _ = self.request("GET", path)
        return status, text

    def post(self, path: str, form: dict[str, str]) -> tuple[int, str]:
        status, text, _ = self.request("POST", path, form)
        return status, text

    def login(self, name: str) -> Client:
        status, page = self.get("/login")
        assert status == 200
        status, text, headers = self.request("POST", "/login", {"csrf": csrf_of(page), "name": name,
                                                                 "password": PASSWORDS[name]})
        assert status == 302 and headers["location"] == "/", (status, text)
        return self


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]*)"', page)
    assert match, page[:2000]
    return match.group(1)


def version_of(page: str, name: str, index: int = 0) -> str:
    row = re.search(rf'<tr id="row-{name}-{index}".*?</tr>', page, re.S)
    assert row, name
    match = re.search(r'name="version" value="([^"]*)"', row.group(0))
    assert match, row.group(0)
    return match.group(1)
