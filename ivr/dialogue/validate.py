"""``ivr dialogs validate``: Rasa's own validation plus this project's checks, with file and line.

Project checks, per locale (``dialogs/<locale>/``):
- every file is present and valid YAML without duplicate keys;
- every domain intent has NLU examples (a warning below 15), every NLU intent is in the domain;
- every response is used (by rules or stories, by the custom actions, or by the call session), and every
  response the actions and the session need exists;
- every ``{placeholder}`` in a response is filled (by the action that utters it, or a slot);
  response texts hold no hard-coded numbers (amounts and dates come from the store);
- slots the actions set exist with the values they use; slot mappings and forms are consistent;
- rules, stories and test stories use known intents and actions; custom actions in the domain exist
  in ``ivr/dialogue/actions.py``;
- held-out phrasings use known intents and never repeat a training example.
Rasa's validation (domain, NLU, story structure) runs with warnings as errors, minus the warnings this
design makes expected (responses uttered from actions, Rasa 3.0's slot auto-fill notice).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ivr.config import LOCALES
from ivr.dialogue.heldout import HELDOUT_FILE, training_twin

if TYPE_CHECKING:
    from ivr.config import Settings

log = logging.getLogger(__name__)

# The responses the call session speaks by name (README: for developers); the TTS pre-renders them.
SESSION_RESPONSES: dict[str, frozenset[str]] = {
    "utter_greet": frozenset(),
    "utter_apology": frozenset(),
    "utter_hold": frozenset(),
    "utter_no_input": frozenset(),
    "utter_not_understood": frozenset(),
    "utter_transfer": frozenset(),
    "utter_goodbye": frozenset(),
    "utter_anything_else": frozenset(),
    "utter_did_you_say": frozenset({"heard"}),
    "utter_ask_keypad": frozenset(),
    "utter_language_choice": frozenset(),
    "utter_keypad_menu": frozenset(),
    "utter_no_agent": frozenset(),  # not the session: the dialplan plays it (fallback/<locale>/no_agent.wav)
}

# Responses that name keys to press: their digits are keys, not values from the store.
KEY_RESPONSES = frozenset({"utter_language_choice", "utter_keypad_menu", "utter_no_agent"})

REQUIRED_FILES = ("domain.yml", "config.yml", "data/nlu.yml", "data/rules.yml", "data/stories.yml",
                  "tests/test_stories.yml", HELDOUT_FILE)
MIN_EXAMPLES = 15
MIN_HELDOUT = 5
# Intents and actions Rasa defines itself.
DEFAULT_INTENTS = frozenset({"nlu_fallback", "restart", "back", "out_of_scope", "session_start"})
DEFAULT_ACTIONS = frozenset({
    "action_listen", "action_restart", "action_session_start", "action_default_fallback",
    "action_deactivate_loop", "action_revert_fallback_events", "action_default_ask_affirmation",
    "action_default_ask_rephrase", "action_two_stage_fallback", "action_unlikely_intent",
    "action_back", "action_extract_slots", "...",
})
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_DIGIT = re.compile(r"\d")
# Rasa warnings that this design makes expected.
_EXPECTED_WARNINGS = (
    re.compile(r"Slot auto-fill has been removed"),
    re.compile(r"The utterance '(?P<response>\w+)' is not used in any story or rule"),
)


@dataclass(frozen=True)
class Problem:
    severity: str  # "error" | "warning"
    file: Path
    line: int | None
    message: str

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else str(self.file)
        return f"{where}: {self.severity}: {self.message}"


# ---------------------------------------------------------------- YAML with line numbers
class _DuplicateKey(yaml.YAMLError):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


class _Loader(yaml.SafeLoader):
    """Safe loader that refuses duplicate keys (Rasa's ruamel does too, with a less helpful message)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(line, f"duplicate key {key!r} (first at line {seen[key]})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


@dataclass
class _Doc:
    path: Path
    data: Any
    node: yaml.Node | None


def _load(path: Path, problems: list[Problem]) -> _Doc | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem("error", path, None, f"cannot read: {exc}"))
        return None
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)
    except _DuplicateKey as exc:
        problems.append(Problem("error", path, exc.line, str(exc)))
        return None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problems.append(Problem("error", path, mark.line + 1 if mark else None,
                                f"not valid YAML: {exc.problem or exc}"))
        return None
    except yaml.YAMLError as exc:
        problems.append(Problem("error", path, None, f"not valid YAML: {exc}"))
        return None
    return _Doc(path, data, node)


def _line(node: yaml.Node | None) -> int | None:
    return node.start_mark.line + 1 if node is not None else None


