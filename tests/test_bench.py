"""`ivr bench` runs and writes valid JSON (short runs; speed figures come from the command itself)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ivr.cli import main
from ivr.testing.callfile import CallFile, Turn
from ivr.testing.harness import ScriptedAsterisk, trailing_quiet_s, wav_duration_s
from tests.conftest import SuiteDirs, make_demo_db

FIGURES = ("compute_latency_ms", "perceived_latency_ms", "server_compute_ms", "asr_ms", "dialogue_ms", "tts_ms",
           "lookup_ms", "time_to_answer_ms")


def bench(tmp_path: Path, suite_dirs: SuiteDirs, *args: str) -> dict[str, Any]:
    out = tmp_path / "bench.json"
    env = {
        **os.environ,
        "IVR_DATABASE_URL": make_demo_db(tmp_path / "accounts.db"),
        "IVR_SOUNDS_DIR": str(suite_dirs.sounds),
        "IVR_SPOOL_DIR": str(tmp_path / "spool"),
        "IVR_TRANSCRIPTS_DIR": str(suite_dirs.transcripts),
        "IVR_LOG_DIR": str(suite_dirs.log_file.parent),  # the Rasa servers' logs (--compare)
        "IVR_FIXED_DATE": "2026-11-28",
    }
    done = subprocess.run(
        [sys.executable, "-m", "ivr", "bench", *args, "--locale", "ko-KR", "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=1200, check=False,
    )
    (suite_dirs.log_file.parent / f"bench-{tmp_path.name}.log").write_text(done.stderr)  # test_zz_privacy.py scans it
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == ""  # the report went to the file
    result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    assert result["machine"]["cores"] == os.cpu_count()
    for run in result["runs"]:
        assert run["calls_unanswered"] == 0 and run["calls_placed"] >= run["calls"], run
        for figure in FIGURES:
            assert set(run[figure]) >= {"p50", "p95", "p99", "max"}, figure
        assert run["perceived_latency_ms"]["n"] > 0
        # the turns' parts are measured inside an in-process robot only (--workers: they run in the workers)
        assert (run["server_compute_ms"]["n"] > 0) == (run["workers"] == 0), run
        if run["media"] == "record":
            assert run["compute_latency_ms"]["n"] > 0
            # Perceived latency includes the recorder's whole-second silence wait.
            assert run["perceived_latency_ms"]["max"] >= 1000
        else:  # stream: every call streamed, and each caller's barge-in on the greeting stopped it
            assert run["calls_in_stream_mode"] == run["calls_placed"]
            assert run["barge_in_stop_ms"]["n"] == run["calls_placed"]
        assert run["peak_rss_mb"] > 0 and run["rss_before_mb"] > 0
        assert run["cpu_s_per_call_with_helpers"] >= run["cpu_s_per_call"] > 0
    return result


def test_short_bench_writes_valid_json(tmp_path: Path, suite_dirs: SuiteDirs) -> None:
    result = bench(tmp_path, suite_dirs, "--calls", "2", "--duration", "10", "--media", "record", "--no-idle")
    (run,) = result["runs"]
    assert (run["variant"], run["transport"], run["calls"], run["media"]) == ("default", "harness", 2, "record")
    assert "idle" not in run and run["barge_in_stop_ms"]["n"] == 0
    assert (run["grammars"], run["dialogue"], run["prompts"]) == (True, "in-process", "cached")
    assert "tts_worker" in run["helpers"]
    assert "comparisons" not in result
    # The bench call asks by voice and keys its ID digits: every call is "mixed", none by keypad alone.
    assert sum(run["served_by"].values()) == run["calls_placed"]
    assert run["keypad_share"] == round(
        (run["served_by"].get("keypad", 0) + run["served_by"].get("mixed", 0)) / run["calls_placed"], 3)


@pytest.mark.realtime  # stream callers barge in on the greeting: starved, the barge-in could come too late
def test_stream_bench_measures_barge_in_and_idle_calls(tmp_path: Path, suite_dirs: SuiteDirs) -> None:
    result = bench(tmp_path, suite_dirs, "--calls", "2", "--duration", "10", "--media", "stream")
    (run,) = result["runs"]
    assert run["media"] == "stream" and run["compute_latency_ms"]["n"] == 0  # no RECORD FILE to time
    # the idle figure comes from a robot process of its own, both callers silent together in stream mode
    idle = run["idle"]
    assert (idle["idle_calls"], idle["idle_calls_silent_together"], idle["idle_calls_in_stream_mode"]) == (2, 2, 2)
    assert idle["idle_errors"] == [] and idle["idle_window_s"] >= 2.9
    assert idle["idle_cpu_s"] > 0 and 0 <= idle["idle_core_share_per_call"] < 1


def test_compare_runs_every_variant_on_the_real_parts(tmp_path: Path, suite_dirs: SuiteDirs) -> None:
    result = bench(tmp_path, suite_dirs, "--compare", "--calls", "1", "--duration", "5", "--ramp", "0",
                   "--media", "record", "--no-idle")
    runs = {run["variant"]: run for run in result["runs"]}
    assert list(runs) == ["default", "stream", "free-recognition", "http-rasa", "uncached-prompts"]
    assert runs["stream"]["media"] == "stream" and runs["default"]["media"] == "record"
    assert runs["free-recognition"]["grammars"] is False and runs["default"]["grammars"] is True
    # HTTP Rasa: the Rasa server and the action server really ran the dialogue, in their own processes
    assert runs["http-rasa"]["dialogue"] == "http"
    assert runs["http-rasa"]["helpers"]["rasa_ko-KR"]["cpu_s"] > 0
    assert set(runs["http-rasa"]["helpers"]) >= {"rasa_actions", "rasa_ko-KR"}
    # the account lookups are timed where they run: in-process, or in the action server (not seen here)
    assert runs["default"]["lookup_ms"]["n"] > 0 and runs["http-rasa"]["lookup_ms"]["n"] == 0
    # uncached prompts: every prompt played was synthesized for the call; cached: none was
    assert runs["uncached-prompts"]["tts_cache"]["hits"] == 0 and runs["uncached-prompts"]["tts_cache"]["syntheses"] > 0
    assert runs["default"]["tts_cache"]["misses"] == 0
    questions = [c["question"] for c in result["comparisons"]]
    assert questions == ["record vs stream (full duplex)", "grammar vs free recognition", "in-process vs HTTP Rasa",
                         "cached vs uncached prompts"]
    assert result["comparisons"][0]["perceived_latency_ms_p95"] == {
        "default": runs["default"]["perceived_latency_ms"]["p95"], "stream": runs["stream"]["perceived_latency_ms"]["p95"],
    }
    first = result["comparisons"][1]
    assert first["compute_latency_ms_p95"] == {
        "default": runs["default"]["compute_latency_ms"]["p95"],
        "free-recognition": runs["free-recognition"]["compute_latency_ms"]["p95"],
    }


@pytest.mark.slow
def test_workers_bench_calls_robot_processes_of_its_own(tmp_path: Path, suite_dirs: SuiteDirs) -> None:
    """--workers 2: the calls reach `ivr serve --workers 2` (supervisor, two workers, HAProxy's leastconn in
    front), in lockstep rounds; CPU and memory are those processes', and both workers answered."""
    result = bench(tmp_path, suite_dirs, "--workers", "2", "--calls", "4", "--duration", "2", "--lockstep", "--no-idle")
    (run,) = result["runs"]
    assert run["workers"] == 2 and run["lockstep"] is True, run
    assert run["calls_placed"] % 4 == 0  # whole rounds of 4 calls placed together
    assert run["memory"]["processes"] >= 4, run["memory"]  # the supervisor, two workers, HAProxy
    assert run["memory"]["pss_mb"] < run["memory"]["rss_mb"]  # the Vosk model's pages are shared
    assert sum(run["calls_by_worker"].values()) == run["calls_placed"]
    assert sorted(run["calls_by_worker"]) == ["0", "1"] and min(run["calls_by_worker"].values()) > 0, run


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--calls", "0"], "--calls must be >= 1"),
        (["--sweep", "1,x"], "--sweep must be positive call counts"),
        (["--locale", "fr-FR"], "--locale must be one of"),
        (["--workers", "0"], "--workers must be 1 or more robot processes"),
        (["--plot", "x.png"], "--plot needs --sweep"),
        (["--compare", "--variant", "http-rasa"], "leave out --variant"),
    ],
)
def test_bad_options_are_refused_with_the_reason(
    args: list[str], problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", *args]) == 2
    assert problem in capsys.readouterr().err


def test_asterisk_mode_needs_the_local_asterisk(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IVR_ASTERISK_STATE", str(tmp_path / "no-asterisk"))  # no Asterisk runs from here
    assert main(["bench", "--asterisk"]) == 2
    assert "the local Asterisk is not running: start it with `ivr asterisk up`" in capsys.readouterr().err


def write_tone_then_line_noise(path: Path) -> None:
    t = np.arange(int(0.5 * 8000)) / 8000
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    quiet = (np.random.default_rng(1).normal(0, 40, int(0.3 * 8000))).astype("<i2")  # line noise, below 256
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.concatenate([tone, quiet]).tobytes())


def test_quiet_tail_of_the_callers_audio(tmp_path: Path) -> None:
    path = tmp_path / "speech.wav"
    write_tone_then_line_noise(path)
    assert trailing_quiet_s(path) == pytest.approx(0.3, abs=0.021)


async def test_a_real_time_caller_s_recording_ends_with_the_recorder_s_silence(tmp_path: Path) -> None:
    """As Asterisk's file does: RECORD FILE with s=1 stops one second into the quiet, so the robot gets
    the speech (0.5 s), its quiet end (0.3 s) and as much more silence as makes the second; within the
    command's own time limit."""
    speech = tmp_path / "speech.wav"
    write_tone_then_line_noise(speech)
    turns = (Turn("audio", speech), Turn("audio", speech))
    peer = ScriptedAsterisk(CallFile(tmp_path / "c.yml", "100", "en-US", turns), locale="en-US", text_mode=False, realtime=True)
    reply = await peer._record_file(["RECORD", "FILE", str(tmp_path / "one"), "wav", "#", "10000", "s=1"])
    assert wav_duration_s(tmp_path / "one.wav") == pytest.approx(1.5, abs=0.021)
    assert trailing_quiet_s(tmp_path / "one.wav") == pytest.approx(1.0, abs=0.021)
    assert reply == "200 result=0 (timeout) endpos=12000\n"
    await peer._record_file(["RECORD", "FILE", str(tmp_path / "two"), "wav", "#", "1200", "s=1"])
    assert wav_duration_s(tmp_path / "two.wav") == pytest.approx(1.2, abs=0.001)
