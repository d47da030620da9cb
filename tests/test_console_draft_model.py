"""The draft's own models: the console's Try-it chats and accuracy runs train the unpublished draft into
the console's folder (``ivr.console.draftmodel``), never into the working model folder
``models/rasa/<locale>`` that ``ivr train`` writes, ``ivr publish`` copies from and a robot without a
release serves. Real parts: ``ivr console`` as a process, its chat processes, real Rasa trainings (one,
shared by two chats that start at once). ~1-2 min: the two tests that train are marked slow."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ivr.config import PROJECT_ROOT, Settings
from ivr.console import draftmodel, drafts
from ivr.console.calls import add_phrasing
from ivr.dialogue.train import fingerprint, training_lock

from .conftest import make_demo_db
from .console_helpers import Client, ConsoleWorkspace, csrf_of, make_workspace, running_console

LOCALE = "en-US"
REPO_MODELS = PROJECT_ROOT / "models"
DRAFT_GREETING = "Hello from the draft, not yet published."
ONLY_IN_DRAFT = "purple elephant tuesday"  # a phrasing of ask_balance that only the draft has


def files_of(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ws(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> ConsoleWorkspace:
    """The working model: the repository's (`make models`), copied; the draft: a new greeting and a phrasing
    only it has, saved with the console's own functions."""
    root = tmp_path_factory.mktemp("console-draft-model")
    ws = make_workspace(base_settings, root, make_demo_db(root / "accounts.db"))
    working = REPO_MODELS / "rasa" / LOCALE
    assert (working / "model.tar.gz").is_file(), "`make models` trains the working models"
    with training_lock(REPO_MODELS):  # not copied while an `ivr train` replaces it
        shutil.copytree(working, ws.settings.models_dir / "rasa" / LOCALE,
                        ignore=shutil.ignore_patterns(".training-*"))
    settings = ws.settings
    greet = drafts.read_draft(settings.dialogs_dir, LOCALE).response("utter_greet", 0)
    assert greet is not None
    drafts.save_response(settings.dialogs_dir, LOCALE, "utter_greet", 0, DRAFT_GREETING, greet.version,
                         lock_dir=settings.console_dir)
    add_phrasing(settings.dialogs_dir, LOCALE, "ask_balance", ONLY_IN_DRAFT, lock_dir=settings.console_dir)
    return ws


@pytest.fixture(scope="module")
def working_before(ws: ConsoleWorkspace) -> dict[str, str]:
    return files_of(ws.settings.models_dir / "rasa" / LOCALE)


def start_chat(client: Client) -> str:
    _, page = client.get(f"/try/{LOCALE}")
    status, html = client.post(f"/try/{LOCALE}/start", {"csrf": csrf_of(page), "customer": "1"})
    assert status == 200, html
    match = re.search(r"/try/chat/([\w-]+)", html)
    assert match, html
    return match.group(1)


def wait_for_turn(client: Client, chat_id: str) -> str:
    deadline = time.monotonic() + 300
    while True:
        status, html = client.get(f"/try/chat/{chat_id}")  # a long poll (10 s)
        assert status == 200, html
        assert 'id="outcome"' not in html, html  # ended (the training or the load failed)
        if 'id="say"' in html:
            return html
        assert time.monotonic() < deadline, html


def cells(html: str, css: str) -> list[str]:
    return re.findall(rf'<td class="{css}">([^<]*)</td>', html)


