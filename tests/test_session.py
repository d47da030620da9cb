"""``CallSession``'s turn-taking policy, branch by branch, on an in-memory call (ivr.testing.memory).

The dialogue here is a scripted double (``ScriptedDialogue``) so that each branch can be reached
exactly; the real Rasa dialogue behind the same session is covered by the replay and fault tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from ivr.config import Settings
from ivr.dialogue.keypad import KeypadBook
from ivr.dialogue.prompts import PromptBook
from ivr.metrics import Metrics
from ivr.parts import CallInfo, DialogueError, Expect, Outcome, Reply, UserInput
from ivr.session import CallSession, Parts
from ivr.testing.memory import HANGUP, MUMBLE, SILENCE, CallerAct, MemoryChannel, MemorySynthesizer

GREETING = Reply(texts=("Hello, how can I help?",))
END_OF_SPEECH_WAIT_S = 0.44  # the channel's end-of-turn wait after speech (a stream channel's VAD silence)
ASK_DIGITS = Reply(texts=("The last four digits of your ID?",), expect=Expect.DIGITS, secret=True, max_digits=4)
BALANCE = Reply(texts=("Your balance is 1,234.56 CNY.", "Anything else?"), intent="ask_balance", confidence=0.9)
GOODBYE = Reply(texts=("Goodbye.",), outcome=Outcome.COMPLETED, intent="goodbye")
BALANCE_THEN_GOODBYE = Reply(texts=("Your balance is 1,234.56 CNY.", "Goodbye."), outcome=Outcome.COMPLETED,
                             intent="ask_balance")
AGENT = Reply(texts=("Putting you through.",), outcome=Outcome.TRANSFER, transfer_reason="caller_request")
FALLBACK = Reply(texts=("Sorry, say that again?",), intent="nlu_fallback", confidence=0.2)


class ScriptedDialogue:
    """A dialogue double: the reply for each input is looked up by its text; ``fail`` raises, ``hang``
    never answers. It records what it was given."""

    def __init__(self, replies: dict[str, Reply], *, fail: bool = False, hang: bool = False) -> None:
        self.replies = replies
        self.fail = fail
        self.hang = hang
        self.inputs: list[UserInput] = []
        self.started_in: list[str] = []
        self.closed = False

    async def start(self, call: CallInfo) -> Reply:
        self.started_in.append(call.locale)
        return GREETING

    async def handle(self, call: CallInfo, user: UserInput) -> Reply:
        self.inputs.append(user)
        if self.hang:
            await asyncio.Event().wait()
        if self.fail:
            raise DialogueError("injected: the dialogue raised")
        return self.replies.get(user.intent or user.text, FALLBACK)

    async def classify(self, text: str, locale: str) -> tuple[str, float]:
        return {"yes": ("affirm", 0.95), "no": ("deny", 0.95)}.get(text, ("ask_balance", 0.8))

    async def close(self, call: CallInfo) -> None:
        self.closed = True


class NoRecognizer:
    """The sessions here never decode a file themselves: their channel does."""

    def transcribe(self, wav: Path, locale: str, grammar: Any = None) -> Any:
        raise AssertionError("the session called the recognizer itself")


NO_RECOGNIZER = NoRecognizer()

REPLIES = {
    "balance": ASK_DIGITS,
    "ask_balance": ASK_DIGITS,  # the keypad menu's "1" (dialogs/en-US/keypad.yml)
    "4821": BALANCE,
    "bye": GOODBYE,
    "agent": AGENT,
}


@dataclasses.dataclass
class Call:
    result: Any
    channel: MemoryChannel
    dialogue: ScriptedDialogue
    metrics: Metrics
    transcript: list[dict[str, Any]]
    prompts: PromptBook

    def said(self, name: str, **values: str) -> str:
        return self.prompts.text(name, "en-US", **values)


async def call(
    settings: Settings,
    acts: list[CallerAct],
    *,
    dialogue: ScriptedDialogue | None = None,
    synthesizer: MemorySynthesizer | None = None,
    recognizer_fails: bool = False,
    fail_recording: bool = False,
    no_speech_model: bool = False,
    **session_options: bool,
) -> Call:
    channel = MemoryChannel(list(acts), fail_recording=fail_recording, fail_recognizer=recognizer_fails,
                            speech_model=not no_speech_model, end_of_speech_wait_s=END_OF_SPEECH_WAIT_S)
    dialogue = dialogue or ScriptedDialogue(REPLIES)
    parts = Parts(
        settings=settings,
        dialogue=dialogue,
        recognizer=NO_RECOGNIZER,  # the in-memory channel recognizes its caller's acts itself
        synthesizer=synthesizer or MemorySynthesizer(),
        prompts=PromptBook(settings.dialogs_dir),
        metrics=Metrics(),
        keypads=KeypadBook(settings.dialogs_dir),
    )
    info = CallInfo("1764000000.1-0a1b2c3d", "15550000002", "en-US")
    session = CallSession(parts, channel, info, **session_options)
    result = await asyncio.wait_for(session.run(), 30)
    path = session.transcript._path
    assert path is not None
    transcript = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return Call(result, channel, dialogue, parts.metrics, transcript, parts.prompts)


@pytest.fixture
def settings(base_settings: Settings, tmp_path: Path) -> Settings:
    return dataclasses.replace(
        base_settings, transcripts_dir=tmp_path / "transcripts", spool_dir=tmp_path / "spool",
        dialogue_timeout_s=0.5, tts_timeout_s=0.5,
    )


def say(text: str, confidence: float = 1.0) -> CallerAct:
    return CallerAct.say(text, confidence)


# ---------------------------------------------------------------- the intended path
async def test_a_call_served_to_the_end(settings: Settings) -> None:
    c = await call(settings, [say("balance"), CallerAct.keys("4821"), say("bye")])
    assert c.result.outcome is Outcome.COMPLETED
    assert c.channel.played == [*GREETING.texts, *ASK_DIGITS.texts, *BALANCE.texts, *GOODBYE.texts]
    assert c.channel.ended == ("completed", "")
    assert [u.text for u in c.dialogue.inputs] == ["balance", "4821", "bye"]
    assert c.dialogue.inputs[1].keypad and c.dialogue.closed
    assert "4821" not in json.dumps(c.transcript)  # the keyed secret is masked
    assert c.metrics.calls_completed._value.get() == 1


# ---------------------------------------------------------------- silence and words not understood
async def test_silence_reprompts_then_offers_the_keypad_then_a_person_takes_over(settings: Settings) -> None:
    c = await call(settings, [SILENCE, SILENCE, say("balance"), SILENCE, SILENCE, SILENCE])
    assert c.result.outcome is Outcome.TRANSFER and c.result.reason == "no_input"
    no_input, menu = c.said("utter_no_input"), c.said("utter_keypad_menu")
    # The first silence: "I did not hear you" and the question again; the second: the question and the
    # keypad menu. Where digits are asked, silences get the reprompt (the menu is for open questions).
    assert c.channel.played[:5] == [*GREETING.texts, no_input, *GREETING.texts, *GREETING.texts, menu]
    assert c.channel.played.count(no_input) == 3
    assert c.channel.played[-1] == c.said("utter_transfer")
    assert c.channel.ended == ("transfer", "no_input")
    assert c.result.menu_reason == "no_input" and c.result.served_by == "voice"


async def test_unknown_words_offer_the_keypad_then_go_to_a_person(settings: Settings) -> None:
    c = await call(settings, [MUMBLE, MUMBLE, MUMBLE])
    assert c.result.outcome is Outcome.TRANSFER and c.result.reason == "not_understood"
    assert c.channel.played == [*GREETING.texts, c.said("utter_not_understood"), *GREETING.texts,
                                c.said("utter_keypad_menu"), c.said("utter_transfer")]
    assert not c.dialogue.inputs  # nothing the recognizer could not place reaches the dialogue
    assert c.result.menu_reason == "not_understood"


async def test_turns_the_dialogue_does_not_understand_count_across_turns(settings: Settings) -> None:
    c = await call(settings, [say("what"), MUMBLE, say("huh")])
    assert c.result.outcome is Outcome.TRANSFER and c.result.reason == "not_understood"
    assert [u.text for u in c.dialogue.inputs] == ["what", "huh"]


# ---------------------------------------------------------------- confidence
async def test_low_confidence_speech_is_confirmed_before_acting(settings: Settings) -> None:
    c = await call(settings, [say("agent", 0.3), say("yes"), ])
    assert c.channel.played[1] == c.said("utter_did_you_say", heard="agent")
    assert c.result.outcome is Outcome.TRANSFER and c.result.reason == "caller_request"
    assert [(u.text, u.confidence) for u in c.dialogue.inputs] == [("agent", 1.0)]


async def test_a_denied_guess_is_not_acted_on(settings: Settings) -> None:
    c = await call(settings, [say("agent", 0.3), say("no"), say("bye")])
    assert c.result.outcome is Outcome.COMPLETED
    assert c.said("utter_not_understood") in c.channel.played
    assert [u.text for u in c.dialogue.inputs] == ["bye"]


async def test_neither_yes_nor_no_is_taken_as_the_new_request(settings: Settings) -> None:
    c = await call(settings, [say("agent", 0.3), say("bye")])
    assert c.result.outcome is Outcome.COMPLETED
    assert [u.text for u in c.dialogue.inputs] == ["bye"]


async def test_low_confidence_digits_are_asked_for_by_keypad(settings: Settings) -> None:
    c = await call(settings, [say("balance"), say("4821", 0.3), CallerAct.keys("4821"), say("bye")])
    assert c.said("utter_ask_keypad") in c.channel.played
    assert [(u.text, u.keypad) for u in c.dialogue.inputs] == [("balance", False), ("4821", True), ("bye", False)]
    assert c.result.outcome is Outcome.COMPLETED


async def test_digits_spoken_again_instead_of_keyed_are_not_taken(settings: Settings) -> None:
    c = await call(settings, [say("balance"), say("4821", 0.3), say("4821", 0.9), HANGUP])
    assert [u.text for u in c.dialogue.inputs] == ["balance"]
    assert c.result.outcome is Outcome.CALLER_HANGUP


# ---------------------------------------------------------------- keys
async def test_star_repeats_the_question_at_once(settings: Settings) -> None:
    c = await call(settings, [CallerAct.keys("*"), say("bye")])
    assert c.channel.played[:2] == [*GREETING.texts, *GREETING.texts]
    assert c.channel.digit_waits == 0  # no pause waiting for more keys
    assert c.result.outcome is Outcome.COMPLETED


async def test_zero_puts_the_caller_through_at_once_where_no_digits_are_asked(settings: Settings) -> None:
    c = await call(settings, [CallerAct.keys("0")])
    assert c.result.outcome is Outcome.TRANSFER and c.result.reason == "caller_request"
    assert c.channel.digit_waits == 0 and not c.dialogue.inputs


async def test_zero_is_a_digit_where_digits_are_asked(settings: Settings) -> None:
    replies = {**REPLIES, "0821": BALANCE}
    c = await call(settings, [say("balance"), CallerAct.keys("0821"), say("bye")],
                   dialogue=ScriptedDialogue(replies))
    assert [u.text for u in c.dialogue.inputs] == ["balance", "0821", "bye"]
    assert c.result.outcome is Outcome.COMPLETED


async def test_keys_stop_at_the_expected_count_or_hash(settings: Settings) -> None:
    c = await call(settings, [say("balance"), CallerAct.keys("48219"), say("bye")])
    assert c.dialogue.inputs[1].text == "4821"  # four digits asked: the fifth key is not read
    c = await call(settings, [say("balance"), CallerAct.keys("48#"), HANGUP])
    assert c.dialogue.inputs[1].text == "48"


async def test_keys_typed_during_a_prompt_are_kept_as_the_answer(settings: Settings) -> None:
    """Type-ahead: the ID digits keyed while the question still plays interrupt it and are the answer;
    none is lost and the caller is not asked again."""
    c = await call(settings, [say("balance"), CallerAct.keys("4821", during_prompt=True), say("bye")])
    assert c.channel.interrupted == [ASK_DIGITS.texts[0]]
    assert [(u.text, u.keypad) for u in c.dialogue.inputs] == [("balance", False), ("4821", True), ("bye", False)]
    assert c.channel.played.count(ASK_DIGITS.texts[0]) == 1
    assert c.result.outcome is Outcome.COMPLETED


async def test_each_reply_records_what_the_caller_waited(settings: Settings) -> None:
    """The transcript's ``perceived_ms`` (the ops console's dashboard reads it): the compute latency plus the
    channel's end-of-turn wait after speech, and nothing more after keys (the last key ends the input)."""
    c = await call(settings, [say("balance"), CallerAct.keys("4821"), say("bye")])
    timed = [e for e in c.transcript if e.get("who") == "robot" and e.get("compute_ms") is not None]
    assert len(timed) == 3  # one per caller turn
    waits = [e["perceived_ms"] - e["compute_ms"] for e in timed]
    assert waits == [440, 0, 440]


