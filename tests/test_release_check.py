"""The release check (issue #18): exported calls replayed against two releases of the dialog.

A workspace of its own (a copy of the repository's dialogs, its own models folder, ko-KR): release 1 is
the dialog as shipped. "Production" calls are placed against it (the text robot, recordings and
transcripts in the workspace) and exported the anonymized way (text-only, a test caller ID, the keyed
ID digits filled in with the demo customer's). Then the working copy is broken on purpose: the
phrasings of the balance request that mention the bank book (통장) are removed, so "통장에 돈 얼마 있어요"
is no longer understood. ``ivr publish --check`` refuses to publish it; published anyway (release 2),
``ivr replay DIR --text --compare-releases 1 2`` reports the call that release 1 completed and release 2
transfers, and exits 1.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ivr.cli import main
from ivr.config import PROJECT_ROOT, Settings
from ivr.dialogue.train import training_lock
from ivr.releases import ReleaseStore
from ivr.testing.callfile import CallFile, Expectation, Turn, load_call_file
from ivr.testing.export import export_call
from ivr.testing.harness import ScriptedAsterisk
from ivr.testing.replay import RobotInThread, replay_settings
from tests.conftest import make_demo_db

LOCALE = "ko-KR"
CALLER = "01012345678"  # C003, ID digits 6193
REPO_MODELS = PROJECT_ROOT / "models"
REMOVED = ("    - 통장에 얼마 있어요\n", "    - 내 통장에 돈 얼마 있어\n", "    - 통장 잔고\n")


def production_calls(tmp: Path) -> list[CallFile]:
    def call(name: str, *turns: Turn) -> CallFile:
        return CallFile(tmp / f"{name}.yaml", CALLER, LOCALE, turns, Expectation())

    return [
        # not understood twice, then understood: verified by keys, hears the balance, done
        call("struggling", Turn("say", "블라블라 바나나 우주선"), Turn("say", "쿵따리 샤바라 빠빠빠"),
             Turn("say", "통장에 돈 얼마 있어요"), Turn("dtmf", "6193#"), Turn("say", "아니요 감사합니다")),
        call("balance", Turn("say", "잔액 좀 알려 주세요"), Turn("dtmf", "6193#"), Turn("say", "아니요 감사합니다")),
        call("human", Turn("say", "상담원 연결해 주세요")),
    ]


@dataclasses.dataclass(frozen=True)
class Workspace:
    settings: Settings
    calls: Path  # the exported, filled-in call files

    def env(self) -> dict[str, str]:
        s = self.settings
        return {"IVR_DIALOGS_DIR": str(s.dialogs_dir), "IVR_MODELS_DIR": str(s.models_dir),
                "IVR_DATABASE_URL": s.database_url, "IVR_SOUNDS_DIR": str(s.sounds_dir),
                "IVR_SPOOL_DIR": str(s.spool_dir), "IVR_TRANSCRIPTS_DIR": str(s.transcripts_dir),
                "IVR_LOG_DIR": str(s.log_dir), "IVR_FIXED_DATE": s.fixed_date, "IVR_LOCKOUT_FAILURES": "10000",
                "IVR_CONFIG": str(s.dialogs_dir.parent / "none.toml")}


@pytest.fixture(scope="module")
def ws(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    root = tmp_path_factory.mktemp("release-check")
    shutil.copytree(PROJECT_ROOT / "dialogs", root / "dialogs", ignore=shutil.ignore_patterns("server"))
    if (REPO_MODELS / "rasa" / LOCALE).is_dir():  # reused when trained from these very files
        shutil.copytree(REPO_MODELS / "rasa" / LOCALE, root / "models" / "rasa" / LOCALE)
    settings = dataclasses.replace(
        replay_settings(base_settings), dialogs_dir=root / "dialogs", models_dir=root / "models",
        database_url=make_demo_db(root / "accounts.db"), spool_dir=root / "spool",
        transcripts_dir=root / "transcripts", keep_recordings=True, lockout_failures=10_000)
    with training_lock(REPO_MODELS):
        assert ReleaseStore(settings).publish(LOCALE, author="alice", message="as shipped").number == 1

    # the production calls, served by the working copy (= release 1), exported and filled in
    robot = RobotInThread(settings, text_input=True).start()
    try:
        for call in production_calls(root):
            report = asyncio.run(ScriptedAsterisk(call, locale=LOCALE, text_mode=True).run("127.0.0.1", robot.port))
            assert not report.errors
            stem = re.sub(r"[^0-9A-Za-z_-]", "_", report.unique_id)
            (transcript,) = settings.transcripts_dir.glob(f"*/{stem}-*.jsonl")
            result = export_call(settings, transcript.stem, root / "calls", caller_id=CALLER, text_only=True)
            text = re.sub(r'dtmf: "<fill in[^"]*"', 'dtmf: "6193"', result.call_file.read_text(encoding="utf-8"))
            named = root / "calls" / f"{call.name}.yaml"
            named.write_text(text, encoding="utf-8")
            result.call_file.unlink()
            assert load_call_file(named).expect.outcome == report.outcome
    finally:
        robot.stop()
    assert load_call_file(root / "calls" / "struggling.yaml").expect.outcome == "completed"
    assert load_call_file(root / "calls" / "human.yaml").expect.outcome == "transfer"

    # the deliberately broken draft
    nlu = root / "dialogs" / LOCALE / "data" / "nlu.yml"
    text = nlu.read_text(encoding="utf-8")
    for line in REMOVED:
        assert text.count(line) == 1, line
        text = text.replace(line, "")
    nlu.write_text(text, encoding="utf-8")
    yield Workspace(settings, root / "calls")


def run_cli(ws: Workspace, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("IVR_")]:
            mp.delenv(key)
        for key, value in ws.env().items():
            mp.setenv(key, value)
        with training_lock(REPO_MODELS):
            code = main(argv)
    return code, capsys.readouterr().out


def test_publish_check_refuses_a_draft_that_does_worse_on_the_exported_calls(
    ws: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run_cli(ws, ["publish", "--locale", LOCALE, "--check", str(ws.calls), "--no-notify"], capsys)
    assert code == 1, out
    assert re.search(r"struggling\.yaml\s+completed\s+transfer\s+WORSE", out), out
    store = ReleaseStore(ws.settings)
    assert store.current_number(LOCALE) == 1 and [r.number for r in store.releases(LOCALE)] == [1]


def test_compare_releases_reports_the_call_the_broken_release_no_longer_completes(
    ws: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ReleaseStore(ws.settings)
    if store.current_number(LOCALE) == 1:
        with training_lock(REPO_MODELS):
            store.publish(LOCALE, author="bob", message="fewer balance phrasings (broken on purpose)")
    assert store.current_number(LOCALE) == 2

    code, out = run_cli(ws, ["replay", str(ws.calls), "--text", "--compare-releases", "1", "2", "--json"], capsys)
    report = json.loads(out)
    assert code == 1
    calls = {Path(c["call"]).stem: c for c in report["calls"]}
    struggling = calls["struggling"]
    assert (struggling["a"]["outcome"], struggling["b"]["outcome"], struggling["worse"]) == \
        ("completed", "transfer", True)
    assert struggling["a"]["intents"][2] == "ask_balance" != struggling["b"]["intents"][2]
    assert "caller turn 3: intent ask_balance -> " in " ".join(struggling["differences"])
    assert report["regressions"] == [c["call"] for c in report["calls"] if c["worse"]]
    # what the removed phrasings do not touch stays the same
    for same in ("balance", "human"):
        assert calls[same]["differences"] == [] and not calls[same]["worse"], calls[same]

    # the table, and a release compared with itself (the draft is release 2's files): nothing differs
    code, out = run_cli(ws, ["replay", str(ws.calls), "--text", "--compare-releases", "2", "1"], capsys)
    assert code == 0, out  # better, not worse: transfer -> completed
    assert re.search(r"struggling\.yaml\s+transfer\s+completed\s+differs", out), out
    code, out = run_cli(ws, ["replay", str(ws.calls), "--text", "--compare-releases", "current", "draft"], capsys)
    assert code == 0 and "3 calls, 0 differ" in out, out
