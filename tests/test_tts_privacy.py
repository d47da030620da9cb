"""Dynamic prompts (a balance, "did you say …") do not outlive the call, and carry no text in clear."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from ivr.config import Settings
from ivr.logs import call_id_var
from ivr.tts.synth import PromptSynthesizer

BALANCE = "您的余额为 1,234.56 CNY。"
HEARD = "您是说“四八二一”吗？"


@pytest.fixture
def synth_settings(base_settings: Settings, tmp_path: Path) -> Settings:
    return dataclasses.replace(base_settings, sounds_dir=tmp_path / "sounds", tts_dynamic_sidecars=False)


@pytest.fixture
def synth(synth_settings: Settings) -> Iterator[PromptSynthesizer]:
    with PromptSynthesizer(synth_settings) as s:
        yield s


async def in_call(call_id: str, synth: PromptSynthesizer, text: str) -> Path:
    token = call_id_var.set(call_id)  # what CallSession.run does for the length of a call
    try:
        return await synth.render(text, "zh-CN")
    finally:
        call_id_var.reset(token)


async def test_dynamic_renders_have_no_sidecar_outside_replays(synth: PromptSynthesizer) -> None:
    wav = await in_call("c1", synth, BALANCE)
    assert wav.parent.name == "dynamic" and wav.is_file()
    assert not wav.with_suffix(".txt").exists()  # the balance is not on disk in clear
    # fixed prompts keep theirs (no personal data; the replay peers read them)
    greet = synth.path_for("您好", "zh-CN", fixed=True)
    assert synth.build_all(synth._book, ["zh-CN"]) > 0
    fixed_sidecars = list(greet.parent.glob("*.txt"))
    assert fixed_sidecars and all(p.with_suffix(".wav").is_file() for p in fixed_sidecars)


async def test_replays_get_dynamic_sidecars(synth_settings: Settings) -> None:
    with PromptSynthesizer(dataclasses.replace(synth_settings, tts_dynamic_sidecars=True)) as synth:
        wav = await in_call("c1", synth, BALANCE)
        assert wav.with_suffix(".txt").read_text(encoding="utf-8") == BALANCE


async def test_end_call_deletes_the_calls_dynamic_renders_once_no_call_uses_them(synth_settings: Settings) -> None:
    with PromptSynthesizer(dataclasses.replace(synth_settings, tts_dynamic_sidecars=True)) as synth:
        shared = await in_call("c1", synth, BALANCE)
        assert await in_call("c2", synth, BALANCE) == shared  # same text, same file, two live calls
        own = await in_call("c1", synth, HEARD)
        synth.end_call("c1")
        assert not own.exists() and not own.with_suffix(".txt").exists()
        assert shared.exists()  # c2 may still be about to play it
        synth.end_call("c2")
        assert not shared.exists() and not shared.with_suffix(".txt").exists()
        assert synth.stats.snapshot()["forgotten"] == 2
        synth.end_call("never-seen")  # harmless
        # outside a call (the CLI's `ivr say`) nothing is tracked: the file stays for the dynamic cache
        outside = await synth.render(BALANCE, "zh-CN")
        synth.end_call("-")
        assert outside.exists()


async def test_a_render_still_in_progress_goes_when_done(synth: PromptSynthesizer) -> None:
    import asyncio

    token = call_id_var.set("c9")
    try:
        render = asyncio.ensure_future(synth.render("您的余额为 9,876.54 CNY。", "zh-CN"))
        await asyncio.sleep(0)  # the render is submitted to the synthesis thread
    finally:
        call_id_var.reset(token)
    synth.end_call("c9")  # the caller hung up before the render finished
    wav = await render
    for _ in range(100):
        if not wav.exists():
            break
        await asyncio.sleep(0.01)
    assert not wav.exists()
