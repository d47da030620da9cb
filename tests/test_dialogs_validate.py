"""``ivr dialogs validate``: the shipped projects pass; broken copies fail with the file and line."""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
from pathlib import Path

import pytest

from ivr.config import LOCALES, PROJECT_ROOT, Settings, load_settings
from ivr.dialogue.commands import register
from ivr.dialogue.validate import Problem, check_locale, errors, validate

DIALOGS = PROJECT_ROOT / "dialogs"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the en-US project to break."""
    shutil.copytree(DIALOGS / "en-US", tmp_path / "dialogs" / "en-US")
    return tmp_path / "dialogs"


def edit(path: Path, old: str, new: str) -> int:
    """Replace ``old`` once; return the 1-based line where it was."""
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    line = text[: text.index(old)].count("\n") + 1
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return line


def only_errors(dialogs: Path) -> list[Problem]:
    return errors(check_locale(dialogs, "en-US"))


def test_shipped_projects_pass_rasa_and_project_checks(tmp_path: Path) -> None:
    problems = validate(DIALOGS, LOCALES, models_dir=tmp_path)
    assert errors(problems) == [], "\n".join(map(str, problems))


def test_duplicate_key_names_the_line(project: Path) -> None:
    domain = project / "en-US" / "domain.yml"
    line = edit(domain, "  utter_hold:\n", "  utter_goodbye:\n")
    [problem] = only_errors(project)
    assert problem.file == domain and problem.line is not None and problem.line > line
    assert problem.message == f"duplicate key 'utter_goodbye' (first at line {line})"


def test_yaml_syntax_error_names_the_line(project: Path) -> None:
    rules = project / "en-US" / "data" / "rules.yml"
    line = edit(rules, "  - intent: human\n", "  - intent: [human\n")
    found = [p for p in only_errors(project) if p.file == rules]
    assert found and found[0].line is not None and abs(found[0].line - line) <= 2


def test_response_needed_by_actions_or_session(project: Path) -> None:
    domain = project / "en-US" / "domain.yml"
    edit(domain, '  utter_balance:\n    - text: "Your account balance is {balance}."\n', "")
    edit(domain, '  utter_hold:\n', '  utter_hold_renamed:\n')
    messages = [p.message for p in only_errors(project)]
    assert any("'utter_balance' is missing (ivr/dialogue/actions.py uses it)" in m for m in messages)
    assert any("'utter_hold' is missing (the call session uses it)" in m for m in messages)
    assert any("'utter_hold_renamed' is never used" in m for m in messages)


def test_placeholder_never_filled(project: Path) -> None:
    domain = project / "en-US" / "domain.yml"
    line = edit(domain, "is {balance}.", "is {balanse}.")
    found = [p for p in only_errors(project) if "{balanse}" in p.message]
    assert found and found[0].line == line - 1  # the response's name line


def test_hard_coded_amount_is_flagged(project: Path) -> None:
    domain = project / "en-US" / "domain.yml"
    edit(domain, "is {balance}.", "is 2,500.75 USD.")
    problems = check_locale(project, "en-US")
    assert any("number in its text" in p.message for p in problems)
    assert any("does not say {balance}" in p.message for p in problems)


def test_nlu_problems_name_the_example_line(project: Path) -> None:
    nlu = project / "en-US" / "data" / "nlu.yml"
    line = edit(nlu, "    - check my balance\n", "    - check my balance\n    - thank you\n")
    found = [p for p in only_errors(project) if "'thank you'" in p.message]
    assert found and found[0].file == nlu and found[0].line == line + 1
    assert "labelled ask_balance here and thanks" in found[0].message


def test_intent_without_examples_and_unknown_intent(project: Path) -> None:
    domain = project / "en-US" / "domain.yml"
    edit(domain, "  - inform_digits\n", "  - inform_digits\n  - ask_interest_rate\n")
    nlu = project / "en-US" / "data" / "nlu.yml"
    edit(nlu, "- intent: greet\n", "- intent: greeting\n")
    messages = [p.message for p in only_errors(project)]
    assert "intent 'ask_interest_rate' has no NLU examples" in messages
    assert "intent 'greeting' is not in the domain" in messages


def test_rules_use_known_actions_and_domain_actions_exist(project: Path) -> None:
    rules = project / "en-US" / "data" / "rules.yml"
    line = edit(rules, "  - action: action_transfer\n", "  - action: action_transfer_now\n")
    domain = project / "en-US" / "domain.yml"
    edit(domain, "  - action_end_call\n", "  - action_end_call\n  - action_send_sms\n")
    problems = only_errors(project)
    assert any(p.file == rules and p.line == line and "'action_transfer_now'" in p.message for p in problems)
    assert any("'action_send_sms' is not defined in ivr/dialogue/actions.py" in p.message for p in problems)


def test_slot_values_the_actions_need(project: Path) -> None:
    domain = project / "en-US" / "domain.yml"
    edit(domain, "values: [id_last4, phone, anything_else]", "values: [id_last4, anything_else]")
    edit(domain, "        intent: ask_loan_status\n", "        intent: ask_loan\n")
    messages = [p.message for p in only_errors(project)]
    assert "slot 'awaiting' lacks the values phone" in messages
    assert "slot 'requested_info' maps from unknown intent 'ask_loan'" in messages


def test_heldout_must_not_repeat_training_examples(project: Path) -> None:
    heldout = project / "en-US" / "heldout.yml"
    line = edit(heldout, "    - hiya\n", "    - hello there\n")
    [problem] = only_errors(project)
    assert problem.file == heldout and problem.line == line
    assert "is (nearly) the training example" in problem.message
    # A near-duplicate (case, punctuation, one word more) is no new phrasing either.
    edit(heldout, "    - hello there\n", "    - Hello there, robot!\n")
    [problem] = only_errors(project)
    assert problem.line == line and "nearly" in problem.message


def test_keypad_menu_keys_name_known_intents(project: Path) -> None:
    keypad = project / "en-US" / "keypad.yml"
    edit(keypad, '  "1": ask_balance\n', '  "1": ask_ballance\n')
    [problem] = only_errors(project)
    assert problem.file == keypad and "'ask_ballance', which is not an intent" in problem.message
    edit(keypad, '  "1": ask_ballance\n', '  "0": ask_balance\n')
    [problem] = only_errors(project)
    assert "0, * and # are taken" in problem.message


def test_each_locale_has_its_own_language_key(project: Path) -> None:
    shutil.copytree(DIALOGS / "ko-KR", project / "ko-KR")
    edit(project / "ko-KR" / "keypad.yml", 'language_key: "3"', 'language_key: "2"')
    [problem] = errors(validate(project, ["en-US", "ko-KR"], with_rasa=False))
    assert problem.file == project / "ko-KR" / "keypad.yml" and "already chooses en-US" in problem.message


def run_cli(argv: list[str], settings: Settings) -> int:
    """The ``ivr`` subcommands this part registers (ivr.cli wires them the same way)."""
    parser = argparse.ArgumentParser(prog="ivr")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args, settings))


def test_cli_validate(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = dataclasses.replace(load_settings(environ={}), dialogs_dir=project)
    assert run_cli(["dialogs", "validate", "--locale", "en-US", "--no-rasa"], settings) == 0
    assert "en-US OK" in capsys.readouterr().out
    edit(project / "en-US" / "domain.yml", "is {balance}.", "is {balanse}.")
    assert run_cli(["dialogs", "validate", "--locale", "en-US", "--no-rasa"], settings) == 1
    err = capsys.readouterr().err
    assert re.search(r"dialogs/en-US/domain\.yml:\d+: error: response 'utter_balance'", err), err


# ---------------------------------------------------------------- ivr train: what counts as a change
def test_fingerprint_covers_training_files_only(project: Path) -> None:
    from ivr.dialogue.train import fingerprint

    before = fingerprint(project, "en-US")
    edit(project / "en-US" / "heldout.yml", "    - hiya\n", "    - hiya there\n")  # not training data
    edit(project / "en-US" / "tests" / "test_stories.yml", "      hello\n", "      hi\n")
    assert fingerprint(project, "en-US") == before
    edit(project / "en-US" / "data" / "nlu.yml", "    - howdy\n", "    - howdy partner\n")
    changed = fingerprint(project, "en-US")
    assert changed != before
    edit(project / "en-US" / "domain.yml", "Goodbye.", "Bye.")
    assert fingerprint(project, "en-US") != changed


def test_cli_train_skips_unchanged_data(capsys: pytest.CaptureFixture[str]) -> None:
    from ivr.dialogue.train import is_current, train_locale

    settings = load_settings(environ={})
    train_locale(settings.dialogs_dir, settings.models_dir, "en-US")  # trains only if missing or changed
    assert is_current(settings.dialogs_dir, settings.models_dir, "en-US")
    assert run_cli(["train", "--locale", "en-US"], settings) == 0
    assert "en-US: unchanged" in capsys.readouterr().out


def test_train_names_a_broken_project(project: Path, tmp_path: Path) -> None:
    from ivr.dialogue.train import TrainingError, train_locale

    (project / "en-US" / "config.yml").unlink()
    with pytest.raises(TrainingError, match=r"en-US/config\.yml: missing"):
        train_locale(project, tmp_path / "models", "en-US")
