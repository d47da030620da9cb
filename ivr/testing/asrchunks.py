"""``python -m ivr.testing.asrchunks``: Vosk's CPU and the robot's understanding at several
``IVR_ASR_FRAMES_PER_CHUNK`` values, with and without ``IVR_ASR_TRIM_SILENCE``, on the same audio.

The locale's held-out phrasings (``dialogs/<locale>/heldout.yml``, never trained on) are synthesized by
the robot's own synthesizer (8 kHz, as a caller's recording), decoded by the robot's recognizer (the
listening state's grammar, recognizers reused, dither off) once per value, and the words classified by
the in-process Rasa agent. Per value: CPU seconds per utterance (process time of the decodes alone),
intents right against the held-out label, and how many utterances got other words or another intent
than the first value. A turn's CPU in the robot is mostly this decoding (``python -m ivr.testing.turncpu``),
but the bench call's path there depends on what Vosk made of misheard words, so comparing settings
through it mixes different turns; here every setting hears the same utterances. ``--pad`` puts a quiet
line's noise around every utterance, as a recorder's file has it (a pause before the caller speaks, the
second of silence Asterisk waits before it stops): what ``--trim`` saves.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

from ivr.asr.grammar import load_grammars
from ivr.asr.recognizer import VoskRecognizer
from ivr.config import load_settings
from ivr.dialogue.heldout import is_right, load_heldout
from ivr.parts import Expect
from ivr.testing.harness import copy_as_8k

LINE_NOISE_RMS = 20  # the quiet of a phone line in the padding (-64 dBFS), far below the recorder's threshold


def pad_with_line_noise(wav: Path, lead_s: float, trail_s: float, seed: int) -> None:
    """Put ``lead_s`` and ``trail_s`` of a quiet line around an 8 kHz utterance, as a recorder's file has
    them (the caller starts after a pause; Asterisk stops a second after the last word)."""
    with wave.open(str(wav), "rb") as r:
        params, speech = r.getparams(), r.readframes(r.getnframes())
    rng = np.random.default_rng(seed)

    def quiet(seconds: float) -> bytes:
        return bytes(np.clip(rng.normal(0, LINE_NOISE_RMS, int(8000 * seconds)), -32768, 32767).astype("<i2").tobytes())

    with wave.open(str(wav), "wb") as w:
        w.setparams(params)
        w.writeframes(quiet(lead_s) + speech + quiet(trail_s))


async def _measure(
    locale: str, values: list[int], trims: list[bool], rounds: int, pad: tuple[float, float]
) -> dict[str, Any]:
    from ivr.app import build_robot

    settings = dataclasses.replace(load_settings(), asr_dither=False)
    phrasings = load_heldout(settings.dialogs_dir, locale)
    robot = build_robot(settings)
    grammar = load_grammars(settings, locale)[Expect.SPEECH] if settings.asr_grammars else None
    with tempfile.TemporaryDirectory(prefix="ivr-asrchunks-") as tmp:
        wavs = []
        for i, (text, _) in enumerate(phrasings):
            wav = Path(tmp) / f"{i}.wav"
            copy_as_8k(await robot.parts.synthesizer.render(text, locale), wav)
            if any(pad):
                pad_with_line_noise(wav, *pad, seed=i)
            wavs.append(wav)
        runs: list[dict[str, Any]] = []
        for value, trim in itertools.product(values, trims):
            recognizer = VoskRecognizer(
                dataclasses.replace(settings, asr_frames_per_chunk=value, asr_trim_silence=trim), reuse=True
            )
            texts = [recognizer.transcribe(wav, locale, grammar).text for wav in wavs]  # also warms up
            started = time.process_time()
            for _ in range(rounds):
                for wav in wavs:
                    recognizer.transcribe(wav, locale, grammar)
            cpu = (time.process_time() - started) / (rounds * len(wavs))
            intents = [(await robot.parts.dialogue.classify(t, locale))[0] if t else "" for t in texts]
            runs.append({
                "frames_per_chunk": value,
                "trim_silence": trim,
                "asr_cpu_s_per_utterance": round(cpu, 4),
                "intents_right": sum(is_right(expected, got) for (_, expected), got in zip(phrasings, intents, strict=True)),
                "texts": texts,
                "intents": intents,
            })
    first = runs[0]
    for run in runs:
        run["other_words_than_first"] = sum(a != b for a, b in zip(run["texts"], first["texts"], strict=True))
        run["other_intent_than_first"] = sum(a != b for a, b in zip(run["intents"], first["intents"], strict=True))
    return {"locale": locale, "utterances": len(phrasings), "rounds": rounds, "grammar": grammar is not None,
            "pad_s": list(pad), "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ivr.testing.asrchunks", description=__doc__.splitlines()[0])
    parser.add_argument("--locale", default="ko-KR")
    parser.add_argument("--values", default="0,51,99", help="frames per chunk to compare, the first as the reference (0: Vosk's own)")
    parser.add_argument("--trim", choices=("off", "on", "both"), default="off",
                        help="IVR_ASR_TRIM_SILENCE for every value (both: off, then on)")
    parser.add_argument("--pad", default="0,0", metavar="LEAD,TRAIL",
                        help="seconds of quiet line around every utterance, as in a recorder's file")
    parser.add_argument("--rounds", type=int, default=3, help="decodes of every utterance timed per value")
    parser.add_argument("--json", type=Path, help="write every utterance's words and intents there")
    args = parser.parse_args(argv)
    trims = {"off": [False], "on": [True], "both": [False, True]}[args.trim]
    lead_s, trail_s = (float(v) for v in args.pad.split(","))
    result = asyncio.run(
        _measure(args.locale, [int(v) for v in args.values.split(",")], trims, args.rounds, (lead_s, trail_s))
    )
    if args.json:
        args.json.write_text(json.dumps({"command": "python -m ivr.testing.asrchunks " + " ".join(argv or sys.argv[1:]),
                                         **result}, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    for run in result["runs"]:
        print(f"frames per chunk {run['frames_per_chunk']:>3}, trim {'on' if run['trim_silence'] else 'off':3}: "
              f"{run['asr_cpu_s_per_utterance']:.4f} CPU s per utterance, "
              f"intents right {run['intents_right']}/{result['utterances']}, other words than the first "
              f"{run['other_words_than_first']}, other intent {run['other_intent_than_first']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
