"""When the end-to-end Asterisk tests skip, and that a skip cannot go unnoticed.

Skipped only for what the project does not control: not root (README), or Debian sid's Asterisk not
downloadable after a retry. Anything else the project controls fails. A skipped Asterisk section is
announced in the terminal summary with its count and reasons.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ivr.asterisk.local import AsteriskError, AsteriskNeedsRoot, LocalAsterisk
from ivr.config import PROJECT_ROOT, Settings
from tests.conftest import asterisk_skip_summary, start_local_asterisk


def fake_debootstrap(folder: Path) -> Path:
    """A debootstrap that records its calls, starts a target folder and fails as a broken mirror would."""
    folder.mkdir(parents=True, exist_ok=True)
    fake = folder / "debootstrap"
    fake.write_text(
        '#!/bin/sh\necho "$@" >> "$0.calls"\nmkdir -p "$4/debootstrap"\necho "E: Failed getting release file"\nexit 1\n'
    )
    fake.chmod(0o755)
    return fake


def local_in(tmp_path: Path) -> LocalAsterisk:
    return LocalAsterisk(Settings(), root=tmp_path / "state" / "root", state_dir=tmp_path / "state")


def test_without_root_install_and_up_say_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ivr.asterisk.local._is_root", lambda: False)
    local = local_in(tmp_path)
    with pytest.raises(AsteriskNeedsRoot, match="needs root"):
        local.install()
    with pytest.raises(AsteriskNeedsRoot, match="needs root"):
        local.up()


def test_without_root_the_asterisk_tests_skip_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ivr.asterisk.local._is_root", lambda: False)
    with pytest.raises(pytest.skip.Exception, match=r"^NOT ROOT: .*needs root"):
        start_local_asterisk(local_in(tmp_path))


def test_a_download_that_fails_twice_skips_as_infrastructure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ivr.asterisk.local._is_root", lambda: True)  # the fake needs no root
    fake = fake_debootstrap(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    local = local_in(tmp_path)
    with pytest.raises(pytest.skip.Exception, match=r"^INFRASTRUCTURE: .*after 2 attempts") as skipped:
        start_local_asterisk(local)
    assert "Failed getting release file" in str(skipped.value)  # the log's tail is in the reason
    calls = Path(f"{fake}.calls").read_text().splitlines()
    assert calls == [f"--variant=minbase --include=asterisk sid {local.root}"] * 2  # one retry
    assert not local.installed()


def test_what_the_project_controls_fails_instead_of_skipping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ivr.asterisk.local._is_root", lambda: True)
    # debootstrap missing: `make` installs it, so this is the project's failure, not the network's
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(AsteriskError, match="debootstrap is not installed") as failure:
        start_local_asterisk(local_in(tmp_path))
    assert not isinstance(failure.value, AsteriskNeedsRoot)


class _Report:
    def __init__(self, nodeid: str, keywords: dict[str, int], longrepr: object = None) -> None:
        self.nodeid, self.keywords, self.longrepr = nodeid, keywords, longrepr


def test_the_summary_counts_skipped_asterisk_tests_and_their_reasons() -> None:
    marked = {"asterisk": 1}
    stats = {
        "passed": [_Report("t.py::a", marked), _Report("t.py::plain", {})],
        "skipped": [
            _Report("t.py::b", marked, ("t.py", 3, "Skipped: NOT ROOT: starting needs root")),
            _Report("t.py::c", marked, ("t.py", 3, "Skipped: NOT ROOT: starting needs root")),
            _Report("t.py::d", marked, ("t.py", 9, "Skipped: INFRASTRUCTURE: no sid\nlog tail")),
            _Report("t.py::other", {}, ("t.py", 1, "Skipped: unrelated")),
        ],
    }
    lines = asterisk_skip_summary(stats)
    assert lines[0].startswith("END-TO-END NOT TESTED: 3 of 4 Asterisk tests SKIPPED")
    assert lines[1:] == ["  2 skipped: NOT ROOT: starting needs root", "  1 skipped: INFRASTRUCTURE: no sid"]
    assert asterisk_skip_summary({"passed": stats["passed"], "skipped": stats["skipped"][3:]}) == []


def test_a_skipped_asterisk_section_is_loud_in_the_terminal_output(tmp_path: Path) -> None:
    """The hook itself, in a real pytest run (the project's conftest hook, a module of marked tests)."""
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import pytest_terminal_summary  # noqa: F401\n"
        "def pytest_configure(config):\n"
        "    config.addinivalue_line('markers', 'asterisk: end to end')\n"
    )
    (tmp_path / "test_e2e.py").write_text(textwrap.dedent("""
        import pytest

        @pytest.fixture
        def pbx():
            pytest.skip("NOT ROOT: starting the local Asterisk needs root")

        @pytest.mark.asterisk
        def test_call(pbx):
            pass

        @pytest.mark.asterisk
        def test_other_call(pbx):
            pass

        def test_unit():
            pass
    """))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, cwd=tmp_path,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "END-TO-END NOT TESTED: 2 of 2 Asterisk tests SKIPPED" in done.stdout
    assert "2 skipped: NOT ROOT: starting the local Asterisk needs root" in done.stdout
