"""The robot's fixed wording, read from the locale's Rasa domain (``responses:``), so ops staff own it.

The call session uses these for the prompts it speaks on its own (apology, hold, no input, ...), which
must keep working when the dialogue engine itself is down; the TTS pre-renders them.
"""

from __future__ import annotations

import threading
from pathlib import Path

import yaml


class PromptError(KeyError):
    """A response is missing from a locale's domain."""


class PromptBook:
    def __init__(self, dialogs_dir: Path) -> None:
        self._dir = dialogs_dir
        self._cache: dict[str, dict[str, list[str]]] = {}
        self._lock = threading.Lock()

    def locale_dir(self, locale: str) -> Path:
        """The folder of the locale's dialog files this book reads (the working copy, or a release's
        snapshot when the call is pinned to a release): read other per-locale files (keypad.yml) here."""
        return self._dir / locale

    def responses(self, locale: str) -> dict[str, list[str]]:
        """All text variations of every response in the locale's domain, by response name."""
        with self._lock:
            if locale not in self._cache:
                self._cache[locale] = self._load(locale)
            return self._cache[locale]

    def _load(self, locale: str) -> dict[str, list[str]]:
        path = self._dir / locale / "domain.yml"
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError as exc:
            raise PromptError(f"{path}: no domain for locale {locale!r}") from exc
        except yaml.YAMLError as exc:
            raise PromptError(f"{path}: {exc}") from exc
        out: dict[str, list[str]] = {}
        for name, variations in (data.get("responses") or {}).items():
            texts = [v["text"] for v in variations or [] if isinstance(v, dict) and "text" in v]
            if texts:
                out[name] = texts
        return out

    def text(self, name: str, locale: str, **values: str) -> str:
        """The first variation of a response, with ``{slot}`` placeholders filled from ``values``."""
        texts = self.responses(locale).get(name)
        if not texts:
            raise PromptError(f"{self._dir / locale / 'domain.yml'}: no response {name!r}")
        text = texts[0]
        for key, value in values.items():
            text = text.replace("{" + key + "}", value)
        return text
