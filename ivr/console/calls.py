"""Calls and the dashboard, from the robot's own masked transcripts (``<transcripts_dir>/<day>/<call>.jsonl``,
read with ``ivr calls list``'s functions), and "add as a phrasing of intent X" into the draft's NLU data.

Figures per day and locale: calls, containment (calls completed without a person), transfers by reason,
verification failures (calls that ended on ``verification_failed``), average caller turns and duration
(first to last transcript line), compute latency percentiles (``compute_ms`` on the robot's first line of
each reply: the caller's input handed over -> the reply ready to play). A call's release is the ``release``
of its last (system) line. Perceived latency (end of speech -> first sound) is not in the transcripts: see
the robot's /metrics.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ivr.console.drafts import DraftError, check_locale, draft_lock
from ivr.masking import mask_text
from ivr.testing.export import CallSummary, ExportError, read_transcript, summarize, transcripts

NOT_UNDERSTOOD_CONFIDENCE = 0.5  # below this an intent is taken as not understood (Rasa's fallback: 0.3)
NOT_UNDERSTOOD_INTENTS = frozenset({"nlu_fallback", "out_of_scope"})
MAX_PHRASING = 200
_MASKED = re.compile(r"\*")


@dataclass(frozen=True)
class Turn:
    who: str
    text: str
    at_s: float  # seconds since the call's first line
    intent: str = ""
    confidence: float | None = None
    keypad: bool = False
    not_understood: bool = False


@dataclass(frozen=True)
class CallView:
    summary: CallSummary
    duration_s: float
    turns: list[Turn]
    release: int | None = None  # the release that served the call (ivr serve); None: the working copy
    compute_ms: tuple[int, ...] = ()  # per caller turn: input handed over -> reply ready
    perceived_ms: tuple[int, ...] = ()  # per caller turn: the caller's last word -> reply (end-of-turn wait + compute)


def _not_understood(entry: dict[str, Any]) -> bool:
    if entry.get("who") != "caller" or entry.get("keypad") or entry.get("secret") or entry.get("masked"):
        return False
    text = str(entry.get("text", ""))
    if not text.strip() or _MASKED.search(text):
        return False
    intent = str(entry.get("intent") or "")
    confidence = entry.get("intent_confidence")
    return (not intent or intent in NOT_UNDERSTOOD_INTENTS
            or (isinstance(confidence, int | float) and confidence < NOT_UNDERSTOOD_CONFIDENCE))


def call_view(path: Path) -> CallView:
    entries = read_transcript(path)
    start = float(entries[0].get("t", 0)) if entries else 0.0
    turns = []
    for e in entries:
        if e["who"] == "system" and not e.get("text"):
            continue
        confidence = e.get("intent_confidence")
        turns.append(Turn(str(e["who"]), mask_text(str(e.get("text", ""))), float(e.get("t", start)) - start,
                          str(e.get("intent") or ""), float(confidence) if confidence is not None else None,
                          bool(e.get("keypad")), _not_understood(e)))
    end = float(entries[-1].get("t", start)) if entries else start
    release = next((e.get("release") for e in reversed(entries) if e.get("who") == "system"), None)
    compute, perceived = (
        tuple(int(e[key]) for e in entries if e.get("who") == "robot" and isinstance(e.get(key), int | float))
        for key in ("compute_ms", "perceived_ms")
    )
    return CallView(summarize(path), end - start, turns, release if isinstance(release, int) else None, compute,
                    perceived)


def percentile(values: list[int], q: float) -> int | None:
    """The nearest-rank percentile (``q`` in 0..100) of ``values``; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Filters:
    day_from: str = ""
    day_to: str = ""
    outcome: str = ""
    intent: str = ""
    locale: str = ""

    def keep(self, s: CallSummary) -> bool:
        return ((not self.day_from or s.day >= self.day_from) and (not self.day_to or s.day <= self.day_to)
                and (not self.outcome or s.outcome == self.outcome)
                and (not self.intent or self.intent in s.intents) and (not self.locale or s.locale == self.locale))


def list_views(transcripts_dir: Path, filters: Filters, limit: int = 500) -> list[CallView]:
    """The newest calls first, filtered; unreadable transcripts are skipped."""
    out = []
    for path in reversed(transcripts(transcripts_dir)):
        try:
            day = dt.date.fromisoformat(path.parent.name).isoformat()
        except ValueError:
            continue
        if (filters.day_from and day < filters.day_from) or (filters.day_to and day > filters.day_to):
            continue
        try:
            view = call_view(path)
        except ExportError:
            continue
        if filters.keep(view.summary):
            out.append(view)
    out.sort(key=lambda v: (v.summary.started, v.summary.call_id), reverse=True)
    return out[:limit]


