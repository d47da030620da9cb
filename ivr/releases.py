"""Releases: numbered, immutable snapshots of one locale's dialog, published by ops and served live.

Layout (under ``settings.models_dir``, never committed)::

    releases/<locale>/<N>/release.json          number, time, author, message, fingerprint, file hashes
    releases/<locale>/<N>/dialogs/<locale>/...  the dialog files as validated (domain, config, data/, keypad.yml, ...)
    releases/<locale>/<N>/rasa/<locale>/model.tar.gz   its trained Rasa model (so the folder is a models_dir)
    releases/<locale>/<N>/grammars.json         the recognizer's phrase lists per dialogue state
    releases/<locale>/<N>/prompts.json          the fixed prompts, response -> pre-rendered WAV names
    releases/<locale>/current.json              {"number": N, "previous": M}: the release new calls get
    releases/<locale>/.lock                      held by a publish or a rollback (one at a time per locale)
    releases/.servers/<pid>-<port>.json          running servers to notify (HTTP port and reload token)

A release is built in a hidden staging folder and renamed into place (a half-written release is never
visible); ``current.json`` is replaced atomically. Every publish and rollback is written to the
``release_events`` table of the account database (who, when, what, from which release to which), and
the release folder itself, as one archive, to ``release_archives`` (locale, number, sha256, size, bytes):
a pod with its own models folder pulls from there the release the latest event made current
(``ReleaseStore.pull``, polled by ivr.releases_pull every ``release_pull_s``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import difflib
import errno
import fcntl
import getpass
import hashlib
import io
import json
import logging
import os
import shutil
import socket
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from ivr.config import LOCALES, Settings

log = logging.getLogger(__name__)

RELEASE_FILE = "release.json"
CURRENT_FILE = "current.json"
GRAMMARS_FILE = "grammars.json"
PROMPTS_FILE = "prompts.json"
SERVERS_DIR = ".servers"
NOTIFY_TIMEOUT_S = 3.0


class ReleaseError(RuntimeError):
    """A release cannot be published, found, verified or made current; the message says why."""


class PublishBusy(ReleaseError):
    """Another publish or rollback of the same locale holds the lock."""


class InvalidDialog(ReleaseError):
    """The dialog fails ``ivr dialogs validate``; ``problems`` are its errors (file and line)."""

    def __init__(self, message: str, problems: Sequence[str]) -> None:
        super().__init__(message)
        self.problems = list(problems)


@dataclass(frozen=True)
class Release:
    locale: str
    number: int
    folder: Path
    created: str  # ISO 8601, UTC
    author: str
    message: str
    fingerprint: str
    files: Mapping[str, str]  # path relative to the folder -> sha256

    @property
    def dialogs_dir(self) -> Path:
        """A dialogs folder holding this release's ``<locale>/`` (what PromptBook and the grammars read)."""
        return self.folder / "dialogs"

    @property
    def models_dir(self) -> Path:
        """A models folder holding this release's ``rasa/<locale>/model.tar.gz`` (what RasaEngine reads)."""
        return self.folder

    @property
    def model(self) -> Path:
        return self.folder / "rasa" / self.locale / "model.tar.gz"


def releases_root(models_dir: Path) -> Path:
    return models_dir / "releases"


def locale_root(models_dir: Path, locale: str) -> Path:
    return releases_root(models_dir) / locale


def default_author() -> str:
    """Who runs the command: the sudo caller if any, else the login name."""
    try:
        return os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, ensure_ascii=False, indent=1, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _check_locale(locale: str) -> None:
    if locale not in LOCALES:
        raise ReleaseError(f"unknown locale {locale!r} (known: {', '.join(LOCALES)})")


