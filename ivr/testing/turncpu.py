"""``python -m ivr.testing.turncpu``: where the CPU of one caller turn goes, stage by stage.

The bench's calls (``ivr.testing.bench.BENCH_CALLS``) are placed one after another on the real parts of
the robot (``ivr.app.build_robot``: Vosk with the per-state grammars, the in-process Rasa agent with its
custom actions, the account store, the prompt cache, the session, JSON logging) through an in-memory
channel whose caller speech is the synthesized WAV that ``ivr bench`` sends, ended as Asterisk's recorder
ends it (the robot's ``record_silence_s`` of silence after the last word; ``--recorder-silence``), decoded by the real
recognizer on the recognition threads (``--text``: the words themselves, as ``ivr bench --text``). Nothing else runs in the process, so the process CPU consumed
between two dialogue replies is the CPU of one caller turn (speaking the previous reply, listening,
recognizing, deciding, looking up, rendering, bookkeeping, logging).

Each stage is measured in CPU seconds (``time.thread_time`` of the thread doing it; the sum over all
threads for a turn), never in wall time, so the figures hold on a shared, busy machine:

- ``asr``: ``Recognizer.transcribe`` (grammar, decoding, results), on the recognition thread;
- ``rasa_nlu``, ``rasa_policies``, ``rasa_actions`` (the custom action's round trip through rasa_sdk's
  executor, the action itself, and the rest of Rasa's action run), ``rasa_tracker_store`` (tracker
  reads and writes), ``rasa_other`` (the rest of the turn on the agent's thread), all on that thread;
- ``lookup``: account-store calls, on the store's threads; ``tts``: ``Synthesizer.render``;
- ``logging``: log records handled (formatting, masking, writing);
- ``session``: the rest (the session's loop, the transcript, the channel, the event loops).

The probes wrap methods of this run's objects only (the agent's processor, tracker store and action
endpoint, the recognizer, the store, the synthesizer, the log handler); nothing is patched for other
code. Dither is off (``replay_settings``), so every run hears the same words.

``--json`` writes every turn's figures; the summary (medians per stage over all caller turns) goes to
stdout. Run it under ``flock /tmp/ivr-heavy.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import inspect
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ivr.config import Settings, load_settings
from ivr.parts import CallInfo, Expect, Recognition
from ivr.testing.memory import CallerAct, MemoryChannel

STAGES = (
    "asr", "rasa_nlu", "rasa_policies", "rasa_actions", "rasa_tracker_store", "rasa_other",
    "lookup", "tts", "logging", "session",
)


class StageClock:
    """CPU seconds per stage, summed over threads. A stage entered inside another one on the same thread
    pauses the outer one (exclusive times), so the stages of a turn add up to at most its CPU."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()
        self.totals: defaultdict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        stack: list[list[Any]] = self._local.__dict__.setdefault("stack", [])
        now = time.thread_time()
        if stack:
            outer = stack[-1]
            self._add(outer[0], now - outer[1])
        entry: list[Any] = [name, now]
        stack.append(entry)
        try:
            yield
        finally:
            now = time.thread_time()
            stack.pop()
            self._add(name, now - entry[1])
            if stack:
                stack[-1][1] = now

    def _add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.totals[name] += seconds

    def take(self) -> dict[str, float]:
        with self._lock:
            out = dict(self.totals)
            self.totals.clear()
        return out

    def wrap(self, owner: Any, method: str, name: str) -> None:
        """Time ``owner.method`` (this object only) as stage ``name``."""
        original = getattr(owner, method)
        if inspect.iscoroutinefunction(original):

            @functools.wraps(original)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                # Only the synchronous stretches on this thread count: an await hands the thread back.
                with self.stage(name):
                    return await original(*args, **kwargs)

            setattr(owner, method, timed_async)
        else:

            @functools.wraps(original)
            def timed(*args: Any, **kwargs: Any) -> Any:
                with self.stage(name):
                    return original(*args, **kwargs)

            setattr(owner, method, timed)


class _TimedHandler(logging.Handler):
    """Wraps the entry point's log handler: every record it handles counts as ``logging``."""

    def __init__(self, inner: logging.Handler, clock: StageClock) -> None:
        super().__init__(inner.level)
        self.inner = inner
        self.clock = clock

    def handle(self, record: logging.LogRecord) -> bool:
        with self.clock.stage("logging"):
            return bool(self.inner.handle(record))

    def emit(self, record: logging.LogRecord) -> None:  # pragma: no cover - handle() does it
        self.inner.emit(record)


