"""The narrow interfaces the call session composes, and the values that cross them.

Each engine (Vosk, Rasa, pyttsx3, the account store) lives behind one of these, so the FastAGI
server, the replay harness, the benchmark and the unit tests all drive the same session code.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class CallerHangup(Exception):
    """The caller hung up. Normal flow, not an error: the session ends cleanly."""


class PartError(Exception):
    """A part (recognizer, dialogue, synthesizer, account store) failed; the session apologises."""

    part = "unknown"


class RecognizerError(PartError):
    part = "asr"


class DialogueError(PartError):
    part = "dialogue"


class SynthesisError(PartError):
    part = "tts"


class AccountStoreError(PartError):
    part = "accounts"


class RecordingError(PartError):
    """Asterisk could not write the caller's recording (disk full, spool missing or not writable)."""

    part = "recording"


# ---------------------------------------------------------------- speech in
@dataclass(frozen=True)
class Word:
    word: str
    confidence: float
    start_s: float
    end_s: float


@dataclass(frozen=True)
class Recognition:
    text: str  # "" when nothing was heard
    confidence: float  # mean word confidence in 0..1; 0.0 for no words
    words: tuple[Word, ...] = ()


class Recognizer(Protocol):
    def transcribe(self, wav: Path, locale: str, grammar: Sequence[str] | None = None) -> Recognition:
        """Decode one 8 kHz mono 16-bit WAV. Blocking: the session runs it in a worker thread."""
        ...


# ---------------------------------------------------------------- speech out
class Synthesizer(Protocol):
    async def render(self, text: str, locale: str) -> Path:
        """Return an Asterisk-ready 8 kHz mono 16-bit WAV for ``text`` (numbers read per locale).

        The file name is derived from (locale, voice, settings, text); a ``.txt`` sidecar next to it
        holds ``text``, so a test peer can tell what was said. Raises SynthesisError.
        """
        ...

    def fallback(self, key: str, locale: str) -> Path | None:
        """A pre-rendered generic prompt (``apology``, ``hold``), or None if it was never built."""
        ...


# ---------------------------------------------------------------- dialogue
class Expect(str, enum.Enum):
    """What the dialogue waits for next; picks the listening mode and the recognizer grammar."""

    SPEECH = "speech"  # any request
    DIGITS = "digits"  # ID digits or a phone number: voice or keypad; secret, masked in transcripts
    YES_NO = "yes_no"


class Outcome(str, enum.Enum):
    COMPLETED = "completed"
    TRANSFER = "transfer"
    CALLER_HANGUP = "caller_hangup"
    ERROR = "error"


@dataclass(frozen=True)
class CallInfo:
    call_id: str
    caller_id: str  # "" when withheld
    locale: str


@dataclass(frozen=True)
class UserInput:
    text: str  # recognized speech, or the keys pressed
    keypad: bool = False
    confidence: float = 1.0
    intent: str = ""  # a keypad menu choice: the intent its key stands for (dialogs/<locale>/keypad.yml)


@dataclass(frozen=True)
class Reply:
    texts: tuple[str, ...]  # what the robot says, in order (display form; numbers read at synthesis)
    expect: Expect = Expect.SPEECH
    outcome: Outcome | None = None  # None: the call goes on
    transfer_reason: str = ""
    intent: str = ""
    confidence: float = 0.0
    secret: bool = False  # the next caller input is a secret (digits): mask it in transcripts
    max_digits: int = 0  # keypad entries accepted for the next input (0: no keypad expected)
    verified: bool = False  # the dialogue has verified the caller (what was disclosed depends on it)
    # texts the caller must hear in full (a legal notice): neither speech nor keys stop them. Ops staff
    # mark a response in domain.yml with `metadata: {interruptible: false}`
    must_hear: tuple[str, ...] = ()


class DialogueEngine(Protocol):
    async def start(self, call: CallInfo) -> Reply:
        """Open the call's conversation and return the greeting."""
        ...

    async def handle(self, call: CallInfo, user: UserInput) -> Reply:
        """One caller turn in, the robot's next step out. Raises DialogueError."""
        ...

    async def classify(self, text: str, locale: str) -> tuple[str, float]:
        """NLU only (no dialogue step): the intent name and its confidence, e.g. for a yes/no check."""
        ...

    async def close(self, call: CallInfo) -> None:
        """Forget the conversation (each call is its own; nothing is kept between calls)."""
        ...
