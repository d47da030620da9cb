"""The draft of a locale (the working copy ``dialogs/<locale>/``): its responses, read and edited in place.

An edit replaces one response text in ``domain.yml`` where it stands (comments, order and the other
texts are kept byte for byte) with a double-quoted YAML scalar, so no wording can break the file. It is
refused, with a message naming the problem, when:
- the response changed since the editor loaded it (its version, a hash of its name, variation and text,
  differs): a stale draft is never saved over; the same text submitted twice is "already saved", not an
  error (two editors of different prompts of one locale do not get in each other's way);
- a ``{placeholder}`` of the response is dropped, misspelled or added, or a brace is unpaired;
- the text is empty or longer than ``MAX_TEXT`` characters, or holds control characters;
- the file does not parse (broken by hand): the YAML error with its line is shown, nothing is written.
Edits of one locale are serialized by a lock file in the console's folder (not in ``dialogs/``, whose
every file goes into a release).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import yaml

from ivr.config import LOCALES

MAX_TEXT = 2000  # characters of one prompt (the longest shipped one has ~200)
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
CURRENCIES = {"zh-CN": "CNY", "en-US": "USD", "ko-KR": "KRW"}
_SAMPLE_WORDS = {
    "zh-CN": {"description": "工资", "heard": "查询余额"},
    "en-US": {"description": "salary", "heard": "my balance"},
    "ko-KR": {"description": "급여", "heard": "잔액 조회"},
}


class DraftError(ValueError):
    """The edit is refused; the message says why. Nothing was written."""


class StaleDraft(DraftError):
    """The file changed since the editor loaded it; ``current`` is the text now in the draft."""

    def __init__(self, message: str, current: str | None, version: str) -> None:
        super().__init__(message)
        self.current = current
        self.version = version


@dataclass(frozen=True)
class Response:
    name: str
    index: int  # which variation of the response
    text: str
    line: int  # 1-based line of the text in domain.yml
    placeholders: tuple[str, ...]

    @property
    def version(self) -> str:
        return response_version(self.name, self.index, self.text)


@dataclass(frozen=True)
class Draft:
    locale: str
    path: Path
    version: str  # of the whole file
    responses: list[Response]

    def response(self, name: str, index: int) -> Response | None:
        return next((r for r in self.responses if (r.name, r.index) == (name, index)), None)


@dataclass(frozen=True)
class Saved:
    version: str
    changed: bool  # False: the same text was already there (a double submit)
    old: str


def check_locale(locale: str) -> str:
    if locale not in LOCALES:
        raise DraftError(f"unknown locale {locale!r} (one of {', '.join(LOCALES)})")
    return locale


def domain_path(dialogs_dir: Path, locale: str) -> Path:
    return dialogs_dir / check_locale(locale) / "domain.yml"


def version_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def response_version(name: str, index: int, text: str) -> str:
    return version_of(f"{name}\0{index}\0{text}".encode())


def _compose(path: Path, text: str) -> yaml.Node:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise DraftError(f"{where}: the file is not valid YAML ({problem}); fix it by hand or restore it "
                         "from the current release before editing here") from None
    if not isinstance(node, yaml.MappingNode):
        raise DraftError(f"{path}: not a mapping of domain sections")
    return node


def _value(node: yaml.MappingNode, key: str) -> yaml.Node | None:
    for k, v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            return v
    return None


def _text_nodes(path: Path, text: str) -> list[tuple[str, int, yaml.ScalarNode]]:
    root = _compose(path, text)
    responses = _value(root, "responses")  # type: ignore[arg-type]
    out: list[tuple[str, int, yaml.ScalarNode]] = []
    if not isinstance(responses, yaml.MappingNode):
        return out
    for key, variations in responses.value:
        if not isinstance(variations, yaml.SequenceNode):
            continue
        for index, item in enumerate(variations.value):
            if isinstance(item, yaml.MappingNode):
                node = _value(item, "text")
                if isinstance(node, yaml.ScalarNode):
                    out.append((str(key.value), index, node))
    return out


def read_draft(dialogs_dir: Path, locale: str) -> Draft:
    path = domain_path(dialogs_dir, locale)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DraftError(f"{path}: cannot read the draft: {exc.strerror or exc}") from None
    text = data.decode("utf-8", errors="replace")
    responses = [Response(name, index, node.value, node.start_mark.line + 1,
                          tuple(PLACEHOLDER.findall(node.value)))
                 for name, index, node in _text_nodes(path, text)]
    return Draft(locale, path, version_of(data), responses)


def check_text(new: str, old: str) -> str:
    """The text as it will be saved (surrounding blanks removed), or DraftError naming the problem."""
    text = new.replace("\r\n", "\n").strip()
    if not text:
        raise DraftError("the text is empty: a prompt must say something")
    if len(text) > MAX_TEXT:
        raise DraftError(f"the text has {len(text):,} characters; a prompt has at most {MAX_TEXT:,} "
                         "(was something pasted by mistake?)")
    if _CONTROL.search(text):
        raise DraftError("the text holds control characters (only letters, digits, punctuation and spaces)")
    wanted, got = PLACEHOLDER.findall(old), PLACEHOLDER.findall(text)
    rest = PLACEHOLDER.sub("", text)
    if "{" in rest or "}" in rest:
        raise DraftError("a brace is unpaired or encloses something other than a placeholder name "
                         f"(placeholders of this prompt: {_names(wanted)})")
    missing = [p for p in dict.fromkeys(wanted) if p not in got]
    unknown = [p for p in dict.fromkeys(got) if p not in wanted]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"{_names(missing)} {'is' if len(missing) == 1 else 'are'} missing")
        if unknown:
            parts.append(f"{_names(unknown)} {'is' if len(unknown) == 1 else 'are'} not a placeholder of "
                         "this prompt (misspelled?)")
        raise DraftError("; ".join(parts) + f". This prompt's placeholders are: {_names(wanted)}; each is "
                         "filled with the caller's figures during the call")
    return text


def _names(items: list[str]) -> str:
    return ", ".join("{" + p + "}" for p in dict.fromkeys(items)) or "none"


@contextlib.contextmanager
def draft_lock(lock_dir: Path, locale: str) -> Iterator[None]:
    lock_dir.mkdir(parents=True, exist_ok=True)
    with (lock_dir / f"draft-{locale}.lock").open("a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def save_response(dialogs_dir: Path, locale: str, name: str, index: int, new_text: str, version: str,
                  *, lock_dir: Path) -> Saved:
    """Replace one response text in the draft if it is still at ``version``; see the module doc."""
    path = domain_path(dialogs_dir, locale)
    with draft_lock(lock_dir, locale):
        data = path.read_bytes()
        text = data.decode("utf-8")
        nodes = {(n, i): node for n, i, node in _text_nodes(path, text)}
        node = nodes.get((name, index))
        if node is None:
            raise DraftError(f"{path}: no response {name!r} (variation {index + 1}) in the draft any more")
        current = response_version(name, index, node.value)
        if current != version:
            if new_text.replace("\r\n", "\n").strip() == node.value:
                return Saved(current, False, node.value)  # a double submit, or the same edit twice
            raise StaleDraft(f"{path}: someone changed the draft since you opened it; your text was NOT saved. "
                             f"The draft now says: {node.value!r}. Your text is kept in the box: compare, "
                             "then save again.", node.value, current)
        clean = check_text(new_text, node.value)
        if clean == node.value:
            return Saved(current, False, node.value)
        start, end = node.start_mark.index, node.end_mark.index
        updated = text[:start] + json.dumps(clean, ensure_ascii=False) + text[end:]
        try:
            reread = yaml.safe_load(updated)["responses"][name][index]["text"]
        except (yaml.YAMLError, KeyError, IndexError, TypeError):
            reread = None
        if reread != clean:  # never write what would not read back as typed
            raise DraftError(f"{path}: the text could not be written safely; nothing was saved")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(updated, encoding="utf-8")
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
        return Saved(response_version(name, index, clean), True, node.value)


def sample_values(locale: str) -> dict[str, str]:
    """Example figures for the placeholders, formatted as the actions format them (what "listen" plays)."""
    from ivr.dialogue.actions import format_money

    currency = CURRENCIES[locale]
    money = format_money(Decimal("2500.75"), currency)
    return {"balance": money, "amount": format_money(Decimal("320.50"), currency), "outstanding": money,
            "date": "2026-12-15", "days": "3", "count": "3", "account": "1234", **_SAMPLE_WORDS[locale]}


def fill(text: str, values: dict[str, str]) -> str:
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)
