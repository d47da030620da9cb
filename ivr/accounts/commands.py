"""``ivr db init [--demo]`` and ``ivr db import FILE``: create the schema, load customer files.

``--demo`` loads the demo customers only into a database that holds no others (empty, or the demo
customers as ``demo.yaml`` has them): run against a real database it would replace real customers
that have the demo's ids (C001, ...). ``make run`` seeds only the default database this way.

SQLAlchemy is imported inside the handlers, so ``ivr --help`` stays fast. An invalid customer
file raises ``AccountImportError`` (a ValueError: the CLI prints it and exits 2); a database
failure is reported here and exits 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ivr.config import Settings

DEMO_FILE = Path(__file__).resolve().parent / "demo.yaml"


def register(subparsers: Any) -> None:
    db = subparsers.add_parser("db", help="the account database: create it, load customers",
                               description="The account database (settings.database_url, $IVR_DATABASE_URL).")
    actions = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)

    init = actions.add_parser("init", help="create the tables (existing data is kept)")
    init.add_argument("--demo", action="store_true",
                      help=f"also load the demo customers ({DEMO_FILE.name}); refused when the database holds "
                           "any other customers")
    init.set_defaults(handler=_init)

    load = actions.add_parser("import", help="load customers from a YAML or JSON file, replacing same ids",
                              description="Load customers from a YAML or JSON file (see ivr/accounts/demo.yaml), "
                                          "replacing customers with the same id; all or nothing.")
    load.add_argument("file", type=Path, help="the customer file (.yaml, .yml or .json)")
    load.set_defaults(handler=_import)


def _init(args: argparse.Namespace, settings: Settings) -> int:
    from ivr.accounts.importer import load_file
    from ivr.accounts.store import SqlAccountStore
    from ivr.parts import AccountStoreError

    customers = load_file(DEMO_FILE) if args.demo else []  # a broken demo file fails before any change
    try:
        store = SqlAccountStore.from_settings(settings)
        try:
            store.init_schema()
            print(f"schema ready in {store.url_display}")
            if args.demo:
                others = store.customers_other_than(customers)
                if others:
                    shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
                    print(f"ivr db init: error: refusing --demo: {store.url_display} holds {len(others)} "
                          f"customer(s) that are not the demo customers ({shown}); the demo import would "
                          "replace customers with the demo's ids and mix demo data with real data. Load "
                          "the demo into an empty database (the default sqlite:///var/accounts.db), or "
                          "real customers with `ivr db import FILE`.", file=sys.stderr)
                    return 1
                count = store.import_customers(customers, str(DEMO_FILE))
                print(f"imported {count} demo customers from {DEMO_FILE}")
        finally:
            store.close()
    except AccountStoreError as exc:
        print(f"ivr db init: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _import(args: argparse.Namespace, settings: Settings) -> int:
    from ivr.accounts.importer import load_file
    from ivr.accounts.store import SqlAccountStore
    from ivr.parts import AccountStoreError

    customers = load_file(args.file)  # AccountImportError names the file, place and problem
    try:
        store = SqlAccountStore.from_settings(settings)
        try:
            store.init_schema()
            count = store.import_customers(customers, str(args.file))
        finally:
            store.close()
    except AccountStoreError as exc:
        print(f"ivr db import: error: {exc}", file=sys.stderr)
        return 1
    print(f"imported {count} customers from {args.file} into {store.url_display}")
    return 0
