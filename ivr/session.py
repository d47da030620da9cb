"""One object per call owns the loop: greet → listen → recognize → decide → speak → repeat.

The session knows its parts only through narrow interfaces (``ivr.parts``) and the call only through a
transport-neutral ``ivr.channel.Channel`` (speak, listen, next key, transfer, finish): record mode over
FastAGI, stream mode, the replay harness and the unit tests' in-memory call all drive this same code.
What keys mean (``*``, ``0``, a menu choice, ID digits) is decided here and nowhere else.

Turn-taking policy: no input → reprompt, at the second miss the keypad menu; not understood → the
dialogue's hint; low-confidence speech → "did you say …?"; low-confidence digits → keypad; speech that
fails (no model, recognizer, recording) → the keypad menu; after the configured number of failures, or
when the caller asks for a person, transfer. Any failure of another part → a spoken apology and a
transfer: never dead air, never a silent hang-up. A caller hanging up ends the session cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ivr.channel import Channel
from ivr.config import LOCALES, Settings
from ivr.dialogue.keypad import KeypadBook
from ivr.dialogue.prompts import PromptBook
from ivr.logs import call_id_var
from ivr.masking import mask_phone, mask_secret, mask_text
from ivr.metrics import Metrics
from ivr.parts import (
    CallerHangup,
    CallInfo,
    DialogueEngine,
    Expect,
    Outcome,
    PartError,
    Recognizer,
    Reply,
    Synthesizer,
    UserInput,
)
from ivr.pools import PartPool
from ivr.retention import write_private_text

log = logging.getLogger(__name__)

MISSES_BEFORE_MENU = 2  # silences or turns not understood in a row before the keypad menu is offered
SPEECH_FAILED = UserInput(text="", keypad=False, confidence=0.0)  # _listen's answer when speech broke
REPEAT_KEY = "*"  # at any prompt: hear it again
AGENT_KEY = "0"  # where no digits are asked for: a person
NOT_UNDERSTOOD = frozenset({"nlu_fallback", "out_of_scope"})
MAX_KEYPAD_DIGITS = 20  # a keypad flood is cut here

T = TypeVar("T")


GrammarSource = Callable[[str, Expect], Sequence[str] | None]


@dataclass
class Parts:
    """Everything a session needs besides the call; built once per server (``ivr.app``)."""

    settings: Settings
    dialogue: DialogueEngine
    recognizer: Recognizer  # used by the channels that take speech (``ivr.agi.record_mode``, stream mode)
    synthesizer: Synthesizer
    prompts: PromptBook
    metrics: Metrics
    keypads: KeypadBook
    grammar: GrammarSource = lambda _locale, _expect: None
    # Blocking work on threads of its own (see ivr.pools): decoding, and the transcript's file write.
    asr_pool: PartPool = field(default_factory=lambda: PartPool("asr", 8))
    file_pool: PartPool = field(default_factory=lambda: PartPool("files", 8))


@dataclass
class TurnTiming:
    """Where one turn's time went (seconds); the benchmark reads these."""

    asr_s: float = 0.0
    dialogue_s: float = 0.0
    tts_s: float = 0.0
    compute_s: float = 0.0  # recording handed over → the reply's first play command


@dataclass
class SessionResult:
    outcome: Outcome
    reason: str = ""
    turns: list[TurnTiming] = field(default_factory=list)
    served_by: str = "none"  # how the caller's requests reached the dialogue: voice | keypad | mixed | none
    menu_reason: str = ""  # why the keypad menu was offered ("" when it was not)


