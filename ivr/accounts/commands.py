"""``ivr db upgrade | init [--demo] | import FILE | demo-data | rotate-key | check-source``.

``upgrade`` (and ``init``) migrate the schema to the newest revision (Alembic; ``ivr.accounts.schema``).
``import`` streams JSON Lines and CSV and reads the YAML/JSON documents (``ivr.accounts.bulk``).

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

    upgrade = actions.add_parser("upgrade", help="migrate the schema to the newest revision (data kept)",
                                 description="Bring the account database to the newest schema revision (Alembic "
                                             "migrations; a database made before migrations is adopted).")
    upgrade.set_defaults(handler=_upgrade)

    init = actions.add_parser("init", help="create or upgrade the tables (existing data is kept)")
    init.add_argument("--demo", action="store_true",
                      help=f"also load the demo customers ({DEMO_FILE.name}); refused when the database holds "
                           "any other customers")
    init.set_defaults(handler=_init)

    load = actions.add_parser(
        "import", help="load customers (YAML, JSON, JSON Lines, CSV), replacing same ids",
        description="Load customers, replacing customers with the same id (unchanged ones are skipped). "
                    ".jsonl/.ndjson (one customer a line) and .csv are streamed in batches, each one "
                    "transaction: an invalid customer is rejected (line named) and the others go in. "
                    ".yaml/.yml/.json documents (see ivr/accounts/demo.yaml) are all or nothing. "
                    "Exit status 1 when a customer was rejected.")
    load.add_argument("file", type=Path, help="the customer file (.jsonl, .ndjson, .csv, .yaml, .yml, .json)")
    load.add_argument("--atomic", action="store_true", default=None,
                      help="one transaction for the whole file: the first problem changes nothing")
    load.add_argument("--dry-run", action="store_true", help="validate the file only; the database is not touched")
    load.add_argument("--batch-size", type=int, default=2000, help="customers per batch (default 2000)")
    load.add_argument("--workers", type=int, default=0,
                      help="processes that parse and validate (default: the CPU count for streamed files over "
                           "16 MB, else 1)")
    load.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                      help="a progress bar with rate and ETA on stderr (default: when stderr is a terminal)")
    load.set_defaults(handler=_import)

    demo = actions.add_parser("demo-data", help="write a synthetic customer file (load tests, benchmark)")
    demo.add_argument("--customers", type=int, required=True, help="how many customers")
    demo.add_argument("--out", type=Path, required=True, help="the file to write (.jsonl, or .csv)")
    demo.add_argument("--seed", type=int, default=19)
    demo.set_defaults(handler=_demo_data)

    rotate = actions.add_parser(
        "rotate-key", help="add a new secret key; re-key the stored hashes",
        description="Add a new current key to the secret key file (IVR_SECRET_KEY_FILE); older keys keep "
                    "verifying. Hashes under older keys are re-keyed at each customer's next successful "
                    "verification, or all at once with --rekey (wrapped under the new key).")
    rotate.add_argument("--rekey", action="store_true", help="wrap every hash under an older key now")
    rotate.add_argument("--status", action="store_true", help="only show how many hashes each key protects")
    rotate.set_defaults(handler=_rotate_key)

    check = actions.add_parser(
        "check-source", help="run each system-of-record query and report what is missing",
        description="Run every query of ivr.toml's [system_of_record] section against its database (read-only) "
                    "and report queries or columns that are missing or failing. Exit status 1 when any is.")
    check.add_argument("--phone", default="", help="a sample phone number to look up (default: one matching nothing)")
    check.add_argument("--customer", default="", help="a sample customer id for the per-customer queries")
    check.set_defaults(handler=_check_source)


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


def _upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from ivr.accounts.store import SqlAccountStore
    from ivr.parts import AccountStoreError

    try:
        store = SqlAccountStore.from_settings(settings)
        try:
            store.init_schema()
            revision = store.schema_revision()
        finally:
            store.close()
    except AccountStoreError as exc:
        print(f"ivr db upgrade: error: {exc}", file=sys.stderr)
        return 1
    print(f"schema at revision {revision} in {store.url_display}")
    return 0


def _import(args: argparse.Namespace, settings: Settings) -> int:
    import os

    from ivr.accounts.bulk import STREAM_SUFFIXES
    from ivr.accounts.store import SqlAccountStore
    from ivr.parts import AccountStoreError

    if args.batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    workers = args.workers
    if workers <= 0:
        streamed = args.file.suffix.lower() in STREAM_SUFFIXES
        big = args.file.exists() and args.file.stat().st_size > 16 * 1024 * 1024
        workers = min(4, os.cpu_count() or 1) if streamed and big else 1
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        store = SqlAccountStore.from_settings(settings)
        try:
            if not args.dry_run:
                store.init_schema()
            summary = store.import_path(args.file, atomic=args.atomic, batch_size=args.batch_size,
                                        progress=progress, dry_run=args.dry_run, workers=workers)
        finally:
            store.close()
    except AccountStoreError as exc:
        print(f"ivr db import: error: {exc}", file=sys.stderr)
        return 1
    print(summary.describe() + ("" if args.dry_run else f" into {store.url_display}"))
    return 1 if summary.rejected else 0


def _demo_data(args: argparse.Namespace, settings: Settings) -> int:
    from ivr.accounts import demo_data

    if args.customers < 1:
        raise ValueError("--customers must be at least 1")
    count = demo_data.write(args.out, args.customers, seed=args.seed)
    print(f"wrote {count} synthetic customers to {args.out}")
    return 0


def _rotate_key(args: argparse.Namespace, settings: Settings) -> int:
    from ivr.accounts.store import SqlAccountStore
    from ivr.parts import AccountStoreError

    try:
        store = SqlAccountStore.from_settings(settings)
        try:
            if not args.status:
                ring = store.rotate_key()
                print(f"new current key {ring.current_id} in {settings.secret_key_file} "
                      f"(keys: {', '.join(ring.key_ids)})")
            if args.rekey:
                print(f"re-keyed {store.rekey()} stored ID hash(es) under {store.keys().current_id}")
            usage = store.key_usage()
        finally:
            store.close()
    except AccountStoreError as exc:
        print(f"ivr db rotate-key: error: {exc}", file=sys.stderr)
        return 1
    shown = ", ".join(f"{kid}: {count}" for kid, count in usage.items()) or "none"
    print(f"stored ID hashes per key: {shown}")
    return 0


def _check_source(args: argparse.Namespace, settings: Settings) -> int:
    from ivr.accounts.source import SourceConfig, SystemOfRecordStore

    store = SystemOfRecordStore(settings.database_url, SourceConfig.from_settings(settings),
                                secret_key_file=settings.secret_key_file)
    try:
        findings = store.check_source(phone=args.phone, customer_id=args.customer)
    finally:
        store.close()
    print(f"system of record {store.source_display}:")
    for finding in findings:
        print(f"  {'ok  ' if finding.ok else 'FAIL'} {finding.query}: {finding.detail}")
    bad = [f for f in findings if not f.ok]
    print(f"{len(findings) - len(bad)} of {len(findings)} queries ready" + (": fix the FAIL lines" if bad else ""))
    return 1 if bad else 0
