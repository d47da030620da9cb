"""Finished calls as call files: ``ivr calls list`` and ``ivr calls export`` (issue #18).

Everything comes from the robot's own masked transcript (``<transcripts_dir>/<date>/<call_id>.jsonl``)
and, when ``IVR_KEEP_RECORDINGS=true`` kept them, the caller's recordings in the spool
(``<spool_dir>/<call_id>-<n>.wav``; a caller line's ``recording`` field is its ``n``).

What an export never holds: the caller's number (a placeholder, or a test number given with
``--caller-id``), keys the transcript masked (ID digits, phone numbers) and anything said in answer to a
secret question (neither the recording nor the words): each is a placeholder turn
(``ivr.testing.callfile.PLACEHOLDER``) that the developer fills in with a test customer's data; a call
file with a placeholder left is refused by ``ivr replay``. The files are owner-only and start with
``CALL_DATA_HEADER``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ivr.config import LOCALES, Settings
from ivr.retention import private_dir, write_private_text
from ivr.testing.callfile import PLACEHOLDER
from ivr.testing.harness import copy_as_8k

CALL_DATA_HEADER = (
    "# CALL DATA: made from a real call; it may hold a caller's voice and words. Owner-only: keep it out of "
    "version control (README, \"Replaying a call\")."
)
SILENCE_S = 5  # a listen in which nothing was said: longer than the recorder's silence wait


class ExportError(ValueError):
    """A call that cannot be found or exported; the message names the file and the problem."""


@dataclass(frozen=True)
class CallSummary:
    call_id: str
    path: Path
    day: str  # the transcript's folder, YYYY-MM-DD
    started: float  # the first line's time (epoch seconds)
    locale: str  # "" when the transcript predates the field
    outcome: str
    reason: str
    intents: tuple[str, ...]
    caller_turns: int

    def to_json(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id, "day": self.day,
            "started": dt.datetime.fromtimestamp(self.started, dt.timezone.utc).isoformat(timespec="seconds"),
            "locale": self.locale, "outcome": self.outcome, "reason": self.reason,
            "intents": list(self.intents), "caller_turns": self.caller_turns, "transcript": str(self.path),
        }


@dataclass
class ExportResult:
    call_file: Path
    audio: list[Path] = field(default_factory=list)
    placeholders: list[str] = field(default_factory=list)  # what the developer must fill in, one line each
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- reading transcripts
def read_transcript(path: Path) -> list[dict[str, Any]]:
    entries = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ExportError(f"{path}: cannot read the transcript: {exc.strerror or exc}") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ExportError(f"{path}:{number}: not a JSON line ({exc.msg})") from None
        if not isinstance(entry, dict) or "who" not in entry:
            raise ExportError(f"{path}:{number}: not a transcript line (no 'who')")
        entries.append(entry)
    return entries


def transcripts(transcripts_dir: Path) -> list[Path]:
    return sorted(transcripts_dir.glob("*/*.jsonl"))


def summarize(path: Path) -> CallSummary:
    entries = read_transcript(path)
    end: dict[str, Any] = next((e for e in reversed(entries) if e["who"] == "system" and e.get("outcome")), {})
    callers = [e for e in entries if e["who"] == "caller"]
    return CallSummary(
        call_id=path.stem, path=path, day=path.parent.name,
        started=float(entries[0].get("t", 0)) if entries else 0.0,
        locale=str(end.get("locale", "")), outcome=str(end.get("outcome", "unfinished")),
        reason=str(end.get("reason", "")),
        intents=tuple(str(e["intent"]) for e in callers if e.get("intent")),
        caller_turns=len(callers),
    )


def list_calls(
    transcripts_dir: Path, *, since: dt.date | None = None, outcome: str | None = None, intent: str | None = None
) -> list[CallSummary]:
    """The finished calls in the transcripts, oldest first, filtered by day, outcome and intent."""
    found = []
    for path in transcripts(transcripts_dir):
        if since is not None:
            try:
                if dt.date.fromisoformat(path.parent.name) < since:
                    continue
            except ValueError:
                continue
        summary = summarize(path)
        if outcome and summary.outcome != outcome:
            continue
        if intent and intent not in summary.intents:
            continue
        found.append(summary)
    return sorted(found, key=lambda s: (s.started, s.call_id))


def find_call(transcripts_dir: Path, call_id: str) -> Path:
    """The transcript of ``call_id``: its exact name, a unique prefix, or the masked form Asterisk's log
    shows (``robot_call_id=******0000.12-…``: each ``*`` stands for one digit)."""
    every = transcripts(transcripts_dir)
    exact = [p for p in every if p.stem == call_id]
    if exact:
        return exact[-1]
    pattern = re.escape(call_id).replace(r"\*", r"\d")
    matches = [p for p in every if re.match(pattern, p.stem)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ExportError(f"{transcripts_dir}: no transcript of a call {call_id!r} "
                          "(`ivr calls list` shows the calls; transcripts older than IVR_RETENTION_DAYS are purged)")
    names = ", ".join(p.stem for p in matches[:5])
    raise ExportError(f"{transcripts_dir}: {len(matches)} calls match {call_id!r} ({names}…): give more of the ID")


# ---------------------------------------------------------------- writing the call file
def _q(text: str) -> str:
    """A YAML double-quoted scalar (JSON's string syntax is YAML's)."""
    return json.dumps(text, ensure_ascii=False)


def _comment(text: str) -> str:
    return " ".join(text.split())[:160]


def export_call(
    settings: Settings,
    call_id: str,
    out_dir: Path,
    *,
    caller_id: str | None = None,
    text_only: bool = False,
) -> ExportResult:
    """Write ``<out_dir>/<call_id>.yaml`` (and its audio under ``<out_dir>/audio/``) for a finished call.

    ``caller_id``: a test number to put in (default: a placeholder; the robot never keeps the caller's
    number). ``text_only``: the recognized words as ``say`` turns even where the recording was kept
    (the anonymized form, fit for committing once the placeholders hold test data).
    """
    path = find_call(settings.transcripts_dir, call_id)
    call_id = path.stem
    entries = read_transcript(path)
    end = next((e for e in reversed(entries) if e["who"] == "system" and e.get("outcome")), None)
    if end is None:
        raise ExportError(f"{path}: the call has not ended (no outcome line): export it once it has")
    target = out_dir / f"{_safe(call_id)}.yaml"
    result = ExportResult(target)
    turns: list[str] = []
    said: list[str] = []
    pending: list[str] = []  # the robot's lines since the last caller turn, as comments
    for entry in entries:
        who, text = entry["who"], str(entry.get("text", ""))
        if who == "robot":
            if text:
                pending.append(f"  # robot: {_comment(text)}")
                if "*" not in text and text not in said:  # a masked line can never match what is said again
                    said.append(text)
            continue
        if who != "caller":
            continue
        turns.extend(pending)
        pending = []
        turns.append(_caller_turn(settings, call_id, entry, out_dir, text_only, result))
    turns.extend(pending)
    if end.get("outcome") == "caller_hangup":
        turns.append("  - hangup: true")
    locale = str(end.get("locale", ""))
    caller = str(end.get("caller", ""))
    if caller_id is not None:
        caller_line = _q(caller_id)
    elif caller in ("", "(withheld)"):
        caller_line = '""'
    else:
        caller_line = _q(f"{PLACEHOLDER}: a test caller ID (this caller's number ended in {caller[-4:]})>")
        result.placeholders.append("caller_id: the caller's number is never kept; put in a test customer's "
                                   "(or export with --caller-id)")
    lines = [
        CALL_DATA_HEADER,
        f"# Exported from call {call_id} ({path.parent.name}) by `ivr calls export`. `expect` says what the",
        "# robot did: correct it into what it should have done.",
    ]
    if result.placeholders:
        lines.append(f"# {len(result.placeholders)} placeholder(s) to fill in with test data before replaying:")
        lines += [f"#   - {p}" for p in result.placeholders]
    lines.append(f"caller_id: {caller_line}")
    if locale in LOCALES:
        lines.append(f"locale: {locale}")
    lines.append("turns:")
    lines += turns or ["  []"]
    lines.append("expect:")
    lines.append(f"  outcome: {end['outcome']}" + (f"    # reason: {end['reason']}" if end.get("reason") else ""))
    if said:
        lines.append("  said:")
        lines += [f"    - {_q(s)}" for s in said]
    private_dir(out_dir)
    write_private_text(target, "\n".join(lines) + "\n")
    return result


def _caller_turn(
    settings: Settings, call_id: str, entry: dict[str, Any], out_dir: Path, text_only: bool, result: ExportResult,
) -> str:
    text = str(entry.get("text", ""))
    secret = bool(entry.get("secret"))
    heard = f"    # heard: {_q(text)}" if text else ""
    if entry.get("intent"):
        heard += f" → {entry['intent']}"
    if entry.get("keypad"):
        masked = bool(entry.get("masked")) or secret or (len(text) > 1 and set(text) == {"*"})
        if masked:
            what = "secret keys" if secret else "keys the transcript masked"
            result.placeholders.append(f"dtmf: {len(text)} {what} (e.g. a demo customer's ID digits)")
            return f"  - dtmf: {_q(f'{PLACEHOLDER}: {len(text)} {what}>')}"
        if not text:
            return f"  - silence: {SILENCE_S}    # no key"
        return f"  - dtmf: {_q(text)}" + (f"    # → {entry['intent']}" if entry.get("intent") else "")
    if secret:
        # Spoken in answer to a secret question (ID digits): neither the recording nor the words.
        result.placeholders.append("a spoken secret (ID digits): key a test customer's digits instead")
        result.notes.append(f"caller turn {entry.get('recording', '?')}: spoken in answer to a secret question; "
                            "its recording and words are left out (a placeholder turn stands in)")
        return f"  - dtmf: {_q(f'{PLACEHOLDER}: the secret the caller said (its recording is not exported)>')}"
    recording = entry.get("recording")
    wav = settings.spool_dir / f"{call_id}-{recording}.wav" if recording else None
    if wav is not None and not text_only and wav.is_file():
        name = f"audio/{_safe(call_id)}-{recording}.wav"
        private_dir(out_dir / "audio")
        copy_as_8k(wav, out_dir / name)
        os.chmod(out_dir / name, 0o600)
        result.audio.append(out_dir / name)
        return f"  - audio: {name}{heard or '    # heard: nothing the recognizer knew'}"
    if entry.get("silence"):
        return f"  - silence: {SILENCE_S}"
    if text and "*" not in text:
        return f"  - say: {_q(text)}" + (f"    # → {entry['intent']}" if entry.get("intent") else "")
    why = "masked in the transcript" if text else "not recognized"
    result.placeholders.append(f"say: the caller's words ({why}, no recording kept)")
    return f"  - say: {_q(f'{PLACEHOLDER}: the words the caller said ({why})>')}"


def _safe(call_id: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.-]", "_", call_id)

