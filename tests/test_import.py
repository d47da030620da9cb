"""Customer files (YAML/JSON) into the account store: the demo file, replacing customers, and
malformed files that must fail with a clear error and leave the database unchanged."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from ivr.accounts import commands
from ivr.accounts.api import AccountView, LoanView, VerifyStatus
from ivr.accounts.importer import (
    AccountData,
    AccountImportError,
    CustomerData,
    LoanData,
    TransactionData,
    load_file,
    parse_text,
)
from ivr.accounts.store import InstallmentView, SqlAccountStore
from ivr.config import Settings

DEMO = Path(commands.__file__).resolve().parent / "demo.yaml"
NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "accounts.db"


@pytest.fixture
def store(db_path: Path) -> SqlAccountStore:
    s = SqlAccountStore(f"sqlite:///{db_path}", clock=lambda: NOW)
    s.init_schema()
    s.import_file(DEMO)
    return s


def table_rows(db_path: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table (hashes included), to prove that nothing changed."""
    with sqlite3.connect(db_path) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {name: sorted(conn.execute(f'SELECT * FROM "{name}"').fetchall(), key=repr) for name in names}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- the demo file
def test_demo_file_holds_the_team_values() -> None:
    customers = load_file(DEMO)
    assert [c.customer_id for c in customers] == ["C001", "C002", "C003"]
    c001, c002, c003 = customers
    assert (c001.name, c001.phones, c001.id_last4) == ("王芳", ("13800000001",), "4821")
    assert c001.accounts == (AccountData("6222020000005678", "CNY", Decimal("1234.56")),)
    assert c001.loans == (LoanData("L001", "CNY", Decimal("20000.00"), "active", dt.date(2026, 12, 15),
                                   Decimal("1500.00")),)
    assert c001.transactions == (
        TransactionData(dt.date(2026, 11, 20), Decimal("-300.00"), "CNY", "还款"),
        TransactionData(dt.date(2026, 11, 18), Decimal("5000.00"), "CNY", "工资"),
        TransactionData(dt.date(2026, 11, 10), Decimal("-89.90"), "CNY", "超市"),
    )
    assert (c002.name, c002.phones, c002.id_last4) == ("John Smith", ("15550000002",), "7305")
    assert c002.accounts == (AccountData("4111110000009012", "USD", Decimal("2500.75")),)
    assert c002.loans == (LoanData("L002", "USD", Decimal("8000.00"), "overdue", dt.date(2026, 11, 16),
                                   Decimal("450.00")),)
    assert [(t.date, t.amount, t.description) for t in c002.transactions] == [
        (dt.date(2026, 11, 21), Decimal("-45.20"), "Grocery store"),
        (dt.date(2026, 11, 15), Decimal("1200.00"), "Salary"),
        (dt.date(2026, 11, 2), Decimal("-450.00"), "Loan repayment"),
    ]
    assert (c003.name, c003.phones, c003.id_last4) == ("김민준", ("01012345678",), "6193")
    assert c003.accounts == (AccountData("1002003004005", "KRW", Decimal("1234000")),)
    assert c003.loans == (LoanData("L003", "KRW", Decimal("0"), "closed", None, None),)
    assert [(t.date, t.amount, t.currency, t.description) for t in c003.transactions] == [
        (dt.date(2026, 11, 19), Decimal("-52000"), "KRW", "마트"),
        (dt.date(2026, 11, 10), Decimal("3100000"), "KRW", "급여"),
        (dt.date(2026, 11, 1), Decimal("-150000"), "KRW", "대출 상환"),
    ]
    assert "4821" not in repr(c001)  # the secret stays out of reprs (and so out of logs)


def test_json_file_imports_like_yaml(tmp_path: Path) -> None:
    data = {"customers": [{
        "id": "C001", "name": "王芳", "phones": ["13800000001"], "id_last4": "4821",
        "accounts": [{"number": "6222020000005678", "currency": "CNY", "balance": 1234.56}],
        "loans": [{"id": "L001", "outstanding": 20000.00, "status": "active", "next_due_date": "2026-12-15",
                   "next_due_amount": 1500.00}],
        "transactions": [{"date": "2026-11-20", "amount": -300.00, "description": "还款"},
                         {"date": "2026-11-18", "amount": 5000.00, "description": "工资"},
                         {"date": "2026-11-10", "amount": -89.90, "description": "超市"}],
    }]}
    path = write(tmp_path, "one.json", json.dumps(data, ensure_ascii=False))
    assert load_file(path) == load_file(DEMO)[:1]


