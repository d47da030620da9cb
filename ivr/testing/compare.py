"""The release check: the same call files replayed against two versions of the dialog (issue #18).

``ivr replay DIR --compare-releases A B`` (A, B: a release number, ``current``, or ``draft`` — the
working copy, ``dialogs/`` and ``models/rasa/``) replays each call against A, then against B, each time
with an in-process robot whose dialogs and Rasa models for the calls' locales are those of the release
(``ivr.releases``: ``models/releases/<locale>/<N>/``); other locales keep the working copy. Per call it
reports where the outcome, the caller's intents (from the robot's own transcript) or the robot's answers
differ. A call that was ``completed`` under A and ends ``transfer`` or ``error`` under B (or is left
unfinished when the caller's turns run out: ``caller_hangup``) is a regression: the check fails (exit 1).
``ivr publish --check DIR`` runs it (current release against the draft) before publishing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ivr.config import Settings
from ivr.testing.callfile import CallFile
from ivr.testing.harness import CallReport

# outcome under A -> outcomes under B that fail the check. A replayed call ends in caller_hangup when the
# caller's script ran out while the robot still listened: a call it completed before, it no longer ends.
WORSE = {"completed": ("transfer", "error", "caller_hangup")}


class CompareError(ValueError):
    """A side of the comparison cannot be set up (no such release, an untrained draft); names the problem."""


@dataclass(frozen=True)
class Side:
    """One version of a locale's dialog: its ``<locale>/`` dialog folder and its ``rasa/<locale>/`` model."""

    label: str
    dialogs: Path  # .../<locale>
    model_dir: Path  # .../rasa/<locale>


def resolve_side(settings: Settings, locale: str, spec: str) -> Side:
    """``draft`` (the working copy, whose model must be trained on its present files), ``current`` or N."""
    from ivr.releases import ReleaseError, ReleaseStore

    if spec == "draft":
        from ivr.dialogue.train import fingerprint, model_dir, model_path, stored_fingerprint

        if not model_path(settings.models_dir, locale).is_file() or stored_fingerprint(
                settings.models_dir, locale) != fingerprint(settings.dialogs_dir, locale):
            raise CompareError(f"{settings.dialogs_dir / locale}: the draft's model is not trained on its present "
                               f"files: `ivr train --locale {locale}` first")
        return Side("draft", settings.dialogs_dir / locale, model_dir(settings.models_dir, locale))
    store = ReleaseStore(settings)
    try:
        if spec == "current":
            release = store.current(locale)
            if release is None:
                raise CompareError(f"{locale}: no release is current (nothing published yet): compare with `draft` "
                                   "or a release number")
        elif spec.isdigit():
            release = store.get(locale, int(spec))
        else:
            raise CompareError(f"{spec!r}: a release is a number, `current` or `draft`")
        store.verify(release)
    except ReleaseError as exc:
        raise CompareError(str(exc)) from exc
    return Side(f"release {release.number}", release.dialogs_dir / locale, release.model.parent)


@contextlib.contextmanager
def side_settings(settings: Settings, sides: dict[str, Side]) -> Iterator[Settings]:
    """Settings whose dialogs and models folders hold ``sides`` (per locale) and the working copy for the
    other locales: a temporary folder of symbolic links. Transcripts go to a folder of their own there."""
    with tempfile.TemporaryDirectory(prefix="ivr-compare-") as tmp:
        root = Path(tmp)
        dialogs, models = root / "dialogs", root / "models"
        dialogs.mkdir()
        (models / "rasa").mkdir(parents=True)
        for child in settings.dialogs_dir.iterdir():
            if child.name not in sides:
                (dialogs / child.name).symlink_to(child.resolve())
        for child in settings.models_dir.iterdir() if settings.models_dir.is_dir() else ():
            if child.name != "rasa":
                (models / child.name).symlink_to(child.resolve())
        rasa = settings.models_dir / "rasa"
        for child in rasa.iterdir() if rasa.is_dir() else ():
            if child.name not in sides:
                (models / "rasa" / child.name).symlink_to(child.resolve())
        for locale, side in sides.items():
            (dialogs / locale).symlink_to(side.dialogs.resolve())
            (models / "rasa" / locale).symlink_to(side.model_dir.resolve())
        yield dataclasses.replace(settings, dialogs_dir=dialogs, models_dir=models,
                                  transcripts_dir=root / "transcripts")


async def replay_side(settings: Settings, calls: Sequence[CallFile], *, text_mode: bool) -> list[CallReport]:
    """Each call against an in-process robot on ``settings``; each report carries what the robot heard
    and the intent it read per caller turn (from its transcript)."""
    from ivr.testing.replay import _one, replay_settings, running_robot

    settings = replay_settings(settings)
    async with running_robot(settings, text_input=text_mode) as (host, port, robot):
        render = robot.parts.synthesizer.render
        return [await _one(call, settings, (host, port), text_mode, render, settings.transcripts_dir)
                for call in calls]


@dataclass
class CallComparison:
    call: str
    a: dict[str, Any]
    b: dict[str, Any]
    differences: list[str] = field(default_factory=list)
    worse: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"call": self.call, "a": self.a, "b": self.b, "differences": self.differences, "worse": self.worse}


def _summary(report: CallReport) -> dict[str, Any]:
    callers = [e for e in report.events if e.get("who") == "caller" and e.get("kind") != "hangup"]
    return {
        "outcome": report.outcome,
        "transfer_reason": report.transfer_reason,
        "intents": [e.get("intent", "") for e in callers],
        "said": [e["text"] for e in report.events if e.get("who") == "robot" and e.get("text")],
        "errors": list(report.errors),
    }


