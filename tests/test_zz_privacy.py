"""The caller's data never appears in clear in anything the suite made the project write (runs last: ``zz``).

What is scanned (each place is where the project's own settings or objects say it writes, not a list
of paths kept by hand):

- the session's folder (tests/conftest.py ``suite_dirs``): every log record of the suite, the logs of
  the helper processes (``ivr serve``, Rasa and action servers via ``settings.log_dir``, bench output
  kept by the tests), transcripts, the spool, the prompts' sidecar texts;
- log, transcript, spool and sidecar files anywhere under pytest's base folder (tests' own tmp folders);
- the project's ``var/`` files changed during the session (a test that bypassed the suite's folders);
- the local Asterisk's logs and call records (``var/log/asterisk`` in its chroot, its console log);
- every SQLite account database of the session: no ID digits in clear (phones and account numbers are
  the store's business data; the ID digits are only ever kept as hashes).

The demo customers' values come from ivr/accounts/demo.yaml; digits are matched as written, spoken or
shown with separators ("2 4 6 8", "2-4-6-8", "二四六八", "이사육팔", "two four six eight").
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ivr.asterisk.local import LocalAsterisk
from ivr.config import PROJECT_ROOT, Settings
from tests.conftest import SuiteDirs

pytestmark = pytest.mark.privacy  # run at the end of both of make test's pytest runs

DEMO = PROJECT_ROOT / "ivr" / "accounts" / "demo.yaml"

# How a digit may be written or spoken: ASCII and full-width digits, Mandarin, Sino-Korean and native
# Korean, English. (Short native Korean forms like 한/두/세/네 are left out: they are everyday words.)
DIGIT_FORMS: dict[str, tuple[str, ...]] = {
    "0": ("0", "０", "零", "〇", "영", "공", "zero", "oh"),
    "1": ("1", "１", "一", "幺", "일", "하나", "one"),
    "2": ("2", "２", "二", "两", "이", "둘", "two"),
    "3": ("3", "３", "三", "삼", "셋", "three"),
    "4": ("4", "４", "四", "사", "넷", "four"),
    "5": ("5", "５", "五", "오", "다섯", "five"),
    "6": ("6", "６", "六", "육", "륙", "여섯", "six"),
    "7": ("7", "７", "七", "칠", "일곱", "seven"),
    "8": ("8", "８", "八", "팔", "여덟", "eight"),
    "9": ("9", "９", "九", "구", "아홉", "nine"),
}
SEPARATOR = r"[\s\-/_·・、]{0,3}"  # not '.' or ',': "4.821 s" is a duration, not ID digits
ASCII_DIGIT = "0-9０-９"
TEXT_SUFFIXES = {"", ".jsonl", ".json", ".log", ".txt", ".csv", ".yaml", ".yml", ".conf"}
SKIP_SUFFIXES = {".wav", ".gsm", ".db", ".db-journal", ".db-wal", ".db-shm", ".tar.gz", ".pyc"}


def digits_pattern(digits: str) -> re.Pattern[str]:
    """``digits`` in any mix of the forms above, up to three separator characters between them, and
    not part of a longer number (or of a word or hash)."""
    parts = ["(?:" + "|".join(sorted(map(re.escape, DIGIT_FORMS[d]), key=len, reverse=True)) + ")" for d in digits]
    body = SEPARATOR.join(parts)
    before = rf"(?<![{ASCII_DIGIT}A-Za-z])(?<![{ASCII_DIGIT}][\s\-/_.,:])"
    after = rf"(?![{ASCII_DIGIT}A-Za-z])(?!{SEPARATOR}[{ASCII_DIGIT}])(?![.,:][{ASCII_DIGIT}])"
    return re.compile(before + body + after, re.IGNORECASE)


def demo_secrets() -> tuple[dict[str, re.Pattern[str]], dict[str, re.Pattern[str]]]:
    """(everything personal, the ID digits alone) of the demo customers, as patterns by name."""
    customers = yaml.safe_load(DEMO.read_text(encoding="utf-8"))["customers"]
    everything: dict[str, re.Pattern[str]] = {}
    ids: dict[str, re.Pattern[str]] = {}
    for c in customers:
        ids[f"{c['id']} ID digits"] = digits_pattern(str(c["id_last4"]))
        everything.update(ids)
        for phone in c["phones"]:
            everything[f"{c['id']} phone"] = digits_pattern(str(phone))
        for account in c.get("accounts", []):
            everything[f"{c['id']} account number"] = digits_pattern(str(account["number"]))
    return everything, ids


SECRETS, ID_DIGITS = demo_secrets()
_UNICODE_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")


def leaks_in_text(text: str, where: str, secrets: dict[str, re.Pattern[str]] = SECRETS) -> list[str]:
    text = _UNICODE_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)  # JSON written with ASCII escapes
    found = []
    for name, pattern in secrets.items():
        for match in pattern.finditer(text):
            start = max(0, match.start() - 60)
            found.append(f"{where}: {name}: …{text[start:match.end() + 20]}…")
    return found


def leaks(path: Path) -> list[str]:
    """Leaks in a file's name and text (binary files: the name only)."""
    found = leaks_in_text(path.name, f"{path} (name)")
    if path.suffix.lower() not in SKIP_SUFFIXES and not path.name.endswith(".tar.gz"):
        found += leaks_in_text(path.read_text(encoding="utf-8", errors="replace"), str(path))
    return found


