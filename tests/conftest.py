"""Shared fixtures: one folder per test session for prompts, spool, transcripts and logs; demo data.

Every log record of the suite (all loggers, DEBUG and up) is written as JSON lines to the session's
log file, and every transcript to the session's transcript folder, so that test_zz_privacy.py can
scan all of them for the test customers' personal data at the end of the run.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from ivr.asterisk.local import (
    AsteriskNeedsRoot,
    AsteriskStatus,
    AsteriskUnavailable,
    LocalAsterisk,
    _process_alive,
)
from ivr.config import Settings, load_settings
from ivr.logs import JsonFormatter

FIXED_DATE = "2026-11-28"  # "today" for account answers in replays, so goldens stay stable


@dataclasses.dataclass(frozen=True)
class SuiteDirs:
    root: Path
    sounds: Path
    spool: Path
    transcripts: Path
    log_file: Path
    started: float = dataclasses.field(default_factory=time.time)  # files changed since are the session's


@pytest.fixture(scope="session")
def suite_dirs(tmp_path_factory: pytest.TempPathFactory) -> SuiteDirs:
    root = tmp_path_factory.mktemp("suite")
    dirs = SuiteDirs(root, root / "sounds", root / "spool", root / "transcripts", root / "logs" / "suite.jsonl")
    for folder in (dirs.sounds, dirs.spool, dirs.transcripts, dirs.log_file.parent):
        folder.mkdir(parents=True, exist_ok=True)
    return dirs


@pytest.fixture(scope="session", autouse=True)
def suite_log(suite_dirs: SuiteDirs) -> Iterator[Path]:
    handler = logging.FileHandler(suite_dirs.log_file, encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    for noisy in ("rasa", "tensorflow", "absl", "sanic", "matplotlib", "jieba", "asyncio", "filelock", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    yield suite_dirs.log_file
    root.removeHandler(handler)
    root.setLevel(old_level)
    handler.close()


@pytest.fixture(autouse=True)
def suite_log_level(suite_log: Path) -> None:
    """Importing TensorFlow (numpy.distutils) sets the root logger to WARNING; every test logs at DEBUG."""
    logging.getLogger().setLevel(logging.DEBUG)


@pytest.fixture(scope="session")
def base_settings(suite_dirs: SuiteDirs) -> Settings:
    """Repository dialogs and models; everything written goes to the session's folders."""
    return dataclasses.replace(
        load_settings(environ={}),
        database_url=f"sqlite:///{suite_dirs.root / 'unused.db'}",
        sounds_dir=suite_dirs.sounds,
        spool_dir=suite_dirs.spool,
        transcripts_dir=suite_dirs.transcripts,
        log_dir=suite_dirs.log_file.parent,  # helper processes' logs: scanned by test_zz_privacy.py
        tts_dynamic_sidecars=True,  # the replay peers read what the robot said from the sidecars
        asr_dither=False,
        fixed_date=FIXED_DATE,
        http_port=0,
    )


def make_demo_db(path: Path) -> str:
    from ivr.accounts.store import SqlAccountStore

    url = f"sqlite:///{path}"
    store = SqlAccountStore(url)
    store.init_schema()
    store.import_file(Path(__file__).parent.parent / "ivr" / "accounts" / "demo.yaml")
    store.close()
    return url


@pytest.fixture
def demo_settings(base_settings: Settings, tmp_path: Path) -> Settings:
    """A fresh demo account database for this test."""
    return dataclasses.replace(base_settings, database_url=make_demo_db(tmp_path / "accounts.db"))


# ---------------------------------------------------------------- the local Asterisk
# One per test session, shared by tests/test_asterisk.py and tests/test_sipp.py.
@dataclasses.dataclass(frozen=True)
class RunningAsterisk:
    local: LocalAsterisk
    settings: Settings
    pid: int


@pytest.fixture(scope="session")
def local_asterisk(base_settings: Settings) -> Iterator[RunningAsterisk]:
    """The local Asterisk with the suite's sound and spool folders; stopped by its PID at the end."""
    settings = dataclasses.replace(base_settings, ami_secret="")  # a fresh random secret per start
    local = LocalAsterisk(settings)
    status = start_local_asterisk(local)
    assert status.running and status.pid is not None
    yield RunningAsterisk(local, settings, status.pid)
    assert local.down(), "the local Asterisk was no longer running at the end of the session"
    assert not _process_alive(status.pid), f"Asterisk (PID {status.pid}) survived `down`"
    assert local.pid() is None
    assert not any(p for p in _mount_points() if str(p).startswith(str(local.root))), "still mounted"


def start_local_asterisk(local: LocalAsterisk) -> AsteriskStatus:
    """Install (if needed) and start ``local``. Skips, with the reason, only for what the project does not
    control: no root (README: the Asterisk tests are skipped then), or Debian sid's Asterisk could not be
    downloaded after a retry ("INFRASTRUCTURE: ..."). Anything else fails."""
    try:
        if local.pid() is not None:  # e.g. a developer's `ivr asterisk up`, with other shared folders
            local.down()
        local.install()
        return local.up(timeout_s=60)
    except AsteriskNeedsRoot as exc:
        pytest.skip(f"NOT ROOT: {exc}")
    except AsteriskUnavailable as exc:
        pytest.skip(str(exc))  # "INFRASTRUCTURE: ..." (the sid download failed twice)


def asterisk_skip_summary(stats: Mapping[str, Sequence[Any]]) -> list[str]:
    """From the terminal reporter's stats: a loud line counting the skipped ``asterisk`` tests, then one
    line per distinct reason; [] when none was skipped."""

    def is_asterisk(report: Any) -> bool:
        return "asterisk" in getattr(report, "keywords", {})

    every = {r.nodeid for reports in stats.values() for r in reports if is_asterisk(r)}
    skipped = [r for r in stats.get("skipped", ()) if is_asterisk(r)]
    if not skipped:
        return []
    reasons: Counter[str] = Counter()
    for report in skipped:
        longrepr = report.longrepr
        text = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        reasons[text.removeprefix("Skipped: ").strip().splitlines()[0]] += 1
    lines = [
        f"END-TO-END NOT TESTED: {len({r.nodeid for r in skipped})} of {len(every)} Asterisk tests SKIPPED "
        "(no call went through a real Asterisk)"
    ]
    lines += [f"  {count} skipped: {reason}" for reason, count in reasons.most_common()]
    return lines


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """A skipped end-to-end section must not pass unnoticed in CI's output."""
    lines = asterisk_skip_summary(terminalreporter.stats)
    if lines:
        terminalreporter.write_sep("!", lines[0], red=True, bold=True)
        for line in lines[1:]:
            terminalreporter.write_line(line, red=True, bold=True)
        terminalreporter.write_sep("!", red=True, bold=True)


def _mount_points() -> list[Path]:
    with open("/proc/self/mountinfo", encoding="utf-8") as table:
        return [Path(line.split()[4]) for line in table]
