"""The account store's tables (SQLAlchemy 1.4 declarative; portable SQL for SQLite and PostgreSQL).

Money is stored exactly, as a 64-bit count of hundredths (``Money``), and read back as ``Decimal``
with two places. Times are naive UTC. The ID secret is only ever a keyed hash under the key file's
key (``customers.id_last4_hash``, ``ivr.accounts.keys``; older databases: salted scrypt until the next
success). The schema changes only through migrations (``ivr.accounts.schema``, ``ivr db upgrade``). Verification attempts and disclosures are history: they name the
customer by id without a foreign key, so they outlive a re-import of the customer.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import declarative_base, relationship
from sqlalchemy.types import TypeDecorator

_CENT = Decimal("0.01")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)
Base: Any = declarative_base(metadata=metadata)


class Money(TypeDecorator):
    """A Decimal with at most two places, stored as an integer number of hundredths."""

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: Decimal | int | None, dialect: Any) -> int | None:
        if value is None:
            return None
        hundredths = Decimal(value) * 100
        if hundredths != hundredths.to_integral_value():
            raise ValueError("money has at most two decimal places")
        return int(hundredths)

    def process_result_value(self, value: int | None, dialect: Any) -> Decimal | None:
        if value is None:
            return None
        return Decimal(int(value)).scaleb(-2).quantize(_CENT)


def utc_naive(moment: dt.datetime) -> dt.datetime:
    """A timestamp as stored: naive UTC (a naive input is taken to be UTC already)."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(dt.timezone.utc).replace(tzinfo=None)


class Customer(Base):
    __tablename__ = "customers"

    id = Column(String(32), primary_key=True)
    name = Column(String(100), nullable=False)
    # "hmac$<key id>$<base64>" (ivr.accounts.keys; legacy "scrypt$n$r$p$salt$hash"); never the digits.
    id_last4_hash = Column(String(200), nullable=False)
    imported_at = Column(DateTime, nullable=False)
    # keyed digest of the imported content (unchanged re-imports are skipped); the import that last
    # wrote or confirmed the row (duplicates within one file are found here, not in memory)
    content_hash = Column(String(64), nullable=True)
    import_run = Column(String(32), nullable=True)

    phones = relationship("PhoneNumber", cascade="all, delete-orphan", passive_deletes=True)
    accounts = relationship("Account", cascade="all, delete-orphan", passive_deletes=True,
                            order_by="Account.id")
    loans = relationship("Loan", cascade="all, delete-orphan", passive_deletes=True,
                         order_by="Loan.loan_id")
    transactions = relationship("Transaction", cascade="all, delete-orphan", passive_deletes=True)


class PhoneNumber(Base):
    __tablename__ = "phone_numbers"

    phone = Column(String(20), primary_key=True)  # digits only (importer.normalize_phone)
    customer_id = Column(String(32), ForeignKey("customers.id", ondelete="CASCADE"), nullable=False,
                         index=True)


class Account(Base):
    __tablename__ = "accounts"
    __table_args__ = (UniqueConstraint("customer_id", "number"),)

    id = Column(Integer, primary_key=True, autoincrement=True)
    customer_id = Column(String(32), ForeignKey("customers.id", ondelete="CASCADE"), nullable=False,
                         index=True)
    number = Column(String(34), nullable=False)
    currency = Column(String(3), nullable=False)
    balance = Column(Money, nullable=False)


class Loan(Base):
    __tablename__ = "loans"
    __table_args__ = (CheckConstraint("status IN ('active', 'overdue', 'closed')", name="status"),)

    loan_id = Column(String(32), primary_key=True)
    customer_id = Column(String(32), ForeignKey("customers.id", ondelete="CASCADE"), nullable=False,
                         index=True)
    currency = Column(String(3), nullable=False)
    outstanding = Column(Money, nullable=False)
    status = Column(String(16), nullable=False)
    next_due_date = Column(Date, nullable=True)
    next_due_amount = Column(Money, nullable=True)

    installments = relationship("Installment", cascade="all, delete-orphan", passive_deletes=True,
                                order_by="Installment.due_date")


