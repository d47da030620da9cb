"""What the dialogue's custom actions may ask of the account store, and the values it returns.

All methods are blocking (SQLAlchemy); callers on an event loop run them in a worker thread with a
timeout. Every failure of the database surfaces as ``ivr.parts.AccountStoreError``.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol


class VerifyStatus(str, enum.Enum):
    OK = "ok"
    WRONG = "wrong"
    LOCKED = "locked"  # too many failures against this customer or from this caller ID


@dataclass(frozen=True)
class AccountView:
    number_last4: str
    currency: str  # ISO 4217: CNY, USD, KRW
    balance: Decimal


@dataclass(frozen=True)
class LoanView:
    loan_id: str
    currency: str
    outstanding: Decimal
    status: str  # active | overdue | closed
    days_overdue: int
    next_due_date: dt.date | None
    next_due_amount: Decimal | None


@dataclass(frozen=True)
class TransactionView:
    date: dt.date
    amount: Decimal  # negative: money out
    currency: str
    description: str


class AccountStore(Protocol):
    def customer_by_phone(self, phone: str) -> str | None:
        """The customer id registered for this phone number, or None."""
        ...

    def verification_subject(self, phone: str) -> str:
        """Whom ID digits given for this number are checked against: its customer, or for a number no
        customer has, a stand-in that never verifies (the answer never tells which)."""
        ...

    def lookup_keyed_phone(self, phone: str, *, call_id: str, caller_id: str) -> str | None:
        """``verification_subject`` for a number the caller keyed, counted per caller ID and window;
        None when the caller ID has used up its look-ups."""
        ...

    def verify_id_last4(self, customer_id: str, digits: str, *, call_id: str, caller_id: str) -> VerifyStatus:
        """Check the last four ID digits (salted hash); record the attempt; apply the lockout."""
        ...

    def accounts(self, customer_id: str) -> list[AccountView]: ...

    def loans(self, customer_id: str) -> list[LoanView]: ...

    def recent_transactions(self, customer_id: str, limit: int = 3) -> list[TransactionView]: ...

    def record_disclosure(self, call_id: str, customer_id: str, what: str) -> None:
        """Audit log: what was told to which call."""
        ...

    def healthy(self) -> bool:
        """True when the database answers a trivial query."""
        ...