@dataclass
class DayStats:
    day: str
    locale: str
    calls: int = 0
    completed: int = 0
    transfers: Counter[str] = field(default_factory=Counter)
    verification_failures: int = 0
    turns: int = 0
    duration_s: float = 0.0
    compute_ms: list[int] = field(default_factory=list)
    perceived_ms: list[int] = field(default_factory=list)

    @property
    def perceived_p50_ms(self) -> int | None:
        return percentile(self.perceived_ms, 50)

    @property
    def perceived_p95_ms(self) -> int | None:
        return percentile(self.perceived_ms, 95)

    @property
    def compute_p50_ms(self) -> int | None:
        return percentile(self.compute_ms, 50)

    @property
    def compute_p95_ms(self) -> int | None:
        return percentile(self.compute_ms, 95)

    @property
    def containment(self) -> float:
        return self.completed / self.calls if self.calls else 0.0

    @property
    def transfer_rate(self) -> float:
        return sum(self.transfers.values()) / self.calls if self.calls else 0.0

    @property
    def avg_turns(self) -> float:
        return self.turns / self.calls if self.calls else 0.0

    @property
    def avg_duration_s(self) -> float:
        return self.duration_s / self.calls if self.calls else 0.0


def dashboard(views: Iterable[CallView]) -> list[DayStats]:
    """Per day and locale, newest day first."""
    stats: dict[tuple[str, str], DayStats] = defaultdict(lambda: DayStats("", ""))
    for v in views:
        s = v.summary
        key = (s.day, s.locale or "?")
        row = stats[key]
        if not row.day:
            row.day, row.locale = key
        row.calls += 1
        row.completed += s.outcome == "completed"
        if s.outcome == "transfer":
            row.transfers[s.reason or "unspecified"] += 1
        row.verification_failures += s.reason == "verification_failed"
        row.turns += s.caller_turns
        row.duration_s += v.duration_s
        row.compute_ms.extend(v.compute_ms)
        row.perceived_ms.extend(v.perceived_ms)
    return sorted(stats.values(), key=lambda r: (r.day, r.locale), reverse=False)[::-1]


def svg_bars(rows: list[DayStats], width: int = 640, bar_h: int = 18) -> str:
    """An inline SVG: containment per day and locale (green) and transfer rate (amber). Numbers only: the
    caller's words never reach it, and it is built from escaped text."""
    label_w, pad = 150, 4
    height = max(1, len(rows)) * (2 * bar_h + pad) + 20
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             'aria-label="containment and transfer rate per day and locale">']
    y = 4
    scale = width - label_w - 60
    for r in rows:
        label = f"{r.day} {r.locale}"
        label = label.replace("&", "&amp;").replace("<", "&lt;")
        parts.append(f'<text x="0" y="{y + bar_h - 4}" font-size="12">{label}</text>')
        for value, colour, name in ((r.containment, "#2e7d32", "contained"), (r.transfer_rate, "#f9a825",
                                                                               "transferred")):
            parts.append(f'<rect x="{label_w}" y="{y}" width="{value * scale:.1f}" height="{bar_h - 2}" '
                         f'fill="{colour}"><title>{name} {value:.0%}</title></rect>')
            parts.append(f'<text x="{label_w + value * scale + 4:.1f}" y="{y + bar_h - 4}" font-size="11">'
                         f'{value:.0%} {name}</text>')
            y += bar_h
        y += pad
    parts.append("</svg>")
    return "".join(parts)


# ---------------------------------------------------------------- phrasings into the draft
def intents(dialogs_dir: Path, locale: str) -> list[str]:
    from ivr.asr.grammar import GrammarError, load_nlu_examples

    try:
        return sorted(load_nlu_examples(dialogs_dir, check_locale(locale)))
    except GrammarError:
        return []


