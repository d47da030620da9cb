"""`make run` stops what it started: on Ctrl-C or SIGTERM, the robot first, then the local Asterisk.

The Makefile's real `run` recipe runs (setup and models are taken as done: ``make -o setup -o
models``) with ``IVR`` pointing at a stand-in that writes down what it is asked to do: ``asterisk
status|up|down`` and a ``serve`` that runs until it is signalled. No real robot or Asterisk is
needed; the recipe's shell logic is the thing under test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ivr.config import PROJECT_ROOT

FAKE_IVR = """#!/bin/bash
log="$(dirname "$0")/calls.log"
case "$1 $2" in
  "asterisk status") echo "status" >> "$log"; exit "${FAKE_ASTERISK_STATUS:-3}" ;;
  "asterisk up") echo "up" >> "$log"; exit 0 ;;
  "asterisk down") echo "down" >> "$log"; exit 0 ;;
esac
if [ "$1" = serve ]; then
  trap 'echo "serve stopped by TERM" >> "$log"; exit 0' TERM
  trap 'echo "serve stopped by INT" >> "$log"; exit 0' INT
  echo "serve" >> "$log"
  if [ -n "${FAKE_SERVE_EXIT:-}" ]; then exit "$FAKE_SERVE_EXIT"; fi
  while true; do sleep 0.05; done
fi
echo "unexpected: $*" >> "$log"; exit 2
"""


@pytest.fixture
def fake_ivr(tmp_path: Path) -> Path:
    script = tmp_path / "ivr"
    script.write_text(FAKE_IVR)
    script.chmod(0o755)
    return script


def start_make(fake_ivr: Path, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["make", "--no-print-directory", "-C", str(PROJECT_ROOT), "-o", "setup", "-o", "models", "run", f"IVR={fake_ivr}"],
        env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: "Ctrl-C" is SIGINT to that group
    )  # fmt: skip


def calls(fake_ivr: Path) -> list[str]:
    log = fake_ivr.parent / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def wait_for_serve(fake_ivr: Path, make: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while "serve" not in calls(fake_ivr):
        assert make.poll() is None, make.communicate()[0].decode()
        assert time.monotonic() < deadline, "the robot was never started"
        time.sleep(0.05)


def finish(make: subprocess.Popen[bytes]) -> str:
    output, _ = make.communicate(timeout=30)
    return output.decode()


@pytest.mark.parametrize("how", ["sigterm_to_make", "ctrl_c"])
def test_stopping_make_run_stops_the_robot_then_the_asterisk_it_started(fake_ivr: Path, how: str) -> None:
    make = start_make(fake_ivr)
    wait_for_serve(fake_ivr, make)
    if how == "sigterm_to_make":
        make.send_signal(signal.SIGTERM)  # e.g. a service manager stopping `make run`
    else:
        os.killpg(make.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    output = finish(make)
    # (a background job of the recipe's shell ignores the terminal's SIGINT unless it installs its own
    # handler, as `ivr serve` does; either way the recipe's trap sends it SIGTERM)
    assert calls(fake_ivr) == ["status", "up", "serve", "serve stopped by TERM", "down"], output
    assert make.returncode != 0  # interrupted, as make reports it


def test_an_asterisk_that_was_already_running_is_left_running(fake_ivr: Path) -> None:
    make = start_make(fake_ivr, FAKE_ASTERISK_STATUS="0")
    wait_for_serve(fake_ivr, make)
    make.send_signal(signal.SIGTERM)
    output = finish(make)
    assert calls(fake_ivr) == ["status", "serve", "serve stopped by TERM"], output


def test_a_robot_that_exits_on_its_own_still_takes_the_asterisk_down(fake_ivr: Path) -> None:
    make = start_make(fake_ivr, FAKE_SERVE_EXIT="1")
    output = finish(make)
    assert calls(fake_ivr) == ["status", "up", "serve", "down"], output
    assert make.returncode != 0
