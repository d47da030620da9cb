"""``dialogs/<locale>/keypad.yml``: the keys of the keypad menu and of the language menu, ops-editable.

The menu's wording is the response ``utter_keypad_menu`` of the locale's domain, the language menu's
``utter_language_choice``; this file says what each key does. ``0`` (a person) and ``*`` (hear it again)
are the session's own keys at every prompt and cannot be given another meaning here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import yaml

KEYPAD_FILE = "keypad.yml"
MENU_KEYS = "123456789"  # 0, * and # keep their meaning at every prompt


class KeypadError(ValueError):
    """keypad.yml is missing or wrong; the message names the file and the entry."""


@dataclass(frozen=True)
class Keypad:
    language_key: str  # the key that chooses this locale in the language menu
    menu: dict[str, str]  # menu key → the intent it stands for


def load_keypad(dialogs_dir: Path, locale: str, intents: frozenset[str] | None = None) -> Keypad:
    """Read and check one locale's keypad.yml; ``intents`` (the domain's) checks the menu's targets."""
    path = dialogs_dir / locale / KEYPAD_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise KeypadError(f"{path}: missing (every locale has a keypad menu)") from exc
    except yaml.YAMLError as exc:
        raise KeypadError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise KeypadError(f"{path}: expected the keys language_key and menu")
    unknown = set(data) - {"language_key", "menu"}
    if unknown:
        raise KeypadError(f"{path}: unknown entries {', '.join(sorted(map(str, unknown)))}")
    language_key = str(data.get("language_key", ""))
    if len(language_key) != 1 or language_key not in MENU_KEYS:
        raise KeypadError(f"{path}: language_key {language_key!r} must be one key of {MENU_KEYS}")
    menu_raw = data.get("menu")
    if not isinstance(menu_raw, dict) or not menu_raw:
        raise KeypadError(f"{path}: menu must map keys to intents, e.g. \"1\": ask_balance")
    menu: dict[str, str] = {}
    for key, intent in menu_raw.items():
        key = str(key)
        if len(key) != 1 or key not in MENU_KEYS:
            raise KeypadError(f"{path}: menu key {key!r} must be one key of {MENU_KEYS} (0, * and # are taken)")
        if not isinstance(intent, str) or not intent:
            raise KeypadError(f"{path}: menu key {key!r} names no intent")
        if intents is not None and intent not in intents:
            raise KeypadError(f"{path}: menu key {key!r} names {intent!r}, which is not an intent of domain.yml")
        menu[key] = intent
    return Keypad(language_key, menu)


class KeypadBook:
    """Each locale's keypad, read once (like ``PromptBook``)."""

    def __init__(self, dialogs_dir: Path) -> None:
        self._dir = dialogs_dir
        self._cache: dict[str, Keypad] = {}
        self._lock = threading.Lock()

    def keypad(self, locale: str) -> Keypad:
        with self._lock:
            if locale not in self._cache:
                self._cache[locale] = load_keypad(self._dir, locale)
            return self._cache[locale]
