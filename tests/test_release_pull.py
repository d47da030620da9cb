"""A release published once reaches every pod, also a pod with its own models folder (issue #16), on real
parts: a private PostgreSQL (tests/services.py) as the shared account database, two models folders (pod A
publishes, pod B serves), trained Rasa models, the in-process ``ivr serve`` (releases, /reload, /health)
of pod B with its release pull on (``IVR_RELEASE_PULL_S``, default), calls over FastAGI in text mode.

Pod B starts with an empty models folder. Training: release 2 only (release 1 reuses the repository's
trained model, release 3 release 2's).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from ivr.app import Robot, build_robot
from ivr.config import PROJECT_ROOT, Settings
from ivr.dialogue.prompts import PromptBook
from ivr.dialogue.train import training_lock
from ivr.releases import (
    RELEASE_FILE,
    ReleaseAudit,
    ReleaseError,
    ReleaseStore,
    locale_root,
    pack_release,
)
from ivr.testing.callfile import CallFile, Expectation, Turn
from ivr.testing.harness import ScriptedAsterisk
from tests.services import postgres_server

from .test_releases import arequest, robot_lines

LOCALE = "en-US"
CALLER = "15550000002"  # demo customer
MARK = "[from pod A] "
REPO_MODELS = PROJECT_ROOT / "models"


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    from ivr.accounts.store import SqlAccountStore

    with postgres_server() as server:
        store = SqlAccountStore(server.url)
        try:
            store.init_schema()  # the migrations, release_archives included
            store.import_file(PROJECT_ROOT / "ivr" / "accounts" / "demo.yaml")
        finally:
            store.close()
        yield server.url


def pod_settings(base: Settings, root: Path, url: str) -> Settings:
    shutil.copytree(PROJECT_ROOT / "dialogs", root / "dialogs", ignore=shutil.ignore_patterns("server"))
    (root / "models").mkdir(parents=True)
    return dataclasses.replace(base, dialogs_dir=root / "dialogs", models_dir=root / "models", database_url=url,
                               releases_keep=10, http_port=0)


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[Robot]:
    """Pod B's ``ivr serve`` in-process, in the order ``serve_robot`` runs it: one pull, load, listen (HTTP
    port registered for /reload), then the pull every ``release_pull_s``."""
    robot = build_robot(settings, text_input=True, releases=True)
    await robot.pull_releases_once()
    await robot.warm_up()
    await robot.start("127.0.0.1", 0, http=True)
    robot.start_pulling()
    try:
        yield robot
    finally:
        await robot.stop(grace_s=5)


def goodbye_call(tmp: Path) -> CallFile:
    return CallFile(tmp / "bye.yaml", CALLER, LOCALE, (Turn("say", "no thanks, goodbye"),), Expectation())


async def greeting_heard(port: int, tmp: Path) -> list[str]:
    report = await ScriptedAsterisk(goodbye_call(tmp), locale=LOCALE, text_mode=True).run("127.0.0.1", port)
    return robot_lines(report)


def greeting(settings: Settings, number: int) -> str:
    return PromptBook(ReleaseStore(settings).get(LOCALE, number).dialogs_dir).text("utter_greet", LOCALE)


async def health(port: int) -> dict[str, Any]:
    return dict(json.loads((await arequest(port, "GET", "/health"))[1]))


async def until(port: int, predicate: Any, what: str, timeout_s: float = 180) -> float:
    """Poll pod B's /health until ``predicate(document)``; the seconds it took (reported, not asserted)."""
    started = time.monotonic()
    while True:
        document = await health(port)
        if predicate(document):
            return time.monotonic() - started
        assert time.monotonic() - started < timeout_s, f"pod B: not within {timeout_s:.0f} s: {what}: {document}"
        await asyncio.sleep(0.2)


def served(document: dict[str, Any]) -> int | None:
    return document["releases"][LOCALE]["current"]  # type: ignore[no-any-return]


