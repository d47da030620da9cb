"""Releases and live reload (issue #13), on real parts: trained Rasa models, the FastAGI server over TCP
(the replay harness), SQLite, ``ivr publish`` / ``ivr rollback`` / ``ivr releases``, ``ivr serve``.

One workspace template per module (a copy of the repository's dialogs in a temporary dialogs folder,
its own models folder): release 1 = the dialogs as they are, release 2 = the same with a new greeting,
a new ID question (a Rasa reply), a new "didn't hear" (a session prompt) and a new goodbye; then rolled
back to 1, so the working copy (= release 2's files) publishes again without training. Each test gets
its own copy of the template. Training holds the repository's training lock (one training at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ivr.app import Robot, build_robot
from ivr.config import PROJECT_ROOT, Settings
from ivr.dialogue.prompts import PromptBook
from ivr.dialogue.train import training_lock
from ivr.releases import (
    CURRENT_FILE,
    RELEASE_FILE,
    ReleaseAudit,
    ReleaseStore,
    locale_root,
    notify_servers,
    servers_dir,
)
from ivr.testing.callfile import CallFile, Expectation, Turn
from ivr.testing.harness import CallReport, ScriptedAsterisk

from .conftest import make_demo_db

LOCALE = "en-US"
CALLER = "15550000002"  # demo customer, ID digits 7305
MARK = "[v2] "  # what release 2 puts before the changed responses
CHANGED = ("utter_greet", "utter_ask_id_last4", "utter_no_input", "utter_goodbye")
REPO_MODELS = PROJECT_ROOT / "models"
IVR = [sys.executable, "-m", "ivr"]


@dataclasses.dataclass(frozen=True)
class Workspace:
    root: Path
    settings: Settings

    @property
    def store(self) -> ReleaseStore:
        return ReleaseStore(self.settings)

    def env(self) -> dict[str, str]:
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("IVR_")}
        env.update(IVR_DIALOGS_DIR=str(s.dialogs_dir), IVR_MODELS_DIR=str(s.models_dir),
                   IVR_DATABASE_URL=s.database_url, IVR_SOUNDS_DIR=str(s.sounds_dir),
                   IVR_SPOOL_DIR=str(s.spool_dir), IVR_TRANSCRIPTS_DIR=str(s.transcripts_dir),
                   IVR_LOG_DIR=str(s.log_dir), IVR_TTS_DYNAMIC_SIDECARS="true", IVR_ASR_DITHER="false",
                   IVR_FIXED_DATE=s.fixed_date, IVR_RETENTION_DAYS="0", IVR_CONFIG=str(self.root / "none.toml"),
                   IVR_RELEASE_PULL_S="0")  # these tests write current.json by hand; the database's events differ
        return env


def edit_responses(domain: Path) -> None:
    """Release 2's wording: MARK before each changed response (a plain text edit, comments kept)."""
    text = domain.read_text(encoding="utf-8")
    for name in CHANGED:
        anchor = f'\n  {name}:\n    - text: "'
        assert text.count(anchor) == 1, name
        text = text.replace(anchor, anchor + MARK)
    domain.write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def template(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("releases")
    shutil.copytree(PROJECT_ROOT / "dialogs", root / "dialogs", ignore=shutil.ignore_patterns("server"))
    if (REPO_MODELS / "rasa" / LOCALE).is_dir():  # reused if it was trained from these very files
        shutil.copytree(REPO_MODELS / "rasa" / LOCALE, root / "models" / "rasa" / LOCALE)
    settings = dataclasses.replace(base_settings, dialogs_dir=root / "dialogs", models_dir=root / "models",
                                   database_url=f"sqlite:///{root / 'accounts.db'}", releases_keep=10)
    ws = Workspace(root, settings)
    audit = ReleaseAudit(settings.database_url)
    with training_lock(REPO_MODELS):  # one training at a time on this machine
        first = ws.store.publish(LOCALE, author="alice", message="as shipped", audit=audit)
        edit_responses(root / "dialogs" / LOCALE / "domain.yml")
        second = ws.store.publish(LOCALE, author="bob", message="new greeting", audit=audit)
    ws.store.rollback(LOCALE, author="alice", to=1, message="back to the shipped wording", audit=audit)
    audit.close()
    assert (first.number, second.number) == (1, 2)
    return ws


@pytest.fixture
def ws(template: Workspace, tmp_path: Path) -> Workspace:
    """A private copy of the template (releases, audit log, dialogs), with the demo customers."""
    root = tmp_path / "ws"
    shutil.copytree(template.root, root, symlinks=True)
    for lock in root.glob("models/releases/*/.lock"):
        lock.write_text("")
    shutil.rmtree(root / "models" / "releases" / ".servers", ignore_errors=True)
    db = root / "accounts.db"
    url = make_demo_db(root / "demo.db")
    # the audit rows of the template go along: copy them into the demo database
    rows = ReleaseAudit(template.settings.database_url).events()
    audit = ReleaseAudit(url)
    for r in rows:
        audit.record(r["locale"], r["action"], r["from_release"], r["to_release"], r["author"], r["message"])
    audit.close()
    db.unlink()
    settings = dataclasses.replace(template.settings, dialogs_dir=root / "dialogs", models_dir=root / "models",
                                   database_url=url)
    return Workspace(root, settings)


def wording(settings: Settings, number: int) -> dict[str, str]:
    book = PromptBook(ReleaseStore(settings).get(LOCALE, number).dialogs_dir)
    return {name: book.text(name, LOCALE) for name in CHANGED}


# ---------------------------------------------------------------- calls
def balance_call(tmp: Path, *, silence: bool = True) -> CallFile:
    """Ask for the balance (a Rasa reply), say nothing once (a session prompt), key the ID, say goodbye."""
    turns = [Turn("say", "I'd like to know my account balance")]
    if silence:
        turns.append(Turn("silence", 1))
    turns += [Turn("dtmf", "7305#"), Turn("say", "no thanks, goodbye")]
    return CallFile(tmp / "balance.yaml", CALLER, LOCALE, tuple(turns), Expectation(said=("2,500.75 USD",),
                                                                                   outcome="completed"))


class GatedCaller(ScriptedAsterisk):
    """A caller who, before their ``gate_at``-th answer, waits until the test opens the gate (the call
    stays in progress: the robot is recording)."""

    def __init__(self, call: CallFile, gate_at: int) -> None:
        super().__init__(call, locale=LOCALE, text_mode=True)
        self.gate_at = gate_at
        self.at_gate = asyncio.Event()
        self.gate = asyncio.Event()
        self._answers = 0

    async def _record_file(self, args: list[str]) -> str:
        self._answers += 1
        if self._answers == self.gate_at:
            self.at_gate.set()
            await self.gate.wait()
        return await super()._record_file(args)


async def place(robot: Robot, call: CallFile) -> CallReport:
    assert robot.server is not None
    return await ScriptedAsterisk(call, locale=LOCALE, text_mode=True).run("127.0.0.1", robot.server.port)


def robot_lines(report: CallReport) -> list[str]:
    return [e["text"] for e in report.events if e["who"] == "robot" and e["text"]]


def assert_served(report: CallReport, call: CallFile) -> None:
    assert report.failures(call) == [], report.to_json()
    assert report.outcome == "completed" and report.transfer_reason == ""


def assert_heard_only(report: CallReport, expected: dict[str, str], other: dict[str, str]) -> None:
    lines = robot_lines(report)
    for name in CHANGED:
        assert expected[name] in lines, (name, lines)
        assert other[name] not in lines, (name, lines)


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[Robot]:
    """``ivr serve`` in-process: releases, /reload on an ephemeral HTTP port, registered for notices."""
    robot = build_robot(dataclasses.replace(settings, http_port=0), text_input=True, releases=True)
    await robot.warm_up()
    await robot.start("127.0.0.1", 0, http=True)
    try:
        yield robot
    finally:
        await robot.stop(grace_s=5)


def request(port: int, method: str, path: str, token: str | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=90)
    try:
        conn.request(method, path, headers={"Authorization": f"Bearer {token}"} if token is not None else {})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


async def arequest(port: int, method: str, path: str, token: str | None = None) -> tuple[int, str]:
    return await asyncio.to_thread(request, port, method, path, token)


async def wait_for(predicate: Any, timeout_s: float = 30.0) -> None:
    """Wait for a state change the server makes on its own (an unload after the last call)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "the server did not get there in time"
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------- the done criteria
async def test_a_call_in_progress_keeps_its_release_the_next_call_gets_the_new_one_and_rollback_restores(
    ws: Workspace, tmp_path: Path
) -> None:
    old, new = wording(ws.settings, 1), wording(ws.settings, 2)
    assert all(new[n] == MARK + old[n] for n in CHANGED)
    async with serving(ws.settings) as robot:
        live = robot.releases
        assert live is not None and live.current_number(LOCALE) == 1
        ongoing = GatedCaller(balance_call(tmp_path), gate_at=2)  # asked for the balance, then "thinks"
        assert robot.server is not None
        first = asyncio.create_task(ongoing.run("127.0.0.1", robot.server.port))
        await asyncio.wait_for(ongoing.at_gate.wait(), 60)

        # ops publish the edited dialog (release 3 = release 2's files, its model reused) ...
        release = await asyncio.to_thread(ws.store.publish, LOCALE, author="carol", message="again")
        assert release.number == 3
        # ... and the publish notifies the servers registered here (what `ivr publish` does)
        notes = await asyncio.to_thread(notify_servers, ws.settings.models_dir, 90.0)
        assert len(notes) == 1 and "reload done" in notes[0], notes
        assert live.current_number(LOCALE) == 3
        assert live.loaded(LOCALE) == [3, 1]  # the old one stays for the call in progress

        nxt = balance_call(tmp_path)
        second = await place(robot, nxt)  # while the first call is still on release 1
        ongoing.gate.set()
        first_report = await asyncio.wait_for(first, 120)

        assert_served(first_report, ongoing.call)
        assert_heard_only(first_report, old, new)  # greeting to goodbye: release 1 only
        assert_served(second, nxt)
        assert_heard_only(second, new, old)
        await wait_for(lambda: live.loaded(LOCALE) == [3])  # release 1 unloaded after its last call

        was, back = await asyncio.to_thread(ws.store.rollback, LOCALE, author="carol", to=1)
        assert (was, back.number) == (3, 1)
        await asyncio.to_thread(notify_servers, ws.settings.models_dir, 90.0)
        third = await place(robot, nxt)
        assert_served(third, nxt)
        assert_heard_only(third, old, new)
        assert live.loaded(LOCALE) == [1]
        # every conversation was forgotten on the agent it used
        assert live._state[LOCALE].current.dialogue.conversations(LOCALE) == 0  # type: ignore[union-attr]


async def test_a_locale_never_holds_more_than_two_releases(ws: Workspace, tmp_path: Path) -> None:
    pointer = locale_root(ws.settings.models_dir, LOCALE) / CURRENT_FILE
    async with serving(ws.settings) as robot:
        live = robot.releases
        assert live is not None and robot.server is not None
        ongoing = GatedCaller(balance_call(tmp_path), gate_at=2)
        first = asyncio.create_task(ongoing.run("127.0.0.1", robot.server.port))
        await asyncio.wait_for(ongoing.at_gate.wait(), 60)
        pointer.write_text(json.dumps({"number": 2, "previous": 1}))
        await live.request_reload()
        assert live.loaded(LOCALE) == [2, 1]
        pointer.write_text(json.dumps({"number": 1, "previous": 2}))  # a third switch while 1 still drains
        reload = live.request_reload()
        await wait_for(lambda: live.status()[LOCALE]["waiting"] == 1)
        assert live.loaded(LOCALE) == [2, 1] and not reload.done()  # waits: no third release in memory
        ongoing.gate.set()
        report = await asyncio.wait_for(first, 120)
        assert (await asyncio.wait_for(reload, 60))[LOCALE] == "release 1 (was 2)"
        assert live.loaded(LOCALE) == [1]
        assert_served(report, ongoing.call)
        assert_heard_only(report, wording(ws.settings, 1), wording(ws.settings, 2))


async def test_the_keypad_menu_comes_from_the_calls_release(ws: Workspace, tmp_path: Path) -> None:
    # the working copy's menu is changed after release 1 was published: "1" is now the transactions
    keypad = ws.settings.dialogs_dir / LOCALE / "keypad.yml"
    keypad.write_text(keypad.read_text().replace('"1": ask_balance', '"1": ask_transactions')
                      .replace('"4": ask_transactions', '"4": ask_balance'))
    call = CallFile(tmp_path / "keypad.yaml", CALLER, LOCALE, (Turn("dtmf", "1"), Turn("dtmf", "7305#"),
                                                               Turn("dtmf", "0")),
                    Expectation(said=("2,500.75 USD",), outcome="transfer"), agi_params={"input": "keypad"})
    async with serving(ws.settings) as robot:
        assert robot.server is not None
        report = await ScriptedAsterisk(call, locale=LOCALE, text_mode=True).run("127.0.0.1", robot.server.port)
    assert report.failures(call) == [], report.to_json()  # "1" meant the balance, as in release 1


async def test_a_damaged_release_is_refused_and_the_server_keeps_serving_the_current_one(
    ws: Workspace, tmp_path: Path
) -> None:
    store = ws.store
    root = locale_root(ws.settings.models_dir, LOCALE)
    # release 3: release 2 with its model truncated on disk (the hashes say what it was)
    shutil.copytree(root / "2", root / "3")
    meta = json.loads((root / "3" / RELEASE_FILE).read_text())
    meta["number"] = 3
    (root / "3" / RELEASE_FILE).write_text(json.dumps(meta))
    model = root / "3" / "rasa" / LOCALE / "model.tar.gz"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    # release 4: the same truncated model, its hash rewritten to match (only Rasa's load can tell)
    shutil.copytree(root / "3", root / "4")
    meta["number"] = 4
    from ivr.releases import _sha256

    meta["files"][f"rasa/{LOCALE}/model.tar.gz"] = _sha256(root / "4" / "rasa" / LOCALE / "model.tar.gz")
    (root / "4" / RELEASE_FILE).write_text(json.dumps(meta))

    call = balance_call(tmp_path, silence=False)
    old = wording(ws.settings, 1)
    async with serving(ws.settings) as robot:
        live = robot.releases
        assert live is not None
        for number, why in ((3, "differs from what was published"), (4, "cannot load the model")):
            (root / CURRENT_FILE).write_text(json.dumps({"number": number, "previous": 1}))
            status, body = await arequest(robot.http_port, "POST", "/reload", robot.reload_token)
            assert status == 200
            assert "failed" in json.loads(body)["reload"][LOCALE]
            assert live.current_number(LOCALE) == 1 and live.loaded(LOCALE) == [1]
            _, health = await arequest(robot.http_port, "GET", "/health")
            state = json.loads(health)["releases"][LOCALE]
            assert state["current"] == 1 and state["failed_release"] == number
            assert why in state["reload_failure"], state
            report = await place(robot, call)  # still served, on release 1
            assert_served(report, call)
            assert old["utter_greet"] in robot_lines(report)
        _, metrics = await arequest(robot.http_port, "GET", "/metrics")
        assert "ivr_reload_failures_total 2.0" in metrics
        assert f'ivr_release{{locale="{LOCALE}",number="1"}} 1.0' in metrics
        assert store.current_number(LOCALE) == 4  # the pointer is ops' business; the server just refused it


async def test_reload_needs_the_token_and_sighup_reloads(ws: Workspace, tmp_path: Path) -> None:
    async with serving(ws.settings) as robot:
        live = robot.releases
        assert live is not None
        port = robot.http_port
        assert (await arequest(port, "POST", "/reload"))[0] == 401
        assert (await arequest(port, "POST", "/reload", "not-the-token"))[0] == 401
        assert (await arequest(port, "GET", "/reload", robot.reload_token))[0] == 405
        (locale_root(ws.settings.models_dir, LOCALE) / CURRENT_FILE).write_text(json.dumps({"number": 2}))
        assert live.current_number(LOCALE) == 1  # refused requests did not reload
        # SIGHUP, as `ivr serve` installs it: the signal handler calls request_reload
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, robot.request_reload)
        try:
            os.kill(os.getpid(), signal.SIGHUP)
            await wait_for(lambda: live.current_number(LOCALE) == 2, 90)
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
        status, body = await arequest(port, "POST", "/reload", robot.reload_token)
        assert status == 200 and json.loads(body)["reload"][LOCALE] == "release 2 (unchanged)"
        entry = json.loads(next(servers_dir(ws.settings.models_dir).glob("*.json")).read_text())
        assert entry["port"] == port and entry["token"] == robot.reload_token
    assert not list(servers_dir(ws.settings.models_dir).glob("*.json"))  # unregistered at stop


# ---------------------------------------------------------------- the commands
def ivr(ws: Workspace, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*IVR, *args], env=ws.env(), cwd=ws.root, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_a_dialog_that_fails_validation_is_not_published_and_the_error_names_file_and_line(ws: Workspace) -> None:
    rules = ws.settings.dialogs_dir / LOCALE / "data" / "rules.yml"
    text = rules.read_text(encoding="utf-8")
    rules.write_text(text + "\n- rule: broken\n  steps:\n  - intent: greet\n  - action: utter_no_such_thing\n",
                     encoding="utf-8")
    line = len(text.splitlines()) + 5
    before = sorted(p.name for p in locale_root(ws.settings.models_dir, LOCALE).iterdir())
    done = ivr(ws, "publish", "--locale", LOCALE, "-m", "broken")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{rules}:{line}" in done.stderr and "utter_no_such_thing" in done.stderr, done.stderr
    assert "nothing was published" in done.stderr
    assert sorted(p.name for p in locale_root(ws.settings.models_dir, LOCALE).iterdir()) == before
    assert ws.store.current_number(LOCALE) == 1


def test_two_publishes_at_once_one_wins_the_other_fails_clearly(ws: Workspace) -> None:
    # the lock held (a publish in progress): a second publish fails at once, nothing is changed
    with ws.store.lock(LOCALE, "publish"):
        done = ivr(ws, "publish", "--locale", LOCALE, "-m", "second")
    assert done.returncode == 1
    assert "another publish or rollback of en-US is running (publish by" in done.stderr, done.stderr
    assert [r.number for r in ws.store.releases(LOCALE)] == [1, 2]
    # two real publishes started together
    procs = [subprocess.Popen([*IVR, "publish", "--locale", LOCALE, "-m", f"race {i}", "--no-notify"],
                              env=ws.env(), cwd=ws.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in procs]
    assert sorted(code for code, _ in results) == [0, 1], results
    assert any("another publish or rollback" in err for code, err in results if code == 1)
    assert [r.number for r in ws.store.releases(LOCALE)] == [1, 2, 3]
    assert ws.store.current_number(LOCALE) == 3
    ws.store.verify(ws.store.get(LOCALE, 3))
    assert not list(locale_root(ws.settings.models_dir, LOCALE).glob(".staging-*"))


def test_releases_lists_them_with_the_audit_log_diff_shows_the_changes_and_rollback_is_audited(
    ws: Workspace,
) -> None:
    again = ivr(ws, "publish", "--if-none", "--locale", LOCALE)  # what `make run` does on every run
    assert again.returncode == 0 and "release 1 is current; nothing to do" in again.stdout, again.stderr
    assert [r.number for r in ws.store.releases(LOCALE)] == [1, 2]
    done = ivr(ws, "rollback", "--locale", LOCALE, "--to", "2", "-m", "try it", "--author", "dave")
    assert done.returncode == 0, done.stderr
    assert "release 2 is current again (was 1)" in done.stdout
    listing = ivr(ws, "releases", "--locale", LOCALE)
    assert listing.returncode == 0, listing.stderr
    out = listing.stdout
    assert re.search(r"\*\s+2\s+\S+\s+bob\s+new greeting", out), out
    assert re.search(r"\s1\s+\S+\s+alice\s+as shipped", out), out
    for event in ("publish   - -> 1  by alice", "publish   1 -> 2  by bob", "rollback  2 -> 1  by alice",
                  "rollback  1 -> 2  by dave"):
        assert event in out, out
    rows = ReleaseAudit(ws.settings.database_url).events(LOCALE)
    assert [(r["action"], r["from_release"], r["to_release"], r["author"]) for r in rows] == [
        ("publish", None, 1, "alice"), ("publish", 1, 2, "bob"), ("rollback", 2, 1, "alice"),
        ("rollback", 1, 2, "dave")]
    diff = ivr(ws, "releases", "diff", LOCALE, "1", "2")
    assert diff.returncode == 0, diff.stderr
    old = wording(ws.settings, 1)
    assert "wording (domain.yml responses):" in diff.stdout
    for name in CHANGED:
        assert f"  ~ {name}:\n      - {old[name]}\n      + {MARK}{old[name]}" in diff.stdout, diff.stdout
    assert "phrasings" not in diff.stdout and "flows" not in diff.stdout


def test_diff_shows_phrasings_and_flows(ws: Workspace) -> None:
    from ivr.releases import diff_dialogs

    other = ws.root / "other"
    shutil.copytree(ws.settings.dialogs_dir / LOCALE, other / LOCALE)
    nlu = other / LOCALE / "data" / "nlu.yml"
    nlu.write_text(nlu.read_text().replace("    - howdy\n", "    - howdy partner\n"))
    rules = other / LOCALE / "data" / "rules.yml"
    data = yaml.safe_load(rules.read_text())
    data["rules"][0]["steps"].append({"action": "utter_anything_else"})
    rules.write_text(yaml.safe_dump(data))
    lines = diff_dialogs(ws.settings.dialogs_dir, other, LOCALE, "a", "b")
    assert "phrasings (NLU examples):" in lines and "  greet:" in lines
    assert "      - howdy" in lines and "      + howdy partner" in lines
    assert "  ~ rule 'greet':" in lines and "      +- action: utter_anything_else" in lines, lines


def test_nothing_goes_live_unaudited(ws: Workspace, tmp_path: Path) -> None:
    broken = dataclasses.replace(ws, settings=dataclasses.replace(
        ws.settings, database_url=f"sqlite:///{tmp_path / 'no-such-folder' / 'x' / 'accounts.db'}"))
    (tmp_path / "no-such-folder").write_text("a file where the folder should be")
    for args in (("publish", "--locale", LOCALE), ("rollback", "--locale", LOCALE, "--to", "2")):
        done = ivr(broken, *args)
        assert done.returncode == 1 and re.search(r"(audit log|release archives): cannot", done.stderr), done.stderr
    assert [r.number for r in ws.store.releases(LOCALE)] == [1, 2]
    assert ws.store.current_number(LOCALE) == 1


def test_old_releases_are_pruned_but_never_the_current_or_the_previous(ws: Workspace) -> None:
    store = dataclasses.replace(ws.settings, releases_keep=2)
    releases = ReleaseStore(store)
    root = locale_root(ws.settings.models_dir, LOCALE)
    for number in (3, 4, 5):
        shutil.copytree(root / "2", root / str(number))
        meta = json.loads((root / str(number) / RELEASE_FILE).read_text())
        (root / str(number) / RELEASE_FILE).write_text(json.dumps({**meta, "number": number}))
    # current 1 (rolled back from 2): 1 and 2 are protected, 4 and 5 are the last two, 3 goes
    assert releases.prune(LOCALE) == [3]
    assert [r.number for r in releases.releases(LOCALE)] == [1, 2, 4, 5]
    assert not list(root.glob(".deleting-*"))


def test_a_half_written_release_is_invisible(ws: Workspace) -> None:
    root = locale_root(ws.settings.models_dir, LOCALE)
    staging = root / ".staging-crashed"
    shutil.copytree(root / "2", staging)
    (root / "7").mkdir()  # a folder without its release.json (the description is written last)
    assert [r.number for r in ws.store.releases(LOCALE)] == [1, 2]


def test_ivr_serve_reloads_on_sighup_and_within_seconds_of_ivr_rollback(ws: Workspace, tmp_path: Path) -> None:
    from ivr.dialogue.servers import free_ports

    agi_port, http_port = free_ports(2)
    env = ws.env()
    env.update(IVR_AGI_PORT=str(agi_port), IVR_HTTP_PORT=str(http_port))
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([*IVR, "--log-format", "json", "serve", "--text-input"], env=env, cwd=ws.root,
                              stdout=log, stderr=subprocess.STDOUT)

    def state() -> dict[str, Any]:
        try:
            return dict(json.loads(request(http_port, "GET", "/health")[1])["releases"][LOCALE])
        except (OSError, ValueError, KeyError):
            return {}

    def until(predicate: Any, timeout_s: float) -> float:
        started = time.monotonic()
        while not predicate():
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() - started < timeout_s, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.1)
        return time.monotonic() - started

    try:
        until(lambda: state().get("current") == 1, 240)
        (locale_root(ws.settings.models_dir, LOCALE) / CURRENT_FILE).write_text(json.dumps({"number": 2}))
        server.send_signal(signal.SIGHUP)
        until(lambda: state().get("current") == 2, 60)
        done = ivr(ws, "rollback", "--locale", LOCALE, "-m", "ops")  # notifies the server
        assert done.returncode == 0, done.stderr
        assert "reload done" in done.stdout, done.stdout
        until(lambda: state().get("current") == 1, 10)
        report = asyncio.run(ScriptedAsterisk(balance_call(tmp_path, silence=False), locale=LOCALE,
                                              text_mode=True).run("127.0.0.1", agi_port))
        assert report.outcome == "completed", report.to_json()
        assert wording(ws.settings, 1)["utter_greet"] in robot_lines(report)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        log.close()