def _child(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
                return value_node
    return None


def _key_line(node: yaml.Node | None, key: str) -> int | None:
    if isinstance(node, yaml.MappingNode):
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
                return key_node.start_mark.line + 1
    return None


def _items(node: yaml.Node | None) -> list[yaml.Node]:
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


# ---------------------------------------------------------------- what the files say
@dataclass
class _Example:
    intent: str
    text: str
    line: int | None


def _nlu_examples(doc: _Doc, problems: list[Problem]) -> list[_Example]:
    out: list[_Example] = []
    for item in _items(_child(doc.node, "nlu")):
        intent_node = _child(item, "intent")
        if intent_node is None:
            continue  # regex, synonym, lookup entries
        intent = str(getattr(intent_node, "value", ""))
        block = _child(item, "examples")
        if not isinstance(block, yaml.ScalarNode):
            problems.append(Problem("error", doc.path, _line(intent_node),
                                    f"intent {intent}: 'examples' must be a block of '- text' lines"))
            continue
        # A block scalar ("|") starts on the line after its indicator.
        first = block.start_mark.line + 2 if block.style == "|" else block.start_mark.line + 1
        for offset, raw in enumerate(str(block.value).splitlines()):
            stripped = raw.strip()
            if not stripped:
                continue
            if not stripped.startswith("- "):
                problems.append(Problem("error", doc.path, first + offset,
                                        f"intent {intent}: example lines must start with '- '"))
                continue
            out.append(_Example(intent, stripped[2:].strip(), first + offset))
    return out


def _domain_intents(domain: _Doc) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for item in _items(_child(domain.node, "intents")):
        if isinstance(item, yaml.ScalarNode):
            out[str(item.value)] = _line(item)
        elif isinstance(item, yaml.MappingNode) and item.value:
            out[str(item.value[0][0].value)] = _line(item)
    return out


def _domain_responses(domain: _Doc) -> dict[str, tuple[int | None, list[str]]]:
    out: dict[str, tuple[int | None, list[str]]] = {}
    data = domain.data if isinstance(domain.data, dict) else {}
    for name, variations in (data.get("responses") or {}).items():
        texts = [str(v.get("text", "")) for v in variations or [] if isinstance(v, dict)]
        out[str(name)] = (_key_line(_child(domain.node, "responses"), str(name)), texts)
    return out


def _steps(doc: _Doc, section: str) -> Iterator[tuple[str, str, int | None]]:
    """(kind, name, line) for each intent/action step of rules, stories or test stories."""
    for block in _items(_child(doc.node, section)):
        for step in _items(_child(block, "steps")):
            for kind in ("intent", "action"):
                value = _child(step, kind)
                if isinstance(value, yaml.ScalarNode):
                    yield kind, str(value.value), _line(value)
            for nested in ("or",):
                for alternative in _items(_child(step, nested)):
                    value = _child(alternative, "intent")
                    if isinstance(value, yaml.ScalarNode):
                        yield "intent", str(value.value), _line(value)


# ---------------------------------------------------------------- the checks
def check_locale(dialogs_dir: Path, locale: str) -> list[Problem]:
    """This project's checks for one locale (fast: no Rasa import)."""
    from ivr.dialogue.actions import ACTION_CLASSES, RESPONSE_VALUES, RESPONSES_USED, SLOT_VALUES

    project = dialogs_dir / locale
    problems: list[Problem] = []
    if not project.is_dir():
        return [Problem("error", project, None, f"no Rasa project for locale {locale}")]
    for name in REQUIRED_FILES:
        if not (project / name).is_file():
            problems.append(Problem("error", project / name, None, "missing"))
    docs = {name: _load(project / name, problems) for name in REQUIRED_FILES}
    extra_data = sorted(p for p in (project / "data").rglob("*.yml") if p.name not in (
        "nlu.yml", "rules.yml", "stories.yml")) if (project / "data").is_dir() else []
    for path in extra_data:
        _load(path, problems)
    domain = docs["domain.yml"]
    nlu = docs["data/nlu.yml"]
    if domain is None or not isinstance(domain.data, dict):
        if domain is not None:
            problems.append(Problem("error", domain.path, None, "the domain must be a mapping"))
        return problems

    intents = _domain_intents(domain)
    responses = _domain_responses(domain)
    data: dict[str, Any] = domain.data
    slots: dict[str, Any] = data.get("slots") or {}
    actions_listed = [str(a) for a in data.get("actions") or []]
    known_actions = set(actions_listed) | set(responses) | DEFAULT_ACTIONS | set(data.get("forms") or {})
    custom = {cls.action_name for cls in ACTION_CLASSES}

    # -- intents and examples
    examples = _nlu_examples(nlu, problems) if nlu is not None else []
    by_intent: dict[str, list[_Example]] = {}
    for ex in examples:
        by_intent.setdefault(ex.intent, []).append(ex)
        if ex.intent not in intents:
            problems.append(Problem("error", nlu.path if nlu else project, ex.line,
                                    f"intent {ex.intent!r} is not in the domain"))
    for intent, line in intents.items():
        count = len(by_intent.get(intent, []))
        if intent in DEFAULT_INTENTS and intent != "out_of_scope":
            continue
        if count == 0:
            problems.append(Problem("error", domain.path, line, f"intent {intent!r} has no NLU examples"))
        elif count < MIN_EXAMPLES:
            problems.append(Problem("warning", nlu.path if nlu else project, by_intent[intent][0].line,
                                    f"intent {intent!r} has {count} examples; {MIN_EXAMPLES}+ let unseen "
                                    "phrasings work"))
    seen: dict[str, _Example] = {}
    for ex in examples:
        first = seen.setdefault(ex.text, ex)
        if first is not ex and first.intent != ex.intent:
            problems.append(Problem("error", nlu.path if nlu else project, ex.line,
                                    f"example {ex.text!r} is labelled {ex.intent} here and {first.intent} "
                                    f"at line {first.line}"))

    # -- responses
    used_in_data: set[str] = set()
    for name in ("data/rules.yml", "data/stories.yml", "tests/test_stories.yml"):
        doc = docs[name]
        if doc is None:
            continue
        section = "rules" if name.endswith("rules.yml") else "stories"
        for kind, value, line in _steps(doc, section):
            if kind == "intent" and value not in intents and value not in DEFAULT_INTENTS:
                problems.append(Problem("error", doc.path, line, f"intent {value!r} is not in the domain"))
            if kind == "action":
                if value not in known_actions:
                    problems.append(Problem("error", doc.path, line,
                                            f"action {value!r} is not in the domain (actions or responses)"))
                if not name.startswith("tests/"):
                    used_in_data.add(value)
    needed = dict(SESSION_RESPONSES)
    for name in RESPONSES_USED:
        needed.setdefault(name, RESPONSE_VALUES.get(name, frozenset()))
    for name in needed:
        if name not in responses:
            who = "the call session" if name in SESSION_RESPONSES else "ivr/dialogue/actions.py"
            problems.append(Problem("error", domain.path, _key_line(domain.node, "responses"),
                                    f"response {name!r} is missing ({who} uses it)"))
    for name, (line, texts) in responses.items():
        if name not in used_in_data and name not in needed:
            problems.append(Problem("error", domain.path, line,
                                    f"response {name!r} is never used (no rule, story or action utters it)"))
        if not texts or not any(t.strip() for t in texts):
            problems.append(Problem("error", domain.path, line, f"response {name!r} has no text"))
        allowed = needed.get(name, RESPONSE_VALUES.get(name, frozenset())) | set(slots)
        for text in texts:
            for placeholder in _PLACEHOLDER.findall(text):
                if placeholder not in allowed:
                    problems.append(Problem("error", domain.path, line,
                                            f"response {name!r}: placeholder {{{placeholder}}} is never filled "
                                            f"(available: {', '.join(sorted(allowed - set(slots))) or 'slots only'})"))
            for value in sorted(RESPONSE_VALUES.get(name, frozenset()) - set(_PLACEHOLDER.findall(text))):
                problems.append(Problem("warning", domain.path, line,
                                        f"response {name!r} does not say {{{value}}}"))
            if name not in KEY_RESPONSES and _DIGIT.search(_PLACEHOLDER.sub("", text)):
                problems.append(Problem("warning", domain.path, line,
                                        f"response {name!r} has a number in its text; amounts, dates and "
                                        "counts must come from the store through placeholders"))

    # -- actions
    for action in actions_listed:
        if action not in custom and action not in DEFAULT_ACTIONS:
            problems.append(Problem("error", domain.path, _key_line(domain.node, "actions"),
                                    f"custom action {action!r} is not defined in ivr/dialogue/actions.py"))
    for action in sorted(custom - set(actions_listed)):
        problems.append(Problem("warning", domain.path, _key_line(domain.node, "actions"),
                                f"custom action {action!r} is not listed in the domain (never used)"))

    # -- slots and forms
    slots_node = _child(domain.node, "slots")
    for slot, values in SLOT_VALUES.items():
        if slot not in slots:
            problems.append(Problem("error", domain.path, _line(slots_node),
                                    f"slot {slot!r} is missing (ivr/dialogue/actions.py sets it)"))
            continue
        spec = slots[slot] or {}
        if values is not None and spec.get("type") == "categorical":
            missing = values - {str(v) for v in spec.get("values") or []}
            if missing:
                problems.append(Problem("error", domain.path, _key_line(slots_node, slot),
                                        f"slot {slot!r} lacks the values {', '.join(sorted(missing))}"))
    for slot, spec in slots.items():
        spec = spec or {}
        line = _key_line(slots_node, str(slot))
        mappings = spec.get("mappings")
        if not mappings:
            problems.append(Problem("error", domain.path, line, f"slot {slot!r} has no mappings"))
            continue
        for mapping in mappings:
            if not isinstance(mapping, dict):
                problems.append(Problem("error", domain.path, line, f"slot {slot!r}: a mapping must be a mapping"))
                continue
            mapping_type = mapping.get("type")
            if mapping_type in ("from_intent", "from_trigger_intent"):
                for intent in _as_list(mapping.get("intent")):
                    if intent not in intents:
                        problems.append(Problem("error", domain.path, line,
                                                f"slot {slot!r} maps from unknown intent {intent!r}"))
            if mapping_type == "from_entity" and mapping.get("entity") not in (data.get("entities") or []):
                problems.append(Problem("error", domain.path, line,
                                        f"slot {slot!r} maps from unknown entity {mapping.get('entity')!r}"))
    for form, spec in (data.get("forms") or {}).items():
        for slot in (spec or {}).get("required_slots") or []:
            if slot not in slots:
                problems.append(Problem("error", domain.path, _key_line(_child(domain.node, "forms"), str(form)),
                                        f"form {form!r} requires unknown slot {slot!r}"))

    # -- held-out phrasings
    heldout = docs[HELDOUT_FILE]
    if heldout is not None:
        held = _nlu_examples(heldout, problems)
        training = {ex.text: ex for ex in examples}
        counts: dict[str, int] = {}
        for ex in held:
            counts[ex.intent] = counts.get(ex.intent, 0) + 1
            if ex.intent not in intents:
                problems.append(Problem("error", heldout.path, ex.line, f"intent {ex.intent!r} is not in the domain"))
            twin = training_twin(ex.text, training, locale)
            if twin is not None:
                problems.append(Problem("error", heldout.path, ex.line,
                                        f"{ex.text!r} is (nearly) the training example {twin!r} (data/nlu.yml line "
                                        f"{training[twin].line}); held-out phrasings must be new"))
        for intent in intents:
            if intent not in DEFAULT_INTENTS and counts.get(intent, 0) < MIN_HELDOUT:
                problems.append(Problem("warning", heldout.path, None,
                                        f"intent {intent!r} has {counts.get(intent, 0)} held-out phrasings "
                                        f"(want {MIN_HELDOUT}+)"))
    return problems + keypad_problems(dialogs_dir, locale)


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


# ---------------------------------------------------------------- Rasa's own validation
def rasa_problems(dialogs_dir: Path, locale: str, models_dir: Path) -> list[Problem]:
    """Rasa's ``data validate`` checks (domain, NLU, stories and rules), warnings counted as errors."""
    from ivr.dialogue import prepare_rasa

    prepare_rasa(models_dir)
    from rasa.shared.exceptions import RasaException
    from rasa.shared.importers.importer import TrainingDataImporter
    from rasa.validator import Validator

    project = dialogs_dir / locale
    problems: list[Problem] = []
    collected: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                collected.append(record.getMessage())

    handler = _Collect()
    rasa_logger = logging.getLogger("rasa")
    rasa_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                importer = TrainingDataImporter.load_from_config(
                    str(project / "config.yml"), str(project / "domain.yml"), [str(project / "data")]
                )
                validator = Validator.from_importer(importer)
                if importer.get_domain().is_empty():
                    problems.append(Problem("error", project / "domain.yml", None, "Rasa: the domain is empty"))
                results = [
                    validator.verify_domain_validity(),
                    validator.verify_actions_in_stories_rules(),
                    validator.verify_forms_in_stories_rules(),
                    validator.verify_form_slots(),
                    validator.verify_slot_mappings(),
                    validator.verify_nlu(ignore_warnings=False),
                    validator.verify_story_structure(ignore_warnings=False),
                ]
            except (RasaException, ValueError, OSError) as exc:
                problems.append(Problem("error", project, None, f"Rasa could not load the project: {exc}"))
                results = []
        collected.extend(str(w.message) for w in caught if issubclass(w.category, UserWarning))
    finally:
        rasa_logger.removeHandler(handler)
    from ivr.dialogue.actions import RESPONSES_USED

    expected_unused = set(RESPONSES_USED) | set(SESSION_RESPONSES)
    reported = 0
    for message in dict.fromkeys(collected):  # unique, in order
        if _expected(message, expected_unused):
            continue
        problems.append(Problem("error", project, None, f"Rasa: {message.strip()}"))
        reported += 1
    if results and not all(results) and reported == 0:
        # A check failed only through warnings we expect; nothing to report.
        log.debug("Rasa's validation of %s failed only on expected warnings", locale)
    return problems


def _expected(message: str, expected_unused: set[str]) -> bool:
    for pattern in _EXPECTED_WARNINGS:
        match = pattern.search(message)
        if match:
            response = match.groupdict().get("response")
            return response is None or response in expected_unused
    return False


# ---------------------------------------------------------------- the recognizer's vocabulary
def vocabulary_problems(dialogs_dir: Path, locale: str, settings: Settings) -> list[Problem]:
    """Words of NLU examples that the locale's Vosk model lacks (warnings; only if the model is installed)."""
    try:
        from ivr.asr.grammar import GrammarError, check_grammars, load_nlu_examples, model_vocabulary
        from ivr.asr.models import model_path as vosk_model_path
    except ImportError:  # the ASR part is optional for validating dialogs
        return []
    nlu = dialogs_dir / locale / "data" / "nlu.yml"
    try:
        model = vosk_model_path(locale, settings)
        if not model.is_dir():
            return []
        vocabulary = model_vocabulary(model)
        found = check_grammars(load_nlu_examples(dialogs_dir, locale), locale, vocabulary, source=str(nlu))
    except (GrammarError, ValueError, OSError) as exc:
        return [Problem("warning", nlu, None, f"recognizer vocabulary not checked: {exc}")]
    prefix = f"{nlu}: "
    return [Problem("warning", nlu, None, "recognizer: " + p.removeprefix(prefix)) for p in found]


def keypad_problems(dialogs_dir: Path, locale: str) -> list[Problem]:
    """keypad.yml: its keys, and that each menu key names an intent of the domain."""
    from ivr.dialogue.keypad import KEYPAD_FILE, KeypadError, load_keypad

    try:
        domain = yaml.safe_load((dialogs_dir / locale / "domain.yml").read_text(encoding="utf-8")) or {}
        intents = frozenset(i if isinstance(i, str) else next(iter(i)) for i in domain.get("intents") or [])
        load_keypad(dialogs_dir, locale, intents)
    except KeypadError as exc:
        return [Problem("error", dialogs_dir / locale / KEYPAD_FILE, None, str(exc).split(": ", 1)[-1])]
    except (OSError, yaml.YAMLError):
        return []  # the domain's own problems are reported by check_locale
    return []


def language_key_problems(dialogs_dir: Path) -> list[Problem]:
    """The language menu needs one key per locale."""
    from ivr.dialogue.keypad import KEYPAD_FILE, KeypadError, load_keypad

    owners: dict[str, str] = {}
    problems: list[Problem] = []
    for locale in LOCALES:
        try:
            key = load_keypad(dialogs_dir, locale).language_key
        except KeypadError:
            continue
        if key in owners:
            problems.append(Problem("error", dialogs_dir / locale / KEYPAD_FILE, None,
                                    f"language_key {key!r} already chooses {owners[key]}"))
        owners[key] = locale
    return problems


# ---------------------------------------------------------------- all of it
def validate(
    dialogs_dir: Path,
    locales: Sequence[str] | None = None,
    *,
    models_dir: Path | None = None,
    settings: Settings | None = None,
    with_rasa: bool = True,
) -> list[Problem]:
    """Every problem of the given locales (default: all), errors and warnings, in file order."""
    problems: list[Problem] = []
    for locale in locales or LOCALES:
        if locale not in LOCALES:
            problems.append(Problem("error", dialogs_dir / locale, None,
                                    f"unknown locale {locale!r} (known: {', '.join(LOCALES)})"))
            continue
        own = check_locale(dialogs_dir, locale)
        problems += own
        if with_rasa and not any(p.is_error for p in own):
            problems += rasa_problems(dialogs_dir, locale, models_dir or dialogs_dir.parent / "models")
        if settings is not None:
            problems += vocabulary_problems(dialogs_dir, locale, settings)
    return problems + language_key_problems(dialogs_dir)


def errors(problems: Iterable[Problem]) -> list[Problem]:
    return [p for p in problems if p.is_error]
