"""Try it: one text-mode conversation with the DRAFT of a locale, as a demo caller: ``python -m
ivr.console.tryit --locale L --customer N`` (the console runs one per chat as a child process, writes the
caller's turns to its stdin and reads its events from stdout; it stops it by PID).

Real parts, as ``ivr replay --text`` has them: a ``CallSession`` over the robot's own wiring
(``build_robot``), the draft's Rasa agent (its own model in the console's folder, trained by ``ivr
train``'s own function when the draft changed, never into the working model ``models/rasa/<locale>``:
``ivr.console.draftmodel``; the accuracy measure uses the same), the robot's account
store holding the demo customers (``ivr/accounts/demo.yaml``) in a private SQLite database of its own (the
chat never touches real customers, lockouts or transcripts). What the channel takes instead of Asterisk:
the caller's words as recognized text (confidence 1), keys as DTMF. No audio is made here: the console
renders a reply with its own synthesizer when its play button is pressed.

Protocol: stdin lines are JSON, ``{"say": TEXT}``, ``{"keys": "7305#"}`` or ``{"hangup": true}``; stdout
lines starting with ``CHAT `` are JSON events: ``{"status": ...}`` while loading, then at each listen
``{"lines": [...], "waiting": EXPECT}``, at the end ``{"lines": [...], "ended": {"outcome", "reason"}}``.
Lines are the session's transcript lines, masked as the robot masks them (ID digits never in clear). With
no caller turn for ``--idle-s`` seconds the caller is taken to have hung up and the process ends.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ivr.channel import Heard, Playback
from ivr.config import LOCALES, Settings, load_settings
from ivr.parts import CallerHangup, CallInfo, Expect, Outcome, Recognition, Word
from ivr.session import Transcript

PROTOCOL = "CHAT "
DEMO_FILE = Path(__file__).resolve().parent.parent / "accounts" / "demo.yaml"
KEYS = frozenset("0123456789*#")
MAX_SAY = 500  # characters of one caller turn


def demo_callers() -> list[tuple[str, str]]:
    """The demo customers' (customer id, first phone), in the file's order (the chat's --customer index)."""
    data = yaml.safe_load(DEMO_FILE.read_text(encoding="utf-8"))
    return [(str(c["id"]), str(c["phones"][0])) for c in data["customers"] if c.get("phones")]


def emit(**event: Any) -> None:
    print(PROTOCOL + json.dumps(event, ensure_ascii=False), flush=True)


class ShownTranscript(Transcript):
    """The session's transcript (masked by the session), never written: its new lines go to the console."""

    def __init__(self) -> None:
        super().__init__(None)
        self._sent = 0

    def new_lines(self) -> list[dict[str, Any]]:
        lines = self._entries[self._sent:]
        self._sent = len(self._entries)
        return lines


class TextOnlySynthesizer:
    """No audio in the chat's process: the console renders a reply when its play button is pressed."""

    async def render(self, text: str, locale: str) -> Path:
        return Path("/try-it") / locale / "reply.wav"

    def fallback(self, key: str, locale: str) -> Path | None:
        return Path("/try-it") / locale / f"{key}.wav"


@dataclasses.dataclass
class ChatChannel:
    """The session's ``Channel``: each listen reports what was said since, then waits for the caller's turn."""

    inputs: asyncio.StreamReader
    transcript: ShownTranscript
    idle_s: float
    _keys: str = ""  # the rest of a keypad entry
    end_of_speech_wait_s: float = 0.0  # typed text: no end-of-turn wait

    async def answer(self) -> None:
        return None

    async def can_recognize(self, locale: str) -> bool:
        return True

    async def speak(self, sound: Path, *, interruptible: bool = True) -> Playback:
        return Playback()

    async def listen(self, locale: str, expect: Expect, *, keypad_only: bool = False) -> Heard:
        if self._keys:
            key, self._keys = self._keys[0], self._keys[1:]
            return Heard(key=key)
        emit(lines=self.transcript.new_lines(), waiting=expect.value)
        try:
            raw = await asyncio.wait_for(self.inputs.readline(), self.idle_s)
        except asyncio.TimeoutError:
            raise CallerHangup(f"no caller turn for {self.idle_s:.0f} s") from None
        if not raw:
            raise CallerHangup("the console closed the chat")
        try:
            act = json.loads(raw)
        except ValueError:
            act = {}
        if not isinstance(act, dict) or act.get("hangup"):
            raise CallerHangup("the caller hung up")
        if "keys" in act:
            keys = "".join(k for k in str(act["keys"]) if k in KEYS)[:20]
            if not keys:
                return Heard()
            self._keys = keys[1:]
            return Heard(key=keys[0])
        text = " ".join(str(act.get("say", "")).split())[:MAX_SAY]
        if keypad_only or not text:
            return Heard(recognition=Recognition("", 0.0))  # silence: nothing usable was said
        return Heard(recognition=Recognition(text, 1.0, tuple(Word(w, 1.0, 0.0, 0.0) for w in text.split())))

    async def next_key(self, timeout_s: float) -> str:
        key, self._keys = self._keys[:1], self._keys[1:]
        return key  # "": the entry typed is complete

    def end_entry(self) -> None:
        if self._keys.startswith("#"):
            self._keys = self._keys[1:]

    async def transfer(self, reason: str) -> None:
        return None

    async def finish(self, outcome: Outcome, reason: str = "") -> None:
        return None


async def _chat(settings: Settings, locale: str, caller_id: str, idle_s: float, models_dir: Path) -> int:
    from ivr.accounts.source import open_store
    from ivr.app import build_robot
    from ivr.dialogue.engine import RasaEngine
    from ivr.session import CallSession
    from ivr.testing.textinput import SidecarTextRecognizer

    store = open_store(settings)
    dialogue = RasaEngine(settings, store, locales=[locale], models_dir=models_dir)  # the draft's own model
    robot = build_robot(settings, text_input=True, dialogue=dialogue, store=store,
                        recognizer=SidecarTextRecognizer(), synthesizer=TextOnlySynthesizer())
    try:
        emit(status=f"{locale}: loading the draft's model")
        await dialogue.warm_up([locale])
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        shown = ShownTranscript()
        session = CallSession(robot.parts, ChatChannel(reader, shown, idle_s),
                              CallInfo(f"try-{locale}", caller_id, locale))
        session.transcript = shown
        result = await session.run()
        emit(lines=shown.new_lines(), ended={"outcome": result.outcome.value, "reason": result.reason})
    finally:
        await robot.stop()
        await dialogue.close()
        store.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ivr.console.tryit")
    parser.add_argument("--locale", choices=LOCALES, required=True)
    parser.add_argument("--customer", type=int, default=-1, help="index of the demo customer calling (-1: withheld)")
    parser.add_argument("--idle-s", type=float, default=600.0)
    args = parser.parse_args(argv)
    settings = load_settings()
    from ivr.logs import configure_logging

    configure_logging("WARNING", log_format="json")  # JSON log lines: the console skips them
    from ivr.accounts.store import SqlAccountStore
    from ivr.console.draftmodel import draft_model
    from ivr.dialogue.train import TrainingError

    callers = demo_callers()
    caller_id = callers[args.customer][1] if 0 <= args.customer < len(callers) else ""
    emit(status=f"{args.locale}: looking for the draft's model")
    try:
        # Its own folder in the console's, never the working model (models/rasa/<locale>); held until exit.
        draft = draft_model(settings, args.locale, say=lambda line: emit(status=line))
    except (TrainingError, OSError) as exc:
        emit(status=f"cannot train the draft: {exc}", ended={"outcome": "error", "reason": "training failed"})
        return 1
    emit(status=f"{args.locale}: the draft's model: {draft.how}")
    with draft, tempfile.TemporaryDirectory(prefix="ivr-try-it-") as tmp:
        root = Path(tmp)
        url = f"sqlite:///{root / 'accounts.db'}"
        accounts = SqlAccountStore(url)  # the demo customers only, in a database of this chat's own
        accounts.init_schema()
        accounts.import_file(DEMO_FILE)
        accounts.close()
        chat = dataclasses.replace(settings, database_url=url, account_source="own", dialogue_url="",
                                   transcripts_dir=root / "transcripts", spool_dir=root / "spool")
        return asyncio.run(_chat(chat, args.locale, caller_id, args.idle_s, draft.models_dir))


if __name__ == "__main__":
    sys.exit(main())
