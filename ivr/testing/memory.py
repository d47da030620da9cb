"""An in-memory call for ``CallSession`` unit tests: a channel (with its recognition) and a synthesizer
that run no Asterisk, no Vosk and no pyttsx3, so every turn-taking branch can be driven exactly.

These are test doubles, named as such: the real parts are exercised by the replay, fault and Asterisk
tests. A caller is a list of ``CallerAct``s; the channel hands them out each time the session listens
(keys marked ``during_prompt`` interrupt the prompt before), and records what the robot played and
how it ended the call.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from ivr.channel import Heard, Playback
from ivr.parts import (
    CallerHangup,
    Expect,
    Outcome,
    Recognition,
    RecognizerError,
    RecordingError,
    SynthesisError,
    Word,
)

MEMORY_ROOT = Path("/memory")  # no file is ever written here: paths are only names


@dataclass(frozen=True)
class CallerAct:
    """What the caller does while the robot listens once."""

    kind: str  # say | mumble (only words the recognizer does not know) | keys | silence | hangup
    text: str = ""  # say: the words; keys: the keys pressed, in order
    confidence: float = 1.0  # say: the recognizer's confidence in the words
    during_prompt: bool = False  # keys: pressed while the robot still speaks (they interrupt it)

    @staticmethod
    def say(text: str, confidence: float = 1.0) -> CallerAct:
        return CallerAct("say", text, confidence)

    @staticmethod
    def keys(keys: str, *, during_prompt: bool = False) -> CallerAct:
        return CallerAct("keys", keys, during_prompt=during_prompt)


SILENCE = CallerAct("silence")
MUMBLE = CallerAct("mumble")
HANGUP = CallerAct("hangup")


@dataclass
class MemoryChannel:
    """The session's ``Channel``: prompts are logged, listens are answered from the caller's acts.

    ``fail_recognizer`` / ``fail_recording`` make speech fail as the real parts would; ``speech_model``
    says whether the call's locale can be recognized at all."""

    acts: list[CallerAct]
    fail_recognizer: bool = False
    fail_recording: bool = False
    speech_model: bool = True
    played: list[str] = field(default_factory=list)  # the texts of the prompts played, in order
    interrupted: list[str] = field(default_factory=list)  # the prompts a key interrupted
    ended: tuple[str, str] | None = None  # how the robot ended its part: (outcome, reason)
    digit_waits: int = 0  # how often the session waited for a further key
    recordings: int = 0  # speech turns taken (what a real channel would have recorded)
    keypad_listens: int = 0
    end_of_speech_wait_s: float = 0.0
    answered: bool = False
    _keys: str = ""  # keys typed and not read yet (type-ahead, or the rest of an entry)

    async def answer(self) -> None:
        self.answered = True

    async def can_recognize(self, locale: str) -> bool:
        return self.speech_model

    async def speak(self, sound: Path, *, interruptible: bool = True) -> Playback:
        self.played.append(sound.name)
        act = self.acts[0] if self.acts else None
        if interruptible and act is not None and act.kind == "keys" and act.during_prompt:
            self.acts.pop(0)
            self._keys += act.text
            self.interrupted.append(sound.name)
            return Playback(interrupted_by="key", played_ms=0)
        return Playback()

    async def listen(self, locale: str, expect: Expect, *, keypad_only: bool = False) -> Heard:
        if self._keys:
            key, self._keys = self._keys[0], self._keys[1:]
            return Heard(key=key)
        if keypad_only:
            self.keypad_listens += 1
        elif self.fail_recording:
            raise RecordingError("injected: the spool is not writable")
        if not self.acts:
            raise CallerHangup("the caller's script is over")
        act = self.acts.pop(0)
        if act.kind == "hangup":
            raise CallerHangup("the caller hung up")
        if act.kind == "keys":
            self._keys = act.text[1:]
            return Heard(key=act.text[0])
        if keypad_only:
            return Heard()  # silence, or words nobody records
        self.recordings += 1
        if self.fail_recognizer:
            raise RecognizerError("injected: the recognizer raised")
        if act.kind == "mumble":
            return Heard(recognition=Recognition("", 0.0, (Word("[unk]", 0.9, 0.0, 0.5),)), recording=self.recordings)
        if act.kind != "say" or not act.text:
            return Heard(recognition=Recognition("", 0.0), recording=self.recordings)
        words = tuple(Word(w, act.confidence, 0.0, 0.0) for w in act.text.split())
        return Heard(recognition=Recognition(act.text, act.confidence, words), recording=self.recordings)

    async def next_key(self, timeout_s: float) -> str:
        self.digit_waits += 1
        key, self._keys = self._keys[:1], self._keys[1:]
        return key

    def end_entry(self) -> None:
        if self._keys.startswith("#"):
            self._keys = self._keys[1:]

    async def transfer(self, reason: str) -> None:
        self.ended = ("transfer", reason)

    async def finish(self, outcome: Outcome, reason: str = "") -> None:
        self.ended = (outcome.value, reason)


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