class SpeechChannel(MemoryChannel):
    """The in-memory call, with the caller's speech given as WAV files decoded by the real recognizer
    (with the state's grammar, on the recognition threads), as the record-mode channel does."""

    def __init__(self, acts: list[CallerAct], parts: Any, wavs: dict[str, Path] | None) -> None:
        super().__init__(acts)
        self._parts = parts
        self._wavs = wavs  # None: text mode, the caller's words are "recognized" as they are

    async def listen(self, locale: str, expect: Expect, *, keypad_only: bool = False) -> Any:
        if self._keys or keypad_only or not self.acts or self.acts[0].kind != "say" or self._wavs is None:
            return await super().listen(locale, expect, keypad_only=keypad_only)
        act = self.acts.pop(0)
        self.recordings += 1
        wav = self._wavs[act.text]
        parts = self._parts

        def decode() -> Recognition:
            recognition: Recognition = parts.recognizer.transcribe(wav, locale, parts.grammar(locale, expect))
            return recognition

        from ivr.channel import Heard

        started = time.monotonic()
        recognition = await parts.asr_pool.run(decode)
        return Heard(recognition=recognition, asr_s=time.monotonic() - started, recording=self.recordings)


class TurnMeter:
    """The dialogue part, wrapped: every reply closes one turn (the process CPU since the previous
    reply, and the stages measured in it)."""

    def __init__(self, inner: Any, clock: StageClock, agent_thread_clock: int) -> None:
        self._inner = inner
        self._clock = clock
        self._agent_clock = agent_thread_clock
        self._mark = self._agent_mark = 0.0
        self.turns: list[dict[str, Any]] = []
        self._kind = "greeting"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def reset(self) -> None:
        self._clock.take()
        self._mark = time.process_time()
        self._agent_mark = time.clock_gettime(self._agent_clock)
        self._kind = "greeting"
        self.turns = []

    def _close(self, intent: str) -> None:
        now, agent_now = time.process_time(), time.clock_gettime(self._agent_clock)
        stages = self._clock.take()
        # the rest of the agent thread's CPU in this turn, besides the stages measured on it
        on_agent = sum(stages.get(s, 0.0) for s in ("rasa_nlu", "rasa_policies", "rasa_actions", "rasa_tracker_store"))
        stages["rasa_other"] = max(0.0, agent_now - self._agent_mark - on_agent)
        self.turns.append({"kind": self._kind, "intent": intent, "cpu_s": now - self._mark, "stages": stages})
        self._mark, self._agent_mark = now, agent_now

    async def start(self, call: CallInfo) -> Any:
        self.reset()
        reply = await self._inner.start(call)
        self._close(reply.intent)
        self._kind = "turn"
        return reply

    async def handle(self, call: CallInfo, user: Any) -> Any:
        reply = await self._inner.handle(call, user)
        self._close(reply.intent)
        return reply

    def end_of_call(self) -> None:
        self._kind = "call_end"
        self._close("")


def _instrument(robot: Any, clock: StageClock, locale: str) -> int:
    """Put the probes in; returns the CPU clock of the agent's thread."""
    parts = robot.parts
    clock.wrap(parts.recognizer, "transcribe", "asr")
    clock.wrap(parts.synthesizer, "render", "tts")
    store = robot.store
    for name in ("verification_subject", "verify_id_last4", "lookup_keyed_phone", "accounts", "loans",
                 "recent_transactions", "record_disclosure"):
        clock.wrap(store, name, "lookup")
    engine = parts.dialogue
    runner = engine._agents[locale]  # the locale's agent, loaded by warm_up
    agent = runner.agent
    processor = agent.processor
    clock.wrap(processor, "parse_message", "rasa_nlu")
    clock.wrap(processor, "_predict_next_with_tracker", "rasa_policies")
    clock.wrap(processor, "_run_action", "rasa_actions")
    for name in ("retrieve", "save"):
        clock.wrap(agent.tracker_store, name, "rasa_tracker_store")
    root = logging.getLogger()
    root.handlers[:] = [_TimedHandler(h, clock) for h in root.handlers]
    # The rest of the agent's thread: its CPU clock, less the stages measured on it.
    ident = runner._thread.ident
    assert ident is not None
    return time.pthread_getcpuclockid(ident)


async def _calls(
    settings: Settings, locale: str, calls: int, work: Path, text: bool, recorder_silence_s: float
) -> dict[str, Any]:
    from ivr.app import build_robot
    from ivr.testing.bench import BENCH_CALLS
    from ivr.testing.harness import copy_as_8k, end_as_recorded

    robot = build_robot(settings)
    await robot.warm_up()
    try:
        caller_id, turns = BENCH_CALLS[locale]
        wavs: dict[str, Path] | None = None if text else {}
        for i, turn in enumerate(turns):
            if turn.kind == "say" and wavs is not None:
                target = work / f"caller-{i}.wav"
                copy_as_8k(await robot.parts.synthesizer.render(turn.value, locale), target)
                end_as_recorded(target, recorder_silence_s)
                wavs[turn.value] = target
        clock = StageClock()
        meter = TurnMeter(robot.parts.dialogue, clock, _instrument(robot, clock, locale))
        robot.parts.dialogue = meter
        from ivr.session import CallSession

        outcomes: list[str] = []
        per_call: list[list[dict[str, Any]]] = []
        for n in range(calls + 1):  # the first call warms caches up and is not counted
            acts = [CallerAct.say(t.value) if t.kind == "say" else CallerAct.keys(t.value) for t in turns]
            channel = SpeechChannel(acts, robot.parts, wavs)
            session = CallSession(robot.parts, channel, CallInfo(f"turncpu-{n}", caller_id, locale))
            result = await session.run()  # its start() resets the meter
            meter.end_of_call()
            outcomes.append(result.outcome.value)
            if n:
                per_call.append(meter.turns)
        return {"outcomes": outcomes[1:], "calls": per_call}
    finally:
        await robot.stop(grace_s=5)