def test_raw_mapping_is_validated_by_the_store(store: SqlAccountStore) -> None:
    data = {"customers": [{"id": "C010", "name": "Test", "phones": ["15550000010"], "id_last4": "0042",
                           "accounts": [{"number": "1234", "currency": "USD", "balance": "10.5"}]}]}
    assert store.import_customers(data, "api") == 1
    assert store.customer_by_phone("15550000010") == "C010"
    assert store.accounts("C010") == [AccountView("1234", "USD", Decimal("10.50"))]
    assert store.verify_id_last4("C010", "0042", call_id="c", caller_id="") is VerifyStatus.OK
    with pytest.raises(AccountImportError, match=r"^api: customers\[0\]"):
        store.import_customers({"customers": [{"id": "C011"}]}, "api")


def test_schedule_gives_the_next_due(tmp_path: Path, store: SqlAccountStore) -> None:
    path = write(tmp_path, "schedule.yaml", """
customers:
  - id: C020
    name: Li Lei
    phones: ["13800000020"]
    id_last4: "1020"
    accounts: [{number: "6222020000000020", currency: CNY, balance: 0}]
    loans:
      - id: L020
        outstanding: 3000
        status: active
        schedule:
          - {due_date: 2026-10-15, amount: 1000, paid: true}
          - {due_date: 2026-11-15, amount: 1000}
          - {due_date: 2026-12-15, amount: 1000.5}
""")
    store.import_file(path)
    assert store.loans("C020") == [LoanView("L020", "CNY", Decimal("3000.00"), "active", 0,
                                            dt.date(2026, 11, 15), Decimal("1000.00"))]
    assert store.repayment_schedule("C020", "L020") == [
        InstallmentView(dt.date(2026, 10, 15), Decimal("1000.00"), True),
        InstallmentView(dt.date(2026, 11, 15), Decimal("1000.00"), False),
        InstallmentView(dt.date(2026, 12, 15), Decimal("1000.50"), False),
    ]
    assert store.repayment_schedule("C001", "L020") == []  # not that customer's loan


# ---------------------------------------------------------------- replacing
def test_import_replaces_a_customer_with_the_same_id(tmp_path: Path, store: SqlAccountStore,
                                                     db_path: Path) -> None:
    store.verify_id_last4("C001", "0000", call_id="before", caller_id="13800000001")
    store.record_disclosure("before", "C001", "balance")
    path = write(tmp_path, "update.yaml", """
customers:
  - id: C001
    name: 王芳芳
    phones: ["13800000099", "010 8888 9999"]
    id_last4: "1357"
    accounts:
      - {number: "6222020000001111", currency: CNY, balance: 99.99}
      - {number: "4111110000002222", currency: USD, balance: 1}
    loans: []
    transactions:
      - {date: 2026-11-25, amount: 10, description: 利息, account: "4111110000002222"}
""")
    assert store.import_file(path) == 1
    assert store.customer_by_phone("13800000001") is None  # the old phone is gone
    assert store.customer_by_phone("13800000099") == "C001"
    assert store.customer_by_phone("01088889999") == "C001"
    assert store.accounts("C001") == [AccountView("1111", "CNY", Decimal("99.99")),
                                      AccountView("2222", "USD", Decimal("1.00"))]
    assert store.loans("C001") == []
    assert [(t.amount, t.currency) for t in store.recent_transactions("C001", limit=10)] == [
        (Decimal("10.00"), "USD")]
    assert store.verify_id_last4("C001", "4821", call_id="c", caller_id="") is VerifyStatus.WRONG
    assert store.verify_id_last4("C001", "1357", call_id="c", caller_id="") is VerifyStatus.OK
    # other customers untouched; the history of C001 (attempts, disclosures) kept
    assert store.customer_by_phone("15550000002") == "C002"
    assert len(store.recent_transactions("C002", limit=10)) == 3
    rows = table_rows(db_path)
    assert len(rows["customers"]) == 3 and len(rows["transactions"]) == 7
    assert [r[2] for r in rows["verification_attempts"]].count("before") == 1
    assert len(rows["disclosures"]) == 1
    # a loan may move between customers that are imported together
    swap = write(tmp_path, "swap.yaml", """
customers:
  - {id: C002, name: John Smith, phones: ["15550000002"], id_last4: "7305",
     accounts: [{number: "4111110000009012", currency: USD, balance: 2500.75}]}
  - {id: C003, name: 김민준, phones: ["01012345678"], id_last4: "6193",
     accounts: [{number: "1002003004005", currency: KRW, balance: 1234000}],
     loans: [{id: L002, outstanding: 8000, currency: USD, status: active}]}
""")
    store.import_file(swap)
    assert [loan.loan_id for loan in store.loans("C003")] == ["L002"]
    assert store.loans("C002") == []


