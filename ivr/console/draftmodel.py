"""The draft's own Rasa models, for the console's Try-it chats and accuracy runs.

The draft (``dialogs/<locale>/``, unpublished) is never trained into the working model folder
``models/rasa/<locale>`` that ``ivr train`` writes, ``ivr publish`` copies from and a robot with no
release serves: a chat would otherwise put an unvalidated, unpublished model where the next reload of such
a robot picks it up, and swap the working model under a publish in progress. Its models live in the
console's folder instead, one per content fingerprint of its training files (``ivr train``'s fingerprint:
domain, config, ``data/``, the Rasa version), so an unchanged draft is never trained twice::

    <console_dir>/draft-models/<locale>/<fingerprint[:20]>/
        rasa/<locale>/model.tar.gz    the model (the folder is a models folder for RasaEngine)
        dialogs/<locale>/...          the files it was trained from (a snapshot taken before training)
        draft.json                    fingerprint, how it was made (trained, or a release's model reused)
        in-use.lock                   held shared by every chat and accuracy run using the model
    <console_dir>/draft-models/<locale>/trainings.log   one line per training (time, fingerprint, seconds)
    <console_dir>/draft-models/rasa/.train.lock         one draft training at a time on this console

A model is trained in a hidden staging folder from a snapshot of the draft and renamed into place whole,
under the console's training lock: two chats of the same draft starting at once train it once (the second
waits, then finds it), and a model folder is either complete or absent. A release with the same
fingerprint lends its model (checked against the hash it was published with) instead of a training. The
newest ``KEEP`` models of a locale are kept; an older one is removed unless a chat or an accuracy run holds
it (its ``in-use.lock``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ivr.config import Settings

log = logging.getLogger(__name__)

ROOT = "draft-models"
KEEP = 3  # models kept per locale (each ~0.1-1 MB; the newest, by last use)
KEY_CHARS = 20  # of the fingerprint, as the folder name
INFO_FILE = "draft.json"
IN_USE_FILE = "in-use.lock"
LOG_FILE = "trainings.log"


@dataclass
class DraftModel:
    """A model of the draft, held (shared lock) until ``release()``; ``models_dir`` is for RasaEngine."""

    locale: str
    fingerprint: str
    folder: Path
    how: str  # "up to date", "trained in 6 s", "release 3's model"
    trained: bool
    seconds: float = 0.0
    _handle: IO[str] | None = field(default=None, repr=False)

    @property
    def models_dir(self) -> Path:
        return self.folder

    @property
    def model(self) -> Path:
        return self.folder / "rasa" / self.locale / "model.tar.gz"

    def release(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> DraftModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def draft_root(settings: Settings) -> Path:
    return settings.console_dir / ROOT


def locale_root(settings: Settings, locale: str) -> Path:
    return draft_root(settings) / locale


def _ready(folder: Path, locale: str, print_: str) -> bool:
    try:
        info = json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return info.get("fingerprint") == print_ and (folder / "rasa" / locale / "model.tar.gz").is_file()


def _hold(folder: Path, locale: str, print_: str, how: str, trained: bool, seconds: float) -> DraftModel | None:
    """The model in ``folder`` held in use, or None when it is not (or no longer) there."""
    try:
        handle = (folder / IN_USE_FILE).open("r", encoding="utf-8")
    except FileNotFoundError:
        return None
    fcntl.flock(handle, fcntl.LOCK_SH)
    if not _ready(folder, locale, print_):  # removed by a prune between the open and the lock
        handle.close()
        return None
    os.utime(folder / INFO_FILE)  # its last use: what pruning goes by
    return DraftModel(locale, print_, folder, how, trained, seconds, handle)


def draft_model(settings: Settings, locale: str, *, keep: int = KEEP,
                say: Callable[[str], None] = lambda _line: None) -> DraftModel:
    """The model of the draft of ``locale`` as it is now: the one already made for these files, else one
    trained (or lent by a release) now. Held in use until ``release()``. Raises ``TrainingError``."""
    from ivr.dialogue.train import fingerprint, training_lock

    root = locale_root(settings, locale)
    print_ = fingerprint(settings.dialogs_dir, locale)
    held = _hold(root / print_[:KEY_CHARS], locale, print_, "up to date", False, 0.0)
    if held is not None:
        return held
    say(f"{locale}: no model of the draft as it is yet: making one (a training takes ~10-30 s)")
    with training_lock(draft_root(settings)):  # ivr train's lock, on the drafts' folder
        root.mkdir(parents=True, exist_ok=True)
        for stale in [*root.glob(".staging-*"), *root.glob(".deleting-*")]:  # a crashed run's (none runs now)
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
        try:
            shutil.copytree(settings.dialogs_dir / locale, staging / "dialogs" / locale, symlinks=False)
            print_ = fingerprint(staging / "dialogs", locale)  # what is trained now (the draft may have moved on)
            folder = root / print_[:KEY_CHARS]
            held = _hold(folder, locale, print_, "up to date", False, 0.0)  # made while this one waited
            if held is not None:
                return held
            how, trained, seconds = _make(settings, locale, staging, print_)
            if trained:
                with (root / LOG_FILE).open("a", encoding="utf-8") as out:
                    out.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {print_} "
                              f"trained in {seconds:.1f} s by pid {os.getpid()}\n")
            (staging / IN_USE_FILE).touch()
            (staging / INFO_FILE).write_text(json.dumps({
                "locale": locale, "fingerprint": print_, "made": how, "seconds": round(seconds, 1),
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1) + "\n", encoding="utf-8")
            try:
                os.rename(staging, folder)  # complete or absent, never half-written
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                log.warning("%s: a draft model for %s appeared meanwhile; this one is dropped", locale, folder.name)
            else:
                staging = folder
            held = _hold(folder, locale, print_, how, trained, seconds)
            if held is None:
                raise OSError(f"{folder}: the draft's model vanished right after it was made")
        finally:
            if staging.name.startswith(".staging-"):
                shutil.rmtree(staging, ignore_errors=True)
        prune(settings, locale, keep)
    return held


def _make(settings: Settings, locale: str, staging: Path, print_: str) -> tuple[str, bool, float]:
    """The model for the snapshot in ``staging``: a release's with the same fingerprint, else trained."""
    from ivr.dialogue.train import train_model
    from ivr.releases import ReleaseError, ReleaseStore

    target = staging / "rasa" / locale / "model.tar.gz"
    target.parent.mkdir(parents=True)
    store = ReleaseStore(settings)
    for release in reversed(store.releases(locale)):
        if release.fingerprint != print_:
            continue
        try:
            store.verify(release)
        except ReleaseError as exc:
            log.warning("%s: not reusing release %d's model: %s", locale, release.number, exc)
            continue
        shutil.copyfile(release.model, target)
        return f"release {release.number}'s model (the same files)", False, 0.0
    started = time.monotonic()
    # Rasa's state (its training cache) is shared by the drafts of this console, never the working folder's.
    train_model(staging / "dialogs", draft_root(settings), locale, target)
    seconds = time.monotonic() - started
    return f"trained in {seconds:.0f} s", True, seconds


def prune(settings: Settings, locale: str, keep: int = KEEP) -> list[str]:
    """Remove the locale's draft models but the ``keep`` newest (by last use) and those in use."""
    root = locale_root(settings, locale)
    folders = [f for f in root.iterdir() if f.is_dir() and not f.name.startswith(".")] if root.is_dir() else []

    def last_use(folder: Path) -> float:
        try:
            return (folder / INFO_FILE).stat().st_mtime
        except OSError:
            return 0.0

    gone = []
    for folder in sorted(folders, key=last_use, reverse=True)[max(0, keep):]:
        try:
            handle = (folder / IN_USE_FILE).open("r", encoding="utf-8")
        except FileNotFoundError:
            handle = None
        try:
            if handle is not None:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # a chat or an accuracy run uses it
            doomed = folder.with_name(f".deleting-{folder.name}")
            os.rename(folder, doomed)  # gone at once for anyone looking it up
            shutil.rmtree(doomed, ignore_errors=True)
            gone.append(folder.name)
        finally:
            if handle is not None:
                handle.close()
    return gone
