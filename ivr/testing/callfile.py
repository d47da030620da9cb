"""The call-file format: what a caller does in a recorded or scripted call (the project's contract).

```yaml
caller_id: "13800000001"      # agi_callerid; "" for withheld
locale: zh-CN                 # optional; default from config
agi_params: {input: keypad}   # optional: AGI URL parameters the dialplan passes, over ?lang=<locale>;
                              # null drops one (lang: null = the number with the language menu)
turns:                        # consumed in order, one each time the robot listens
  - say: "我想查一下余额"
  - audio: audio/balance.wav  # 8 kHz mono 16-bit WAV, relative to this file
  - dtmf: "1234#"
    during_prompt: 1.5        # optional: keyed 1.5 s into the robot's prompt (it interrupts the prompt)
  - silence: 6
  - hangup: true
expect:                       # optional checks; a failed one makes the replay exit non-zero
  said: ["1,234.56"]
  not_said: ["6222"]
  outcome: transfer           # completed | transfer | caller_hangup | error
  transfer_reason: caller_request   # optional, with transfer
```
"""

from __future__ import annotations

import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ivr.config import LOCALES

OUTCOMES = ("completed", "transfer", "caller_hangup", "error")
# `ivr calls export` writes this where it must leave a value out (secret keys or spoken ID digits, the
# caller's number, unrecognized words); a call file holding one is refused until it is filled in.
PLACEHOLDER = "<fill in"

TURN_KINDS = ("say", "audio", "dtmf", "silence", "hangup")
MAX_CALLER_ID = 64


class CallFileError(ValueError):
    """A call file that cannot be replayed; the message names the file and the problem."""


@dataclass(frozen=True)
class Turn:
    kind: str  # say | audio | dtmf | silence | hangup
    value: Any  # text, Path, keys, seconds, True
    # the caller starts this turn this many seconds after the robot's current prompt began (barge-in:
    # keys in both media modes, speech in stream mode); None: when the robot listens
    during_prompt: float | None = None


@dataclass(frozen=True)
class Expectation:
    said: tuple[str, ...] = ()
    not_said: tuple[str, ...] = ()
    outcome: str | None = None
    transfer_reason: str | None = None  # with outcome transfer: why (caller_request, no_input, …)


@dataclass(frozen=True)
class CallFile:
    path: Path
    caller_id: str
    locale: str | None
    turns: tuple[Turn, ...]
    expect: Expectation = field(default_factory=Expectation)
    agi_params: dict[str, str | None] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.stem


def _fail(path: Path, where: str, problem: str) -> CallFileError:
    return CallFileError(f"{path}: {where}: {problem}")


def load_call_file(path: Path) -> CallFile:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CallFileError(f"{path}: no such call file") from None
    except UnicodeDecodeError as exc:
        raise CallFileError(f"{path}: not UTF-8 text ({exc})") from None
    except yaml.YAMLError as exc:
        raise CallFileError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise _fail(path, "top level", "must be a mapping with caller_id, turns and optional locale, expect")
    unknown = set(data) - {"caller_id", "locale", "turns", "expect", "description", "agi_params"}
    if unknown:
        raise _fail(path, "top level", f"unknown keys {sorted(unknown)}")
    caller_id = data.get("caller_id", "")
    if caller_id is None:
        caller_id = ""
    if not isinstance(caller_id, str | int):
        raise _fail(path, "caller_id", "must be a string (quote it: \"13800000001\")")
    caller_id = str(caller_id)
    if caller_id.startswith(PLACEHOLDER):
        raise _fail(path, "caller_id", f"a placeholder left by `ivr calls export`: {caller_id} "
                    "(put in a test customer's number, or \"\" for withheld)")
    if len(caller_id) > MAX_CALLER_ID or "\n" in caller_id:
        raise _fail(path, "caller_id", f"longer than {MAX_CALLER_ID} characters or multi-line")
    locale = data.get("locale")
    if locale is not None and locale not in LOCALES:
        raise _fail(path, "locale", f"{locale!r} is not one of {', '.join(LOCALES)}")
    raw_turns = data.get("turns")
    if not isinstance(raw_turns, list):
        raise _fail(path, "turns", "must be a list")
    turns = tuple(_turn(path, i, t) for i, t in enumerate(raw_turns, 1))
    params = data.get("agi_params") or {}
    if not isinstance(params, dict) or not all(
        isinstance(k, str) and k.isidentifier() and (v is None or isinstance(v, str | int)) for k, v in params.items()
    ):
        raise _fail(path, "agi_params", "must map parameter names to strings or null, e.g. {input: keypad}")
    agi_params = {k: None if v is None else str(v) for k, v in params.items()}
    return CallFile(path, caller_id, locale, turns, _expect(path, data.get("expect") or {}), agi_params)


