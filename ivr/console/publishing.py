"""Publish and rollback from the console, through the project's own ``ivr publish`` and ``ReleaseStore``.

A publish is ``ivr publish --locale L --author U --message M`` in a child process (validation with Rasa,
training ~30 s per locale, prompt rendering, the atomic switch, the audit row, notifying the running
servers): the console's event loop only reads its output lines, which the page polls. The child gets
the console's own settings (every ``IVR_*`` variable), so it publishes exactly the draft the console
shows. One publish per locale at a time in the console (the release lock refuses any other anyway).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ivr.config import SECTIONS, Settings
from ivr.masking import mask_text

_ids = itertools.count(1)
MAX_LINES = 400
KEEP_JOBS = 50  # finished jobs whose page can still be polled


@dataclass
class PublishJob:
    id: int
    locale: str
    user: str
    message: str
    kind: str = "publish"  # publish | accuracy
    started: float = field(default_factory=time.time)
    lines: list[str] = field(default_factory=list)
    returncode: int | None = None
    result: str = ""  # the accuracy run's RESULT line (JSON)
    task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.returncode is None

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def elapsed_s(self) -> float:
        return time.time() - self.started


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child ``ivr`` read the same settings as this process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IVR_")}
    for f in dataclasses.fields(Settings):
        if f.name in SECTIONS:
            continue
        value = getattr(settings, f.name)
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, tuple):
            text = ",".join(value)
        else:
            text = str(value)
        env[f"IVR_{f.name.upper()}"] = text
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Publisher:
    def __init__(self, settings: Settings, config: Path | None = None) -> None:
        self.settings = settings
        self.config = config
        self.jobs: dict[int, PublishJob] = {}

    def running(self, locale: str, kind: str = "publish") -> PublishJob | None:
        return next((j for j in self.jobs.values() if j.locale == locale and j.kind == kind and j.running), None)

    def start(self, locale: str, user: str, message: str, kind: str = "publish") -> tuple[PublishJob, bool]:
        """A new job (a publish, or an accuracy measure), or the one of this kind and locale already running
        (``False``: not started now)."""
        busy = self.running(locale, kind)
        if busy is not None:
            return busy, False
        job = PublishJob(next(_ids), locale, user, message, kind)
        for old in [j for j in self.jobs.values() if not j.running][:-KEEP_JOBS]:  # finished ones, oldest first
            del self.jobs[old.id]
        self.jobs[job.id] = job
        job.task = asyncio.get_running_loop().create_task(self._run(job))
        return job, True

    async def _run(self, job: PublishJob) -> None:
        if job.kind == "accuracy":
            command = [sys.executable, "-m", "ivr.console.accuracy", "--locale", job.locale]
        else:
            command = [sys.executable, "-m", "ivr"]
            if self.config is not None:
                command += ["--config", str(self.config)]
            command += ["--log-level", "WARNING", "--log-format", "json", "publish", "--locale", job.locale,
                        "--author", job.user, "--message", job.message]
        try:
            proc = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, env=settings_env(self.settings))
        except OSError as exc:
            job.lines.append(f"cannot start ivr publish: {exc}")
            job.returncode = 127
            return
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if line.startswith("RESULT "):
                job.result = line[len("RESULT "):]
            elif line and not line.startswith("{") and (job.kind == "publish" or line.startswith(
                    (f"{job.locale}:", "draft", "release ", "  draft missed", "cannot"))):
                job.lines.append(mask_text(line))
                del job.lines[:-MAX_LINES]
        job.returncode = await proc.wait()


def rollback(settings: Settings, locale: str, user: str, to: int, message: str) -> tuple[int, int, list[str]]:
    """``ivr rollback``'s functions (blocking: run it in a thread): (was, now, notice lines)."""
    from ivr.releases import ReleaseAudit, ReleaseStore, notify_servers

    audit = ReleaseAudit(settings.database_url)
    try:
        was, release = ReleaseStore(settings).rollback(locale, author=user, to=to, message=message, audit=audit)
    finally:
        audit.close()
    return was, release.number, notify_servers(settings.models_dir)
