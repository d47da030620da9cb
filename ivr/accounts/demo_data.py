"""``ivr db demo-data --customers N --out FILE``: a synthetic customer base for load tests and the
benchmark, written as it is generated (JSON Lines, or CSV for a ``.csv`` name), memory flat.

Customer n: id ``D0000001``..., one phone ``19`` + 9 digits, random ID digits, 1-3 accounts, one
loan (active, overdue or closed), 5 transactions. The same seed gives the same file; the phones and
loan ids never collide with the demo customers' (``demo.yaml``).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_CURRENCIES = ("CNY", "CNY", "CNY", "USD", "KRW")
_WORDS = ("还款", "工资", "超市", "Salary", "Grocery store", "Loan repayment", "마트", "급여", "Transfer", "ATM")
_DAY0 = dt.date(2026, 11, 28)


def phone_of(n: int) -> str:
    return f"19{n:09d}"


def customers(count: int, seed: int = 19) -> Iterator[dict[str, Any]]:
    """The generated customers, one mapping each (the import's shape)."""
    rng = random.Random(seed)
    for n in range(1, count + 1):
        currency = rng.choice(_CURRENCIES)

        def money(low: int, high: int, cur: str = currency) -> str:
            cents = rng.randint(low, high)
            return str(cents) if cur == "KRW" else f"{cents // 100}.{cents % 100:02d}"

        accounts = [{"number": f"62{n:09d}{k:03d}", "currency": currency, "balance": money(0, 5_000_000)}
                    for k in range(rng.randint(1, 3))]
        status = rng.choice(("active", "active", "overdue", "closed"))
        loan: dict[str, Any] = {"id": f"DL{n:08d}", "outstanding": "0" if status == "closed" else money(100_000, 9_000_000),
                                "status": status}
        if status != "closed":
            due = _DAY0 + dt.timedelta(days=rng.randint(-40, 30) if status == "overdue" else rng.randint(1, 30))
            loan.update(next_due_date=due.isoformat(), next_due_amount=money(10_000, 200_000))
        transactions = []
        for k in range(5):
            day = _DAY0 - dt.timedelta(days=rng.randint(1, 90))
            sign = -1 if rng.random() < 0.7 else 1
            amount = money(100, 500_000)
            transactions.append({"date": day.isoformat(), "amount": ("-" if sign < 0 else "") + amount,
                                 "description": _WORDS[(n + k) % len(_WORDS)],
                                 **({"account": accounts[0]["number"]} if k == 0 else {})})
        yield {"id": f"D{n:07d}", "name": f"Customer {n}", "phones": [phone_of(n)],
               "id_last4": f"{rng.randint(0, 9999):04d}", "accounts": accounts, "loans": [loan],
               "transactions": transactions}


def write(path: Path, count: int, seed: int = 19) -> int:
    """Write ``count`` customers to ``path`` (``.csv``: CSV, else JSON Lines); returns the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with path.open("w", encoding="utf-8", newline="") as out:
        if path.suffix.lower() == ".csv":
            table = csv.writer(out)
            table.writerow(["id", "name", "phones", "id_last4", "accounts", "loans", "transactions"])
            for item in customers(count, seed):
                table.writerow([item["id"], item["name"], ";".join(item["phones"]), item["id_last4"],
                                *(json.dumps(item[k], ensure_ascii=False) for k in ("accounts", "loans", "transactions"))])
                written += 1
        else:
            for item in customers(count, seed):
                out.write(json.dumps(item, ensure_ascii=False, separators=(",", ":")) + "\n")
                written += 1
    path.chmod(0o600)  # synthetic, but shaped like personal data: owner-only like the real thing
    return written
