"""Keyed secrets and fast imports (issue #19).

- ``customers.content_hash`` (a keyed digest of what was imported: unchanged customers are skipped)
  and ``customers.import_run`` (which import wrote or confirmed the row: duplicates within one file
  are found in the database, not in memory).
- The caller-ID key kept in the database (``store_meta.caller_hash_key``) is deleted: caller IDs are
  now hashed under the key file's key. Hashes made with the deleted key can no longer be linked to a
  number by anyone (per-caller counts restart once; per-customer counts are kept). A plain row,
  ``phone_lookup_lock``, is what concurrent phone look-ups queue on (PostgreSQL ``FOR UPDATE``).
- The ID hashes are not touched here (the migration has no key): the old scrypt hashes verify and
  are replaced by keyed ones on the next success, or at the next import of the customer.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("customers") as batch:
        batch.add_column(sa.Column("content_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("import_run", sa.String(32), nullable=True))
    meta = sa.table("store_meta", sa.column("name", sa.String), sa.column("value", sa.String))
    op.execute(meta.delete().where(meta.c.name == "caller_hash_key"))
    op.execute(meta.insert().values(name="phone_lookup_lock", value=""))


def downgrade() -> None:
    meta = sa.table("store_meta", sa.column("name", sa.String), sa.column("value", sa.String))
    op.execute(meta.delete().where(meta.c.name == "phone_lookup_lock"))
    with op.batch_alter_table("customers") as batch:
        batch.drop_column("import_run")
        batch.drop_column("content_hash")