def database_leaks(path: Path) -> list[str]:
    """Clear ID digits in any cell of any table of a SQLite database."""
    found = []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        if "customers" in tables and not db.execute(
            "SELECT 1 FROM customers WHERE id IN ('C001', 'C002', 'C003')"
        ).fetchone():
            # generated customers only (`ivr db demo-data`): their random amounts and references may
            # contain any four digits, and no demo customer's secret can be there
            return found
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):  # table names from the schema itself
                for cell in row:
                    if isinstance(cell, str | int):
                        found += leaks_in_text(str(cell), f"{path} table {table}", ID_DIGITS)
    return found


def files_under(folder: Path, since: float | None = None) -> Iterator[Path]:
    if not folder.is_dir():
        return
    for path in folder.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and (since is None or path.stat().st_mtime >= since):
                yield path
        except OSError:
            continue


def written_by_the_suite(suite: SuiteDirs, settings: Settings) -> tuple[list[Path], list[Path]]:
    """(text and binary files to scan, SQLite databases)."""
    base = suite.root.parent  # pytest's base folder for this session: every tmp_path is under it
    files: set[Path] = set(files_under(suite.root))
    for path in files_under(base):
        parts = set(path.parts)
        if (
            path.suffix == ".log"
            # JSON lines the robot writes are transcripts (<transcripts>/<date>/<call>.jsonl); other
            # JSON lines under pytest's folders are tests' own inputs (generated customer files)
            or (path.suffix == ".jsonl" and re.fullmatch(r"\d{4}-\d{2}-\d{2}", path.parent.name))
            or parts & {"spool", "transcripts"}
            or (path.suffix == ".txt" and parts & {"dynamic", "prompts"})
        ):
            files.add(path)
    var = PROJECT_ROOT / "var"
    local = LocalAsterisk(settings)
    for path in files_under(var, since=suite.started):
        if local.root not in path.parents:  # the chroot: only its logs, below
            files.add(path)
    files.update(files_under(local.root / "var" / "log" / "asterisk", since=suite.started))
    files.update(p for p in files_under(local.state_dir, since=suite.started) if p.suffix == ".log")
    databases = {p for p in files if p.suffix == ".db"}
    databases.update(p for p in files_under(base) if p.suffix == ".db")
    if (var / "accounts.db").is_file():
        databases.add(var / "accounts.db")
    return sorted(files - databases), sorted(databases)


def test_no_personal_data_in_anything_the_suite_wrote(suite_dirs: SuiteDirs, base_settings: Settings) -> None:
    transcripts = sorted(suite_dirs.transcripts.rglob("*.jsonl"))
    if not transcripts:
        pytest.skip("run alone: no call was made in this session, so there is nothing to scan")
    assert suite_dirs.log_file.stat().st_size > 0
    files, databases = written_by_the_suite(suite_dirs, base_settings)
    assert suite_dirs.log_file in files and transcripts[0] in files  # the scan sees what it must
    found = [leak for f in files for leak in leaks(f)]
    found += [leak for db in databases for leak in database_leaks(db)]
    assert found == []


# ---------------------------------------------------------------- the scan itself
@pytest.mark.parametrize(
    "text",
    [
        "4821", "4 8 2 1", "4-8-2-1", "4 - 8 - 2 - 1", "四八二一", "四 八 二 一", "사팔이일", "사 팔 이 일",
        "four eight two one", "Four-Eight-Two-One", "４８２１", "4 eight 二 1", '"text": "\\u56db\\u516b\\u4e8c\\u4e00"',
        "138 0000 0001", "138-0000-0001", "一三八零零零零零零零一", "6222 0200 0000 5678", "공일공 일이삼사 오육칠팔",
        "육일구삼", "seven three zero five",
    ],
)  # fmt: skip
def test_the_scan_sees_digits_however_they_are_written(text: str) -> None:
    assert leaks_in_text(f"caller said {text} just now", "sample"), text


@pytest.mark.parametrize(
    "text",
    [
        "14821", "48210", "1 4821", "4821 0", "ab4821cd", "took 4.821 s", "0.4821", "2026-11-28T10:48:21.123Z",
        "************5678", "*******0001", "balance 1,234.56 CNY", "scrypt$16384$8$1$c2FsdA$4821x",
        "이번 달", "사용자", "네 번째",
    ],
)  # fmt: skip
def test_the_scan_ignores_other_numbers_and_words(text: str) -> None:
    assert leaks_in_text(text, "sample") == [], text


def test_the_scan_reads_names_files_and_databases(tmp_path: Path) -> None:
    sample = tmp_path / "t.jsonl"
    sample.write_text('{"who": "caller", "text": "4821"}\n{"msg": "account 6222020000005678"}\n')
    assert len(leaks(sample)) == 2
    named = tmp_path / "13800000001.wav"
    named.write_bytes(b"RIFF")
    assert len(leaks(named)) == 1  # a recording named after the caller
    db = tmp_path / "a.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE customers (id TEXT, phone TEXT, id_last4 TEXT)")
        conn.execute("INSERT INTO customers VALUES ('C001', '13800000001', 'scrypt$…')")
    assert database_leaks(db) == []  # phones are the store's data; only the ID digits are secret
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO customers VALUES ('C002', '15550000002', '7305')")
    assert len(database_leaks(db)) == 1


def test_the_scan_covers_every_place_the_settings_write_to(suite_dirs: SuiteDirs, base_settings: Settings) -> None:
    """Every folder the suite's settings name is inside the scanned session folder."""
    for folder in (base_settings.sounds_dir, base_settings.spool_dir, base_settings.transcripts_dir,
                   base_settings.log_dir):  # fmt: skip
        assert suite_dirs.root in folder.parents, folder
    assert time.time() >= suite_dirs.started