def add_phrasing(dialogs_dir: Path, locale: str, intent: str, text: str, *, lock_dir: Path) -> str:
    """Append ``text`` to ``intent``'s examples in ``data/nlu.yml`` of the draft, in place; the clean text."""
    from ivr.asr.grammar import GrammarError, load_nlu_examples
    from ivr.dialogue.heldout import HELDOUT_FILE, HeldoutError, load_heldout, training_twin

    check_locale(locale)
    phrase = " ".join(text.split())
    if not phrase:
        raise DraftError("the phrasing is empty")
    if len(phrase) > MAX_PHRASING:
        raise DraftError(f"the phrasing has {len(phrase)} characters; at most {MAX_PHRASING}")
    if _MASKED.search(phrase) or re.search(r"[\x00-\x1f\x7f\[\]{}]", phrase):
        raise DraftError("the phrasing holds masked digits or characters the NLU data reserves ([ ] { } *)")
    path = dialogs_dir / locale / "data" / "nlu.yml"
    with draft_lock(lock_dir, locale):
        try:
            examples = load_nlu_examples(dialogs_dir, locale)
        except GrammarError as exc:
            raise DraftError(str(exc)) from None
        if intent not in examples:
            raise DraftError(f"no intent {intent!r} in {path}")
        for other, phrases in examples.items():
            if phrase in phrases:
                raise DraftError(f"{phrase!r} is already a phrasing of {other}")
        try:
            held = [text for text, _intent in load_heldout(dialogs_dir, locale)]
        except HeldoutError:
            held = []
        twin = training_twin(phrase, held, locale)
        if twin is not None:
            raise DraftError(f"{phrase!r} repeats the held-out phrasing {twin!r} ({HELDOUT_FILE}), which measures "
                             "accuracy and must stay unseen in training")
        content = path.read_text(encoding="utf-8")
        root = yaml.compose(content, Loader=yaml.SafeLoader)
        node = _examples_node(root, intent)
        if node is None or node.style != "|":
            raise DraftError(f"{path}: the examples of {intent} are not a '|' block; add it by hand")
        lines = content.splitlines(keepends=True)
        first = lines[node.start_mark.line + 1]
        indent = first[: len(first) - len(first.lstrip())]
        end = node.end_mark.line  # the line after the block's last line (0-based)
        while end > node.start_mark.line + 1 and not lines[end - 1].strip():
            end -= 1
        lines.insert(end, f"{indent}- {phrase}\n")
        updated = "".join(lines)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(updated, encoding="utf-8")
        try:
            reread = yaml.safe_load(updated)
            ok = any(isinstance(item, dict) and item.get("intent") == intent
                     and f"- {phrase}" in str(item.get("examples", "")).splitlines() for item in reread["nlu"])
        except (yaml.YAMLError, KeyError, TypeError):
            ok = False
        if not ok:
            tmp.unlink()
            raise DraftError(f"{path}: the phrasing could not be added safely; nothing was changed")
        os.replace(tmp, path)
    return phrase


def _examples_node(root: yaml.Node | None, intent: str) -> yaml.ScalarNode | None:
    if not isinstance(root, yaml.MappingNode):
        return None
    for key, value in root.value:
        if key.value == "nlu" and isinstance(value, yaml.SequenceNode):
            for item in value.value:
                if not isinstance(item, yaml.MappingNode):
                    continue
                fields = {k.value: v for k, v in item.value}
                name = fields.get("intent")
                examples = fields.get("examples")
                if isinstance(name, yaml.ScalarNode) and name.value == intent and isinstance(examples,
                                                                                          yaml.ScalarNode):
                    return examples
    return None


OUTCOMES = ("completed", "transfer", "caller_hangup", "error", "unfinished")


def remove_phrasing(dialogs_dir: Path, locale: str, intent: str, text: str, *, lock_dir: Path) -> None:
    """Remove one example line of ``intent`` from the draft's ``data/nlu.yml``, in place; never its last."""
    check_locale(locale)
    path = dialogs_dir / locale / "data" / "nlu.yml"
    with draft_lock(lock_dir, locale):
        content = path.read_text(encoding="utf-8")
        try:
            root = yaml.compose(content, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            raise DraftError(f"{path}: not valid YAML: {exc}") from None
        node = _examples_node(root, intent)
        if node is None or node.style != "|":
            raise DraftError(f"no intent {intent!r} with a '|' block of examples in {path}")
        lines = content.splitlines(keepends=True)
        block = range(node.start_mark.line + 1, node.end_mark.line)
        examples = [i for i in block if i < len(lines) and lines[i].strip().startswith("- ")]
        found = [i for i in examples if lines[i].strip()[2:].strip() == text.strip()]
        if not found:
            raise DraftError(f"{text!r} is not a phrasing of {intent} in the draft (removed by someone else?)")
        if len(examples) == 1:
            raise DraftError(f"{text!r} is the last phrasing of {intent}: an intent needs at least one (add "
                             "another first)")
        del lines[found[0]]
        updated = "".join(lines)
        try:
            yaml.safe_load(updated)
        except yaml.YAMLError:
            raise DraftError(f"{path}: the phrasing could not be removed safely; nothing was changed") from None
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(updated, encoding="utf-8")
        os.replace(tmp, path)


def phrasings(dialogs_dir: Path, locale: str) -> dict[str, list[str]]:
    from ivr.asr.grammar import GrammarError, load_nlu_examples

    try:
        return load_nlu_examples(dialogs_dir, check_locale(locale))
    except GrammarError as exc:
        raise DraftError(str(exc)) from None
