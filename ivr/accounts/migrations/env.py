"""Alembic's environment for the account database: always run through ``ivr.accounts.schema``, which
hands over an open connection (``config.attributes["connection"]``); no alembic.ini, no URL here."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the account database's migrations with `ivr db upgrade` (ivr.accounts.schema)")
context.configure(connection=connection, target_metadata=None, render_as_batch=True,
                  transaction_per_migration=False)
with context.begin_transaction():
    context.run_migrations()
