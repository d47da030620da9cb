"""A release published once reaches every pod: each pod pulls it from the account database (issue #16).

``ivr publish`` stores each release folder as one archive in the account database (``release_archives``)
and records the event (``release_events``). Every ``release_pull_s`` seconds (``IVR_RELEASE_PULL_S``; 0:
off) a ``ReleasePuller`` reads, per locale, the release the latest publish or rollback made current. When
it is not this models folder's current one, ``ReleaseStore.pull`` makes it current here (fetching and
checking its archive when the folder is missing) and the servers registered in this models folder are
told to reload, the way ``ivr publish`` tells them (``notify_servers``): their reload checks the files'
hashes and loads the Rasa model before switching, as for a local publish.

One puller per models folder: ``ivr serve`` runs one; in a pod (``ivr serve --workers N``) worker 0 runs
it for the whole pod (the workers share the supervisor's models folder, and the supervisor itself stays
single-threaded, without an event loop or database connections, so that it can fork at any time).

A release that is refused (no archive, a damaged archive, a damaged release) is logged once, counted
(``ivr_release_pull_failures``), shown on ``/health`` (``release_pull``) and not tried again until
another publish or rollback is recorded; the servers keep serving what they have.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from ivr.config import LOCALES, Settings
from ivr.releases import PublishBusy, ReleaseAudit, ReleaseError, ReleaseStore, notify_servers

log = logging.getLogger(__name__)


class ReleasePuller:
    """Brings one models folder to the releases the account database names as current (blocking calls:
    run them off the event loop)."""

    def __init__(self, settings: Settings, locales: Sequence[str] | None = None) -> None:
        self.settings = settings
        self.store = ReleaseStore(settings)
        self.audit = ReleaseAudit(settings.database_url)
        self.locales = tuple(locales or LOCALES)
        self.pulled = 0  # releases made current here
        self.failures = 0  # releases refused
        self.last_failure = ""
        self.last_pull_at = 0.0  # time.time() of the last round that read the database
        self._refused: dict[str, tuple[int, int]] = {}  # locale -> (event id, release) refused
        self._database_down = False

    def pull_once(self) -> list[str]:
        """One round; the locales whose current release changed here."""
        changed: list[str] = []
        for locale in self.locales:
            try:
                latest = self.audit.latest(locale)
            except ReleaseError as exc:
                if not self._database_down:
                    log.warning("release pull: cannot read the account database (tried again every %.0f s): %s",
                                self.settings.release_pull_s, exc)
                self._database_down = True
                return changed
            if self._database_down:
                log.info("release pull: the account database answers again")
                self._database_down = False
            if latest is None or self._refused.get(locale) == latest:
                continue
            number = latest[1]
            try:
                local = self.store.current_number(locale)
                if local == number:
                    continue
                started = time.monotonic()
                if self.store.pull(locale, number, self.audit):
                    self.pulled += 1
                    changed.append(locale)
                    log.info("release pull: %s: release %d is current in %s now (was %d; from the account "
                             "database in %.1f s)", locale, number, self.store.models_dir, local,
                             time.monotonic() - started)
            except PublishBusy:  # a publish, rollback or pull of this folder runs: the next round
                continue
            except ReleaseError as exc:
                self._refused[locale] = latest
                self.failures += 1
                self.last_failure = f"{locale}: release {number} refused: {exc}"
                log.error("release pull: %s: release %d NOT taken, this pod keeps its release: %s", locale,
                          number, exc)
        self.last_pull_at = time.time()
        return changed

    def status(self) -> dict[str, Any]:
        """For ``/health``."""
        return {"every_s": self.settings.release_pull_s, "pulled": self.pulled, "failures": self.failures,
                "last_failure": self.last_failure, "database_answers": not self._database_down,
                "last_pull_at": round(self.last_pull_at, 1)}

    def close(self) -> None:
        self.audit.close()


async def pull_round(puller: ReleasePuller, metrics: Any = None) -> list[str]:
    """One round off the event loop (refusals counted in ``metrics``); the locales that changed."""
    failures = puller.failures
    try:
        changed = await asyncio.to_thread(puller.pull_once)
    except Exception:  # never expected: the next round comes (a pull that cannot run is no reason to stop)
        log.exception("release pull: the round failed")
        changed = []
    if metrics is not None and puller.failures > failures:
        metrics.release_pull_failures.inc(puller.failures - failures)
    return changed


async def pull_releases(puller: ReleasePuller, metrics: Any = None) -> None:
    """Every ``release_pull_s``: one round; then the servers of this models folder (this one included)
    reload. Runs until cancelled."""
    every = puller.settings.release_pull_s
    log.info("release pull: every %.0f s from the account database into %s", every, puller.store.models_dir)
    try:
        while True:
            changed = await pull_round(puller, metrics)
            if changed:
                for line in await asyncio.to_thread(notify_servers, puller.store.models_dir):
                    log.info("release pull: %s", line)
            await asyncio.sleep(every)
    except asyncio.CancelledError:
        log.info("release pull: stopped")
        raise