async def test_a_prompt_marked_not_interruptible_is_heard_in_full(settings: Settings) -> None:
    """A notice the dialog marks ``interruptible: false`` plays on through a key; the key is kept as the
    next input (nothing lost), and the prompt after it can be interrupted as usual."""
    notice = Reply(texts=("Calls are recorded.", "Your balance is 1,234.56 CNY."), intent="ask_balance",
                   confidence=0.9, must_hear=("Calls are recorded.",))
    replies = {**REPLIES, "4821": notice}
    c = await call(settings, [say("balance"), CallerAct.keys("4821"), CallerAct.keys("0", during_prompt=True)],
                   dialogue=ScriptedDialogue(replies))
    assert "Calls are recorded." not in c.channel.interrupted
    assert c.channel.interrupted == ["Your balance is 1,234.56 CNY."]  # the key stopped the next prompt
    assert c.result.outcome is Outcome.TRANSFER and c.result.reason == "caller_request"


async def test_a_key_during_a_long_reply_stops_the_rest_of_it(settings: Settings) -> None:
    replies = {**REPLIES, "4821": BALANCE}
    c = await call(settings, [say("balance"), CallerAct.keys("4821"), CallerAct.keys("0", during_prompt=True)],
                   dialogue=ScriptedDialogue(replies))
    assert c.channel.interrupted == [BALANCE.texts[0]]
    assert BALANCE.texts[1] not in c.channel.played  # "Anything else?" is not read out after the key
    assert c.result.outcome is Outcome.TRANSFER and c.result.reason == "caller_request"
    interrupted = [e for e in c.transcript if e.get("interrupted")]
    assert [e["text"] for e in interrupted] == [BALANCE.texts[0]]


