"""The account store at a hotline's size (issue #19): import N generated customers into SQLite and into
a private PostgreSQL, then time the look-ups a call makes. The figures in the README come from::

    .venv/bin/python -m ivr.accounts.bench --customers 1000000 --json tests/bench/accounts-1m.json

Each backend: a fresh database, ``ivr db import`` of the generated JSON Lines file (wall time, rate,
peak RSS of the importer and of its worker processes), then ``--lookups`` random customers, each:
phone look-up, ID verification (a write: the attempt), accounts, loans, recent transactions; p50 /
p95 / p99 per kind. PostgreSQL runs in a private cluster (``tests/services.py``, from the repository).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ivr.accounts import demo_data
from ivr.accounts.store import SqlAccountStore


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {"p50_ms": at(0.50), "p95_ms": at(0.95), "p99_ms": at(0.99), "max_ms": round(ordered[-1] * 1000, 3),
            "mean_ms": round(statistics.fmean(ordered) * 1000, 3)}


def _rss_mb(who: int) -> float:
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)  # Linux: KiB


def run_backend(url: str, data: Path, customers: int, lookups: int, workers: int, key_file: Path,
                *, load: bool = True) -> dict[str, Any]:
    store = SqlAccountStore(url, secret_key_file=key_file, phone_lookup_limit=10**9, lockout_failures=10**9)
    store.init_schema()
    result: dict[str, Any] = {}
    if load:
        result.update(_load(store, data, workers))
    return {**result, **_lookups(store, customers, lookups)}


def _load(store: SqlAccountStore, data: Path, workers: int) -> dict[str, Any]:
    started = time.monotonic()
    summary = store.import_path(data, workers=workers, progress=sys.stderr.isatty())
    seconds = time.monotonic() - started
    result: dict[str, Any] = {
        "import_s": round(seconds, 1), "customers_per_s": round(summary.accepted / seconds),
        "inserted": summary.inserted, "rejected": len(summary.rejected),
        "rss_importer_mb": _rss_mb(resource.RUSAGE_SELF), "rss_worker_max_mb": _rss_mb(resource.RUSAGE_CHILDREN),
    }
    # a second import of the same file: everything unchanged
    started = time.monotonic()
    again = store.import_path(data, workers=workers)
    result["reimport_unchanged_s"] = round(time.monotonic() - started, 1)
    result["reimport_unchanged"] = again.unchanged
    return result


def _lookups(store: SqlAccountStore, customers: int, lookups: int) -> dict[str, Any]:
    result: dict[str, Any] = {}

    rng = random.Random(7)
    # the ID digits are in the generated file only: read back the ones of the sampled customers
    wanted = set(rng.sample(range(1, customers + 1), min(lookups, customers)))
    digits: dict[int, str] = {}
    for item, n in zip(demo_data.customers(customers), range(1, customers + 1), strict=False):
        if n in wanted:
            digits[n] = str(item["id_last4"])
    timings: dict[str, list[float]] = {k: [] for k in ("phone", "verify", "accounts", "loans", "transactions")}

    @contextmanager
    def timed(kind: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        timings[kind].append(time.perf_counter() - t0)

    failures = 0
    for n in sorted(wanted, key=lambda _: rng.random()):
        phone = demo_data.phone_of(n)
        with timed("phone"):
            customer = store.customer_by_phone(phone)
        assert customer is not None
        with timed("verify"):
            status = store.verify_id_last4(customer, digits[n], call_id="bench", caller_id=phone)
        failures += status.value != "ok"
        with timed("accounts"):
            store.accounts(customer)
        with timed("loans"):
            store.loans(customer)
        with timed("transactions"):
            store.recent_transactions(customer, 3)
    result["lookups"] = {kind: _percentiles(samples) for kind, samples in timings.items()}
    result["verify_failures"] = failures
    store.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ivr.accounts.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", type=Path, help="the generated file (made when missing)")
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--reuse", type=Path,
                        help="the folder of an earlier run: time the SQLite look-ups on its bench.db, no import")
    args = parser.parse_args(argv)
    work = args.reuse or Path(tempfile.mkdtemp(prefix="ivr-accounts-bench-"))
    data = args.data or work / f"customers-{args.customers}.jsonl"
    report: dict[str, Any] = {"customers": args.customers, "workers": args.workers}
    if not data.exists() and args.reuse is None:
        started = time.monotonic()
        demo_data.write(data, args.customers)
        report["generate_s"] = round(time.monotonic() - started, 1)
    if data.exists():
        report["file_mb"] = round(data.stat().st_size / 2**20)
    key_file = work / "secret.key"
    if args.backend in ("sqlite", "both"):
        report["sqlite"] = run_backend(f"sqlite:///{work / 'bench.db'}", data, args.customers, args.lookups,
                                       args.workers, key_file, load=args.reuse is None)
        report["sqlite"]["db_mb"] = round((work / "bench.db").stat().st_size / 2**20)
        print(json.dumps({"sqlite": report["sqlite"]}, indent=1), flush=True)
    if args.backend in ("postgresql", "both"):
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        from tests.services import postgres_cluster

        with postgres_cluster() as url:
            report["postgresql"] = run_backend(url, data, args.customers, args.lookups, args.workers, key_file)
        print(json.dumps({"postgresql": report["postgresql"]}, indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