def _turn(path: Path, index: int, raw: Any) -> Turn:
    where = f"turn {index}"
    if not isinstance(raw, dict):
        raise _fail(path, where, f"must be exactly one of {', '.join(TURN_KINDS)}")
    raw = dict(raw)
    during = raw.pop("during_prompt", None)
    if during is not None and (isinstance(during, bool) or not isinstance(during, int | float) or not 0 <= during <= 60):
        raise _fail(path, where, "during_prompt needs seconds between 0 and 60")
    if len(raw) != 1:
        raise _fail(path, where, f"must be exactly one of {', '.join(TURN_KINDS)} (and optionally during_prompt)")
    ((kind, value),) = raw.items()
    turn = _turn_of_kind(path, where, kind, value)
    if during is None:
        return turn
    if turn.kind == "silence":
        raise _fail(path, where, "during_prompt goes with say, audio, dtmf or hangup")
    return Turn(turn.kind, turn.value, float(during))


def _turn_of_kind(path: Path, where: str, kind: Any, value: Any) -> Turn:
    if isinstance(value, str) and value.startswith(PLACEHOLDER):
        raise _fail(path, where, f"a placeholder left by `ivr calls export`: {value} "
                    "(fill it in with test data, never the caller's)")
    if kind == "say":
        if not isinstance(value, str) or not value.strip():
            raise _fail(path, where, "say needs non-empty text")
        return Turn("say", value)
    if kind == "audio":
        if not isinstance(value, str):
            raise _fail(path, where, "audio needs a WAV path")
        wav = (path.parent / value).resolve()
        _check_wav(path, where, wav)
        return Turn("audio", wav)
    if kind == "dtmf":
        keys = str(value)
        if not keys or any(k not in "0123456789*#ABCD" for k in keys):
            raise _fail(path, where, f"dtmf keys must be 0-9, *, #, A-D, got {keys!r}")
        return Turn("dtmf", keys)
    if kind == "silence":
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 300:
            raise _fail(path, where, "silence needs seconds between 0 and 300")
        return Turn("silence", float(value))
    if kind == "hangup":
        if value is not True:
            raise _fail(path, where, "hangup must be true")
        return Turn("hangup", True)
    raise _fail(path, where, f"unknown turn {kind!r} (one of {', '.join(TURN_KINDS)})")


def _check_wav(path: Path, where: str, wav: Path) -> None:
    try:
        with wave.open(str(wav), "rb") as w:
            if w.getnchannels() != 1 or w.getsampwidth() != 2 or w.getframerate() != 8000:
                raise _fail(
                    path,
                    where,
                    f"{wav.name} is {w.getframerate()} Hz, {w.getnchannels()} channel(s), "
                    f"{8 * w.getsampwidth()}-bit; need 8 kHz mono 16-bit",
                )
    except FileNotFoundError:
        raise _fail(path, where, f"audio file {wav} not found") from None
    except (wave.Error, EOFError) as exc:
        raise _fail(path, where, f"{wav.name} is not a WAV file ({exc})") from None


def _expect(path: Path, raw: Any) -> Expectation:
    if not isinstance(raw, dict):
        raise _fail(path, "expect", "must be a mapping")
    unknown = set(raw) - {"said", "not_said", "outcome", "transfer_reason"}
    if unknown:
        raise _fail(path, "expect", f"unknown keys {sorted(unknown)}")
    lists = {}
    for key in ("said", "not_said"):
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
            raise _fail(path, f"expect.{key}", "must be a list of strings")
        lists[key] = tuple(str(v) for v in value)
    outcome = raw.get("outcome")
    if outcome is not None and outcome not in OUTCOMES:
        raise _fail(path, "expect.outcome", f"{outcome!r} is not one of {', '.join(OUTCOMES)}")
    reason = raw.get("transfer_reason")
    if reason is not None and (not isinstance(reason, str) or outcome != "transfer"):
        raise _fail(path, "expect.transfer_reason", "a reason (text) goes with outcome: transfer")
    return Expectation(said=lists["said"], not_said=lists["not_said"], outcome=outcome, transfer_reason=reason)
