"""One typed configuration, read from ``ivr.toml`` and ``IVR_*`` environment variables.

Precedence: built-in defaults < ``ivr.toml`` (or the file named by ``IVR_CONFIG``) < environment.
Every field's environment variable is ``IVR_`` + the field name in upper case, e.g.
``IVR_DATABASE_URL``, ``IVR_LOCALE``, ``IVR_AGI_HOST``, ``IVR_AGI_PORT``. Units are in the names.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LOCALES = ("zh-CN", "en-US", "ko-KR")
MEDIA = ("record", "stream")
SECTIONS = ("system_of_record",)  # settings that are TOML sections (tables), not single values


class ConfigError(ValueError):
    """A setting is missing, unknown or has a value of the wrong type."""


@dataclasses.dataclass(frozen=True)
class Settings:
    # where things live
    database_url: str = f"sqlite:///{PROJECT_ROOT / 'var' / 'accounts.db'}"
    dialogs_dir: Path = PROJECT_ROOT / "dialogs"
    models_dir: Path = PROJECT_ROOT / "models"
    # Asterisk and the server must see these folders at the same absolute path.
    sounds_dir: Path = PROJECT_ROOT / "var" / "sounds"
    spool_dir: Path = PROJECT_ROOT / "var" / "spool"
    transcripts_dir: Path = PROJECT_ROOT / "var" / "transcripts"
    log_dir: Path = PROJECT_ROOT / "var" / "log"  # log files of helper processes (Rasa servers, action server)
    # the ops console (`ivr console`): its users, audit log and session key (owner-only, never committed)
    console_dir: Path = PROJECT_ROOT / "var" / "console"
    # privacy: how long transcripts, kept recordings, helper logs and audit rows are kept (`ivr purge`,
    # daily in `ivr serve`); 0 keeps them forever. Recordings are deleted once decoded unless kept.
    retention_days: int = 30
    keep_recordings: bool = False
    # the call server
    locale: str = "zh-CN"
    agi_host: str = "127.0.0.1"
    agi_port: int = 4573
    agi_allowed_peers: tuple[str, ...] = ("127.0.0.1", "::1")
    http_host: str = "127.0.0.1"
    http_port: int = 8089
    # releases (`ivr publish`): how many of a locale's releases to keep (never the current or the
    # previous one), and the token `POST /reload` needs (empty: a random one per server, written to
    # models/releases/.servers/ for `ivr publish` and `ivr rollback`)
    releases_keep: int = 10
    reload_token: str = ""
    # how often a server (a pod: its worker 0) asks the account database which release is current per
    # locale, and pulls it into its own models folder when it is not (ivr.releases_pull); 0: never
    release_pull_s: float = 5.0
    max_calls: int = 200
    # several workers on one machine (`ivr serve --workers N`, `ivr pod`; ivr.pod): HAProxy listens on
    # agi_port and hands each call to the least busy healthy worker; worker i (0, 1, ...) listens for
    # FastAGI on worker_agi_port + i, HTTP (/metrics, /health) on worker_http_port + i and AudioSocket on
    # worker_audiosocket_port + i; the supervisor serves every worker's /metrics (label worker="i") and
    # the pod's /health on http_port. pod_dir: HAProxy's generated config and socket, the pod's state.
    workers: str = "1"  # a number, or "auto" (one per core)
    worker_agi_port: int = 4600
    worker_http_port: int = 8100
    worker_audiosocket_port: int = 4700
    pod_dir: Path = PROJECT_ROOT / "var" / "pod"
    stop_grace_s: float = 30.0
    header_timeout_s: float = 5.0
    command_timeout_s: float = 120.0
    # turn taking
    record_max_s: float = 15.0
    record_silence_s: int = 1
    no_input_limit: int = 3
    not_understood_limit: int = 3
    digit_timeout_s: float = 4.0
    # the keypad: a language menu before the greeting (calls whose AGI URL names no language), and the
    # keypad menu offered when speech fails (dialogs/<locale>/keypad.yml); how long a keypad listen waits
    language_menu: bool = False
    keypad_wait_s: int = 5
    # media: "record" (RECORD FILE / STREAM FILE, any Asterisk) or "stream" (AudioSocket, full duplex);
    # per call ?media=record|stream on the AGI URL. The AudioSocket listener of this process (port 0: any
    # free port); Asterisk connects to the address it reached the FastAGI server on.
    media: str = "record"
    audiosocket_host: str = "127.0.0.1"
    audiosocket_port: int = 4574
    endpoint_silence_ms: int = 440  # stream mode: trailing silence that ends the caller's turn
    # stream mode: speech needed before the caller's turn starts (and a prompt stops): a click or a cough
    # is shorter. 160 ms: no false onset on the VAD bench's 222 s of noise (python -m ivr.media.vad_bench)
    speech_start_ms: int = 160
    listen_timeout_s: float = 5.0  # stream mode: no speech and no key this long: no input
    stream_max_call_s: float = 3600.0
    # parts
    dialogue_url: str = ""  # empty: in-process Rasa agent; else a Rasa HTTP server
    dialogue_token: str = ""
    dialogue_timeout_s: float = 5.0
    lookup_timeout_s: float = 3.0
    asr_timeout_s: float = 10.0
    tts_timeout_s: float = 5.0
    asr_min_confidence: float = 0.6
    asr_dither: bool = True  # off in tests and replays, so transcripts are reproducible
    asr_grammars: bool = True  # per-state phrase lists; off: free recognition (slower, see README)
    # acoustic frames Vosk's network computes at once; 0: Vosk's own choice. Larger batches cost less CPU
    # but change the words the Korean model hears (README "CPU per turn"; python -m ivr.testing.asrchunks)
    asr_frames_per_chunk: int = 0
    # record mode: decode a recording from LEAD_MS before its first loud frame to endpoint_silence_ms after
    # its last (the audio stream mode gives Vosk); a recording with no loud frame is silence, not decoded
    asr_trim_silence: bool = True
    # record mode: decode the recording while Asterisk writes it (the same audio, the same words), so a
    # turn's decoding is mostly done when the caller stops speaking; off: once the file is complete
    asr_while_recording: bool = True
    vosk_model_base_url: str = ""  # empty: the Vosk project's model site (for `ivr models pull`)
    tts_rate_wpm: int = 160
    tts_voice: str = ""  # empty: the locale's default espeak-ng voice
    tts_dynamic_cache_mb: int = 200
    # a .txt beside each dynamic render (amounts, "did you say …") with its text: replays and tests only
    tts_dynamic_sidecars: bool = False
    # a pod's worker renders its dynamic prompts into dynamic/<this>/: each process deletes a render when its
    # own last call using it ends, and it cannot see another worker's calls (shared sounds folder)
    tts_dynamic_subfolder: str = ""
    # caller verification
    verify_max_failures: int = 3
    lockout_failures: int = 5
    lockout_s: int = 1800
    # phone numbers a caller may key to be verified against, per caller ID and window (all withheld
    # callers share one budget): stops a stranger testing which numbers are customers'
    phone_lookup_limit: int = 10
    phone_lookup_limit_withheld: int = 100
    phone_lookup_window_s: int = 3600
    # the key of the stored ID digits and caller IDs (ivr.accounts.keys): outside the database, owner-only,
    # created on first need, never committed; `ivr db rotate-key` adds a new one
    secret_key_file: Path = PROJECT_ROOT / "var" / "secret.key"
    # where the robot reads customers: "own" (its tables) or "sql": the firm's system of record through the
    # read-only queries of ivr.toml's [system_of_record] section (ivr.accounts.source; `ivr db check-source`)
    account_source: str = "own"
    system_of_record: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    # AMI (credentials never committed: from the environment or a local ivr.toml)
    ami_host: str = "127.0.0.1"
    ami_port: int = 5038
    ami_user: str = "ivr"
    ami_secret: str = ""
    log_level: str = "INFO"
    # ISO date that stands for "today" in account answers (days overdue); empty: the real date.
    # Only for reproducible replays and golden transcripts.
    fixed_date: str = ""


def _convert(name: str, raw: Any) -> Any:
    """Turn a TOML or environment value into the field's type, or raise ConfigError naming the field."""
    target = typing.get_type_hints(Settings)[name]
    origin = typing.get_origin(target)
    try:
        if target is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {raw!r}")
        if target is int:
            if isinstance(raw, bool):
                raise ValueError("a boolean is not an integer")
            return int(raw)
        if target is float:
            return float(raw)
        if target is Path:
            return Path(raw).expanduser()
        if origin is tuple:
            items = raw if isinstance(raw, list | tuple) else [p for p in str(raw).split(",") if p.strip()]
            return tuple(str(i).strip() for i in items)
        if target is str:
            if not isinstance(raw, str | int | float):
                raise ValueError(f"not a string: {raw!r}")
            return str(raw)
    except ValueError as exc:
        raise ConfigError(f"setting {name}: {exc}") from exc
    raise ConfigError(f"setting {name}: unsupported type {target!r}")


