"""The custom actions: caller verification and the account answers, once for every locale.

The rules in ``dialogs/<locale>/data/rules.yml`` map each intent to one of these actions in every
state; the state itself lives in slots that only these actions set:

- ``awaiting``: ``id_last4`` or ``phone`` while verifying (the engine then expects digits),
  ``anything_else`` after an answer; empty otherwise.
- ``customer_id``: whom the ID digits are checked against, from the caller ID or the keyed number: the
  customer, or for a number no customer has, the store's stand-in (which never verifies).
- ``verified``: set once the ID digits matched; a new call starts unverified.
- ``verify_failures``: wrong ID digits in this call.

Nothing tells a caller whether a phone number is registered (a stranger could otherwise test numbers):
a caller ID, registered or not, is asked for the ID digits; a keyed number, registered or not, is
followed by the same request; only the ID check then fails ("those details do not match"), and after
a failure the caller keys the registered number again. Keyed numbers are limited per caller ID and
hour by the store (``lookup_keyed_phone``); past the limit the caller is put through to a person.
- ``call_outcome`` / ``transfer_reason``: how the call ends (the engine turns them into the Reply's outcome).

Nothing is disclosed before verification: every answer checks ``verified`` itself, whatever the rules
say. Account values come from the store at the moment of the call, on the store's own bounded worker
threads (``ivr.pools``) with ``settings.lookup_timeout_s``; a store failure or timeout apologises and transfers ("lookup_failed").
Wording is never here: actions name domain responses and fill their ``{placeholders}``.

rasa_sdk's action server (``rasa run actions``) instantiates every concrete Action subclass it can
see with no arguments; then the classes take their store and settings from
``ivr.dialogue.action_server``. In-process, ``build_executor(store, settings, lookups)`` passes them in.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from rasa_sdk import Action, Tracker
from rasa_sdk.events import SlotSet
from rasa_sdk.executor import ActionExecutor, CollectingDispatcher

from ivr.accounts.api import AccountStore, VerifyStatus
from ivr.accounts.importer import currency_exponent, normalize_phone
from ivr.asr.digits import digits_from_words
from ivr.config import LOCALES
from ivr.parts import AccountStoreError
from ivr.pools import PartPool

if TYPE_CHECKING:
    from ivr.config import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

# What the caller asked for, by intent (the ``requested_info`` slot's from_intent mappings say the same).
INFO_BY_INTENT: dict[str, str] = {
    "ask_balance": "balance",
    "ask_next_repayment": "next_repayment",
    "ask_loan_status": "loan_status",
    "ask_transactions": "transactions",
}

AWAIT_ID = "id_last4"
AWAIT_PHONE = "phone"
AWAIT_ANYTHING_ELSE = "anything_else"

TRANSACTIONS_READ = 3  # the last few, read out briefly

# Every domain response these actions utter (``ivr dialogs validate`` checks each locale has them).
RESPONSES_USED: frozenset[str] = frozenset({
    "utter_apology", "utter_transfer", "utter_goodbye", "utter_anything_else", "utter_how_can_i_help",
    "utter_go_back", "utter_ask_id_last4", "utter_ask_phone", "utter_wrong_digits",
    "utter_verify_failed", "utter_verified", "utter_balance", "utter_balance_account", "utter_no_account",
    "utter_next_repayment", "utter_repayment_overdue", "utter_no_repayment", "utter_loan_active",
    "utter_loan_overdue", "utter_loan_closed", "utter_no_loan", "utter_transactions_intro",
    "utter_transaction", "utter_no_transactions",
})


# The values each response is uttered with (its ``{placeholders}`` may use these, or slot names).
RESPONSE_VALUES: dict[str, frozenset[str]] = {
    "utter_balance": frozenset({"balance"}),
    "utter_balance_account": frozenset({"account", "balance"}),
    "utter_next_repayment": frozenset({"amount", "date"}),
    "utter_repayment_overdue": frozenset({"amount", "date", "days"}),
    "utter_loan_active": frozenset({"outstanding"}),
    "utter_loan_overdue": frozenset({"days", "outstanding"}),
    "utter_transactions_intro": frozenset({"count"}),
    "utter_transaction": frozenset({"date", "amount", "description"}),
}

# The slots these actions set, with the values of the categorical ones (the domain must allow them).
SLOT_VALUES: dict[str, frozenset[str] | None] = {
    "verified": None,
    "customer_id": None,
    "requested_info": frozenset(INFO_BY_INTENT.values()),
    "awaiting": frozenset({"id_last4", "phone", "anything_else"}),
    "verify_failures": None,
    "call_outcome": frozenset({"transfer", "completed"}),
    "transfer_reason": None,
}


class LookupFailed(Exception):
    """The account store failed or did not answer in time."""


# ---------------------------------------------------------------- formatting (README: numbers in prompts)
def format_money(amount: Decimal, currency: str) -> str:
    """``1,234.56 CNY``, ``-300.00 CNY``, ``1,234,000 KRW``: separators, the currency's decimals, ISO code."""
    places = currency_exponent(currency)
    value = Decimal(amount).quantize(Decimal(1).scaleb(-places))
    return f"{value:,.{places}f} {currency}"