def compare_reports(call: CallFile, a: CallReport, b: CallReport) -> CallComparison:
    sa, sb = _summary(a), _summary(b)
    out = CallComparison(str(call.path), sa, sb)
    if sa["outcome"] != sb["outcome"] or sa["transfer_reason"] != sb["transfer_reason"]:
        ra = f" ({sa['transfer_reason']})" if sa["transfer_reason"] else ""
        rb = f" ({sb['transfer_reason']})" if sb["transfer_reason"] else ""
        out.differences.append(f"outcome {sa['outcome']}{ra} -> {sb['outcome']}{rb}")
    for turn, (ia, ib) in enumerate(zip(sa["intents"], sb["intents"], strict=False), 1):
        if ia != ib:
            out.differences.append(f"caller turn {turn}: intent {ia or '-'} -> {ib or '-'}")
    for index, (ta, tb) in enumerate(zip(sa["said"], sb["said"], strict=False), 1):
        if ta != tb:
            out.differences.append(f"robot line {index}: {ta!r} -> {tb!r}")
            break
    else:
        if len(sa["said"]) != len(sb["said"]):
            out.differences.append(f"the robot said {len(sa['said'])} lines, then {len(sb['said'])}")
    for side, summary in (("A", sa), ("B", sb)):
        out.differences += [f"{side}: replay error: {e}" for e in summary["errors"]]
    out.worse = sb["outcome"] in WORSE.get(sa["outcome"], ())
    return out


@dataclass
class ComparisonReport:
    a_label: str
    b_label: str
    calls: list[CallComparison]

    @property
    def regressions(self) -> list[CallComparison]:
        return [c for c in self.calls if c.worse]

    def to_json(self) -> dict[str, Any]:
        return {"a": self.a_label, "b": self.b_label, "calls": [c.to_json() for c in self.calls],
                "differing": sum(bool(c.differences) for c in self.calls),
                "regressions": [c.call for c in self.regressions]}

    def table(self) -> str:
        rows = [("call", f"A: {self.a_label}", f"B: {self.b_label}", "verdict", "first difference")]
        for c in self.calls:
            verdict = "WORSE" if c.worse else ("differs" if c.differences else "same")
            rows.append((Path(c.call).name, c.a["outcome"], c.b["outcome"], verdict,
                         c.differences[0] if c.differences else ""))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows]
        lines.insert(1, "-" * min(120, sum(widths) + 8 + len(rows[0][4])))
        for c in self.calls:
            for more in c.differences[1:]:
                lines.append(f"  {Path(c.call).name}: {more}")
        lines.append(f"{len(self.calls)} calls, {sum(bool(c.differences) for c in self.calls)} differ, "
                     f"{len(self.regressions)} completed under A and not under B (transfer/error)")
        return "\n".join(lines)


async def compare_releases(
    settings: Settings, calls: Sequence[CallFile], a: str, b: str, *, text_mode: bool
) -> ComparisonReport:
    """Replay ``calls`` against A, then B (see the module's text); the calls' locales pick the releases."""
    locales = sorted({c.locale or settings.locale for c in calls})
    sides = {label: {loc: resolve_side(settings, loc, label) for loc in locales} for label in (a, b)}
    reports: dict[str, list[CallReport]] = {}
    for label in (a, b):
        with side_settings(settings, sides[label]) as side:
            reports[label] = await replay_side(side, calls, text_mode=text_mode)
    names = {label: ", ".join(f"{loc} {s.label}" for loc, s in sides[label].items()) for label in (a, b)}
    return ComparisonReport(names[a], names[b], [compare_reports(call, ra, rb) for call, ra, rb in
                                                 zip(calls, reports[a], reports[b], strict=True)])


def print_report(report: ComparisonReport, *, as_json: bool) -> None:
    print(json.dumps(report.to_json(), ensure_ascii=False, indent=1) if as_json else report.table())


def check_before_publish(settings: Settings, locale: str, folder: Path, say: Callable[[str], None] = print) -> bool:
    """``ivr publish --check DIR``: the folder's call files of ``locale`` against the current release and
    the draft (trained here if needed). False when a call does worse under the draft. Text mode unless a
    call has an audio turn (then real recognition, for all of them)."""
    from ivr.dialogue.train import train_locale
    from ivr.releases import ReleaseStore
    from ivr.testing.commands import call_file_paths
    from ivr.testing.replay import load_all

    calls = [c for c in load_all(call_file_paths([str(folder)])) if (c.locale or settings.locale) == locale]
    if not calls:
        say(f"{locale}: no call files of {locale} in {folder}: nothing to check")
        return True
    if not ReleaseStore(settings).current_number(locale):
        say(f"{locale}: no current release to compare the draft with: nothing to check")
        return True
    result = train_locale(settings.dialogs_dir, settings.models_dir, locale)
    if result.trained:
        say(f"{locale}: trained the draft's model in {result.seconds:.1f} s")
    text_mode = not any(t.kind == "audio" for c in calls for t in c.turns)
    say(f"{locale}: replaying {len(calls)} call(s) from {folder} against the current release and the draft"
        + (" (text)" if text_mode else " (audio, real recognition)"))
    report = asyncio.run(compare_releases(settings, calls, "current", "draft", text_mode=text_mode))
    say(report.table())
    return not report.regressions
