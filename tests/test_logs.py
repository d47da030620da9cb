"""Log lines: readable on a terminal, JSON lines otherwise, masked either way, no third-party chatter."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ivr.logs import JsonFormatter, TextFormatter, call_id_var, configure_logging

ROOT = Path(__file__).resolve().parent.parent


def record(msg: str, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("ivr.session", level, __file__, 1, msg, None, None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_text_lines_carry_the_same_masked_fields_as_json() -> None:
    token = call_id_var.set("1764644444.17-ab12cd34")
    try:
        rec = record("caller said 13800000001", outcome="completed")
        text = TextFormatter().format(rec)
        data = json.loads(JsonFormatter().format(rec))
    finally:
        call_id_var.reset(token)
    assert "13800000001" not in text and "13800000001" not in data["msg"]
    assert data["msg"] in text
    assert " INFO " in text and "ivr.session" in text and "outcome=completed" in text
    assert not text.lstrip().startswith("{")


def _handler_format(stream: object, log_format: str = "auto") -> logging.Formatter | None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO", stream=stream, log_format=log_format)
        ours = [h for h in root.handlers if h.get_name() == "ivr-json-stderr"]
        return ours[0].formatter
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def test_terminal_gets_text_a_pipe_gets_json() -> None:
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=True) as tty:
            assert type(_handler_format(tty)) is TextFormatter
            assert type(_handler_format(tty, "json")) is JsonFormatter
    finally:
        os.close(master)
    assert type(_handler_format(io.StringIO())) is JsonFormatter
    assert type(_handler_format(io.StringIO(), "text")) is TextFormatter
    with pytest.raises(ValueError, match="log format"):
        configure_logging("INFO", stream=io.StringIO(), log_format="xml")


@pytest.mark.slow
def test_a_newcomers_first_run_prints_readable_lines_only(tmp_path: Path) -> None:
    """`ivr serve` on a terminal, as `make run` shows it: our own INFO lines, readable, and nothing
    else (no JSON, no DEBUG, no third-party prints or warnings) up to "the robot answers calls"."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("IVR_")},
        "IVR_AGI_PORT": "0",
        "IVR_HTTP_PORT": "0",
        "IVR_DATABASE_URL": f"sqlite:///{tmp_path / 'accounts.db'}",
        "IVR_SPOOL_DIR": str(tmp_path / "spool"),
        "IVR_TRANSCRIPTS_DIR": str(tmp_path / "transcripts"),
        "RASA_TELEMETRY_ENABLED": "false",
    }
    # what `make run` does first: the account database at the schema the robot knows
    subprocess.run([sys.executable, "-m", "ivr", "db", "upgrade"], cwd=tmp_path, env=env, check=True,
                   capture_output=True, timeout=120)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ivr", "serve"], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
        stdout=slave, stderr=slave, close_fds=True,
    )
    os.close(slave)
    output = b""
    try:
        deadline = time.monotonic() + 240
        while b"the robot answers calls" not in output and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    output += os.read(master, 65536)
                except OSError:
                    break
            if proc.poll() is not None:
                break
    finally:
        proc.terminate()
        proc.wait(60)
        os.close(master)
    lines = [line for line in output.decode("utf-8", "replace").splitlines() if line.strip()]
    assert any("the robot answers calls" in line for line in lines), lines
    for line in lines:
        assert not line.lstrip().startswith("{"), line
        fields = line.split()
        assert len(fields) >= 3 and fields[1] in ("INFO", "WARNING", "ERROR"), line
        assert fields[2].startswith("ivr."), line  # no third-party logger reaches the terminal