async def test_a_release_published_in_pod_a_reaches_pod_b_rollback_too_and_a_damaged_archive_is_refused(
        base_settings: Settings, database: str, tmp_path: Path) -> None:
    a = pod_settings(base_settings, tmp_path / "a", database)
    shutil.copytree(REPO_MODELS / "rasa" / LOCALE, a.models_dir / "rasa" / LOCALE)  # release 1 reuses it
    b = pod_settings(base_settings, tmp_path / "b", database)  # nothing published or trained here
    assert b.release_pull_s == 5.0  # the default
    store_a = ReleaseStore(a)
    audit = ReleaseAudit(database)

    def publish(message: str) -> int:
        with training_lock(REPO_MODELS):  # one training at a time on this machine
            return store_a.publish(LOCALE, author="alice", message=message, audit=audit).number

    try:
        assert await asyncio.to_thread(publish, "as shipped") == 1
        async with serving(b) as robot:
            port = robot.http_port
            # a pod that starts with an empty models folder pulls the current release before loading
            assert served(await health(port)) == 1

            # pod A publishes a new greeting: pod B serves it, a call on B hears it
            domain = a.dialogs_dir / LOCALE / "domain.yml"
            anchor = '\n  utter_greet:\n    - text: "'
            assert domain.read_text().count(anchor) == 1
            domain.write_text(domain.read_text().replace(anchor, anchor + MARK))
            assert await asyncio.to_thread(publish, "new greeting") == 2
            seconds = await until(port, lambda d: served(d) == 2, "serving release 2")
            print(f"pod B served release 2 {seconds:.1f} s after the publish in pod A")
            new, old = greeting(a, 2), greeting(a, 1)
            assert new.startswith(MARK) and greeting(b, 2) == new
            lines = await greeting_heard(robot.server.port, tmp_path)  # type: ignore[union-attr]
            assert new in lines and old not in lines, lines

            # pod A rolls back: pod B goes back
            await asyncio.to_thread(store_a.rollback, LOCALE, author="alice", to=1, audit=audit)
            seconds = await until(port, lambda d: served(d) == 1, "back on release 1")
            print(f"pod B back on release 1 {seconds:.1f} s after the rollback in pod A")
            lines = await greeting_heard(robot.server.port, tmp_path)  # type: ignore[union-attr]
            assert old in lines and new not in lines, lines

            # release 3's archive is damaged in the database before pod B sees it: refused, B keeps release 1
            with ReleaseStore(b).lock(LOCALE, "hold pod B's pull"):  # its pull skips this locale meanwhile
                assert await asyncio.to_thread(publish, "release 2's files again") == 3
                await asyncio.to_thread(damage_archive, database, 3)
            await until(port, lambda d: d["release_pull"]["failures"] >= 1, "release 3 refused")
            document = await health(port)
            assert document["release_pull"]["failures"] == 1, document
            assert "release 3 refused" in document["release_pull"]["last_failure"], document
            assert "damaged" in document["release_pull"]["last_failure"], document
            assert served(document) == 1 and ReleaseStore(b).current_number(LOCALE) == 1, document
            assert not (locale_root(b.models_dir, LOCALE) / "3").exists()
            assert not list(locale_root(b.models_dir, LOCALE).glob(".staging-*"))
            metrics = (await arequest(port, "GET", "/metrics"))[1]
            assert "ivr_release_pull_failures_total 1.0" in metrics
            lines = await greeting_heard(robot.server.port, tmp_path)  # type: ignore[union-attr]
            assert old in lines and new not in lines, lines
    finally:
        audit.close()


def damage_archive(url: str, number: int) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url, future=True)
    try:
        with engine.begin() as conn:
            data = bytearray(conn.execute(sa.text(
                "SELECT archive FROM release_archives WHERE locale = :l AND number = :n"),
                {"l": LOCALE, "n": number}).scalar_one())
            # one byte changed, the sha256 of the publish kept: a byte of the gzip header's time stamp, which
            # neither gzip nor tar checks (the archive unpacks and its files match release.json): only the
            # sha256 taken at publish tells
            data[4] ^= 0xFF
            conn.execute(sa.text("UPDATE release_archives SET archive = :a WHERE locale = :l AND number = :n"),
                         {"a": bytes(data), "l": LOCALE, "n": number})
    finally:
        engine.dispose()


# ---------------------------------------------------------------- the archives' life (no training, SQLite)
def fake_release(models_dir: Path, number: int) -> None:
    folder = locale_root(models_dir, LOCALE) / str(number)
    (folder / "dialogs" / LOCALE).mkdir(parents=True)
    (folder / "dialogs" / LOCALE / "domain.yml").write_text(f"release {number}\n")
    files = {f"dialogs/{LOCALE}/domain.yml": hashlib.sha256(f"release {number}\n".encode()).hexdigest()}
    (folder / RELEASE_FILE).write_text(json.dumps({
        "locale": LOCALE, "number": number, "created": "2026-12-03T00:00:00+00:00", "author": "t", "message": "",
        "fingerprint": "x", "files": files}))


def test_pruning_a_release_removes_its_archive_and_a_rollback_archives_a_release_that_has_none(
        base_settings: Settings, tmp_path: Path) -> None:
    settings = dataclasses.replace(base_settings, models_dir=tmp_path / "models", releases_keep=2,
                                   database_url=f"sqlite:///{tmp_path / 'accounts.db'}")
    store, audit = ReleaseStore(settings), ReleaseAudit(settings.database_url)
    try:
        for number in (1, 2, 3, 4):
            fake_release(settings.models_dir, number)
            audit.store_archive(LOCALE, number, pack_release(locale_root(settings.models_dir, LOCALE) / str(number)))
        with pytest.raises(ReleaseError, match="already in the account database"):  # a number is stored once
            audit.store_archive(LOCALE, 4, b"other")
        (locale_root(settings.models_dir, LOCALE) / "current.json").write_text('{"number": 4, "previous": 3}')
        assert store.prune(LOCALE, audit) == [1, 2]
        assert [n for n in (1, 2, 3, 4) if audit.has_archive(LOCALE, n)] == [3, 4]
        audit.delete_archives(LOCALE, [3])
        store.rollback(LOCALE, author="t", to=3, audit=audit)
        assert audit.has_archive(LOCALE, 3)
        latest = audit.latest(LOCALE)
        assert latest is not None and latest[1] == 3
    finally:
        audit.close()
