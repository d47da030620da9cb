"""What is kept about callers, and for how long: owner-only files, recordings, retention and `ivr purge`."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ivr.accounts.store import SqlAccountStore
from ivr.cli import main
from ivr.config import Settings, load_settings
from ivr.retention import PurgeReport, private_dir, purge, purge_daily, write_private_text
from ivr.testing.callfile import CallFile, Expectation, Turn
from ivr.testing.harness import ScriptedAsterisk
from ivr.testing.replay import running_robot
from tests.conftest import make_demo_db

DAY_S = 86400


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def aged(path: Path, days: float, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    past = time.time() - days * DAY_S
    os.utime(path, (past, past))
    return path


# ---------------------------------------------------------------- owner-only files
def test_private_folders_and_files_are_owner_only(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "call.jsonl"
    write_private_text(target, "one\n")
    assert (mode(tmp_path / "a"), mode(tmp_path / "a" / "b"), mode(target)) == (0o700, 0o700, 0o600)
    target.chmod(0o644)  # a file that exists already is made owner-only too
    write_private_text(target, "two\n")
    assert mode(target) == 0o600 and target.read_text() == "two\n"
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    private_dir(shared / "inner")
    assert mode(shared) == 0o755  # an existing folder (an operator's choice) is left alone
    assert mode(shared / "inner") == 0o700


async def test_a_call_keeps_nothing_readable_by_others_and_no_dynamic_prompt(
    demo_settings: Settings, tmp_path: Path
) -> None:
    """A balance call with IVR_KEEP_RECORDINGS: the spool the robot creates is 0700, the kept recordings
    and the transcript 0600 (in a 0700 day folder); the balance prompt existed while the caller heard it
    (the harness read its sidecar) and is gone, WAV and sidecar, once the call is over."""
    settings = dataclasses.replace(demo_settings, spool_dir=tmp_path / "spool", keep_recordings=True)
    call = CallFile(Path("keep.yaml"), "13800000001", "zh-CN",
                    (Turn("say", "我想查一下余额"), Turn("dtmf", "4821#"), Turn("say", "再见")), Expectation())
    async with running_robot(settings, text_input=True) as (host, port, robot):
        report = await ScriptedAsterisk(call, locale="zh-CN", text_mode=True).run(host, port)
        synth = robot.parts.synthesizer
        balance_lines = [e["text"] for e in report.events if e["who"] == "robot" and "1,234.56" in e["text"]]
        assert balance_lines, report.to_json()
        dynamic = [synth.path_for(text, "zh-CN", fixed=False) for text in balance_lines]  # type: ignore[attr-defined]
    assert mode(settings.spool_dir) == 0o700
    kept = sorted(settings.spool_dir.glob("*.wav"))
    assert kept and all(mode(p) == 0o600 for p in kept)  # kept (keep_recordings), owner-only
    transcripts = sorted(settings.transcripts_dir.glob("*/*.jsonl"), key=lambda p: p.stat().st_mtime)
    assert mode(transcripts[-1]) == 0o600 and mode(transcripts[-1].parent) == 0o700
    for wav in dynamic:
        assert not wav.exists() and not wav.with_suffix(".txt").exists(), wav


# ---------------------------------------------------------------- the purge
def old_attempts_db(tmp_path: Path) -> str:
    """A demo database with one verification attempt and one disclosure 40 days old, and one of each now."""
    url = make_demo_db(tmp_path / "accounts.db")
    long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=40)
    for clock in (lambda: long_ago, lambda: dt.datetime.now(dt.timezone.utc)):
        store = SqlAccountStore(url, clock=clock)
        store.verify_id_last4("C001", "0000", call_id="c", caller_id="13800000001")
        store.record_disclosure("c", "C001", "balance")
        store.close()
    return url


def audit_counts(url: str) -> tuple[int, int]:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        attempts = db.execute("SELECT count(*) FROM verification_attempts").fetchone()[0]
        disclosures = db.execute("SELECT count(*) FROM disclosures").fetchone()[0]
    return attempts, disclosures


def retention_settings(tmp_path: Path, **values: Any) -> Settings:
    return dataclasses.replace(
        load_settings(environ={}),
        transcripts_dir=tmp_path / "transcripts", spool_dir=tmp_path / "spool", log_dir=tmp_path / "log",
        database_url=old_attempts_db(tmp_path), **values,
    )  # fmt: skip


def test_purge_deletes_what_is_older_than_the_retention(tmp_path: Path) -> None:
    s = retention_settings(tmp_path, retention_days=30)
    old_transcript = aged(s.transcripts_dir / "2020-01-01" / "old.jsonl", 31)
    new_transcript = aged(s.transcripts_dir / "2020-02-01" / "new.jsonl", 29)
    old_recording, new_recording = aged(s.spool_dir / "a-1.wav", 31), aged(s.spool_dir / "b-1.wav", 1)
    old_log, new_log = aged(s.log_dir / "actions-1.log", 31), aged(s.log_dir / "actions-2.log", 1)
    assert audit_counts(s.database_url) == (2, 2)
    store = SqlAccountStore.from_settings(s)
    try:
        report = purge(s, store)
    finally:
        store.close()
    assert (report.transcripts, report.recordings, report.logs) == (1, 1, 1)
    assert report.audit_rows == {"verification_attempts": 1, "disclosures": 1}
    assert not old_transcript.exists() and not old_transcript.parent.exists()  # the empty day goes too
    assert not old_recording.exists() and not old_log.exists()
    assert new_transcript.exists() and new_recording.exists() and new_log.exists()
    assert audit_counts(s.database_url) == (1, 1)  # today's rows stay
    assert report.errors == []


def test_retention_zero_keeps_everything(tmp_path: Path) -> None:
    s = retention_settings(tmp_path, retention_days=0)
    old = aged(s.transcripts_dir / "2020-01-01" / "old.jsonl", 400)
    store = SqlAccountStore.from_settings(s)
    try:
        assert purge(s, store) == PurgeReport()
    finally:
        store.close()
    assert old.exists() and audit_counts(s.database_url) == (2, 2)


def test_the_audit_purge_never_cuts_into_the_lockout_window(tmp_path: Path) -> None:
    url = old_attempts_db(tmp_path)
    store = SqlAccountStore(url, lockout_s=3600)
    try:
        # "everything before now" still keeps the last hour's attempts: the lockout counts them
        assert store.purge_audit(dt.datetime.now(dt.timezone.utc)) == {"verification_attempts": 1, "disclosures": 1}
    finally:
        store.close()
    assert audit_counts(url) == (1, 1)


def test_ivr_purge_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    s = retention_settings(tmp_path)
    aged(s.transcripts_dir / "2020-01-01" / "old.jsonl", 45)
    kept = aged(s.transcripts_dir / "2020-02-01" / "new.jsonl", 20)
    for name, value in (("TRANSCRIPTS_DIR", s.transcripts_dir), ("SPOOL_DIR", s.spool_dir),
                        ("LOG_DIR", s.log_dir), ("DATABASE_URL", s.database_url), ("CONFIG", tmp_path / "none.toml")):
        monkeypatch.setenv(f"IVR_{name}", str(value))
    assert main(["purge"]) == 0
    assert "purged 1 transcripts, 0 recordings, 0 log files, 1 disclosures, 1 verification_attempts" in capsys.readouterr().out
    assert kept.exists()
    assert main(["purge", "--days", "10"]) == 0  # the setting overridden for one run
    assert not kept.exists()


async def test_the_server_purges_daily_in_a_worker_thread(tmp_path: Path) -> None:
    s = retention_settings(tmp_path)
    loop_thread = threading.get_ident()
    runs: list[int] = []

    def slow_purge(settings: Settings, store: object) -> PurgeReport:
        runs.append(threading.get_ident())
        time.sleep(0.3)  # a long walk over the folders: the event loop must not wait for it
        return purge(settings, None)

    old = aged(s.transcripts_dir / "2020-01-01" / "old.jsonl", 45)
    task = asyncio.create_task(purge_daily(s, None, every_s=0.05, run=slow_purge))
    ticks = 0
    started = time.monotonic()
    while len(runs) < 3 and time.monotonic() - started < 10:
        await asyncio.sleep(0.01)
        ticks += 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(runs) >= 3  # again and again, not once
    assert loop_thread not in runs
    assert ticks > 50  # the loop kept turning while each purge slept 0.3 s in its thread
    assert not old.exists()


async def test_ivr_serve_starts_the_daily_purge(tmp_path: Path) -> None:
    from ivr.app import build_robot

    s = retention_settings(tmp_path)
    old = aged(s.transcripts_dir / "2020-01-01" / "old.jsonl", 45)
    robot = build_robot(s, text_input=True)
    robot.start_purging()
    try:
        for _ in range(500):
            if not old.exists() and audit_counts(s.database_url) == (1, 1):
                break
            await asyncio.sleep(0.01)
        assert not old.exists()
        assert audit_counts(s.database_url) == (1, 1)  # the store's old audit rows went too
    finally:
        await robot.stop()
    assert robot.purger is not None and robot.purger.done()
