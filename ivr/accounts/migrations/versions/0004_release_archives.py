"""``release_archives``: each published release's folder as one archive (issue #16).

``ivr publish`` (and ``ivr rollback``, for a release whose archive is missing) stores the release folder
here; every pod that does not share the publisher's models folder pulls it (``IVR_RELEASE_PULL_S``,
ivr.releases_pull). Pruning a release deletes its archive. ``ivr.releases.ReleaseAudit`` creates the table
itself too when it is missing (as it does ``release_events``), so it is created here only where missing.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_meta = sa.MetaData()
sa.Table(
    "release_archives", _meta,
    sa.Column("locale", sa.String(16), primary_key=True),
    sa.Column("number", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("at", sa.String(32), nullable=False),
    sa.Column("archive", sa.LargeBinary, nullable=False),
)


def upgrade() -> None:
    _meta.create_all(op.get_bind(), checkfirst=True)


def downgrade() -> None:
    op.drop_table("release_archives")
