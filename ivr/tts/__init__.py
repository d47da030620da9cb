"""Speech out: numbers read per locale (``numbers``), pyttsx3/espeak-ng synthesis into an 8 kHz prompt
cache that Asterisk plays (``synth.PromptSynthesizer``, whose engine runs in the ``worker`` process),
and ``ivr say`` / ``ivr prompts build`` (``commands``).

This module stays light (no pyttsx3, no pydub): the worker process imports it too.
"""

from ivr.tts.numbers import speakable

__all__ = ["speakable"]
