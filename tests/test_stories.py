"""Rasa's test stories (dialogs/<locale>/tests/test_stories.yml) against each locale's trained model.

The same evaluation as ``rasa test core --stories dialogs/<locale>/tests --e2e``: every user message goes
through the NLU and must get the story's intent, and every action must be the one the policies predict.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ivr.config import LOCALES, load_settings
from ivr.dialogue import prepare_rasa
from ivr.dialogue.train import model_path, train_locale


@pytest.mark.parametrize("locale", LOCALES)
async def test_rasa_test_stories(locale: str, tmp_path: Path) -> None:
    settings = load_settings(environ={})
    train_locale(settings.dialogs_dir, settings.models_dir, locale)  # skipped when the data is unchanged
    prepare_rasa(settings.models_dir)
    from rasa.core.agent import Agent
    from rasa.core.test import test as rasa_test

    agent = Agent.load(str(model_path(settings.models_dir, locale)))
    stories = settings.dialogs_dir / locale / "tests" / "test_stories.yml"
    result = await rasa_test(str(stories), agent, out_directory=str(tmp_path), e2e=True, disable_plotting=True)
    report = json.loads((tmp_path / "story_report.json").read_text(encoding="utf-8"))
    failed = (tmp_path / "failed_test_stories.yml").read_text(encoding="utf-8")
    conversations = report["conversation_accuracy"]
    assert conversations["total"] == 6
    assert conversations["correct"] == conversations["total"], failed
    assert result["accuracy"] == 1.0, failed
