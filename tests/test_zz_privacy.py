"""The caller's data never appears in clear in what the suite wrote (runs last: ``zz``).

Scans every log record of the whole test session (tests/conftest.py writes them all, DEBUG and up,
to one file) and every call transcript, for the clear values of the demo customers: ID digits (as
keys and as the words a recognizer writes), full account numbers and phone numbers.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import SuiteDirs

SECRETS = {
    "C001 ID digits": r"4821",
    "C002 ID digits": r"7305",
    "C003 ID digits": r"6193",
    "C001 ID digits spoken": r"四 ?八 ?二 ?一",
    "C002 ID digits spoken": r"seven three zero five",
    "C003 ID digits spoken": r"육 ?일 ?구 ?삼",
    "C001 account number": r"6222020000005678",
    "C002 account number": r"4111110000009012",
    "C003 account number": r"1002003004005",
    "C001 phone": r"13800000001",
    "C002 phone": r"15550000002",
    "C003 phone": r"01012345678",
}


def leaks(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    found = []
    for name, pattern in SECRETS.items():
        # Not part of a longer token (a hash, a timestamp, a port): whole values only.
        for match in re.finditer(rf"(?<![0-9A-Za-z]){pattern}(?![0-9A-Za-z])", text):
            start = max(0, match.start() - 60)
            found.append(f"{path.name}: {name}: …{text[start:match.end() + 20]}…")
    return found


def test_no_personal_data_in_logs_or_transcripts(suite_dirs: SuiteDirs) -> None:
    transcripts = sorted(suite_dirs.transcripts.rglob("*.jsonl"))
    if not transcripts:
        pytest.skip("run alone: no call was made in this session, so there is nothing to scan")
    files = [suite_dirs.log_file, *transcripts]
    assert suite_dirs.log_file.stat().st_size > 0
    found = [leak for f in files for leak in leaks(f)]
    assert found == []


def test_the_scan_would_see_a_leak(tmp_path: Path) -> None:
    sample = tmp_path / "t.jsonl"
    sample.write_text('{"who": "caller", "text": "4821"}\n{"msg": "account 6222020000005678"}\n')
    assert len(leaks(sample)) == 2
