"""The account database's schema through Alembic (``ivr/accounts/migrations``): ``ivr db upgrade``
(run by ``make run``) brings any database to the newest revision; ``ivr serve`` refuses a database
whose revision this code does not know (a newer one) or that is behind (not upgraded).

A database made before migrations (tables created by the old ``ivr db init``) is adopted: the
baseline revision creates only the tables that are missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class SchemaError(ValueError):
    """The database's schema is not the one this code serves (the message says what to run)."""


def _config(connection: Connection | None = None) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {script.revision for script in ScriptDirectory.from_config(_config()).walk_revisions()}


def current_revision(connection: Connection) -> str | None:
    """The revision recorded in the database (``alembic_version``), None when it has none."""
    from alembic.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def upgrade(connection: Connection, revision: str = "head") -> None:
    """Migrate the database of ``connection`` (inside its transaction) to ``revision``."""
    from alembic import command

    current = current_revision(connection)
    if current is not None and current not in known_revisions():
        raise SchemaError(f"the account database is at schema revision {current}, which this version of ivr "
                          "does not know (a newer one wrote it): upgrade ivr, do not downgrade the database")
    command.upgrade(_config(connection), revision)


def check(connection: Connection) -> str:
    """The database's revision when it is the newest this code knows; else ``SchemaError``."""
    current = current_revision(connection)
    head = head_revision()
    if current == head:
        return current
    if current is None:
        raise SchemaError("the account database has no schema revision (new, or made before migrations): "
                          "run `ivr db upgrade`")
    if current not in known_revisions():
        raise SchemaError(f"the account database is at schema revision {current}, which this version of ivr "
                          "does not know (a newer one wrote it): refusing to serve on it")
    raise SchemaError(f"the account database is at schema revision {current}, not {head}: run `ivr db upgrade`")
