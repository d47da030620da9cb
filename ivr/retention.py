"""What the robot keeps about callers, and for how long: owner-only files, retention, ``ivr purge``.

Transcripts, kept recordings and the spool are created owner-only (folders 0700, files 0600). Past
``retention_days`` (``IVR_RETENTION_DAYS``, default 30; 0 keeps everything) ``purge`` deletes:

- transcripts (``transcripts_dir/<date>/<call>.jsonl``) and the date folders they leave empty,
- recordings left in the spool (kept with ``IVR_KEEP_RECORDINGS=true``, or left by a crash),
- helper processes' log files in ``log_dir`` (Rasa servers, action server),
- the account store's audit rows: verification attempts and disclosures (``purge_audit``).

``ivr purge`` runs it once; ``ivr serve`` runs it at start and then daily, in a worker thread.
Age is a file's modification time, an audit row's time stamp.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from ivr.config import Settings

log = logging.getLogger(__name__)

PURGE_EVERY_S = 24 * 3600.0
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


class AuditStore(Protocol):
    def purge_audit(self, before: dt.datetime) -> dict[str, int]: ...


# ---------------------------------------------------------------- owner-only files
def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) as owner-only folders; an existing folder is left as it is
    (an operator may have shared it with Asterisk on purpose)."""
    missing = []
    folder = path
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            continue
        os.chmod(folder, PRIVATE_DIR)  # mkdir's mode is subject to the umask
    return path


def write_private_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (replacing it) as an owner-only file, in owner-only folders."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), PRIVATE_FILE)  # an existing file keeps its mode through O_CREAT
        handle.write(text)


# ---------------------------------------------------------------- the purge
@dataclasses.dataclass
class PurgeReport:
    transcripts: int = 0
    recordings: int = 0
    logs: int = 0
    audit_rows: dict[str, int] = dataclasses.field(default_factory=dict)
    errors: list[str] = dataclasses.field(default_factory=list)

    def line(self) -> str:
        audit = ", ".join(f"{n} {table}" for table, n in sorted(self.audit_rows.items())) or "audit rows not purged"
        return (
            f"purged {self.transcripts} transcripts, {self.recordings} recordings, {self.logs} log files, {audit}"
            + (f"; {len(self.errors)} errors" if self.errors else "")
        )


def _old_files(folder: Path, pattern: str, cutoff: float) -> Iterable[Path]:
    if not folder.is_dir():
        return []
    old = []
    for path in folder.glob(pattern):
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                old.append(path)
        except FileNotFoundError:  # deleted meanwhile (a call ending)
            continue
    return old


def _delete(paths: Iterable[Path], report: PurgeReport) -> int:
    count = 0
    for path in paths:
        try:
            path.unlink(missing_ok=True)
            count += 1
        except OSError as exc:
            report.errors.append(f"{path}: {exc.strerror or type(exc).__name__}")
    return count


def purge(settings: Settings, store: AuditStore | None = None, *, now: float | None = None) -> PurgeReport:
    """Delete what is older than ``settings.retention_days`` (nothing when it is 0). Blocking."""
    report = PurgeReport()
    if settings.retention_days <= 0:
        return report
    moment = time.time() if now is None else now
    cutoff = moment - settings.retention_days * 86400
    transcripts = settings.transcripts_dir
    report.transcripts = _delete(_old_files(transcripts, "*/*.jsonl", cutoff), report)
    if transcripts.is_dir():
        for day in transcripts.iterdir():
            if day.is_dir():
                try:
                    day.rmdir()  # only when empty
                except OSError:
                    pass
    report.recordings = _delete(
        [p for p in _old_files(settings.spool_dir, "*", cutoff) if p.suffix.lower() in (".wav", ".gsm", ".txt")],
        report,
    )
    report.logs = _delete(_old_files(settings.log_dir, "**/*.log", cutoff), report)
    if store is not None:
        before = dt.datetime.fromtimestamp(cutoff, dt.timezone.utc)
        try:
            report.audit_rows = store.purge_audit(before)
        except Exception as exc:  # the files are purged even when the database is down
            report.errors.append(f"account store: {exc}")
    return report


def purge_with_store(settings: Settings) -> PurgeReport:
    """``purge`` with the configured account store (opened and closed here). Blocking."""
    from ivr.accounts.store import SqlAccountStore

    store = SqlAccountStore.from_settings(settings)
    try:
        return purge(settings, store)
    finally:
        store.close()


async def purge_daily(
    settings: Settings,
    store: AuditStore | None,
    *,
    every_s: float = PURGE_EVERY_S,
    run: Callable[..., PurgeReport] = purge,
) -> None:
    """Run ``purge`` now and then every ``every_s`` seconds, each time in a worker thread (it walks
    folders and writes to the database), until cancelled. A failed run is logged; the next one comes."""
    while True:
        try:
            report = await asyncio.to_thread(run, settings, store)
            log.info("retention (%d days): %s", settings.retention_days, report.line(), extra={"event": "purge"})
            for error in report.errors[:5]:
                log.warning("retention: %s", error, extra={"event": "purge_error"})
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("retention purge failed", extra={"event": "purge_error"})
        await asyncio.sleep(every_s)


# ---------------------------------------------------------------- ivr purge
def register(sub: Any) -> None:
    p = sub.add_parser(
        "purge",
        help="delete transcripts, recordings, helper logs and audit rows older than the retention",
        description="Delete transcripts, recordings left in the spool, helper logs and the account store's "
        "audit rows (verification attempts, disclosures) older than retention_days ($IVR_RETENTION_DAYS, "
        "default 30; 0 keeps everything). `ivr serve` does this daily.",
    )
    p.add_argument("--days", type=int, help="retention in days for this run (default: the setting)")
    p.set_defaults(handler=_purge_command)


def _purge_command(args: argparse.Namespace, settings: Settings) -> int:
    from ivr.parts import AccountStoreError

    if args.days is not None:
        if args.days < 0:
            raise ValueError("--days must be 0 or more")
        settings = dataclasses.replace(settings, retention_days=args.days)
    if settings.retention_days <= 0:
        print("retention_days is 0: nothing is purged")
        return 0
    try:
        report = purge_with_store(settings)
    except AccountStoreError as exc:
        report = purge(settings, None)
        report.errors.append(str(exc))
    print(report.line())
    for error in report.errors:
        print(f"ivr purge: {error}", file=sys.stderr)
    return 1 if report.errors else 0