def summarise(per_call: list[list[dict[str, Any]]]) -> dict[str, Any]:
    turns = [t for call in per_call for t in call if t["kind"] == "turn"]
    out: dict[str, Any] = {"caller_turns": len(turns)}
    if not turns:
        return out
    for turn in turns:
        measured = sum(v for k, v in turn["stages"].items() if k != "session")
        turn["stages"]["session"] = max(0.0, turn["cpu_s"] - measured)
    out["turn_cpu_s"] = {
        "median": round(statistics.median(t["cpu_s"] for t in turns), 4),
        "mean": round(statistics.fmean(t["cpu_s"] for t in turns), 4),
        "max": round(max(t["cpu_s"] for t in turns), 4),
    }
    out["stage_cpu_s_mean"] = {
        s: round(statistics.fmean(t["stages"].get(s, 0.0) for t in turns), 4) for s in STAGES
    }
    by_intent: dict[str, list[float]] = defaultdict(list)
    for t in turns:
        by_intent[t["intent"] or "-"].append(t["cpu_s"])
    out["turn_cpu_s_median_by_intent"] = {k: round(statistics.median(v), 4) for k, v in sorted(by_intent.items())}
    for kind in ("greeting", "call_end"):
        rows = [t["cpu_s"] for call in per_call for t in call if t["kind"] == kind]
        if rows:
            out[f"{kind}_cpu_s_median"] = round(statistics.median(rows), 4)
    return out


def run(
    settings: Settings, locale: str, calls: int, *, text: bool = False, recorder_silence_s: float | None = None
) -> dict[str, Any]:
    from ivr.testing.replay import replay_settings

    with tempfile.TemporaryDirectory(prefix="ivr-turncpu-") as tmp:
        work = Path(tmp)
        db = work / "accounts.db"
        source = settings.database_url.removeprefix("sqlite:///")
        if settings.database_url.startswith("sqlite:///") and Path(source).is_file():
            shutil.copy(source, db)  # the demo customers; the run's audit rows stay in the copy
            url = f"sqlite:///{db}"
        else:
            url = settings.database_url
        settings = dataclasses.replace(
            replay_settings(settings), tts_dynamic_sidecars=False, database_url=url,
            transcripts_dir=work / "transcripts", spool_dir=work / "spool", lockout_failures=1_000_000,
        )
        if recorder_silence_s is None:
            recorder_silence_s = float(settings.record_silence_s)
        result = asyncio.run(_calls(settings, locale, calls, work, text, recorder_silence_s))
    summary = summarise(result["calls"])
    return {
        "command": " ".join(["python -m ivr.testing.turncpu", *sys.argv[1:]]),
        "machine": {"cores": os.cpu_count()},
        "locale": locale,
        "recognition": "text" if text else "vosk",
        "recorder_silence_s": recorder_silence_s,
        "trim_silence": settings.asr_trim_silence,
        "calls": calls,
        "outcomes": result["outcomes"],
        "summary": summary,
        "turns": result["calls"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ivr.testing.turncpu", description=__doc__.split("\n")[0])
    parser.add_argument("--locale", default="ko-KR", help="the bench call's locale (ko-KR: the Vosk model installed here)")
    parser.add_argument("--calls", type=int, default=10, help="calls measured (after one warm-up call)")
    parser.add_argument("--text", action="store_true",
                        help="the caller's words reach the dialogue as text (no recognition), as `ivr bench --text`: "
                             "the intended path, with the verification and the account look-ups")
    parser.add_argument("--recorder-silence", type=float, default=None, metavar="S",
                        help="silence at the end of each caller recording, as RECORD FILE's s= leaves it "
                             "(default: the robot's record_silence_s; 0: the synthesized speech alone)")
    parser.add_argument("--json", help="write every turn's figures here")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    from ivr.logs import configure_logging

    # As `ivr serve` logs (JSON lines), into the void: what counts is the work, not the terminal.
    configure_logging(args.log_level, stream=open(os.devnull, "w", encoding="utf-8"), log_format="json")
    result = run(load_settings(), args.locale, args.calls, text=args.text, recorder_silence_s=args.recorder_silence)
    if args.json:
        Path(args.json).write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "turns"}, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