# ---------------------------------------------------------------- malformed files
GOOD = """\
customers:
  - id: C010
    name: New Customer
    phones: ["15550000010"]
    id_last4: "2468"
    accounts:
      - {number: "6222020000000010", currency: CNY, balance: 10.00}
"""

MALFORMED = [
    # (file name, content, fragments the message must contain)
    ("syntax.yaml", "customers:\n  - id: C010\n    name: [unclosed\n", ["not valid YAML", "line "]),
    ("tabs.yaml", "customers:\n\t- id: C010\n", ["not valid YAML"]),
    ("top.yaml", "- id: C010\n", ["expected a mapping with a 'customers' list"]),
    ("nocustomers.yaml", "clients: []\n", ["clients: unknown field (expected: customers)"]),
    ("nullcustomers.yaml", "customers:\n", ["customers: missing (required)"]),
    ("empty.yaml", "", ["expected a mapping with a 'customers' list"]),
    ("notalist.yaml", "customers: C010\n", ["customers: must be a list"]),
    ("missing_id.yaml", GOOD.replace("  - id: C010\n    name", "  - name"),
     ["customers[0].id: missing (required)", "line 2"]),
    ("bad_id.yaml", GOOD.replace("id: C010", "id: \"C 010; DROP\""), ["customers[0].id", "not a valid id"]),
    ("bad_date.yaml", GOOD + "    loans:\n      - {id: L010, outstanding: 5, status: active,"
                             " next_due_date: 2026-13-45, next_due_amount: 1}\n",
     ["customers[0] (C010).loans[0] (L010).next_due_date", "not a valid date", "line 9"]),
    ("text_date.yaml", GOOD + "    transactions:\n      - {date: yesterday, amount: 1}\n",
     ["customers[0] (C010).transactions[0].date", "not a date: 'yesterday'"]),
    ("amount.yaml", GOOD.replace("balance: 10.00", "balance: lots"),
     ["customers[0] (C010).accounts[0].balance", "not a number: 'lots'"]),
    ("amount_bool.yaml", GOOD.replace("balance: 10.00", "balance: yes"), ["accounts[0].balance", "not a number"]),
    ("amount_nan.yaml", GOOD.replace("balance: 10.00", "balance: .nan"), ["accounts[0].balance", "not a number"]),
    ("amount_places.yaml", GOOD.replace("balance: 10.00", "balance: 10.001"),
     ["accounts[0].balance", "at most 2 decimals"]),
    ("krw_places.yaml", GOOD.replace("currency: CNY, balance: 10.00", "currency: KRW, balance: 10.5"),
     ["accounts[0].balance", "KRW amounts have at most 0 decimals"]),
    ("currency.yaml", GOOD.replace("currency: CNY", "currency: yuan"), ["accounts[0].currency", "ISO 4217"]),
    ("status.yaml", GOOD + "    loans:\n      - {id: L010, outstanding: 5, status: paid}\n",
     ["customers[0] (C010).loans[0] (L010).status", "unknown loan status 'paid'"]),
    ("overdue.yaml", GOOD + "    loans:\n      - {id: L010, outstanding: 5, status: overdue}\n",
     ["loans[0] (L010).next_due_date", "needs next_due_date"]),
    ("due_pair.yaml", GOOD + "    loans:\n      - {id: L010, outstanding: 5, status: active,"
                             " next_due_date: 2026-12-01}\n",
     ["loans[0] (L010).next_due_amount", "give both or neither"]),
    ("negative.yaml", GOOD + "    loans:\n      - {id: L010, outstanding: -5, status: active}\n",
     ["loans[0] (L010).outstanding", "must not be negative"]),
    ("dup_phone.yaml", GOOD + GOOD.replace("customers:\n", "").replace("C010", "C011"),
     ["customers[1] (C011).phones[0]", "also listed for customer C010"]),
    ("dup_id.yaml", GOOD + GOOD.replace("customers:\n", "").replace("15550000010", "15550000011"),
     ["customers[1] (C010).id", "duplicate customer id"]),
    ("db_phone.yaml", GOOD.replace("15550000010", "138-0000-0001"),
     ["customers[0] (C010).phones[0]", "already belongs to customer C001"]),
    ("db_loan.yaml", GOOD + "    loans:\n      - {id: L001, outstanding: 5, status: active}\n",
     ["customers[0] (C010).loans[0].id", "loan id L001 already belongs to customer C001"]),
    ("last4_letters.yaml", GOOD.replace('"2468"', '"24a8"'), ["customers[0] (C010).id_last4", "exactly 4 digits"]),
    ("last4_short.yaml", GOOD.replace('"2468"', '"246"'), ["id_last4", "exactly 4 digits"]),
    ("last4_long.yaml", GOOD.replace('"2468"', '"24680"'), ["id_last4", "exactly 4 digits"]),
    ("last4_bare.yaml", GOOD.replace('"2468"', "2468"), ["id_last4", "in quotes"]),
    ("phone_bare.yaml", GOOD.replace('["15550000010"]', "[15550000010]"), ["phones[0]", "in quotes"]),
    ("phone_bad.yaml", GOOD.replace('["15550000010"]', '["call me; rm -rf /"]'), ["phones[0]", "not a phone"]),
    ("no_phone.yaml", GOOD.replace('["15550000010"]', "[]"), ["phones", "at least one"]),
    ("unknown.yaml", GOOD.replace("balance: 10.00", "balanse: 10.00"),
     ["accounts[0].balanse", "unknown field"]),
    ("dup_key.yaml", GOOD.replace("    name: New Customer\n", "    name: New Customer\n    name: Again\n"),
     ["'name' appears twice", "line 4"]),
    ("tx_account.yaml", GOOD + "    transactions:\n      - {date: 2026-11-01, amount: 1, account: \"9999\"}\n",
     ["transactions[0].account", "not one of this customer's accounts"]),
    ("no_currency.yaml", "customers:\n  - {id: C010, name: N, phones: [\"15550000010\"], id_last4: \"2468\",\n"
                         "     loans: [{id: L010, outstanding: 1, status: active}]}\n",
     ["loans[0] (L010).currency", "no account to take it from"]),
    ("bad.json", '{"customers": [{"id": "C010",}]}', ["not valid JSON", "line 1"]),
    ("shape.json", '{"customers": [{"id": "C010", "name": "N", "phones": ["15550000010"], "id_last4": "2468",'
                   ' "accounts": [{"number": "1234", "currency": "CNY", "balance": "ten"}]}]}',
     ["customers[0] (C010).accounts[0].balance", "not a number: 'ten'"]),
]


