"""``ivr train``: one Rasa model per locale, in ``models/rasa/<locale>/model.tar.gz``.

A fingerprint of the locale's training files (domain, config, ``data/``) and of the Rasa version is
stored next to the model; unchanged data skips training. Test stories and held-out phrasings are not
training data and do not count. Trainings are serialised by a lock file, so two processes (the test
suite, ``ivr train``) never train at once on this small machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ivr.config import LOCALES

log = logging.getLogger(__name__)

MODEL_FILE = "model.tar.gz"
FINGERPRINT_FILE = "fingerprint.json"


class TrainingError(RuntimeError):
    """A locale's project could not be trained; the message names the folder."""


@dataclass(frozen=True)
class TrainResult:
    locale: str
    model: Path
    trained: bool  # False: the data was unchanged and the existing model was kept
    seconds: float


def project_dir(dialogs_dir: Path, locale: str) -> Path:
    return dialogs_dir / locale


def model_dir(models_dir: Path, locale: str) -> Path:
    return models_dir / "rasa" / locale


def model_path(models_dir: Path, locale: str) -> Path:
    """Where the locale's trained model is (or will be)."""
    return model_dir(models_dir, locale) / MODEL_FILE


def training_files(dialogs_dir: Path, locale: str) -> list[Path]:
    """The files a model is trained from: ``domain.yml``, ``config.yml`` and everything under ``data/``."""
    project = project_dir(dialogs_dir, locale)
    files = [project / "domain.yml", project / "config.yml"]
    for path in files:
        if not path.is_file():
            raise TrainingError(f"{path}: missing (every locale needs domain.yml, config.yml and data/)")
    data = project / "data"
    if not data.is_dir():
        raise TrainingError(f"{data}: missing (every locale needs domain.yml, config.yml and data/)")
    files += sorted(p for p in data.rglob("*") if p.is_file() and p.suffix in (".yml", ".yaml"))
    return files


def fingerprint(dialogs_dir: Path, locale: str) -> str:
    """A hash of the locale's training files (names and contents) and of the Rasa version."""
    from importlib.metadata import version

    digest = hashlib.sha256()
    digest.update(f"rasa {version('rasa')}\n".encode())
    project = project_dir(dialogs_dir, locale)
    for path in training_files(dialogs_dir, locale):
        digest.update(str(path.relative_to(project)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def stored_fingerprint(models_dir: Path, locale: str) -> str | None:
    path = model_dir(models_dir, locale) / FINGERPRINT_FILE
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_current(dialogs_dir: Path, models_dir: Path, locale: str) -> bool:
    """True when the locale's model exists and was trained from the present files."""
    return model_path(models_dir, locale).is_file() and stored_fingerprint(models_dir, locale) == fingerprint(
        dialogs_dir, locale
    )


@contextlib.contextmanager
def training_lock(models_dir: Path) -> Iterator[None]:
    """One training at a time on this machine (per models folder); waits for the other one."""
    lock_path = models_dir / "rasa" / ".train.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def train_locale(dialogs_dir: Path, models_dir: Path, locale: str, *, force: bool = False) -> TrainResult:
    """Train the locale's model unless its training files are unchanged (or ``force``)."""
    if locale not in LOCALES:
        raise TrainingError(f"unknown locale {locale!r} (known: {', '.join(LOCALES)})")
    target = model_path(models_dir, locale)
    started = time.monotonic()
    with training_lock(models_dir):
        # Checked under the lock: another process may just have trained it.
        print_ = fingerprint(dialogs_dir, locale)
        if not force and target.is_file() and stored_fingerprint(models_dir, locale) == print_:
            log.info("model for %s is up to date", locale)
            return TrainResult(locale, target, False, 0.0)
        train_model(dialogs_dir, models_dir, locale, target)
        (target.parent / FINGERPRINT_FILE).write_text(
            json.dumps({"fingerprint": print_, "locale": locale}, indent=1) + "\n", encoding="utf-8"
        )
    seconds = time.monotonic() - started
    log.info("trained the %s model in %.1f s", locale, seconds)
    return TrainResult(locale, target, True, seconds)


def train_model(dialogs_dir: Path, models_dir: Path, locale: str, target: Path) -> None:
    """Train ``dialogs_dir/<locale>`` into the file ``target`` (always: no fingerprint check, no lock).
    ``models_dir`` is where Rasa keeps its state (cache, global config). The model is written beside
    ``target`` and renamed over it: a reader never sees a half-written file."""
    from ivr.dialogue import prepare_rasa

    prepare_rasa(models_dir)
    from rasa.model_training import train

    project = project_dir(dialogs_dir, locale)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".training-", dir=target.parent))
    try:
        try:
            result = train(
                domain=str(project / "domain.yml"),
                config=str(project / "config.yml"),
                training_files=[str(project / "data")],
                output=str(scratch),
                force_training=True,
                fixed_model_name="model",
            )
        except SystemExit as exc:  # Rasa exits on invalid data instead of raising
            raise TrainingError(f"{project}: Rasa could not train this project (exit {exc.code})") from exc
        except Exception as exc:
            raise TrainingError(f"{project}: training failed: {exc}") from exc
        if result.code != 0 or not result.model:
            raise TrainingError(f"{project}: training failed (Rasa code {result.code})")
        # Swap in atomically: a server loading the model never sees a half-written file.
        os.replace(result.model, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def train_locales(
    dialogs_dir: Path, models_dir: Path, locales: Sequence[str] | None = None, *, force: bool = False
) -> list[TrainResult]:
    """Train each locale in turn (never two at once)."""
    return [train_locale(dialogs_dir, models_dir, loc, force=force) for loc in (locales or LOCALES)]
