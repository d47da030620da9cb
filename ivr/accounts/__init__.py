"""The account store: customers, accounts, loans, transactions, verification and the disclosure log.

``api`` holds the interface the dialogue uses; ``store.SqlAccountStore`` implements it on
SQLAlchemy; ``importer`` reads customer files; ``commands`` adds ``ivr db init|import``.
This package module stays light (no SQLAlchemy import), so ``ivr --help`` stays fast.
"""

from ivr.accounts.api import AccountStore, AccountView, LoanView, TransactionView, VerifyStatus

__all__ = ["AccountStore", "AccountView", "LoanView", "TransactionView", "VerifyStatus"]