@pytest.mark.parametrize(("name", "content", "fragments"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_file_is_refused_and_changes_nothing(tmp_path: Path, store: SqlAccountStore, db_path: Path,
                                                       name: str, content: str, fragments: list[str]) -> None:
    path = write(tmp_path, name, content)
    before = table_rows(db_path)
    with pytest.raises(AccountImportError) as info:
        store.import_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    for fragment in fragments:
        assert fragment in message, message
    assert info.value.source == str(path)
    assert table_rows(db_path) == before
    assert store.customer_by_phone("15550000010") is None


def test_a_late_conflict_rolls_back_the_whole_file(tmp_path: Path, store: SqlAccountStore, db_path: Path) -> None:
    """The first customers are valid and written; the last one clashes with the database."""
    valid = "".join(
        GOOD.replace("customers:\n", "").replace("C010", f"C0{n}").replace("15550000010", f"155500000{n}")
        for n in range(20, 30)
    )
    clash = GOOD.replace("customers:\n", "").replace("C010", "C030").replace("15550000010", "15550000002")
    path = write(tmp_path, "late.yaml", "customers:\n" + valid + clash)
    before = table_rows(db_path)
    with pytest.raises(AccountImportError, match=r"customers\[10\] \(C030\)\.phones\[0\]: phone \*+0002 already"):
        store.import_file(path)
    assert table_rows(db_path) == before
    assert store.customer_by_phone("15550000020") is None


def test_secret_values_are_not_echoed_in_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml", GOOD.replace('"2468"', '"24a8"'))
    with pytest.raises(AccountImportError) as info:
        load_file(path)
    assert "24a8" not in str(info.value)
    path = write(tmp_path, "p.yaml", GOOD + GOOD.replace("customers:\n", "").replace("C010", "C011"))
    with pytest.raises(AccountImportError) as info:
        load_file(path)
    assert "15550000010" not in str(info.value) and "0010" in str(info.value)  # masked: last 4 only


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(AccountImportError, match=r"missing\.yaml: no such file"):
        load_file(tmp_path / "missing.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00customers")
    with pytest.raises(AccountImportError, match=r"binary\.yaml: not UTF-8"):
        load_file(binary)
    (tmp_path / "folder").mkdir()
    with pytest.raises(AccountImportError, match="folder: cannot read"):
        load_file(tmp_path / "folder")


def test_parse_text_names_the_source() -> None:
    with pytest.raises(AccountImportError, match=r"^upload #3: line 1: customers: must be a list$"):
        parse_text("customers: 5\n", "upload #3")
    assert parse_text("customers: []\n", "empty") == []


def test_customer_data_is_plain() -> None:
    c = CustomerData("C1", "N", ("123",), "0000")
    assert c.accounts == () and c.index == 0


# ---------------------------------------------------------------- the command line
def run_cli(argv: list[str], settings: Settings) -> int:
    parser = argparse.ArgumentParser(prog="ivr")
    commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args, settings))