# ---------------------------------------------------------------- one action run
class ActionRun:
    """What one action run sees and does: slots (with its own changes), caller metadata, output."""

    def __init__(
        self,
        dispatcher: CollectingDispatcher,
        tracker: Tracker,
        store: AccountStore,
        settings: Settings,
        lookups: PartPool,
    ) -> None:
        self.dispatcher = dispatcher
        self.tracker = tracker
        self.store = store
        self.settings = settings
        self.lookups = lookups
        self.events: list[dict[str, Any]] = []
        self._changed: dict[str, Any] = {}
        self.metadata = _latest_metadata(tracker)

    # -- state
    def slot(self, name: str) -> Any:
        return self._changed[name] if name in self._changed else self.tracker.get_slot(name)

    def set(self, name: str, value: Any) -> None:
        self._changed[name] = value
        self.events.append(SlotSet(name, value))

    @property
    def intent(self) -> str:
        return str((self.tracker.latest_message or {}).get("intent", {}).get("name") or "")

    @property
    def call_id(self) -> str:
        return str(self.metadata.get("call_id") or self.tracker.sender_id)

    @property
    def caller_id(self) -> str:
        return str(self.metadata.get("caller_id") or "")

    @property
    def verified(self) -> bool:
        return self.slot("verified") is True and bool(self.slot("customer_id"))

    # -- output
    def say(self, response: str, **values: Any) -> None:
        self.dispatcher.utter_message(response=response, **values)

    def discard_output(self) -> None:
        self.dispatcher.messages.clear()
        self.events.clear()
        self._changed.clear()

    # -- the account store, off the event loop and bounded in time
    async def lookup(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return await asyncio.wait_for(self.lookups.run(fn, *args, **kwargs), self.settings.lookup_timeout_s)
        except asyncio.TimeoutError:
            log.warning("account lookup timed out after %s s", self.settings.lookup_timeout_s,
                        extra={"part": "accounts", "call_id": self.call_id})
            raise LookupFailed from None
        except AccountStoreError as exc:
            log.warning("account lookup failed: %s", exc, extra={"part": "accounts", "call_id": self.call_id})
            raise LookupFailed from exc


def _latest_metadata(tracker: Tracker) -> dict[str, Any]:
    """The metadata of the caller's latest message ({call_id, caller_id, locale}), else the session's."""
    for event in reversed(tracker.events or []):
        if event.get("event") == "user":
            metadata = event.get("metadata")
            if isinstance(metadata, dict) and metadata:
                return metadata
            break
    started = tracker.get_slot("session_started_metadata")
    return started if isinstance(started, dict) else {}


# ---------------------------------------------------------------- the actions
class IvrAction(Action, abc.ABC):
    """Base of the custom actions (abstract: rasa_sdk's package scan skips it)."""

    def __init__(
        self, store: AccountStore | None = None, settings: Settings | None = None, lookups: PartPool | None = None
    ) -> None:
        if store is None or settings is None:
            # rasa_sdk's action server builds actions without arguments: use its process context.
            from ivr.dialogue.action_server import server_context

            context_store, context_settings = server_context()
            store = store if store is not None else context_store
            settings = settings if settings is not None else context_settings
        self.store = store
        self.settings = settings
        # The action server builds each action alone: each then has its own pool (threads start lazily).
        self.lookups = lookups or PartPool("lookup", settings.max_calls)

    action_name: ClassVar[str]

    def name(self) -> str:
        return self.action_name

    @abc.abstractmethod
    async def act(self, turn: ActionRun) -> None: ...

    async def run(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: dict[str, Any]
    ) -> list[dict[str, Any]]:
        turn = ActionRun(dispatcher, tracker, self.store, self.settings, self.lookups)
        try:
            await self.act(turn)
        except LookupFailed:
            # Nothing half-said: the apology replaces whatever this turn had prepared.
            turn.discard_output()
            turn.say("utter_apology")
            _end(turn, "transfer", "lookup_failed")
        return turn.events


class ActionAnswerOrVerify(IvrAction):
    """ask_*: answer a verified caller; otherwise start (or continue) verification."""

    action_name = "action_answer_or_verify"

    async def act(self, turn: ActionRun) -> None:
        info = INFO_BY_INTENT.get(turn.intent) or turn.slot("requested_info")
        if turn.verified:
            await answer(turn, info)
        elif turn.slot("awaiting") in (AWAIT_ID, AWAIT_PHONE):
            _ask_again(turn)
        else:
            await begin_verification(turn)


class ActionVerifyDigits(IvrAction):
    """inform_digits: the registered phone number or the last four ID digits, whichever is awaited."""

    action_name = "action_verify_digits"

    async def act(self, turn: ActionRun) -> None:
        awaiting = turn.slot("awaiting")
        if awaiting not in (AWAIT_ID, AWAIT_PHONE):
            turn.say("utter_how_can_i_help")
            return
        digits = _digits(turn)
        if not digits:
            _ask_again(turn)
            return
        if awaiting == AWAIT_PHONE:
            # Registered or not, the same next step: the ID digits (checked against a stand-in if not).
            subject = await turn.lookup(turn.store.lookup_keyed_phone, digits, call_id=turn.call_id,
                                        caller_id=turn.caller_id)
            if subject is None:  # too many numbers keyed from this caller ID: a person takes over
                turn.say("utter_transfer")
                _end(turn, "transfer", "phone_lookup_limit")
                return
            turn.set("customer_id", subject)
            turn.set("awaiting", AWAIT_ID)
            turn.say("utter_ask_id_last4")
            return
        customer = str(turn.slot("customer_id") or "")
        if not customer:  # cannot happen through the rules; start over rather than guess
            await begin_verification(turn)
            return
        status = await turn.lookup(
            turn.store.verify_id_last4, customer, digits, call_id=turn.call_id, caller_id=turn.caller_id
        )
        if status is VerifyStatus.OK:
            turn.set("verified", True)
            turn.set("awaiting", None)
            turn.say("utter_verified")
            info = turn.slot("requested_info")
            if info:
                await answer(turn, info)
            else:
                turn.say("utter_how_can_i_help")
        elif status is VerifyStatus.LOCKED:
            # No reason given beyond "a colleague will help".
            turn.say("utter_transfer")
            _end(turn, "transfer", "locked")
        else:
            _failed(turn)


class ActionYesNo(IvrAction):
    """affirm / deny: "anything else?" → no ends the call; otherwise back to the open question."""

    action_name = "action_yes_no"

    async def act(self, turn: ActionRun) -> None:
        awaiting = turn.slot("awaiting")
        if awaiting == AWAIT_ANYTHING_ELSE and turn.intent == "deny":
            turn.say("utter_goodbye")
            _end(turn, "completed", "")
        elif awaiting in (AWAIT_ID, AWAIT_PHONE):
            _ask_again(turn)
        else:
            if awaiting == AWAIT_ANYTHING_ELSE:
                turn.set("awaiting", None)
            turn.say("utter_how_can_i_help")


class ActionRepeat(IvrAction):
    """repeat: the robot's previous turn again, word for word (slots unchanged, so the same input is awaited)."""

    action_name = "action_repeat"

    async def act(self, turn: ActionRun) -> None:
        texts = previous_bot_texts(turn.tracker.events or [])
        if not texts:
            turn.say("utter_how_can_i_help")
            return
        for text in texts:
            turn.dispatcher.utter_message(text=text)


class ActionGoBack(IvrAction):
    """go_back: drop the pending question (and a verification in progress) and offer the menu."""

    action_name = "action_go_back"

    async def act(self, turn: ActionRun) -> None:
        turn.set("awaiting", None)
        turn.set("requested_info", None)
        turn.say("utter_go_back")


class ActionTransfer(IvrAction):
    """human: a person, at any point of the call."""

    action_name = "action_transfer"

    async def act(self, turn: ActionRun) -> None:
        turn.say("utter_transfer")
        _end(turn, "transfer", "caller_request")


class ActionEndCall(IvrAction):
    """After the goodbye: the call is complete."""

    action_name = "action_end_call"

    async def act(self, turn: ActionRun) -> None:
        _end(turn, "completed", "")


ACTION_CLASSES: tuple[type[IvrAction], ...] = (
    ActionAnswerOrVerify,
    ActionVerifyDigits,
    ActionYesNo,
    ActionRepeat,
    ActionGoBack,
    ActionTransfer,
    ActionEndCall,
)


def build_actions(store: AccountStore, settings: Settings, lookups: PartPool) -> list[IvrAction]:
    return [cls(store, settings, lookups) for cls in ACTION_CLASSES]


def build_executor(store: AccountStore, settings: Settings, lookups: PartPool) -> ActionExecutor:
    """rasa_sdk's executor with our action instances (no package scan, so no accidental registrations).
    Their account look-ups run on ``lookups``, the account store's own bounded threads."""
    executor = ActionExecutor()
    for action in build_actions(store, settings, lookups):
        executor.register_action(action)
    return executor


# ---------------------------------------------------------------- verification steps
async def begin_verification(turn: ActionRun) -> None:
    """A caller ID → the last four ID digits, whether the number is registered or not (checked against
    its customer or the store's stand-in); withheld (or not a number) → the registered phone number first."""
    caller = turn.caller_id
    if normalize_phone(caller):
        turn.set("customer_id", await turn.lookup(turn.store.verification_subject, caller))
        turn.set("awaiting", AWAIT_ID)
        turn.say("utter_ask_id_last4")
    else:
        turn.set("customer_id", None)
        turn.set("awaiting", AWAIT_PHONE)
        turn.say("utter_ask_phone")


def _ask_again(turn: ActionRun) -> None:
    turn.say("utter_ask_phone" if turn.slot("awaiting") == AWAIT_PHONE else "utter_ask_id_last4")


def _failed(turn: ActionRun) -> None:
    """Wrong ID digits (or a number no customer has: the caller is not told which): the registered
    phone number and the ID digits again, or after the limit, a person."""
    failures = int(turn.slot("verify_failures") or 0) + 1
    turn.set("verify_failures", float(failures))
    if failures >= turn.settings.verify_max_failures:
        log.info("verification failed %d times; transferring", failures,
                 extra={"event": "verification_failed", "call_id": turn.call_id})
        turn.say("utter_verify_failed")
        turn.say("utter_transfer")
        _end(turn, "transfer", "verification_failed")
        return
    turn.say("utter_wrong_digits")
    turn.set("customer_id", None)
    turn.set("awaiting", AWAIT_PHONE)
    turn.say("utter_ask_phone")


def _end(turn: ActionRun, outcome: str, reason: str) -> None:
    turn.set("awaiting", None)
    turn.set("call_outcome", outcome)
    turn.set("transfer_reason", reason or None)


def _digits(turn: ActionRun) -> str:
    """Keypad digits arrive as the ``digits`` entity; spoken ones as words in the text."""
    for entity in (turn.tracker.latest_message or {}).get("entities") or []:
        if entity.get("entity") == "digits" and entity.get("value") is not None:
            return "".join(c for c in str(entity["value"]) if c.isascii() and c.isdigit())
    text = str((turn.tracker.latest_message or {}).get("text") or "")
    locale = str(turn.metadata.get("locale") or "")
    if locale in LOCALES:
        return digits_from_words(text, locale)
    return max((digits_from_words(text, loc) for loc in LOCALES), key=len)


def previous_bot_texts(events: Iterable[dict[str, Any]]) -> list[str]:
    """The texts the robot said between the caller's previous message and the latest one."""
    users = 0
    texts: list[str] = []
    for event in reversed(list(events)):
        kind = event.get("event")
        if kind == "user":
            users += 1
            if users == 2:
                break
        elif kind == "bot" and users == 1 and event.get("text"):
            texts.append(str(event["text"]))
    return texts[::-1]


# ---------------------------------------------------------------- the answers
async def answer(turn: ActionRun, info: str | None) -> None:
    """Read the requested information from the store, record the disclosure, then say it."""
    if not turn.verified:  # defence in depth: never disclose before verification
        await begin_verification(turn)
        return
    customer = str(turn.slot("customer_id"))
    speak = _ANSWERS.get(str(info))
    if speak is None:
        turn.say("utter_how_can_i_help")
        return
    await speak(turn, customer)
    turn.set("awaiting", AWAIT_ANYTHING_ELSE)
    turn.say("utter_anything_else")


async def _disclose(turn: ActionRun, customer: str, what: str) -> None:
    """The audit record comes before the answer (also "nothing due"): no record, no disclosure."""
    await turn.lookup(turn.store.record_disclosure, turn.call_id, customer, what)


async def _balance(turn: ActionRun, customer: str) -> None:
    accounts = await turn.lookup(turn.store.accounts, customer)
    await _disclose(turn, customer, "balance")
    if not accounts:
        turn.say("utter_no_account")
        return
    if len(accounts) == 1:
        turn.say("utter_balance", balance=format_money(accounts[0].balance, accounts[0].currency))
        return
    for account in accounts:
        turn.say("utter_balance_account", account=account.number_last4,
                 balance=format_money(account.balance, account.currency))


async def _next_repayment(turn: ActionRun, customer: str) -> None:
    loans = await turn.lookup(turn.store.loans, customer)
    due = sorted(
        ((loan.next_due_date, loan.next_due_amount, loan) for loan in loans
         if loan.status != "closed" and loan.next_due_date is not None and loan.next_due_amount is not None),
        key=lambda item: item[0],
    )
    await _disclose(turn, customer, "next_repayment")
    if not due:
        turn.say("utter_no_repayment")
        return
    for due_date, due_amount, loan in due:
        amount = format_money(due_amount, loan.currency)
        date = due_date.isoformat()
        if loan.status == "overdue":
            turn.say("utter_repayment_overdue", amount=amount, date=date, days=str(loan.days_overdue))
        else:
            turn.say("utter_next_repayment", amount=amount, date=date)


async def _loan_status(turn: ActionRun, customer: str) -> None:
    loans = await turn.lookup(turn.store.loans, customer)
    await _disclose(turn, customer, "loan_status")
    if not loans:
        turn.say("utter_no_loan")
        return
    for loan in loans:
        outstanding = format_money(loan.outstanding, loan.currency)
        if loan.status == "closed":
            turn.say("utter_loan_closed")
        elif loan.status == "overdue":
            turn.say("utter_loan_overdue", days=str(loan.days_overdue), outstanding=outstanding)
        else:
            turn.say("utter_loan_active", outstanding=outstanding)


async def _transactions(turn: ActionRun, customer: str) -> None:
    transactions = await turn.lookup(turn.store.recent_transactions, customer, TRANSACTIONS_READ)
    await _disclose(turn, customer, "transactions")
    if not transactions:
        turn.say("utter_no_transactions")
        return
    turn.say("utter_transactions_intro", count=str(len(transactions)))
    for tx in transactions:
        turn.say("utter_transaction", date=tx.date.isoformat(), amount=format_money(tx.amount, tx.currency),
                 description=tx.description)


_ANSWERS: dict[str, Callable[[ActionRun, str], Any]] = {
    "balance": _balance,
    "next_repayment": _next_repayment,
    "loan_status": _loan_status,
    "transactions": _transactions,
}
