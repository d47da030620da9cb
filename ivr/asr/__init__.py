"""Speech in: Vosk models per locale, grammars per dialogue state, and the recognizer.

``VoskRecognizer`` (ivr.asr.recognizer) implements ``ivr.parts.Recognizer``; ``build_grammars`` and
``load_nlu_examples`` (ivr.asr.grammar) give the grammar for each ``Expect``; ``digits_from_words``
(ivr.asr.digits) turns recognized or keyed digits into a digit string. Importing this package does
not import Vosk.
"""

from __future__ import annotations

from ivr.asr.digits import digits_from_words
from ivr.asr.grammar import (
    build_grammars,
    check_grammars,
    check_locale_grammars,
    load_grammars,
    load_nlu_examples,
    missing_words,
    model_vocabulary,
)
from ivr.asr.models import ModelError, model_path
from ivr.asr.recognizer import UNK_WORD, VoskRecognizer, heard_nothing

__all__ = [
    "UNK_WORD",
    "ModelError",
    "VoskRecognizer",
    "build_grammars",
    "check_grammars",
    "check_locale_grammars",
    "digits_from_words",
    "heard_nothing",
    "load_grammars",
    "load_nlu_examples",
    "missing_words",
    "model_path",
    "model_vocabulary",
]