# ---------------------------------------------------------------- asking for a person, hanging up
async def test_asking_for_a_person(settings: Settings) -> None:
    c = await call(settings, [say("agent")])
    assert c.channel.played[-1] == AGENT.texts[0]
    assert c.channel.ended == ("transfer", "caller_request")
    assert c.channel.ended == ("transfer", "caller_request")  # the dialplan queues the caller


async def test_a_hang_up_is_not_a_failure(settings: Settings) -> None:
    c = await call(settings, [say("balance"), HANGUP])
    assert c.result.outcome is Outcome.CALLER_HANGUP
    assert c.said("utter_apology") not in c.channel.played and c.channel.ended is None
    assert c.transcript[-1]["outcome"] == "caller_hangup"


# ---------------------------------------------------------------- each part failing
async def apologised(c: Call, reason: str) -> None:
    assert c.result.outcome is Outcome.TRANSFER and c.result.reason == reason
    assert c.channel.played[-1] == c.said("utter_apology")
    assert c.channel.ended == ("transfer", reason)
    assert "1,234.56" not in " ".join(c.channel.played)


async def test_the_dialogue_raises(settings: Settings) -> None:
    await apologised(await call(settings, [say("balance")], dialogue=ScriptedDialogue(REPLIES, fail=True)),
                     "dialogue_failed")