def load_settings(
    path: Path | None = None, environ: Mapping[str, str] | None = None, **overrides: Any
) -> Settings:
    """Read the settings: defaults, then the TOML file (if any), then ``IVR_*`` variables, then overrides."""
    env = os.environ if environ is None else environ
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}
    file = path or (Path(env["IVR_CONFIG"]) if env.get("IVR_CONFIG") else Path("ivr.toml"))
    if file.exists():
        try:
            data = tomli.loads(file.read_text(encoding="utf-8"))
        except (tomli.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file}: {exc}") from exc
        for key, raw in data.items():
            if key not in fields:
                raise ConfigError(f"{file}: unknown setting {key!r}")
            if key in SECTIONS:  # a [table] of its own, checked by the part that reads it
                if not isinstance(raw, dict):
                    raise ConfigError(f"{file}: {key} must be a [{key}] section")
                values[key] = raw
                continue
            values[key] = _convert(key, raw)
    elif path is not None:
        raise ConfigError(f"{file}: no such configuration file")
    for name in fields:
        if name in SECTIONS:
            continue
        var = f"IVR_{name.upper()}"
        if var in env:
            values[name] = _convert(name, env[var])
    for name, raw in overrides.items():
        if raw is not None:
            values[name] = _convert(name, raw)
    settings = Settings(**values)
    if settings.media not in MEDIA:
        raise ConfigError(f"setting media: {settings.media!r} is not one of {', '.join(MEDIA)}")
    if settings.endpoint_silence_ms < 20 or settings.endpoint_silence_ms % 20:
        raise ConfigError("setting endpoint_silence_ms: a positive multiple of 20 ms (one audio frame)")
    if settings.speech_start_ms < 20 or settings.speech_start_ms % 20:
        raise ConfigError("setting speech_start_ms: a positive multiple of 20 ms (one audio frame)")
    if not 0 <= settings.asr_frames_per_chunk <= 600:
        raise ConfigError("setting asr_frames_per_chunk: 0 (Vosk's own) or a number of frames up to 600 (Kaldi "
                          "rounds it up to a multiple of the model's frame subsampling, 3)")
    if settings.workers != "auto" and not (settings.workers.isdigit() and int(settings.workers) >= 1):
        raise ConfigError(f"setting workers: {settings.workers!r} is not a number of processes (1 or more) or 'auto'")
    if settings.locale not in LOCALES:
        raise ConfigError(f"setting locale: {settings.locale!r} is not one of {', '.join(LOCALES)}")
    if settings.account_source not in ("own", "sql"):
        raise ConfigError(f"setting account_source: {settings.account_source!r} is not 'own' or 'sql'")
    return settings

