"""How much a live reload delays calls: ``python -m ivr.testing.reload_measure [--calls N] [--reloads R]``.

Builds a private workspace (a copy of ``dialogs/`` and of the locale's trained model, under a temporary
folder or ``--workspace``), publishes release 1 (the dialog as it is) and release 2 (one changed
greeting; trained once, holding the repository's training lock), starts the robot as ``ivr serve`` does
(in-process: releases, FastAGI over TCP, text input) and keeps ``--calls`` callers calling (the balance
call: ask, key the ID digits, goodbye). Every ``--every`` seconds it switches the current release
between 1 and 2 and asks the server to reload (what ``ivr publish``/``ivr rollback`` do), ``--reloads``
times. Reported: each reload's load time, and the compute latency of every turn (recording handed over
→ reply starts) of the calls that overlapped a reload against the calls that did not, plus the calls'
outcomes. JSON to ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ivr.config import PROJECT_ROOT, load_settings
from ivr.testing.callfile import CallFile, Expectation, Turn
from ivr.testing.harness import CallReport, ScriptedAsterisk

LOCALE = "en-US"
CALLER = "15550000002"  # demo customer, ID digits 7305


def _prepare(root: Path) -> Any:
    from ivr.accounts.store import SqlAccountStore
    from ivr.dialogue.train import training_lock
    from ivr.releases import ReleaseStore

    settings = dataclasses.replace(
        load_settings(environ={}),
        dialogs_dir=root / "dialogs", models_dir=root / "models", database_url=f"sqlite:///{root / 'accounts.db'}",
        sounds_dir=root / "sounds", spool_dir=root / "spool", transcripts_dir=root / "transcripts",
        log_dir=root / "log", tts_dynamic_sidecars=True, asr_dither=False, fixed_date="2026-11-28",
        http_port=0, retention_days=0)
    store = ReleaseStore(settings)
    if store.current_number(LOCALE) >= 2:
        return settings
    shutil.copytree(PROJECT_ROOT / "dialogs", root / "dialogs", ignore=shutil.ignore_patterns("server"),
                    dirs_exist_ok=True)
    repo_model = PROJECT_ROOT / "models" / "rasa" / LOCALE
    if repo_model.is_dir():
        shutil.copytree(repo_model, root / "models" / "rasa" / LOCALE, dirs_exist_ok=True)
    accounts = SqlAccountStore(settings.database_url)
    accounts.init_schema()
    accounts.import_file(PROJECT_ROOT / "ivr" / "accounts" / "demo.yaml")
    accounts.close()
    with training_lock(PROJECT_ROOT / "models"):
        store.publish(LOCALE, author="measure", message="as shipped", say=print)
        domain = root / "dialogs" / LOCALE / "domain.yml"
        anchor = '\n  utter_greet:\n    - text: "'
        domain.write_text(domain.read_text(encoding="utf-8").replace(anchor, anchor + "[v2] "), encoding="utf-8")
        store.publish(LOCALE, author="measure", message="new greeting", say=print)
    return settings


def _call() -> CallFile:
    turns = (Turn("say", "I'd like to know my account balance"), Turn("dtmf", "7305#"),
             Turn("say", "no thanks, goodbye"))
    return CallFile(Path("balance.yaml"), CALLER, LOCALE, turns, Expectation(outcome="completed"))


async def _measure(settings: Any, callers: int, reloads: int, every_s: float) -> dict[str, Any]:
    from ivr.app import build_robot
    from ivr.releases import CURRENT_FILE, locale_root

    robot = build_robot(settings, text_input=True, releases=True)
    await robot.warm_up()
    await robot.start("127.0.0.1", 0, http=True)
    assert robot.server is not None and robot.releases is not None
    port = robot.server.port
    calls: list[tuple[float, float, CallReport]] = []
    windows: list[tuple[float, float]] = []
    load_s: list[float] = []
    stop = asyncio.Event()

    async def caller() -> None:
        while not stop.is_set():
            started = time.monotonic()
            report = await ScriptedAsterisk(_call(), locale=LOCALE, text_mode=True).run("127.0.0.1", port)
            calls.append((started, time.monotonic(), report))

    tasks = [asyncio.create_task(caller()) for _ in range(callers)]
    pointer = locale_root(settings.models_dir, LOCALE) / CURRENT_FILE
    try:
        await asyncio.sleep(every_s)
        for i in range(reloads):
            number = 1 if i % 2 else 2
            pointer.write_text(json.dumps({"number": number, "previous": 3 - number}))
            began = time.monotonic()
            result = await robot.releases.request_reload()
            windows.append((began, time.monotonic()))
            state = robot.releases._state[LOCALE]
            if state.current is not None and state.current.number == number:
                load_s.append(state.current.loaded_s)
            print(f"reload {i + 1}: {result[LOCALE]}", file=sys.stderr)
            await asyncio.sleep(every_s)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await robot.stop(grace_s=10)

    def overlaps(start: float, end: float) -> bool:
        return any(start < w_end and end > w_start for w_start, w_end in windows)

    during = [lat for s, e, r in calls if overlaps(s, e) for lat in r.compute_latencies_s]
    outside = [lat for s, e, r in calls if not overlaps(s, e) for lat in r.compute_latencies_s]
    outcomes: dict[str, int] = {}
    for _s, _e, r in calls:
        key = r.outcome + (f" ({r.transfer_reason})" if r.transfer_reason else "") + (" ERRORS" if r.errors else "")
        outcomes[key] = outcomes.get(key, 0) + 1

    def summary(values: list[float]) -> dict[str, float | int]:
        if not values:
            return {"turns": 0}
        ordered = sorted(values)
        return {"turns": len(values), "p50_ms": round(1000 * statistics.median(ordered), 1),
                "p95_ms": round(1000 * ordered[int(0.95 * (len(ordered) - 1))], 1),
                "max_ms": round(1000 * ordered[-1], 1)}

    return {
        "locale": LOCALE, "callers": callers, "reloads": len(windows), "every_s": every_s,
        "release_load_s": [round(x, 2) for x in load_s],
        "reload_window_s": [round(e - s, 2) for s, e in windows],
        "calls": len(calls), "outcomes": outcomes,
        "turn_compute_during_reload": summary(during), "turn_compute_outside_reload": summary(outside),
        "dialogue_timeout_s": settings.dialogue_timeout_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ivr.testing.reload_measure", description=__doc__)
    parser.add_argument("--calls", type=int, default=4, help="simultaneous callers (default 4)")
    parser.add_argument("--reloads", type=int, default=6, help="how many release switches (default 6)")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between switches (default 5)")
    parser.add_argument("--workspace", type=Path, help="a folder to keep the releases in (default: temporary)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    from ivr.logs import configure_logging

    configure_logging("WARNING", log_format="text")
    root = args.workspace or Path(tempfile.mkdtemp(prefix="ivr-reload-"))
    root.mkdir(parents=True, exist_ok=True)
    settings = _prepare(root)
    figures = asyncio.run(_measure(settings, args.calls, args.reloads, args.every))
    text = json.dumps(figures, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    if args.workspace is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
