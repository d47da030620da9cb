"""Replaying call files against a robot: in-process (default) or a running server (``--server``)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ivr.config import Settings
from ivr.testing.callfile import CallFile
from ivr.testing.harness import CallReport, ScriptedAsterisk, SpeechRenderer

if TYPE_CHECKING:
    from ivr.app import Robot


@contextlib.asynccontextmanager
async def running_robot(
    settings: Settings, *, text_input: bool, host: str = "127.0.0.1", **parts: Any
) -> AsyncIterator[tuple[str, int, Robot]]:
    """An in-process robot on an ephemeral port (loopback by default); yields (host, port, robot).

    ``parts`` go to ``build_robot`` (dialogue=, recognizer=, synthesizer=, store=): fault tests use it.
    """
    from ivr.app import build_robot

    robot = build_robot(settings, text_input=text_input, **parts)
    await robot.warm_up()
    await robot.start(host, 0, http=False)
    assert robot.server is not None
    try:
        yield host, robot.server.port, robot
    finally:
        await robot.stop(grace_s=5)


def replay_settings(settings: Settings) -> Settings:
    """Replays are reproducible: no dither in the recognizer's features. Their peers read what the robot
    said from the prompts' sidecars, so dynamic renders get one too (off in production)."""
    return dataclasses.replace(settings, asr_dither=False, tts_dynamic_sidecars=True)


def with_media(calls: list[CallFile], media: str | None) -> list[CallFile]:
    """The calls in ``media`` ("record" or "stream"), whatever their files ask (``agi_params.media``);
    None keeps each call's own choice, and the robot's default (``IVR_MEDIA``) for the others."""
    if media is None:
        return calls
    return [dataclasses.replace(c, agi_params={**c.agi_params, "media": media}) for c in calls]


async def replay_calls(
    settings: Settings,
    calls: list[CallFile],
    *,
    text_mode: bool,
    server: tuple[str, int] | None = None,
    media: str | None = None,
) -> list[CallReport]:
    """Each call against the robot, one after the other. ``media`` puts every call in that mode (and is
    the in-process robot's default); stream-mode calls need audio, not ``text_mode``."""
    settings = replay_settings(settings)
    if media is not None:
        settings = dataclasses.replace(settings, media=media)
    calls = with_media(calls, media)
    if server is not None:
        from ivr.tts.synth import PromptSynthesizer

        synth = PromptSynthesizer(settings)
        try:
            return [await _one(call, settings, server, text_mode, synth.render) for call in calls]
        finally:
            synth.close()
    async with running_robot(settings, text_input=text_mode) as (host, port, robot):
        render = robot.parts.synthesizer.render
        # In audio mode, each caller event also says what the robot recognized (in text mode it gets
        # the turn's own words).
        heard_from = None if text_mode else settings.transcripts_dir
        return [await _one(call, settings, (host, port), text_mode, render, heard_from) for call in calls]


async def _one(
    call: CallFile,
    settings: Settings,
    server: tuple[str, int],
    text_mode: bool,
    render: SpeechRenderer,
    transcripts_dir: Path | None = None,
) -> CallReport:
    peer = ScriptedAsterisk(
        call, locale=call.locale or settings.locale, text_mode=text_mode, speech=render,
        sounds_dir=settings.sounds_dir,  # stream mode: the robot's prompts, to tell them apart in its audio
    )
    report = await peer.run(*server)
    if transcripts_dir is not None:
        add_heard(report, transcripts_dir)
    return report


def robot_transcript(transcripts_dir: Path, unique_id: str) -> list[dict[str, Any]] | None:
    """The robot's own (masked) transcript of the call the harness placed with ``agi_uniqueid``
    ``unique_id``; None when there is not exactly one. The robot names the file
    ``<date>/<uniqueid, other characters than letters, digits, _ and - made _>-<random>.jsonl``."""
    if not unique_id:
        return None
    stem = re.sub(r"[^0-9A-Za-z_-]", "_", unique_id)
    found = sorted(transcripts_dir.glob(f"*/{stem}-*.jsonl"))
    if len(found) != 1:
        return None
    lines = found[0].read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def add_heard(report: CallReport, transcripts_dir: Path) -> None:
    """Put on each caller event what the robot made of it, from the robot's transcript: ``heard``
    (the recognized words, masked as the transcript masks them: ``****`` for secrets and keys) and
    ``intent`` (the dialogue's reading, when the turn went to the dialogue).

    Only an in-process robot's transcript can be read; the call file's own words stay in ``text``.
    Every caller event but a hang-up (and, in stream mode, sound over a prompt that played on:
    ``"taken": false``) is one turn the robot listened to, so the two lists pair up in order; if they
    do not, that is reported as an error of the replay.
    """
    entries = robot_transcript(transcripts_dir, report.unique_id)
    if entries is None:
        report.errors.append(f"no transcript of the robot for call {report.unique_id} in {transcripts_dir}")
        return
    heard = [e for e in entries if e.get("who") == "caller"]
    turns = [
        e for e in report.events
        if e.get("who") == "caller" and e.get("kind") != "hangup" and e.get("taken") is not False
    ]
    if len(heard) != len(turns):
        report.errors.append(f"the robot logged {len(heard)} caller turns, the caller took {len(turns)}")
        return
    for event, entry in zip(turns, heard, strict=True):
        event["heard"] = str(entry.get("text", ""))
        if entry.get("intent"):
            event["intent"] = str(entry["intent"])


def parse_server(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--server must be HOST:PORT, got {value!r}")
    return host or "127.0.0.1", int(port)


def load_all(paths: list[str]) -> list[CallFile]:
    from ivr.testing.callfile import load_call_file

    return [load_call_file(Path(p)) for p in paths]



class RobotInThread:
    """A robot serving FastAGI from its own thread and event loop, as a separate server would.

    Tests share one across many calls (loading the models once) and talk to it over TCP only.
    """

    def __init__(self, settings: Settings, *, text_input: bool, **parts: Any) -> None:
        self._settings = settings
        self._text_input = text_input
        self._parts = parts
        self._loop = asyncio.new_event_loop()
        self._stopped = asyncio.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.port = 0
        self.robot: Robot | None = None
        self._thread = threading.Thread(target=self._main, name="robot", daemon=True)

    def start(self, timeout_s: float = 300) -> RobotInThread:
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError("the robot did not start in time")
        if self._error is not None:
            raise RuntimeError("the robot failed to start") from self._error
        return self

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        try:
            async with running_robot(self._settings, text_input=self._text_input, **self._parts) as (
                _host,
                port,
                robot,
            ):
                self.port, self.robot = port, robot
                self._ready.set()
                await self._stopped.wait()
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(60)
