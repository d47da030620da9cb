"""Baseline: the account database as `ivr db init` created it before migrations (issue #19).

Every table is created only where it is missing, so a database made by the old create-missing-tables
step (or by `ivr publish`'s audit log, ``release_events``) is adopted as it stands. The definitions
are a frozen copy: later changes go into later revisions, never here.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_meta = sa.MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

sa.Table(
    "customers", _meta,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("id_last4_hash", sa.String(200), nullable=False),
    sa.Column("imported_at", sa.DateTime, nullable=False),
)
sa.Table(
    "phone_numbers", _meta,
    sa.Column("phone", sa.String(20), primary_key=True),
    sa.Column("customer_id", sa.String(32), sa.ForeignKey("customers.id", ondelete="CASCADE"), nullable=False,
              index=True),
)
sa.Table(
    "accounts", _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("customer_id", sa.String(32), sa.ForeignKey("customers.id", ondelete="CASCADE"), nullable=False,
              index=True),
    sa.Column("number", sa.String(34), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("balance", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("customer_id", "number"),
)
sa.Table(
    "loans", _meta,
    sa.Column("loan_id", sa.String(32), primary_key=True),
    sa.Column("customer_id", sa.String(32), sa.ForeignKey("customers.id", ondelete="CASCADE"), nullable=False,
              index=True),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("outstanding", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("next_due_date", sa.Date, nullable=True),
    sa.Column("next_due_amount", sa.BigInteger, nullable=True),
    sa.CheckConstraint("status IN ('active', 'overdue', 'closed')", name="status"),
)
sa.Table(
    "loan_installments", _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("loan_id", sa.String(32), sa.ForeignKey("loans.loan_id", ondelete="CASCADE"), nullable=False),
    sa.Column("due_date", sa.Date, nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("paid", sa.Boolean, nullable=False),
    sa.UniqueConstraint("loan_id", "due_date"),
)
sa.Table(
    "transactions", _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("customer_id", sa.String(32), sa.ForeignKey("customers.id", ondelete="CASCADE"), nullable=False),
    sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="SET NULL"), nullable=True),
    sa.Column("date", sa.Date, nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("description", sa.String(200), nullable=False),
    sa.Index("ix_transactions_customer_date", "customer_id", "date"),
)
sa.Table(
    "verification_attempts", _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("customer_id", sa.String(32), nullable=False),
    sa.Column("call_id", sa.String(128), nullable=False),
    sa.Column("caller_hash", sa.String(64), nullable=True),
    sa.Column("caller_masked", sa.String(24), nullable=False),
    sa.Column("attempted_at", sa.DateTime, nullable=False),
    sa.Column("result", sa.String(8), nullable=False),
    sa.Column("success", sa.Boolean, nullable=False),
    sa.Index("ix_verification_attempts_customer_at", "customer_id", "attempted_at"),
    sa.Index("ix_verification_attempts_caller_at", "caller_hash", "attempted_at"),
    sa.CheckConstraint("result IN ('ok', 'wrong', 'locked')", name="result"),
)
sa.Table(
    "phone_lookups", _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("call_id", sa.String(128), nullable=False),
    sa.Column("caller_hash", sa.String(64), nullable=True),
    sa.Column("looked_up_at", sa.DateTime, nullable=False),
    sa.Index("ix_phone_lookups_caller_at", "caller_hash", "looked_up_at"),
)
sa.Table(
    "disclosures", _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("call_id", sa.String(128), nullable=False, index=True),
    sa.Column("customer_id", sa.String(32), nullable=False),
    sa.Column("what", sa.String(200), nullable=False),
    sa.Column("disclosed_at", sa.DateTime, nullable=False),
    sa.Index("ix_disclosures_customer_at", "customer_id", "disclosed_at"),
)
sa.Table(
    "store_meta", _meta,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(200), nullable=False),
)
# ivr.releases.ReleaseAudit (issue #13) creates this one itself too, when it is missing.
sa.Table(
    "release_events", _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.String(32), nullable=False),
    sa.Column("locale", sa.String(16), nullable=False, index=True),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("from_release", sa.Integer, nullable=True),
    sa.Column("to_release", sa.Integer, nullable=False),
    sa.Column("author", sa.String(128), nullable=False),
    sa.Column("host", sa.String(128), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
)


def upgrade() -> None:
    _meta.create_all(op.get_bind(), checkfirst=True)


def downgrade() -> None:
    raise NotImplementedError("the baseline is not taken down: drop the database instead")