class Installment(Base):
    """One row of a loan's repayment schedule."""

    __tablename__ = "loan_installments"
    __table_args__ = (UniqueConstraint("loan_id", "due_date"),)

    id = Column(Integer, primary_key=True, autoincrement=True)
    loan_id = Column(String(32), ForeignKey("loans.loan_id", ondelete="CASCADE"), nullable=False)
    due_date = Column(Date, nullable=False)
    amount = Column(Money, nullable=False)
    paid = Column(Boolean, nullable=False, default=False)


class Transaction(Base):
    __tablename__ = "transactions"
    __table_args__ = (Index("ix_transactions_customer_date", "customer_id", "date"),)

    id = Column(Integer, primary_key=True, autoincrement=True)
    customer_id = Column(String(32), ForeignKey("customers.id", ondelete="CASCADE"), nullable=False)
    account_id = Column(Integer, ForeignKey("accounts.id", ondelete="SET NULL"), nullable=True, index=True)
    date = Column(Date, nullable=False)
    amount = Column(Money, nullable=False)  # negative: money out
    currency = Column(String(3), nullable=False)
    description = Column(String(200), nullable=False, default="")

    account = relationship("Account")


class VerificationAttempt(Base):
    __tablename__ = "verification_attempts"
    __table_args__ = (
        Index("ix_verification_attempts_customer_at", "customer_id", "attempted_at"),
        Index("ix_verification_attempts_caller_at", "caller_hash", "attempted_at"),
        CheckConstraint("result IN ('ok', 'wrong', 'locked')", name="result"),
    )

    id = Column(Integer, primary_key=True, autoincrement=True)
    customer_id = Column(String(32), nullable=False)
    call_id = Column(String(128), nullable=False)
    # HMAC-SHA256 of the caller ID's digits under the key file's key; NULL: withheld/invalid.
    caller_hash = Column(String(64), nullable=True)
    caller_masked = Column(String(24), nullable=False)  # masking.mask_phone: last 4 digits only
    attempted_at = Column(DateTime, nullable=False)
    result = Column(String(8), nullable=False)  # ok | wrong | locked (not checked: locked out)
    success = Column(Boolean, nullable=False)


class PhoneLookup(Base):
    """A phone number a caller keyed to be verified against, counted for the limit on look-ups per
    caller ID (``SqlAccountStore.lookup_keyed_phone``). Neither the number nor whether it is registered
    is kept: only who looked and when."""

    __tablename__ = "phone_lookups"
    __table_args__ = (Index("ix_phone_lookups_caller_at", "caller_hash", "looked_up_at"),)

    id = Column(Integer, primary_key=True, autoincrement=True)
    call_id = Column(String(128), nullable=False)
    # HMAC-SHA256 of the caller ID's digits, as in verification_attempts; NULL: withheld/invalid (one budget).
    caller_hash = Column(String(64), nullable=True)
    looked_up_at = Column(DateTime, nullable=False)


class Disclosure(Base):
    """Audit log: what was told to which call, about which customer."""

    __tablename__ = "disclosures"
    __table_args__ = (Index("ix_disclosures_customer_at", "customer_id", "disclosed_at"),)

    id = Column(Integer, primary_key=True, autoincrement=True)
    call_id = Column(String(128), nullable=False, index=True)
    customer_id = Column(String(32), nullable=False)
    what = Column(String(200), nullable=False)
    disclosed_at = Column(DateTime, nullable=False)


class StoreMeta(Base):
    """Small named values of the store itself (``phone_lookup_lock``: the row phone look-ups queue on).
    No key is ever kept here."""

    __tablename__ = "store_meta"

    name = Column(String(64), primary_key=True)
    value = Column(String(200), nullable=False)