async def test_the_dialogue_hangs(settings: Settings) -> None:
    await apologised(await call(settings, [say("balance")], dialogue=ScriptedDialogue(REPLIES, hang=True)),
                     "dialogue_failed")


def served_by_keypad(c: Call, reason: str) -> None:
    """Speech failed, yet the call was served: the menu, a key, verification by keys, the answer."""
    assert c.result.outcome is Outcome.COMPLETED, c.channel.played
    assert c.result.served_by == "keypad" and c.result.menu_reason == reason
    assert c.said("utter_keypad_menu") in c.channel.played and BALANCE.texts[0] in c.channel.played
    assert c.said("utter_apology") not in c.channel.played
    assert [(u.text, u.intent) for u in c.dialogue.inputs] == [("1", "ask_balance"), ("4821", ""), ("9", "")] \
        or [(u.text, u.intent) for u in c.dialogue.inputs][:2] == [("1", "ask_balance"), ("4821", "")]
    assert c.metrics.keypad_menu_offered.labels(reason=reason)._value.get() == 1


KEYPAD_CALL = [CallerAct.keys("1"), CallerAct.keys("4821")]


async def test_the_recognizer_raises_the_keypad_serves(settings: Settings) -> None:
    c = await call(settings, [say("balance"), *KEYPAD_CALL, CallerAct.keys("0")], recognizer_fails=True,
                   dialogue=ScriptedDialogue({**REPLIES, "4821": BALANCE_THEN_GOODBYE}))
    served_by_keypad(c, "asr_failed")
    assert c.metrics.part_errors.labels(part="asr")._value.get() == 1  # still counted: it did fail