@pytest.mark.slow
def test_two_chats_at_once_train_the_draft_once_into_its_own_folder_and_use_it(
    ws: ConsoleWorkspace, working_before: dict[str, str]
) -> None:
    settings = ws.settings
    with running_console(ws, ws.root / "console.log") as port:
        eddie, eve = Client(port).login("eddie"), Client(port).login("eve")
        with concurrent.futures.ThreadPoolExecutor(2) as pool:  # both chats start while nothing is trained
            ids = list(pool.map(start_chat, (eddie, eve)))
            pages = list(pool.map(wait_for_turn, (eddie, eve), ids))
        for client, chat_id, page in zip((eddie, eve), ids, pages, strict=True):
            assert cells(page, "text")[0] == DRAFT_GREETING  # the draft's wording
            _, page = client.post(f"/try/chat/{chat_id}/turn", {"csrf": csrf_of(page), "say": ONLY_IN_DRAFT})
            assert cells(page, "intent") == ["ask_balance"], page  # the draft's model understood it

    # the working model is byte for byte what it was: no chat trained into it
    assert files_of(settings.models_dir / "rasa" / LOCALE) == working_before
    # one model of the draft, keyed by the draft's fingerprint, trained once for both chats
    root = draftmodel.locale_root(settings, LOCALE)
    print_ = fingerprint(settings.dialogs_dir, LOCALE)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [print_[:draftmodel.KEY_CHARS]]
    assert (root / print_[:draftmodel.KEY_CHARS] / "rasa" / LOCALE / "model.tar.gz").is_file()
    trainings = (root / draftmodel.LOG_FILE).read_text(encoding="utf-8").splitlines()
    assert len(trainings) == 1 and print_ in trainings[0], trainings


@pytest.mark.slow
def test_the_accuracy_run_uses_the_same_draft_model_without_training_and_leaves_the_working_model(
    ws: ConsoleWorkspace, working_before: dict[str, str]
) -> None:
    """After the chats above: the draft is unchanged, so its model is not trained again."""
    settings = ws.settings
    root = draftmodel.locale_root(settings, LOCALE)
    run = subprocess.run([sys.executable, "-m", "ivr.console.accuracy", "--locale", LOCALE], env=ws.env(),
                         cwd=ws.root, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"{LOCALE}: the draft's model: up to date" in run.stdout, run.stdout
    result = json.loads(run.stdout.split("RESULT ", 1)[1])
    assert result["draft_model"] == fingerprint(settings.dialogs_dir, LOCALE)[:draftmodel.KEY_CHARS]
    correct, total = result["draft"]
    assert total >= 6 * 14 and correct >= 0.8 * total
    assert len((root / draftmodel.LOG_FILE).read_text(encoding="utf-8").splitlines()) == 1
    assert files_of(settings.models_dir / "rasa" / LOCALE) == working_before


def test_only_the_newest_draft_models_are_kept_but_never_one_in_use(tmp_path: Path, base_settings: Settings) -> None:
    """Pruning on plain folders (no training): the KEEP most recently used stay, and an older one that a
    chat holds stays too."""
    settings = dataclasses.replace(base_settings, console_dir=tmp_path / "console")
    root = draftmodel.locale_root(settings, LOCALE)
    names = [f"{i:020d}" for i in range(6)]
    for age, name in enumerate(reversed(names)):  # names[0] is the oldest
        folder = root / name
        (folder / "rasa" / LOCALE).mkdir(parents=True)
        (folder / "rasa" / LOCALE / "model.tar.gz").write_bytes(b"model")
        (folder / draftmodel.INFO_FILE).write_text(json.dumps({"fingerprint": name}), encoding="utf-8")
        (folder / draftmodel.IN_USE_FILE).touch()
        os.utime(folder / draftmodel.INFO_FILE, (1_000_000 - age, 1_000_000 - age))
    held = draftmodel._hold(root / names[1], LOCALE, names[1], "up to date", False, 0.0)  # a chat uses it
    assert held is not None
    os.utime(root / names[1] / draftmodel.INFO_FILE, (1, 1))  # as if last used long ago
    gone = draftmodel.prune(settings, LOCALE, keep=3)
    held.release()
    assert sorted(gone) == [names[0], names[2]]
    assert sorted(p.name for p in root.iterdir()) == sorted([names[1], *names[3:]])
    assert draftmodel.prune(settings, LOCALE, keep=3) == [names[1]]  # released: now it goes
