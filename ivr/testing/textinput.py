"""A stand-in recognizer for ``ivr replay --text``: the caller's words arrive as text, not audio.

The harness writes the caller's text beside the recording (``<recording>.txt``); this recognizer
returns it as if Vosk had heard it with full confidence. Everything else on the call is the real path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ivr.parts import Recognition, Word


class SidecarTextRecognizer:
    def transcribe(self, wav: Path, locale: str, grammar: Sequence[str] | None = None) -> Recognition:
        sidecar = Path(str(wav)[: -len(wav.suffix)] + ".txt") if wav.suffix else Path(f"{wav}.txt")
        try:
            text = sidecar.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            text = ""  # silence, or a recording with no text beside it
        finally:
            sidecar.unlink(missing_ok=True)
        if not text:
            return Recognition("", 0.0)
        return Recognition(text, 1.0, tuple(Word(w, 1.0, 0.0, 0.0) for w in text.split()))