async def test_the_recording_cannot_be_written_the_keypad_serves(settings: Settings) -> None:
    c = await call(settings, KEYPAD_CALL, fail_recording=True,
                   dialogue=ScriptedDialogue({**REPLIES, "4821": BALANCE_THEN_GOODBYE}))
    served_by_keypad(c, "recording_failed")


async def test_no_speech_model_the_menu_is_read_after_the_greeting(settings: Settings) -> None:
    c = await call(settings, KEYPAD_CALL, no_speech_model=True,
                   dialogue=ScriptedDialogue({**REPLIES, "4821": BALANCE_THEN_GOODBYE}))
    served_by_keypad(c, "no_speech_model")
    assert c.channel.played[:2] == [*GREETING.texts, c.said("utter_keypad_menu")]


async def test_a_keypad_only_number(settings: Settings) -> None:
    c = await call(settings, [*KEYPAD_CALL], keypad_only=True,
                   dialogue=ScriptedDialogue({**REPLIES, "4821": BALANCE_THEN_GOODBYE}))
    served_by_keypad(c, "input_keypad")
    assert c.channel.recordings == 0 and c.channel.keypad_listens >= 2  # keypad-only: nothing recorded


async def test_in_keypad_mode_silence_and_limits_still_go_to_a_person(settings: Settings) -> None:
    c = await call(settings, [SILENCE, SILENCE, SILENCE], keypad_only=True)
    assert c.result.outcome is Outcome.TRANSFER and c.result.reason == "no_input"
    c = await call(settings, [CallerAct.keys("0")], keypad_only=True)
    assert c.result.outcome is Outcome.TRANSFER and c.result.reason == "caller_request"


async def test_a_menu_key_at_an_open_question_is_that_request(settings: Settings) -> None:
    c = await call(settings, [CallerAct.keys("1"), CallerAct.keys("4821"), say("bye")])
    assert [(u.text, u.intent) for u in c.dialogue.inputs][:2] == [("1", "ask_balance"), ("4821", "")]
    assert c.result.outcome is Outcome.COMPLETED and c.result.served_by == "mixed"


async def test_a_key_that_is_no_choice_reads_the_menu_and_speech_still_works(settings: Settings) -> None:
    c = await call(settings, [CallerAct.keys("7"), say("bye")])
    assert c.channel.played[1] == c.said("utter_keypad_menu")
    assert c.result.menu_reason == "key_pressed"
    assert c.result.outcome is Outcome.COMPLETED and c.result.served_by == "voice"


async def test_star_after_the_menu_repeats_the_question_and_the_menu(settings: Settings) -> None:
    c = await call(settings, [CallerAct.keys("*"), HANGUP], keypad_only=True)
    menu = c.said("utter_keypad_menu")
    assert c.channel.played == [*GREETING.texts, menu, *GREETING.texts, menu]


# ---------------------------------------------------------------- the language menu
async def test_the_language_menu_switches_the_call_before_the_greeting(settings: Settings) -> None:
    c = await call(settings, [CallerAct.keys("3"), HANGUP], language_menu=True)
    prompts = c.prompts
    choices = [prompts.text("utter_language_choice", loc) for loc in ("zh-CN", "en-US", "ko-KR")]
    assert c.channel.played[:3] == choices  # each in its own language, by key order
    assert c.transcript[3]["language"] == "ko-KR"
    assert c.dialogue.started_in == ["ko-KR"]


async def test_no_key_at_the_language_menu_keeps_the_default(settings: Settings) -> None:
    c = await call(settings, [SILENCE, HANGUP], language_menu=True)
    assert c.dialogue.started_in == [settings.locale]


async def test_synthesis_fails_for_one_answer(settings: Settings) -> None:
    c = await call(settings, [say("balance"), CallerAct.keys("4821")], synthesizer=MemorySynthesizer(fail_when="1,234.56"))
    await apologised(c, "tts_failed")


async def test_synthesis_hangs_the_pre_rendered_apology_is_played(settings: Settings) -> None:
    c = await call(settings, [say("balance")], synthesizer=MemorySynthesizer(hang=True))
    assert c.result.outcome is Outcome.TRANSFER and c.result.reason == "tts_failed"
    assert c.channel.played == ["(pre-rendered apology)"]


async def test_nothing_can_be_said_the_dialplan_apologises(settings: Settings) -> None:
    c = await call(settings, [say("balance")], synthesizer=MemorySynthesizer(hang=True, fallbacks=False))
    assert c.result.outcome is Outcome.ERROR
    assert c.channel.played == []
    assert c.channel.ended == ("error", "tts_failed")
