"""Alembic migrations of the account database (``ivr db upgrade``); see ``ivr.accounts.schema``."""
