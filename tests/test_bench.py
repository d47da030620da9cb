"""`ivr bench` runs and writes valid JSON (a short run; speed figures come from the command itself)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import SuiteDirs, make_demo_db


def test_short_bench_writes_valid_json(tmp_path: Path, suite_dirs: SuiteDirs) -> None:
    out = tmp_path / "bench.json"
    env = {
        **os.environ,
        "IVR_DATABASE_URL": make_demo_db(tmp_path / "accounts.db"),
        "IVR_SOUNDS_DIR": str(suite_dirs.sounds),
        "IVR_SPOOL_DIR": str(tmp_path / "spool"),
        "IVR_TRANSCRIPTS_DIR": str(suite_dirs.transcripts),
        "IVR_FIXED_DATE": "2026-11-28",
    }
    done = subprocess.run(
        [sys.executable, "-m", "ivr", "bench", "--calls", "2", "--duration", "10", "--locale", "ko-KR", "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == ""  # the report went to the file
    result = json.loads(out.read_text(encoding="utf-8"))
    (run,) = result["runs"]
    assert run["calls"] == 2 and run["calls_placed"] >= 2
    assert run["calls_unanswered"] == 0
    for figure in ("compute_latency_ms", "perceived_latency_ms", "asr_ms", "dialogue_ms", "tts_ms", "time_to_answer_ms"):
        assert set(run[figure]) >= {"p50", "p95", "p99", "max"}
    assert run["compute_latency_ms"]["n"] > 0
    # Perceived latency includes the recorder's whole-second silence wait.
    assert run["perceived_latency_ms"]["max"] >= 1000
    assert run["peak_rss_mb"] >= run["rss_before_mb"] > 0
    assert result["machine"]["cores"] == os.cpu_count()
