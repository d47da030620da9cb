"""The call as the session sees it: a ``Channel`` in conversation terms, whatever carries the call.

The session speaks prompts, listens for one caller turn (speech, recognized, or keys), reads the further
keys of an entry, and ends the call by handing it to a person or finishing it. How that happens is the
channel's business: record mode over FastAGI (``ivr.agi.record_mode``: STREAM FILE with every key as an
escape digit, RECORD FILE and a decode, WAIT FOR DIGIT, dialplan variables), stream mode over
AudioSocket, and the in-memory channel of the unit tests (``ivr.testing.memory``). Every channel raises
``CallerHangup`` once the caller is gone, from any method.

Keys are never lost: a key that interrupts a prompt is kept (type-ahead) and is the first key of the
next ``listen``. What the keys mean (a menu choice, ``*``, ``0``, ID digits) is decided in one place, the
session, never here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ivr.parts import Expect, Outcome, Recognition

KEYS = "0123456789*#"


@dataclass(frozen=True)
class Playback:
    """What became of one prompt."""

    interrupted_by: str = ""  # "" (played to its end), "key" or "speech"
    played_ms: int | None = None  # how much of it the caller heard, when the transport can tell


@dataclass(frozen=True)
class Heard:
    """One caller turn, as the channel took it: a key, or speech and what was recognized of it."""

    key: str = ""  # the first key of a keypad entry (the rest: ``Channel.next_key``)
    recognition: Recognition | None = None  # speech; None when a key came or nobody spoke at all
    asr_s: float = 0.0  # time spent recognizing, for the turn's timing
    recording: int = 0  # the number of the recording made of this turn (0: none was made)

    @property
    def silent(self) -> bool:
        """Nothing usable: no key, and no word (known or unknown) was heard."""
        return not self.key and (self.recognition is None or (not self.recognition.text and not self.recognition.words))


class Channel(Protocol):
    # how long after the caller's last word a spoken turn is known to have ended (record mode: the
    # recorder's silence; stream mode: the VAD's trailing silence): part of what the caller waits
    end_of_speech_wait_s: float

    async def answer(self) -> None:
        """Pick up the call."""
        ...

    async def can_recognize(self, locale: str) -> bool:
        """Whether speech in ``locale`` can be recognized on this call (False: listen by keypad only)."""
        ...

    async def speak(self, sound: Path, *, interruptible: bool = True) -> Playback:
        """Play one prompt (an Asterisk-ready 8 kHz WAV). Keys interrupt it (kept as type-ahead), and so
        may speech where the transport hears the caller while it plays; ``interruptible=False`` plays it
        in full (a legal notice)."""
        ...

    async def listen(self, locale: str, expect: Expect, *, keypad_only: bool = False) -> Heard:
        """One caller turn: the type-ahead key if there is one, else speech (recognized with the
        grammar for ``expect``) or a key; ``keypad_only`` waits for a key and records nothing. Raises
        ``RecognizerError`` or ``RecordingError`` (``PartError``s) when speech cannot be taken."""
        ...

    async def next_key(self, timeout_s: float) -> str:
        """The next key of the entry the caller is keying, "" when none came within ``timeout_s``."""
        ...

    def end_entry(self) -> None:
        """The keys read so far are a complete entry: a ``#`` the caller still keys to end it (as callers
        do after the last digit) is no new input."""
        ...

    async def transfer(self, reason: str) -> None:
        """Hand the caller to a person (why: ``reason``)."""
        ...

    async def finish(self, outcome: Outcome, reason: str = "") -> None:
        """End the robot's part: ``completed`` hangs up; ``error`` (nothing could be said) leaves the
        apology and the person to the dialplan."""
        ...
