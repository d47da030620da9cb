"""Calls all at once through a FastAGI port (a pod's HAProxy, or one ``ivr serve``): the lockstep burst.

``python -m ivr.pod.loadtest --port 4573 --calls 20 --rounds 3 [--call FILE.yaml] [--json OUT]``

Each round places ``--calls`` copies of one recorded call at the same instant (the replay harness plays
Asterisk's side; recordings are handed over at once, so every caller's turn arrives with the others');
prints the compute latency (recording handed over -> the robot's next command to play) and outcomes.
``ivr bench`` measures one in-process robot; this measures whatever listens on the port.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ivr.config import PROJECT_ROOT
from ivr.testing.callfile import CallFile, load_call_file
from ivr.testing.harness import ScriptedAsterisk

DEFAULT_CALL = PROJECT_ROOT / "tests" / "calls" / "audio" / "ko-KR" / "balance_keypad.yaml"


def _percentile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def burst(host: str, port: int, call: CallFile, calls: int, rounds: int) -> dict[str, Any]:
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    for _ in range(rounds):
        peers = [ScriptedAsterisk(call, locale=call.locale or "ko-KR", text_mode=False, timeout_s=180) for _ in range(calls)]
        for report in await asyncio.gather(*(p.run(host, port) for p in peers)):
            latencies += report.compute_latencies_s
            outcomes[report.outcome] += 1
    ms = [v * 1000 for v in latencies]
    return {"calls": calls, "rounds": rounds, "turns": len(ms), "outcomes": dict(outcomes),
            "compute_ms": {"p50": round(_percentile(ms, 50), 1), "p95": round(_percentile(ms, 95), 1),
                           "max": round(max(ms, default=0.0), 1)}}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ivr.pod.loadtest", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--call", type=Path, default=DEFAULT_CALL)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    result = asyncio.run(burst(args.host, args.port, load_call_file(args.call), args.calls, args.rounds))
    text = json.dumps(result)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0 if set(result["outcomes"]) <= {"completed", "transfer"} else 1


if __name__ == "__main__":
    sys.exit(main())