# ---------------------------------------------------------------- the audit log (account database)
class ReleaseAudit:
    """The releases' side of the account database: ``release_events`` (one row per publish and rollback)
    and ``release_archives`` (each published release folder as one archive, for the pods that pull)."""

    def __init__(self, database_url: str) -> None:
        import sqlalchemy as sa

        self._sa = sa
        self._metadata = sa.MetaData()
        self._table = sa.Table(
            "release_events",
            self._metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("at", sa.String(32), nullable=False),
            sa.Column("locale", sa.String(16), nullable=False, index=True),
            sa.Column("action", sa.String(16), nullable=False),  # publish | rollback
            sa.Column("from_release", sa.Integer, nullable=True),
            sa.Column("to_release", sa.Integer, nullable=False),
            sa.Column("author", sa.String(128), nullable=False),
            sa.Column("host", sa.String(128), nullable=False),
            sa.Column("message", sa.Text, nullable=False),
        )
        # created by the migration 0004 too (ivr/accounts/migrations), only where missing
        self._archives = sa.Table(
            "release_archives",
            self._metadata,
            sa.Column("locale", sa.String(16), primary_key=True),
            sa.Column("number", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("sha256", sa.String(64), nullable=False),
            sa.Column("size", sa.Integer, nullable=False),
            sa.Column("at", sa.String(32), nullable=False),
            sa.Column("archive", sa.LargeBinary, nullable=False),
        )
        self._tables_seen = False
        try:
            self._engine = sa.create_engine(database_url, future=True, pool_pre_ping=True)
        except Exception as exc:
            raise ReleaseError(f"audit log: cannot use the account database: {type(exc).__name__}") from None

    def prepare(self) -> None:
        """Create the tables if missing: a publish checks the database before its long work."""
        try:
            self._metadata.create_all(self._engine, checkfirst=True)
        except self._sa.exc.SQLAlchemyError as exc:
            raise ReleaseError(f"audit log: cannot use the account database: {type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:200]}") from exc

    def _failed(self, what: str, exc: Exception) -> ReleaseError:
        return ReleaseError(f"release archives: cannot {what} the account database: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200]}")

    # -- the archives
    def store_archive(self, locale: str, number: int, data: bytes) -> str:
        """Store release ``number``'s archive; its sha256. A release number is stored once: a second one
        (another publisher took the same number at the same time) fails and changes nothing."""
        sa = self._sa
        digest = hashlib.sha256(data).hexdigest()
        try:
            self._metadata.create_all(self._engine, checkfirst=True)
            with self._engine.begin() as conn:
                conn.execute(self._archives.insert().values(locale=locale, number=number, sha256=digest,
                                                            size=len(data), at=_now_iso(), archive=data))
        except sa.exc.IntegrityError:
            raise ReleaseError(f"{locale}: release {number} is already in the account database (published "
                               "from another models folder at the same time?); nothing was changed, publish "
                               "again") from None
        except sa.exc.SQLAlchemyError as exc:
            raise self._failed("write to", exc) from exc
        return digest

    def _first_row(self, query: Any) -> Any:
        """The first row ``query`` reads, or None (also when nobody published to this database yet)."""
        try:
            if not self._has_tables():
                return None
            with self._engine.connect() as conn:
                return conn.execute(query).first()
        except self._sa.exc.SQLAlchemyError as exc:
            raise self._failed("read", exc) from exc

    def has_archive(self, locale: str, number: int) -> bool:
        t = self._archives
        return self._first_row(self._sa.select(t.c.number).where(t.c.locale == locale, t.c.number == number)) is not None

    def fetch_archive(self, locale: str, number: int) -> tuple[str, bytes] | None:
        """(sha256 stored at publish, the archive's bytes), or None when the database has none."""
        t = self._archives
        row = self._first_row(self._sa.select(t.c.sha256, t.c.archive).where(t.c.locale == locale, t.c.number == number))
        return None if row is None else (str(row[0]), bytes(row[1]))

    def delete_archives(self, locale: str, numbers: Sequence[int]) -> None:
        t = self._archives
        if not numbers:
            return
        try:
            if not self._has_tables():
                return
            with self._engine.begin() as conn:
                conn.execute(t.delete().where(t.c.locale == locale, t.c.number.in_(list(numbers))))
        except self._sa.exc.SQLAlchemyError as exc:
            raise self._failed("delete from", exc) from exc

    def latest(self, locale: str) -> tuple[int, int] | None:
        """(event id, release number) of the locale's latest publish or rollback: the release that is
        current for every pod; None when none was recorded."""
        t = self._table
        row = self._first_row(self._sa.select(t.c.id, t.c.to_release).where(
            t.c.locale == locale, t.c.action.in_(("publish", "rollback"))).order_by(t.c.id.desc()).limit(1))
        return None if row is None else (int(row[0]), int(row[1]))

    def highest_number(self, locale: str) -> int:
        """The highest release number of the locale any publisher recorded (0: none)."""
        sa = self._sa
        try:
            if not self._has_tables():
                return 0
            with self._engine.connect() as conn:
                events = conn.execute(sa.select(sa.func.max(self._table.c.to_release)).where(
                    self._table.c.locale == locale)).scalar()
                archives = conn.execute(sa.select(sa.func.max(self._archives.c.number)).where(
                    self._archives.c.locale == locale)).scalar()
        except sa.exc.SQLAlchemyError as exc:
            raise self._failed("read", exc) from exc
        return max(int(events or 0), int(archives or 0))

    def _has_tables(self) -> bool:
        """Both tables exist (asked until they do: a database nobody published to has neither)."""
        if not self._tables_seen:
            inspector = self._sa.inspect(self._engine)
            self._tables_seen = inspector.has_table("release_events") and inspector.has_table("release_archives")
        return self._tables_seen

    def record(self, locale: str, action: str, from_release: int | None, to_release: int, author: str,
               message: str) -> None:
        try:
            self._metadata.create_all(self._engine, checkfirst=True)
            with self._engine.begin() as conn:
                conn.execute(self._table.insert().values(
                    at=_now_iso(), locale=locale, action=action, from_release=from_release or None,
                    to_release=to_release, author=author[:128], host=socket.gethostname()[:128],
                    message=message))
        except self._sa.exc.SQLAlchemyError as exc:
            raise ReleaseError(f"audit log: cannot write to the account database: {type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:200]}") from exc

    def events(self, locale: str | None = None) -> list[dict[str, Any]]:
        sa = self._sa
        try:
            if not sa.inspect(self._engine).has_table("release_events"):
                return []
            query = sa.select(self._table).order_by(self._table.c.id)
            if locale:
                query = query.where(self._table.c.locale == locale)
            with self._engine.connect() as conn:
                return [dict(row._mapping) for row in conn.execute(query)]
        except sa.exc.SQLAlchemyError as exc:
            raise ReleaseError(f"audit log: cannot read the account database: {type(exc).__name__}") from exc

    def close(self) -> None:
        self._engine.dispose()


# ---------------------------------------------------------------- one release folder as one archive
def pack_release(folder: Path) -> bytes:
    """The release folder's files as a gzipped tar (paths relative to the folder, nothing else kept)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or path.is_symlink():
                continue
            info = tarfile.TarInfo(path.relative_to(folder).as_posix())
            info.size, info.mode, info.mtime = path.stat().st_size, 0o644, 0
            with path.open("rb") as handle:
                tar.addfile(info, handle)
    return buffer.getvalue()


def unpack_release(data: bytes, folder: Path) -> None:
    """Write the archive's files under ``folder``: regular files with relative paths only."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                name = PurePosixPath(member.name)
                if not member.isfile() or name.is_absolute() or ".." in name.parts or not name.parts:
                    raise ReleaseError(f"the archive holds {member.name!r}, which is not a file of a release")
                target = folder.joinpath(*name.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                with source, target.open("wb") as out:
                    shutil.copyfileobj(source, out)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise ReleaseError(f"the archive cannot be unpacked: {type(exc).__name__}: {exc}") from exc


# ---------------------------------------------------------------- the store
class ReleaseStore:
    """The releases of every locale under ``settings.models_dir``; publish, rollback, list, diff."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models_dir = settings.models_dir
        self.dialogs_dir = settings.dialogs_dir
        self.keep = max(2, settings.releases_keep)

    # -- reading
    def releases(self, locale: str) -> list[Release]:
        """Every complete release of the locale, oldest first (staging folders are invisible)."""
        root = locale_root(self.models_dir, locale)
        if not root.is_dir():
            return []
        out = []
        for child in root.iterdir():
            if child.name.isdigit() and (child / RELEASE_FILE).is_file():
                with contextlib.suppress(ReleaseError):
                    out.append(self._read(locale, child))
        return sorted(out, key=lambda r: r.number)

    def get(self, locale: str, number: int) -> Release:
        _check_locale(locale)
        folder = locale_root(self.models_dir, locale) / str(number)
        if not (folder / RELEASE_FILE).is_file():
            known = ", ".join(str(r.number) for r in self.releases(locale)) or "none"
            raise ReleaseError(f"{locale}: no release {number} in {folder.parent} (releases: {known})")
        return self._read(locale, folder)

    def _read(self, locale: str, folder: Path, number: int | None = None) -> Release:
        """The release described by ``folder/release.json``, which must be release ``number`` (default:
        the folder's name)."""
        path = folder / RELEASE_FILE
        expected = folder.name if number is None else str(number)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if str(data["number"]) != expected:
                raise ValueError(f"it describes release {data['number']}, not {expected}")
            return Release(locale=locale, number=int(data["number"]), folder=folder, created=str(data["created"]),
                           author=str(data["author"]), message=str(data.get("message", "")),
                           fingerprint=str(data["fingerprint"]), files=dict(data["files"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ReleaseError(f"{path}: unreadable release description: {exc}") from exc

    def pointer(self, locale: str) -> dict[str, Any]:
        path = locale_root(self.models_dir, locale) / CURRENT_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return {"number": int(data["number"]), "previous": int(data.get("previous") or 0)}
        except FileNotFoundError:
            return {"number": 0, "previous": 0}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ReleaseError(f"{path}: unreadable: {exc}") from exc

    def current_number(self, locale: str) -> int:
        """The current release's number; 0 when none was published (the working copy is served)."""
        return int(self.pointer(locale)["number"])

    def current(self, locale: str) -> Release | None:
        number = self.current_number(locale)
        return self.get(locale, number) if number else None

    def verify(self, release: Release) -> None:
        """Every file of the release is there with the content it was published with."""
        if not release.files:
            raise ReleaseError(f"{release.folder / RELEASE_FILE}: lists no files")
        for name, digest in sorted(release.files.items()):
            path = release.folder / name
            try:
                actual = _sha256(path)
            except OSError as exc:
                raise ReleaseError(f"{path}: release {release.number} of {release.locale} is damaged: "
                                   f"{exc.strerror or exc}") from exc
            if actual != digest:
                raise ReleaseError(f"{path}: release {release.number} of {release.locale} is damaged: the file "
                                   "differs from what was published (truncated or changed on disk)")

    # -- locking
    @contextlib.contextmanager
    def lock(self, locale: str, what: str) -> Iterator[None]:
        """One publish or rollback of a locale at a time; a second one fails at once (PublishBusy)."""
        root = locale_root(self.models_dir, locale)
        root.mkdir(parents=True, exist_ok=True)
        path = root / ".lock"
        with path.open("a+", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise PublishBusy(f"{locale}: cannot {what}: another publish or rollback of {locale} is running "
                                  f"({holder}); nothing was changed, try again when it has finished") from None
            try:
                handle.seek(0)
                handle.truncate()
                handle.write(f"{what} by {default_author()}, pid {os.getpid()}, since {_now_iso()}")
                handle.flush()
                yield
            finally:
                handle.seek(0)
                handle.truncate()
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- publishing
    def publish(self, locale: str, *, author: str, message: str = "", audit: ReleaseAudit | None = None,
                say: Callable[[str], None] = lambda _line: None) -> Release:
        """Validate, train if needed, render the prompts, write release N+1 atomically, make it current."""
        _check_locale(locale)
        from ivr.dialogue.train import fingerprint

        with self.lock(locale, "publish"):
            if audit is not None:
                audit.prepare()
            self._clean_staging(locale)
            say(f"{locale}: validating {self.dialogs_dir / locale}")
            self._validate(locale)
            before = fingerprint(self.dialogs_dir, locale)
            root = locale_root(self.models_dir, locale)
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
            archived = 0
            try:
                dialogs = staging / "dialogs" / locale
                shutil.copytree(self.dialogs_dir / locale, dialogs, symlinks=False)
                snapshot_print = fingerprint(staging / "dialogs", locale)
                if snapshot_print != before:
                    raise ReleaseError(f"{self.dialogs_dir / locale}: the files changed while publishing; "
                                       "validate and publish again")
                self._model_into(locale, staging, snapshot_print, say)
                self._grammars_into(locale, staging)
                self._prompts_into(locale, staging, say)
                previous = self.current_number(locale)
                highest = audit.highest_number(locale) if audit is not None else 0  # other models folders'
                number = max([r.number for r in self.releases(locale)] + [previous, highest]) + 1
                files = {str(p.relative_to(staging)): _sha256(p)
                         for p in sorted(staging.rglob("*")) if p.is_file()}
                _write_json_atomic(staging / RELEASE_FILE, {
                    "locale": locale, "number": number, "created": _now_iso(), "author": author,
                    "message": message, "fingerprint": snapshot_print, "files": files,
                    "source": str(self.dialogs_dir / locale), "previous": previous})
                if audit is not None:  # before the event: a pod that sees the event finds the archive
                    audit.store_archive(locale, number, pack_release(staging))
                    archived = number
                target = root / str(number)
                os.rename(staging, target)  # atomic; fails if the number exists (nothing is overwritten)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                if audit is not None and archived:
                    with contextlib.suppress(ReleaseError):
                        audit.delete_archives(locale, [archived])
                raise
            release = self.get(locale, number)
            if audit is not None:  # written before the switch: nothing goes live unaudited
                audit.record(locale, "publish", previous, number, author, message)
            self._set_current(locale, number, previous)
            for gone in self.prune(locale, audit):
                say(f"{locale}: removed old release {gone} (keeping the last {self.keep})")
            return release

    def _validate(self, locale: str) -> None:
        from ivr.dialogue.validate import errors, validate

        problems = errors(validate(self.dialogs_dir, [locale], models_dir=self.models_dir, settings=self.settings))
        if problems:
            lines = [str(p) for p in problems]
            raise InvalidDialog(f"{self.dialogs_dir / locale}: {len(lines)} error(s); nothing was published:\n"
                                + "\n".join(lines), lines)

    def _model_into(self, locale: str, staging: Path, print_: str, say: Callable[[str], None]) -> None:
        """The model for these files: a release's with the same fingerprint, else the working model once
        trained (``ivr train`` skips unchanged data)."""
        from ivr.dialogue.train import (
            FINGERPRINT_FILE,
            model_path,
            stored_fingerprint,
            train_locale,
            training_lock,
        )

        target = staging / "rasa" / locale / "model.tar.gz"
        target.parent.mkdir(parents=True)
        for old in reversed(self.releases(locale)):
            if old.fingerprint == print_ and old.model.is_file() and _sha256(old.model) == old.files.get(
                    f"rasa/{locale}/model.tar.gz"):
                shutil.copyfile(old.model, target)
                say(f"{locale}: dialog unchanged since release {old.number}: its model is reused")
                self._write_fingerprint(target.parent / FINGERPRINT_FILE, print_, locale)
                return
        for _attempt in range(2):
            result = train_locale(staging / "dialogs", self.models_dir, locale)
            say(f"{locale}: trained the model in {result.seconds:.1f} s" if result.trained
                else f"{locale}: the trained model is up to date")
            with training_lock(self.models_dir):  # no `ivr train` replaces it while it is copied
                if stored_fingerprint(self.models_dir, locale) == print_:
                    shutil.copyfile(model_path(self.models_dir, locale), target)
                    self._write_fingerprint(target.parent / FINGERPRINT_FILE, print_, locale)
                    return
        raise ReleaseError(f"{model_path(self.models_dir, locale)}: retrained by someone else during the publish; "
                           "publish again")

    @staticmethod
    def _write_fingerprint(path: Path, print_: str, locale: str) -> None:
        path.write_text(json.dumps({"fingerprint": print_, "locale": locale}, indent=1) + "\n", encoding="utf-8")

    def _grammars_into(self, locale: str, staging: Path) -> None:
        from ivr.asr.grammar import GrammarError, load_grammars

        try:
            grammars = load_grammars(dataclasses.replace(self.settings, dialogs_dir=staging / "dialogs"), locale)
        except GrammarError as exc:
            raise ReleaseError(f"{locale}: cannot build the recognizer grammars: {exc}") from exc
        data = {expect.value: phrases for expect, phrases in grammars.items()}
        (staging / GRAMMARS_FILE).write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    def _prompts_into(self, locale: str, staging: Path, say: Callable[[str], None]) -> None:
        """Render the release's fixed prompts into the prompt cache; list them in prompts.json."""
        from ivr.dialogue.prompts import PromptBook
        from ivr.parts import SynthesisError
        from ivr.tts.synth import PLACEHOLDER, PromptSynthesizer

        book = PromptBook(staging / "dialogs")
        try:
            with PromptSynthesizer(self.settings, book) as synth:
                count = synth.build_all(book, [locale])
                names = {name: [synth.path_for(t, locale, fixed=True).name for t in texts
                                if not PLACEHOLDER.search(t)]
                         for name, texts in book.responses(locale).items()}
        except SynthesisError as exc:
            raise ReleaseError(f"{locale}: cannot render the prompts: {exc}") from exc
        say(f"{locale}: {count} prompts rendered in {self.settings.sounds_dir / locale / 'prompts'}")
        (staging / PROMPTS_FILE).write_text(json.dumps({k: v for k, v in names.items() if v}, ensure_ascii=False,
                                                       indent=1, sort_keys=True) + "\n", encoding="utf-8")

    def _set_current(self, locale: str, number: int, previous: int) -> None:
        _write_json_atomic(locale_root(self.models_dir, locale) / CURRENT_FILE,
                           {"number": number, "previous": previous, "since": _now_iso()})

    def _clean_staging(self, locale: str) -> None:
        """Leftovers of a publish that crashed (under the lock, so none is in use)."""
        for child in locale_root(self.models_dir, locale).glob(".staging-*"):
            shutil.rmtree(child, ignore_errors=True)
        for child in locale_root(self.models_dir, locale).glob(".deleting-*"):
            shutil.rmtree(child, ignore_errors=True)

    # -- rollback
    def rollback(self, locale: str, *, author: str, to: int | None = None, message: str = "",
                 audit: ReleaseAudit | None = None) -> tuple[int, Release]:
        """Make an earlier release current (default: the newest one before the current)."""
        _check_locale(locale)
        with self.lock(locale, "roll back"):
            current = self.current_number(locale)
            if not current:
                raise ReleaseError(f"{locale}: nothing to roll back: no release was published "
                                   f"(`ivr publish --locale {locale}`)")
            if to is None:
                earlier = [r.number for r in self.releases(locale) if r.number < current]
                if not earlier:
                    raise ReleaseError(f"{locale}: release {current} is the oldest one kept; nothing to roll back to")
                to = earlier[-1]
            if to == current:
                raise ReleaseError(f"{locale}: release {to} is already current")
            release = self.get(locale, to)
            self.verify(release)
            if audit is not None:
                if not audit.has_archive(locale, to):  # e.g. published before archives were kept
                    audit.store_archive(locale, to, pack_release(release.folder))
                audit.record(locale, "rollback", current, to, author, message)
            self._set_current(locale, to, current)
            return current, release

    # -- pruning
    def prune(self, locale: str, audit: ReleaseAudit | None = None) -> list[int]:
        """Delete the releases older than the newest ``keep``, never the current or the previous one;
        with ``audit`` (a publish), their archives in the account database too."""
        pointer = self.pointer(locale)
        numbers = [r.number for r in self.releases(locale)]
        protected = {pointer["number"], pointer["previous"], *numbers[-self.keep:]}
        gone = []
        for number in numbers:
            if number in protected:
                continue
            folder = locale_root(self.models_dir, locale) / str(number)
            doomed = folder.with_name(f".deleting-{number}")
            os.rename(folder, doomed)  # invisible at once, then removed
            shutil.rmtree(doomed, ignore_errors=True)
            gone.append(number)
        if audit is not None:
            audit.delete_archives(locale, gone)
        return gone

    # -- pulling (a pod with its own models folder)
    def pull(self, locale: str, number: int, audit: ReleaseAudit) -> bool:
        """Make release ``number`` current here, fetching its archive from the account database when its
        folder is missing (sha256 checked, unpacked into a hidden staging folder, every file checked
        against release.json, renamed into place). False when it already was current. ``PublishBusy``
        when a publish, rollback or pull of the locale runs here; ``ReleaseError`` when the release is
        refused (nothing changed then)."""
        _check_locale(locale)
        if self.current_number(locale) == number:
            return False
        with self.lock(locale, "pull"):
            previous = self.current_number(locale)
            if previous == number:
                return False
            root = locale_root(self.models_dir, locale)
            if not (root / str(number) / RELEASE_FILE).is_file():
                self._clean_staging(locale)
                self._fetch(locale, number, audit)
            release = self.get(locale, number)
            self.verify(release)
            self._set_current(locale, number, previous)
            self.prune(locale)  # this folder's old releases; the archives are the publisher's to prune
            return True

    def _fetch(self, locale: str, number: int, audit: ReleaseAudit) -> None:
        found = audit.fetch_archive(locale, number)
        if found is None:
            raise ReleaseError(f"{locale}: release {number} has no archive in the account database (published "
                               "before archives were kept, or pruned); publish or roll back once more from a "
                               "models folder that has it")
        digest, data = found
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise ReleaseError(f"{locale}: the archive of release {number} in the account database is damaged: "
                               f"sha256 {actual[:12]}... is not {digest[:12]}... as published ({len(data)} bytes)")
        root = locale_root(self.models_dir, locale)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
        try:
            unpack_release(data, staging)
            staged = self._read(locale, staging, number)  # release.json must describe release `number`
            self.verify(staged)  # every file as release.json lists it
            os.rename(staging, root / str(number))  # atomic; fails if the number exists
        except (OSError, ValueError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise ReleaseError(f"{locale}: the archive of release {number} cannot be installed: {exc}") from exc
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    # -- diff
    def diff(self, locale: str, old: int, new: int) -> list[str]:
        """What changed from release ``old`` to ``new``: wording, phrasings, flows, other files."""
        a, b = self.get(locale, old), self.get(locale, new)
        return diff_dialogs(a.dialogs_dir, b.dialogs_dir, locale, f"release {old}", f"release {new}")


# ---------------------------------------------------------------- diff
def _responses(dialogs_dir: Path, locale: str) -> dict[str, list[str]]:
    from ivr.dialogue.prompts import PromptBook, PromptError

    try:
        return PromptBook(dialogs_dir).responses(locale)
    except PromptError:
        return {}


def _phrasings(dialogs_dir: Path, locale: str) -> dict[str, list[str]]:
    from ivr.asr.grammar import GrammarError, load_nlu_examples

    try:
        return load_nlu_examples(dialogs_dir, locale)
    except GrammarError:
        return {}


def _flows(dialogs_dir: Path, locale: str) -> dict[str, str]:
    """Rules and stories by name, each as YAML text of its steps."""
    out: dict[str, str] = {}
    data_dir = dialogs_dir / locale / "data"
    for path in sorted(data_dir.rglob("*.yml")) if data_dir.is_dir() else []:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            continue
        for kind in ("rules", "stories"):
            for item in (data.get(kind) or []) if isinstance(data, dict) else []:
                if isinstance(item, dict):
                    name = str(item.get("rule") or item.get("story") or "?")
                    body = {k: v for k, v in item.items() if k not in ("rule", "story")}
                    out[f"{kind[:-1] if kind == 'rules' else 'story'} {name!r}"] = yaml.safe_dump(
                        body, allow_unicode=True, sort_keys=False)
    return out


def diff_dialogs(a_dir: Path, b_dir: Path, locale: str, a_name: str, b_name: str) -> list[str]:
    lines: list[str] = []
    ra, rb = _responses(a_dir, locale), _responses(b_dir, locale)
    section: list[str] = []
    for name in sorted(set(ra) | set(rb)):
        old, new = ra.get(name), rb.get(name)
        if old == new:
            continue
        if old is None:
            section += [f"  + {name}: {t}" for t in new or []]
        elif new is None:
            section += [f"  - {name}: {t}" for t in old]
        else:
            section += [f"  ~ {name}:"] + [f"      - {t}" for t in old if t not in new] + [
                f"      + {t}" for t in new if t not in old]
    if section:
        lines += ["wording (domain.yml responses):", *section]
    pa, pb = _phrasings(a_dir, locale), _phrasings(b_dir, locale)
    section = []
    for intent in sorted(set(pa) | set(pb)):
        old_set, new_set = pa.get(intent, []), pb.get(intent, [])
        added = [p for p in new_set if p not in old_set]
        removed = [p for p in old_set if p not in new_set]
        if intent not in pa:
            section.append(f"  + intent {intent} ({len(new_set)} phrasings)")
        elif intent not in pb:
            section.append(f"  - intent {intent} ({len(old_set)} phrasings)")
        if added or removed:
            section += [f"  {intent}:"] + [f"      - {p}" for p in removed] + [f"      + {p}" for p in added]
    if section:
        lines += ["phrasings (NLU examples):", *section]
    fa, fb = _flows(a_dir, locale), _flows(b_dir, locale)
    section = []
    for name in sorted(set(fa) | set(fb)):
        old_text, new_text = fa.get(name), fb.get(name)
        if old_text == new_text:
            continue
        if old_text is None:
            section.append(f"  + {name}")
        elif new_text is None:
            section.append(f"  - {name}")
        else:
            section.append(f"  ~ {name}:")
            section += ["      " + d for d in difflib.unified_diff(
                old_text.splitlines(), (new_text or "").splitlines(), lineterm="", n=1)][2:]
    if section:
        lines += ["flows (rules and stories):", *section]
    # Every other file (config.yml, keypad.yml, heldout.yml, tests/...): a plain unified diff.
    covered = {"domain.yml"}
    files_a = {str(p.relative_to(a_dir / locale)) for p in (a_dir / locale).rglob("*") if p.is_file()}
    files_b = {str(p.relative_to(b_dir / locale)) for p in (b_dir / locale).rglob("*") if p.is_file()}
    section = []
    for rel in sorted(files_a | files_b):
        if rel in covered or rel.startswith("data/"):
            continue
        old_lines = (a_dir / locale / rel).read_text(encoding="utf-8").splitlines() if rel in files_a else []
        new_lines = (b_dir / locale / rel).read_text(encoding="utf-8").splitlines() if rel in files_b else []
        if old_lines != new_lines:
            section += ["  " + d for d in difflib.unified_diff(
                old_lines, new_lines, f"{a_name}/{rel}", f"{b_name}/{rel}", lineterm="", n=1)]
    domain_a = _domain_rest(a_dir / locale / "domain.yml")
    domain_b = _domain_rest(b_dir / locale / "domain.yml")
    if domain_a != domain_b:
        section += ["  " + d for d in difflib.unified_diff(
            domain_a, domain_b, f"{a_name}/domain.yml (without responses)",
            f"{b_name}/domain.yml (without responses)", lineterm="", n=1)]
    if section:
        lines += ["other files:", *section]
    return lines


def _domain_rest(path: Path) -> list[str]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return []
    if isinstance(data, dict):
        data.pop("responses", None)
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=True).splitlines()


# ---------------------------------------------------------------- running servers
def servers_dir(models_dir: Path) -> Path:
    return releases_root(models_dir) / SERVERS_DIR


def register_server(models_dir: Path, host: str, port: int, token: str) -> Path:
    """Written by ``ivr serve`` (owner-only): how ``ivr publish``/``rollback`` reach it."""
    folder = servers_dir(models_dir)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    path = folder / f"{os.getpid()}-{port}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"pid": os.getpid(), "host": host, "port": port, "token": token}, handle)
    os.replace(tmp, path)
    return path


def notify_servers(models_dir: Path, timeout_s: float = NOTIFY_TIMEOUT_S) -> list[str]:
    """POST /reload (with its token) to every server registered under ``models_dir``; an entry whose
    server is gone (connection refused) is removed. Returns one line per server."""
    import http.client

    folder = servers_dir(models_dir)
    lines = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            host = str(entry["host"])
            host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
            port, token = int(entry["port"]), str(entry["token"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        where = f"server pid {entry.get('pid')} on {host}:{port}"
        conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
        try:
            conn.request("POST", "/reload", headers={"Authorization": f"Bearer {token}"})
            status = conn.getresponse().status
            lines.append(f"{where}: reload {'done' if status == 200 else f'answered {status}'}")
        except ConnectionRefusedError:
            path.unlink(missing_ok=True)
        except (OSError, http.client.HTTPException) as exc:
            lines.append(f"{where}: reload requested ({type(exc).__name__}; it goes on in the server)")
        finally:
            conn.close()
    return lines