class Transcript:
    """JSON lines per call, personal data masked before anything is written."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._entries: list[dict[str, Any]] = []

    def add(self, who: str, text: str, **extra: Any) -> None:
        entry: dict[str, Any] = {"t": round(time.time(), 3), "who": who, "text": text}
        entry.update({k: v for k, v in extra.items() if v not in (None, "")})
        self._entries.append(entry)

    def note_intent(self, intent: str, confidence: float) -> None:
        """The dialogue's reading of the caller's last turn, on that turn's line."""
        for entry in reversed(self._entries):
            if entry["who"] == "caller":
                if intent:
                    entry["intent"] = intent
                    entry["intent_confidence"] = round(confidence, 3)
                return

    def write(self) -> None:
        if self._path is None:
            return
        try:
            lines = (json.dumps(e, ensure_ascii=False) for e in self._entries)
            write_private_text(self._path, "\n".join(lines) + "\n")  # 0600 in 0700 folders
        except OSError:
            log.exception("could not write the transcript")


class CallSession:
    def __init__(
        self, parts: Parts, channel: Channel, call: CallInfo, *, keypad_only: bool = False,
        language_menu: bool = False,
    ) -> None:
        """``keypad_only``: the call asked for the keypad (``?input=keypad``); ``language_menu``: the
        caller chooses the language by key before the greeting."""
        self.parts = parts
        self.settings = parts.settings
        self.channel = channel
        self.call = call
        day = time.strftime("%Y-%m-%d")
        self.transcript = Transcript(self.settings.transcripts_dir / day / f"{call.call_id}.jsonl")
        self.result = SessionResult(Outcome.ERROR)
        self._turn = 0
        self._last_texts: tuple[str, ...] = ()
        self._handed_over_at: float | None = None
        self._end_wait_ms = 0  # the last input's end-of-turn wait (0 for keys: the last key ends it)
        self._timing = TurnTiming()
        self._no_input = 0  # silences in a row
        self._not_understood = 0  # turns not understood in a row
        self._misses = 0  # silences or turns not understood in a row, of either kind
        self._language_menu = language_menu
        self._speech = not keypad_only  # False: the caller is listened to by keypad only
        self._menu_on = False  # the keypad menu has been offered: read at every open question
        self._inputs: set[str] = set()  # "voice", "keypad": how requests reached the dialogue
        if keypad_only:
            self._offer_menu("input_keypad")

    # ------------------------------------------------------------ the loop
    async def run(self) -> SessionResult:
        token = call_id_var.set(self.call.call_id)
        metrics = self.parts.metrics
        metrics.calls_answered.inc()
        metrics.calls_active.inc()
        try:
            await self._run()
        except CallerHangup:
            self.result.outcome = Outcome.CALLER_HANGUP
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("call failed outside the turn loop")
            self.result.outcome = Outcome.ERROR
        finally:
            metrics.calls_active.dec()
            self._count(self.result)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.parts.dialogue.close(self.call), 2.0)
            self.result.served_by = (
                "mixed" if len(self._inputs) == 2 else next(iter(self._inputs)) if self._inputs else "none"
            )
            metrics.calls_served_by.labels(input=self.result.served_by).inc()
            self.transcript.add("system", "", outcome=self.result.outcome.value, reason=self.result.reason,
                                served_by=self.result.served_by, menu_reason=self.result.menu_reason,
                                locale=self.call.locale, caller=mask_phone(self.call.caller_id),
                                release=self._release())
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.parts.file_pool.run(self.transcript.write), 10.0)
            if (end_call := getattr(self.parts.synthesizer, "end_call", None)) is not None:
                end_call(self.call.call_id)  # this call's dynamic renders (amounts, "did you say …") go
            log.info("call ended", extra={"outcome": self.result.outcome.value, "reason": self.result.reason})
            call_id_var.reset(token)
        return self.result

    def _release(self) -> int | None:
        """The release number that served the call's locale (``ivr serve``'s pinned dialogue); None otherwise."""
        numbers = getattr(self.parts.dialogue, "numbers", None)
        return numbers().get(self.call.locale) if callable(numbers) else None

    def _count(self, result: SessionResult) -> None:
        m = self.parts.metrics
        if result.outcome is Outcome.COMPLETED:
            m.calls_completed.inc()
        elif result.outcome is Outcome.TRANSFER:
            m.calls_transferred.labels(reason=result.reason or "unspecified").inc()
        elif result.outcome is Outcome.CALLER_HANGUP:
            m.calls_caller_hangup.inc()
        else:
            m.calls_failed.inc()

    async def _run(self) -> None:
        await self.channel.answer()
        try:
            if self._language_menu:
                await self._choose_language()
            if self._speech and not await self._can_recognize():
                self._speech_failed("no_speech_model")
            reply = await self._part("dialogue", self.parts.dialogue.start(self.call))
            while True:
                await self._speak(reply)
                if self._menu_on and reply.outcome is None and not reply.max_digits:
                    await self._say_menu()
                if reply.outcome is not None:
                    await self._finish(reply.outcome, reply.transfer_reason)
                    return
                reply = await self._next_reply(reply)
        except (CallerHangup, asyncio.CancelledError):
            raise
        except Exception as exc:  # any failure of a part: apologise and hand over, never dead air
            part = exc.part if isinstance(exc, PartError) else type(exc).__name__
            log.warning("part failed, transferring", extra={"part": part}, exc_info=True)
            self.parts.metrics.part_errors.labels(part=part).inc()
            await self._apologise_and_transfer(f"{part}_failed")

    async def _next_reply(self, reply: Reply) -> Reply:
        """Listen until the caller gives usable input, then ask the dialogue for the next step.

        Failures count across turns until the caller is understood again: the configured number of
        silences in a row, or of turns not understood in a row, hands the call to a person.
        """
        while True:
            user = await self._listen(reply)
            if user is SPEECH_FAILED:  # the recognizer or the recording failed: the keypad serves
                await self._say_prompt("utter_ask_keypad") if reply.max_digits else await self._say_menu()
                continue
            if user is None:
                self._no_input += 1
                if self._no_input >= self.settings.no_input_limit:
                    return self._transfer_reply("no_input")
                if await self._missed_again(reply, "no_input"):
                    continue
                await self._say_prompt("utter_no_input")
                await self._repeat_last()
                continue
            self._no_input = 0
            if user.keypad and user.text == REPEAT_KEY:  # star alone: hear the question again
                await self._repeat_last()
                continue
            if user.keypad and user.text == AGENT_KEY and not reply.max_digits:
                return self._transfer_reply("caller_request")
            if user.keypad and not reply.max_digits and not user.intent:  # a key that is no menu choice
                self._offer_menu("key_pressed")
                await self._say_menu()
                continue
            if not user.text:  # speech, but no word the recognizer knows
                if self._not_understood_again():
                    return self._transfer_reply("not_understood")
                if await self._missed_again(reply, "not_understood"):
                    continue
                await self._say_prompt("utter_not_understood")
                continue
            confirmed = await self._confirm_if_unsure(user, reply)
            if confirmed is None:
                if self._not_understood_again():
                    return self._transfer_reply("not_understood")
                continue
            self._inputs.add("keypad" if confirmed.keypad else "voice")
            started = time.monotonic()
            nxt = await self._part("dialogue", self.parts.dialogue.handle(self.call, confirmed))
            self._timing.dialogue_s += time.monotonic() - started
            self.transcript.note_intent(nxt.intent, nxt.confidence)
            if nxt.transfer_reason == "verification_failed":
                self.parts.metrics.verification_failures.inc()
            if nxt.intent in NOT_UNDERSTOOD and nxt.outcome is None:
                if self._not_understood_again():
                    await self._speak(nxt)
                    return self._transfer_reply("not_understood")
                self._misses += 1
                if self._misses >= MISSES_BEFORE_MENU and not self._menu_on and not reply.max_digits:
                    self._offer_menu("not_understood")
            else:
                self._not_understood = 0
                self._misses = 0
            return nxt

    async def _missed_again(self, reply: Reply, why: str) -> bool:
        """One more silence or turn not understood; at the second in a row (at an open question, speech
        on) the keypad menu is offered instead of the usual reprompt. True when it was."""
        self._misses += 1
        if self._misses < MISSES_BEFORE_MENU or self._menu_on or reply.max_digits or not self._speech:
            return False
        self._offer_menu(why)
        await self._speak(Reply(texts=self._last_texts))
        await self._say_menu()
        return True

    # ------------------------------------------------------------ the keypad menu and the language menu
    def _offer_menu(self, reason: str) -> None:
        """From now on the keypad menu is read at every open question (its keys work at any time)."""
        if self._menu_on:
            return
        self._menu_on = True
        self.result.menu_reason = reason
        self.parts.metrics.keypad_menu_offered.labels(reason=reason).inc()
        self.transcript.add("system", "", event="keypad_menu", reason=reason)
        log.info("keypad menu offered", extra={"reason": reason})

    def _speech_failed(self, reason: str) -> None:
        """Speech cannot be used in this call any more: listen by keypad, with the menu."""
        self._speech = False
        self._offer_menu(reason)

    async def _say_menu(self) -> None:
        await self._say_prompt("utter_keypad_menu")
        text = self.parts.prompts.text("utter_keypad_menu", self.call.locale)
        if self._last_texts[-1:] != (text,):  # "*" repeats the question and the menu
            self._last_texts = (*self._last_texts, text)

    async def _can_recognize(self) -> bool:
        try:
            return await self.channel.can_recognize(self.call.locale)
        except CallerHangup:
            raise
        except Exception:
            log.warning("the recognizer could not say whether it serves %s", self.call.locale, exc_info=True)
            return False

    async def _choose_language(self) -> None:
        """Before the greeting: each language's choice in its own voice; a key interrupts and chooses.
        No key, or a key that chooses nothing: the default language."""
        choices = {self.parts.keypads.keypad(loc).language_key: loc for loc in LOCALES}
        for loc in sorted(LOCALES, key=lambda loc: self.parts.keypads.keypad(loc).language_key):
            text = self.parts.prompts.text("utter_language_choice", loc)
            sound = await self._part("tts", self.parts.synthesizer.render(text, loc), self.settings.tts_timeout_s)
            self.transcript.add("robot", text)
            if (await self.channel.speak(sound)).interrupted_by:
                break
        key = (await self.channel.listen(self.call.locale, Expect.SPEECH, keypad_only=True)).key
        chosen = choices.get(key, self.settings.locale)
        self.transcript.add("caller", key, keypad=True, language=chosen)
        self.call = dataclasses.replace(self.call, locale=chosen)

    def _not_understood_again(self) -> bool:
        """Count one more turn not understood; True when that reaches the limit."""
        self._not_understood += 1
        return self._not_understood >= self.settings.not_understood_limit

    def _transfer_reply(self, reason: str) -> Reply:
        text = self.parts.prompts.text("utter_transfer", self.call.locale)
        return Reply(texts=(text,), outcome=Outcome.TRANSFER, transfer_reason=reason)

    # ------------------------------------------------------------ listening
    async def _listen(self, reply: Reply) -> UserInput | None:
        """One caller turn: speech (recognized) or keys. None when nothing usable came; ``SPEECH_FAILED``
        when the recognizer or the recording failed (the call goes on by keypad)."""
        try:
            heard = await self.channel.listen(self.call.locale, reply.expect, keypad_only=not self._speech)
        except PartError as exc:
            if exc.part not in ("asr", "recording"):
                raise
            log.warning("speech failed; the keypad serves the call", extra={"part": exc.part}, exc_info=True)
            self.parts.metrics.part_errors.labels(part=exc.part).inc()
            self._speech_failed(f"{exc.part}_failed")
            return SPEECH_FAILED
        self._handed_over_at = time.monotonic()
        self._timing = TurnTiming(asr_s=heard.asr_s)
        self._end_wait_ms = 0 if heard.key else round(self.channel.end_of_speech_wait_s * 1000)
        if heard.key:
            return await self._keypad(heard.key, reply)
        if heard.recognition is None:
            return None  # keypad only, and no key came
        recognition = heard.recognition
        text = recognition.text.strip()
        shown = mask_secret(text) if reply.secret else mask_text(text)
        # recording: the kept recording's number (<call_id>-<n>.wav); secret: the answer to a secret
        # question (never exported as audio or text); silence: nothing was said (`ivr calls export`)
        self.transcript.add("caller", shown, confidence=round(recognition.confidence, 3),
                            recording=heard.recording or None, secret=reply.secret or None,
                            silence=heard.silent or None)
        if heard.silent:
            return None  # silence: the no-input case
        # Only unknown words: speech the model could not place, the not-understood case (text "").
        return UserInput(text=text, keypad=False, confidence=recognition.confidence if text else 0.0)

    async def _keypad(self, first: str, reply: Reply) -> UserInput | None:
        """Collect keys after the first one until ``#``, the expected count, or a pause.

        Instant keys act at once, without waiting for more: ``*`` (hear it again) always, and ``0``
        (a person) wherever no digits are asked for."""
        if first == REPEAT_KEY or (first == AGENT_KEY and not reply.max_digits):
            self._handed_over_at = time.monotonic()
            self.transcript.add("caller", first, keypad=True)
            return UserInput(text=first, keypad=True)
        menu = self.parts.keypads.keypad(self.call.locale).menu
        if not reply.max_digits and first in menu:  # an open question: a menu key is that request, at once
            self._handed_over_at = time.monotonic()
            self.transcript.add("caller", first, keypad=True, intent=menu[first])
            return UserInput(text=first, keypad=True, intent=menu[first])
        # Digits asked for, or keys that are no menu choice (read to their end, so that none of them is
        # taken for a choice afterwards; the session then reads the menu).
        keys = first
        wanted = reply.max_digits or MAX_KEYPAD_DIGITS
        while keys[-1] != "#" and sum(k.isdigit() for k in keys) < wanted and len(keys) < MAX_KEYPAD_DIGITS:
            key = await self.channel.next_key(self.settings.digit_timeout_s)
            if not key:
                break
            keys += key
        self._handed_over_at = time.monotonic()  # the input is complete with the last key, not the first
        if keys[-1] != "#":
            self.channel.end_entry()  # enough digits: the # the caller may still key ends this entry
        digits = "".join(k for k in keys if k.isdigit())
        shown = mask_secret(digits) if (reply.secret or digits) else keys
        self.transcript.add("caller", shown, keypad=True, masked=shown != keys or None, secret=reply.secret or None)
        if digits:
            return UserInput(text=digits, keypad=True)
        if REPEAT_KEY in keys:
            return UserInput(text=REPEAT_KEY, keypad=True)
        return None  # only '#': nothing entered

    async def _confirm_if_unsure(self, user: UserInput, reply: Reply) -> UserInput | None:
        """Below the confidence threshold, confirm speech or ask digits by keypad; never act on a guess."""
        if user.keypad or user.confidence >= self.settings.asr_min_confidence:
            return user
        if reply.expect is Expect.DIGITS:
            await self._say_prompt("utter_ask_keypad")
            again = await self._listen(reply)
            return again if again is not None and again.keypad else None
        heard = user.text
        await self._say_prompt("utter_did_you_say", heard=heard)
        answer = await self._listen(Reply(texts=(), expect=Expect.YES_NO))
        if answer is None:
            return None
        intent, _ = await self._part("dialogue", self.parts.dialogue.classify(answer.text, self.call.locale))
        if intent == "affirm":
            return UserInput(text=user.text, keypad=False, confidence=1.0)
        if intent == "deny":
            await self._say_prompt("utter_not_understood")
            return None
        # Neither yes nor no: take the answer itself as the new request.
        return answer if answer.confidence >= self.settings.asr_min_confidence else None

    # ------------------------------------------------------------ speaking
    async def _speak(self, reply: Reply) -> None:
        if reply.texts:
            self._last_texts = reply.texts if reply.outcome is None else self._last_texts
        for text in reply.texts:
            started = time.monotonic()
            sound = await self._part(
                "tts", self.parts.synthesizer.render(text, self.call.locale), self.settings.tts_timeout_s
            )
            self._timing.tts_s += time.monotonic() - started
            compute_ms = None  # on the turn's first reply line: the caller's input handed over → this reply ready
            if self._handed_over_at is not None:
                self._timing.compute_s = time.monotonic() - self._handed_over_at
                self.parts.metrics.turn_latency.observe(self._timing.compute_s)
                self.result.turns.append(self._timing)
                self._handed_over_at = None
                compute_ms = round(self._timing.compute_s * 1000)
            playback = await self.channel.speak(sound, interruptible=text not in reply.must_hear)
            # perceived (the robot's view): the caller's last word → this reply = end-of-turn wait + compute
            perceived_ms = None if compute_ms is None else compute_ms + self._end_wait_ms
            self.transcript.add("robot", mask_text(text), interrupted=playback.interrupted_by or None,
                                compute_ms=compute_ms, perceived_ms=perceived_ms)
            if playback.interrupted_by:
                return  # the caller is already answering: the rest of the reply is not read out

    async def _repeat_last(self) -> None:
        await self._speak(Reply(texts=self._last_texts))

    async def _say_prompt(self, name: str, **values: str) -> None:
        text = self.parts.prompts.text(name, self.call.locale, **values)
        sound = await self._part(
            "tts", self.parts.synthesizer.render(text, self.call.locale), self.settings.tts_timeout_s
        )
        playback = await self.channel.speak(sound)
        self.transcript.add("robot", mask_text(text), interrupted=playback.interrupted_by or None)

    # ------------------------------------------------------------ ending
    async def _finish(self, outcome: Outcome, reason: str) -> None:
        self.result.outcome = outcome
        self.result.reason = reason
        if outcome is Outcome.TRANSFER:
            await self.channel.transfer(reason or "unspecified")  # a person takes over
        else:
            await self.channel.finish(outcome)

    async def _apologise_and_transfer(self, reason: str) -> None:
        """Speak the apology (fresh, else the pre-rendered one) and hand the call to a person.

        If no apology could be played, the result is ``error``: the dialplan then plays its own
        apology before the queue, so the caller still hears one.
        """
        text = ""
        sound: Path | None = None
        try:
            text = self.parts.prompts.text("utter_apology", self.call.locale)
            sound = await asyncio.wait_for(
                self.parts.synthesizer.render(text, self.call.locale), self.settings.tts_timeout_s
            )
        except (CallerHangup, asyncio.CancelledError):
            raise
        except Exception:
            log.warning("apology could not be synthesized; using the pre-rendered one", exc_info=True)
            sound = self.parts.synthesizer.fallback("apology", self.call.locale)
        played = False
        if sound is not None:
            self.transcript.add("robot", text or "(apology)")
            try:
                await self.channel.speak(sound, interruptible=False)  # the caller goes to a person anyway
                played = True
            except CallerHangup:
                raise
            except Exception:
                log.warning("the apology could not be played", exc_info=True)
        if played:
            await self._finish(Outcome.TRANSFER, reason)
        else:
            self.result.outcome, self.result.reason = Outcome.ERROR, reason
            await self.channel.finish(Outcome.ERROR, reason)

    # ------------------------------------------------------------ parts with a time limit
    async def _part(self, part: str, work: Awaitable[T], timeout_s: float | None = None) -> T:
        limit = timeout_s if timeout_s is not None else self.settings.dialogue_timeout_s
        try:
            return await asyncio.wait_for(work, limit)
        except asyncio.TimeoutError:
            raise _PartTimeout(part, limit) from None


class _PartTimeout(PartError):
    def __init__(self, part: str, limit: float) -> None:
        super().__init__(f"{part} gave no answer within {limit} s")
        self.part = part


__all__ = ["CallSession", "Parts", "SessionResult", "TurnTiming"]
