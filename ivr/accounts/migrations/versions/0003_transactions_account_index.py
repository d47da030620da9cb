"""An index on ``transactions.account_id`` (issue #19).

Deleting an account sets its transactions' ``account_id`` to NULL (``ON DELETE SET NULL``): without an
index each deleted account scanned every transaction, so re-importing changed customers of a large
base took minutes per batch (found by ``python -m ivr.accounts.bench``).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_transactions_account_id", "transactions", ["account_id"])


def downgrade() -> None:
    op.drop_index("ix_transactions_account_id", table_name="transactions")