def test_db_import_command(tmp_path: Path, db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(database_url=f"sqlite:///{db_path}")
    assert run_cli(["db", "import", str(DEMO)], settings) == 0  # creates the schema if needed
    good = write(tmp_path, "good.yaml", GOOD)
    assert run_cli(["db", "import", str(good)], settings) == 0
    assert "imported 1 customers from" in capsys.readouterr().out
    before = table_rows(db_path)
    bad = write(tmp_path, "bad.yaml", GOOD.replace("balance: 10.00", "balance: lots"))
    with pytest.raises(AccountImportError, match=r"bad\.yaml"):  # the CLI prints it and exits 2
        run_cli(["db", "import", str(bad)], settings)
    assert table_rows(db_path) == before
    assert len(before["customers"]) == 4


# ---------------------------------------------------------------- the demo only into a demo database
@pytest.mark.parametrize(("what", "other"), [
    ("a customer with an id of its own", GOOD),
    ("a real customer with a demo id", GOOD.replace("C010", "C001")),
    ("a demo id, name and phone with other ID digits",
     GOOD.replace("C010", "C001").replace("New Customer", "王芳").replace("15550000010", "13800000001")
     .replace("2468", "1111")),
], ids=["own-id", "demo-id", "demo-id-name-phone-other-digits"])
def test_demo_init_refuses_a_database_holding_other_customers(
    tmp_path: Path, db_path: Path, capsys: pytest.CaptureFixture[str], what: str, other: str
) -> None:
    settings = Settings(database_url=f"sqlite:///{db_path}")
    assert run_cli(["db", "import", str(write(tmp_path, "real.yaml", other))], settings) == 0
    before = table_rows(db_path)
    capsys.readouterr()
    assert run_cli(["db", "init", "--demo"], settings) == 1, what
    error = capsys.readouterr().err
    assert "refusing --demo" in error and "not the demo customers" in error and "C0" in error, what
    assert "1111" not in error and "2468" not in error  # the ID digits are never echoed
    assert table_rows(db_path) == before, what  # nothing replaced, nothing added


def test_demo_init_fills_an_empty_or_demo_database_again(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(database_url=f"sqlite:///{db_path}")
    assert run_cli(["db", "init", "--demo"], settings) == 0
    assert run_cli(["db", "init", "--demo"], settings) == 0  # `make run` seeds it on every start
    assert "imported 3 demo customers" in capsys.readouterr().out
    store = SqlAccountStore(f"sqlite:///{db_path}")
    try:
        assert store.customers_other_than(load_file(DEMO)) == []
        assert store.customer_by_phone("15550000002") == "C002"
    finally:
        store.close()


def test_make_seeds_the_demo_only_into_the_default_database() -> None:
    import subprocess

    from ivr.config import PROJECT_ROOT

    default = f"sqlite:///{PROJECT_ROOT / 'var' / 'accounts.db'}"
    assert Settings().database_url == default
    # make -n prints the recipe without running it; IVR_DATABASE_URL names a "real" database.
    done = subprocess.run(["make", "-n", "-o", ".venv/.installed", "models"], cwd=PROJECT_ROOT, text=True,
                          capture_output=True, env={"PATH": "/usr/bin:/bin", "IVR_DATABASE_URL": "postgresql://real/db"},
                          check=True)
    seeding = [line for line in done.stdout.splitlines() if "--demo" in line and not line.lstrip().startswith("#")]
    assert seeding, done.stdout
    for line in seeding:
        assert line.strip().startswith('IVR_DATABASE_URL="sqlite:///$(CURDIR)/var/accounts.db"'.replace(
            "$(CURDIR)", str(PROJECT_ROOT))), line


# ---------------------------------------------------------------- streamed formats (issue #19)
def demo_items() -> list[dict[str, object]]:
    import yaml

    return yaml.safe_load(DEMO.read_text(encoding="utf-8"))["customers"]  # type: ignore[no-any-return]


def as_jsonl(items: list[dict[str, object]]) -> str:
    return "".join(json.dumps(item, ensure_ascii=False, default=str) + "\n" for item in items)


def as_csv(items: list[dict[str, object]]) -> str:
    import csv
    import io

    out = io.StringIO()
    table = csv.writer(out)
    table.writerow(["id", "name", "phones", "id_last4", "accounts", "loans", "transactions"])
    for item in items:
        table.writerow([item["id"], item["name"], ";".join(item["phones"]), item["id_last4"],  # type: ignore[arg-type]
                        *(json.dumps(item.get(k, []), ensure_ascii=False, default=str)
                          for k in ("accounts", "loans", "transactions"))])
    return out.getvalue()


def answers(store: SqlAccountStore, customers: list[str]) -> list[object]:
    return [(store.accounts(c), store.loans(c), store.recent_transactions(c, limit=10)) for c in customers]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_streamed_formats_import_like_the_yaml(tmp_path: Path, store: SqlAccountStore, suffix: str) -> None:
    text = as_jsonl(demo_items()) if suffix == ".jsonl" else as_csv(demo_items())
    other = SqlAccountStore(f"sqlite:///{tmp_path / 'other.db'}", clock=lambda: NOW)
    other.init_schema()
    summary = other.import_path(write(tmp_path, "demo" + suffix, text))
    assert (summary.inserted, summary.updated, summary.unchanged, summary.rejected) == (3, 0, 0, [])
    ids = ["C001", "C002", "C003"]
    assert answers(other, ids) == answers(store, ids)
    assert other.verify_id_last4("C003", "6193", call_id="c", caller_id="") is VerifyStatus.OK
    # the same file again: recognised as unchanged (keyed content digest), nothing rewritten
    assert other.import_path(tmp_path / f"demo{suffix}").unchanged == 3
    other.close()


def numbered(n: int, phone: str | None = None, balance: object = "10.00") -> dict[str, object]:
    return {"id": f"N{n:03d}", "name": f"Customer {n}", "phones": [phone or f"1990000{n:04d}"], "id_last4": "1234",
            "accounts": [{"number": f"6200{n:04d}", "currency": "CNY", "balance": balance}]}


def test_rejected_customers_are_reported_with_their_lines_and_the_rest_goes_in(
        tmp_path: Path, store: SqlAccountStore, db_path: Path) -> None:
    lines = [numbered(n) for n in range(1, 11)]
    lines[2] = numbered(3, balance="lots")                    # line 3: invalid value
    lines[5] = numbered(6, phone="13800000001")               # line 6: C001's phone (in the database)
    lines[8] = numbered(2)                                     # line 9: N002 again (an earlier batch)
    text = as_jsonl(lines).replace('"N005"', '"N005",,', 1)    # line 5: not JSON
    path = write(tmp_path, "mixed.jsonl", text)
    summary = store.import_path(path, batch_size=3)
    assert [line for line, _ in summary.rejected] == [3, 5, 6, 9]
    messages = [m for _, m in summary.rejected]
    assert "line 3: customers[2] (N003).accounts[0].balance: not a number: 'lots'" in messages[0]
    assert "line 5: customers[4]: not valid JSON" in messages[1]
    assert "line 6: customers[5] (N006).phones[0]: phone *******0001 already belongs to customer C001" in messages[2]
    assert "line 9: customers[8] (N002).id: duplicate customer id" in messages[3]
    assert all(m.startswith(f"{path}: line ") for m in messages)
    assert (summary.inserted, summary.updated, summary.unchanged) == (6, 0, 0)
    assert store.customer_by_phone("19900000002") == "N002" and store.customer_by_phone("19900000010") == "N010"
    assert store.customer_by_phone("19900000003") is None
    assert store.customer_by_phone("13800000001") == "C001"
    assert "1234" not in repr(summary)  # the ID digits are never echoed


def test_atomic_import_changes_nothing_on_the_first_problem(tmp_path: Path, store: SqlAccountStore,
                                                              db_path: Path) -> None:
    lines = [numbered(n) for n in range(1, 11)]
    lines[8] = numbered(9, phone="15550000002")  # a conflict in the last batch, after others were written
    path = write(tmp_path, "late.jsonl", as_jsonl(lines))
    before = table_rows(db_path)
    with pytest.raises(AccountImportError, match=r"line 9: customers\[8\] \(N009\)\.phones\[0\]: .* customer C002"):
        store.import_path(path, atomic=True, batch_size=3)
    assert table_rows(db_path) == before


def test_updated_and_unchanged_customers_keep_their_history(tmp_path: Path, store: SqlAccountStore,
                                                            db_path: Path) -> None:
    items = demo_items()
    store.import_path(write(tmp_path, "a.jsonl", as_jsonl(items)))
    store.verify_id_last4("C002", "0000", call_id="before", caller_id="")
    items[1]["accounts"][0]["balance"] = "9.99"  # type: ignore[index]
    summary = store.import_path(write(tmp_path, "b.jsonl", as_jsonl(items)))
    assert (summary.inserted, summary.updated, summary.unchanged) == (0, 1, 2)
    assert store.accounts("C002")[0].balance == Decimal("9.99")
    assert [r[2] for r in table_rows(db_path)["verification_attempts"]].count("before") == 1
    items[1]["id_last4"] = "1111"  # new digits are a change too (the digest is keyed, not in clear)
    assert store.import_path(write(tmp_path, "c.jsonl", as_jsonl(items))).updated == 1
    assert store.verify_id_last4("C002", "1111", call_id="c", caller_id="") is VerifyStatus.OK


def test_dry_run_validates_without_touching_the_database(tmp_path: Path, store: SqlAccountStore,
                                                         db_path: Path) -> None:
    lines = [numbered(n) for n in range(1, 6)]
    lines[1] = numbered(2, balance="lots")
    before = table_rows(db_path)
    summary = store.import_path(write(tmp_path, "d.csv", as_csv(lines)), dry_run=True)
    assert summary.accepted == 4 and [line for line, _ in summary.rejected] == [3]  # CSV: line 1 is the header
    assert "dry run" in summary.describe()
    assert table_rows(db_path) == before


def test_csv_problems_name_the_line(tmp_path: Path, store: SqlAccountStore) -> None:
    good = as_csv([numbered(1)])
    with pytest.raises(AccountImportError, match=r"line 1: header: unknown column 'email'"):
        store.import_path(write(tmp_path, "h.csv", good.replace("transactions", "email", 1)))
    bad_cell = good + 'N002,Two,19900000002,1234,"[{""number"": ""62000002"", ""currency"": ""CNY"",",,\n'
    summary = store.import_path(write(tmp_path, "c.csv", bad_cell))
    assert summary.inserted == 1 and summary.rejected[0][0] == 3
    assert "column accounts: not a JSON array" in summary.rejected[0][1]


def test_worker_processes_give_the_same_result(tmp_path: Path) -> None:
    from ivr.accounts import demo_data

    path = tmp_path / "many.jsonl"
    demo_data.write(path, 1200)
    results = []
    for workers in (1, 2):
        s = SqlAccountStore(f"sqlite:///{tmp_path / f'w{workers}.db'}", clock=lambda: NOW)
        s.init_schema()
        summary = s.import_path(path, workers=workers, batch_size=250)
        assert summary.inserted == 1200 and summary.rejected == []
        results.append(answers(s, ["D0000001", "D0000600", "D0001200"]))
        s.close()
    assert results[0] == results[1]


def test_import_command_streams_with_a_summary_and_progress(tmp_path: Path, db_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(database_url=f"sqlite:///{db_path}")
    demo = tmp_path / "demo.jsonl"
    assert run_cli(["db", "demo-data", "--customers", "300", "--out", str(demo)], settings) == 0
    assert oct(demo.stat().st_mode & 0o777) == "0o600"
    assert run_cli(["db", "import", str(demo), "--progress", "--batch-size", "100"], settings) == 0
    captured = capsys.readouterr()
    assert "imported 300 customers from" in captured.out and "300 inserted, 0 updated, 0 unchanged, 0 rejected" in captured.out
    assert "importing" in captured.err and "/s" in captured.err  # tqdm: rate (and ETA) on stderr
    lines = demo.read_text(encoding="utf-8").splitlines()
    lines[41] = lines[41].replace('"id_last4":"', '"id_last4":"x', 1)
    bad = write(tmp_path, "bad.jsonl", "\n".join(lines) + "\n")
    assert run_cli(["db", "import", str(bad), "--no-progress"], settings) == 1  # one rejected: exit 1
    out = capsys.readouterr().out
    assert "0 inserted, 0 updated, 299 unchanged, 1 rejected" in out
    assert "rejected: " in out and "line 42: customers[41] (D0000042).id_last4: must be exactly 4 digits" in out


def test_twenty_thousand_generated_customers(tmp_path: Path) -> None:
    """The benchmark's file at a test-suite size (the million is measured by tests/bench/accounts_bench.py)."""
    from ivr.accounts import demo_data

    path = tmp_path / "20k.jsonl"
    assert demo_data.write(path, 20_000) == 20_000
    s = SqlAccountStore(f"sqlite:///{tmp_path / '20k.db'}", clock=lambda: NOW)
    s.init_schema()
    summary = s.import_path(path)
    assert (summary.inserted, summary.rejected) == (20_000, [])
    with sqlite3.connect(tmp_path / "20k.db") as conn:
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in ("customers", "phone_numbers", "loans", "transactions")}
        accounts = conn.execute("SELECT count(*) FROM accounts").fetchone()[0]
    assert counts == {"customers": 20_000, "phone_numbers": 20_000, "loans": 20_000, "transactions": 100_000}
    assert 20_000 <= accounts <= 60_000
    assert s.customer_by_phone(demo_data.phone_of(12_345)) == "D0012345"
    s.close()


def test_memory_stays_flat_whatever_the_file_size(tmp_path: Path) -> None:
    """Four times the customers, not four times the memory: the file is streamed, batch by batch."""
    import tracemalloc

    from ivr.accounts import demo_data

    peaks = []
    for count in (1500, 6000):
        path = tmp_path / f"{count}.jsonl"
        demo_data.write(path, count)
        s = SqlAccountStore(f"sqlite:///{tmp_path / f'{count}.db'}", clock=lambda: NOW)
        s.init_schema()
        tracemalloc.start()
        summary = s.import_path(path, batch_size=500)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert summary.inserted == count
        s.close()
    assert peaks[1] < 1.5 * peaks[0], peaks


TRICKY = {"id": "Q001", "name": 'Quote "and", comma', "phones": ["+86 139 0000 0001"], "id_last4": "0007",
          "accounts": [{"number": "6222 0200 0000 0001", "currency": "CNY", "balance": "0.5"}],
          "loans": [{"id": "QL1", "outstanding": 3000, "status": "active",
                     "schedule": [{"due_date": "2026-10-15", "amount": 1000, "paid": True},
                                  {"due_date": "2026-11-15", "amount": 1000}]}],
          "transactions": [{"date": "2026-11-20", "amount": "-1.00", "description": 'a "quoted", multi\nline text',
                            "account": "6222020000000001"},
                           {"date": "2026-11-19", "amount": "2", "description": ""},
                           {"date": "2026-11-18", "amount": "3", "description": "\\N"}]}


def test_streamed_import_into_a_real_postgresql(tmp_path: Path, store: SqlAccountStore) -> None:
    """The COPY path: text with quotes, commas, new lines, an empty text and a literal \\N, NULLs,
    booleans; the same answers as SQLite; unchanged re-imports; an --atomic failure changes nothing."""
    import sqlalchemy as sa

    from tests.services import postgres_cluster

    path = write(tmp_path, "mixed.jsonl", as_jsonl([*demo_items(), TRICKY]))
    assert store.import_path(path).inserted == 1  # the SQLite store (demo already there)
    with postgres_cluster() as url:
        pg = SqlAccountStore(url, clock=lambda: NOW)
        try:
            pg.init_schema()
            summary = pg.import_path(path, batch_size=2)
            assert (summary.inserted, summary.rejected) == (4, [])
            ids = ["C001", "C002", "C003", "Q001"]
            assert answers(pg, ids) == answers(store, ids)
            assert [t.description for t in pg.recent_transactions("Q001")] == ['a "quoted", multi\nline text', "", "\\N"]
            assert pg.repayment_schedule("Q001", "QL1") == store.repayment_schedule("Q001", "QL1")
            assert pg.verify_id_last4("Q001", "0007", call_id="c", caller_id="") is VerifyStatus.OK
            assert pg.import_path(path).unchanged == 4
            engine = sa.create_engine(url, future=True)

            def count() -> int:
                with engine.connect() as conn:
                    return int(conn.exec_driver_sql("SELECT count(*) FROM transactions").scalar_one())
            before = count()
            bad = [numbered(n) for n in range(1, 6)] + [numbered(6, phone="13800000001")]
            with pytest.raises(AccountImportError, match=r"line 6: .*already belongs to customer C001"):
                pg.import_path(write(tmp_path, "bad.jsonl", as_jsonl(bad)), atomic=True, batch_size=2)
            assert pg.customer_by_phone("19900000001") is None and count() == before
            engine.dispose()
        finally:
            pg.close()
