"""An in-memory call for ``CallSession`` unit tests: a channel, a recognizer and a synthesizer that run
no Asterisk, no Vosk and no pyttsx3, so every turn-taking branch can be driven exactly.

These are test doubles, named as such: the real parts are exercised by the replay, fault and Asterisk
tests. A caller is a list of ``CallerAct``s; the channel hands them out each time the session listens,
and records what the robot played and which variables it set.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ivr.parts import CallerHangup, Recognition, RecognizerError, RecordingError, SynthesisError, Word
from ivr.session import Recording

MEMORY_ROOT = Path("/memory")  # no file is ever written here: paths are only names


@dataclass(frozen=True)
class CallerAct:
    """What the caller does while the robot listens once."""

    kind: str  # say | mumble (only words the recognizer does not know) | keys | silence | hangup
    text: str = ""  # say: the words; keys: the keys pressed, in order
    confidence: float = 1.0  # say: the recognizer's confidence in the words

    @staticmethod
    def say(text: str, confidence: float = 1.0) -> CallerAct:
        return CallerAct("say", text, confidence)

    @staticmethod
    def keys(keys: str) -> CallerAct:
        return CallerAct("keys", keys)


SILENCE = CallerAct("silence")
MUMBLE = CallerAct("mumble")
HANGUP = CallerAct("hangup")


@dataclass
class MemoryChannel:
    """The session's ``Channel``: plays are logged, listens are answered from the caller's acts."""

    acts: list[CallerAct]
    fail_recording: bool = False
    played: list[str] = field(default_factory=list)  # the texts of the prompts played, in order
    variables: dict[str, str] = field(default_factory=dict)
    digit_waits: int = 0  # how often the session waited for a further key
    hung_up_by_robot: bool = False
    answered: bool = False
    heard: dict[Path, CallerAct] = field(default_factory=dict)  # recording path → what was said into it
    _keys: str = ""
    _collecting: bool = False  # a key was handed out: further waits read the same act's keys

    async def answer(self) -> None:
        self.answered = True

    async def play(self, sound: Path, escape_digits: str = "") -> str:
        self.played.append(sound.name)
        self._collecting = False  # the robot speaks: whatever keys come next are a new input
        return ""

    async def record(self, path: Path, *, escape_digits: str, max_s: float, silence_s: int) -> Recording:
        if self.fail_recording:
            raise RecordingError("injected: the spool is not writable")
        if not self.acts:
            raise CallerHangup("the caller's script is over")
        self._collecting = False
        act = self.acts.pop(0)
        if act.kind == "hangup":
            raise CallerHangup("the caller hung up")
        if act.kind == "keys":
            self._keys, self._collecting = act.text[1:], True
            return Recording(path, digit=act.text[0])
        self.heard[path] = act
        return Recording(path)

    async def wait_digit(self, timeout_s: float) -> str:
        """The next key of the keys being typed; else, when the robot waits for a new input by keypad,
        the caller's next act (keys; anything else is no key)."""
        self.digit_waits += 1
        if self._keys or self._collecting:
            key, self._keys = self._keys[:1], self._keys[1:]
            self._collecting = bool(key)
            return key
        if not self.acts:
            raise CallerHangup("the caller's script is over")
        act = self.acts.pop(0)
        if act.kind == "hangup":
            raise CallerHangup("the caller hung up")
        if act.kind != "keys":
            return ""  # silence, or words nobody records
        self._keys, self._collecting = act.text[1:], True
        return act.text[0]

    async def set_variable(self, name: str, value: str) -> None:
        self.variables[name] = value

    async def hangup(self) -> None:
        self.hung_up_by_robot = True


class MemoryRecognizer:
    """Recognizes exactly what the caller's act says, with its confidence; ``fail`` raises instead."""

    def __init__(self, channel: MemoryChannel, *, fail: bool = False, available: bool = True) -> None:
        self._channel = channel
        self.fail = fail
        self._available = available
        self.grammars: list[Sequence[str] | None] = []

    def available(self, locale: str) -> bool:
        return self._available

    def transcribe(self, wav: Path, locale: str, grammar: Sequence[str] | None = None) -> Recognition:
        self.grammars.append(grammar)
        if self.fail:
            raise RecognizerError("injected: the recognizer raised")
        act = self._channel.heard.pop(wav, SILENCE)
        if act.kind == "mumble":
            return Recognition("", 0.0, (Word("[unk]", 0.9, 0.0, 0.5),))
        if act.kind != "say" or not act.text:
            return Recognition("", 0.0)
        words = tuple(Word(w, act.confidence, 0.0, 0.0) for w in act.text.split())
        return Recognition(act.text, act.confidence, words)


class MemorySynthesizer:
    """"Renders" a text as a path whose name is the text; ``fail_when`` makes matching texts fail,
    ``fallbacks`` says whether the pre-rendered apology and hold prompts exist."""

    def __init__(self, *, fail_when: str | None = None, hang: bool = False, fallbacks: bool = True) -> None:
        self.fail_when = fail_when
        self.hang = hang
        self.fallbacks = fallbacks

    async def render(self, text: str, locale: str) -> Path:
        if self.hang:
            await asyncio.Event().wait()
        if self.fail_when is not None and self.fail_when in text:
            raise SynthesisError("injected: synthesis failed")
        return MEMORY_ROOT / locale / text

    def fallback(self, key: str, locale: str) -> Path | None:
        return MEMORY_ROOT / locale / f"(pre-rendered {key})" if self.fallbacks else None
