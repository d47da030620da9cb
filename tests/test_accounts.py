"""The SQL account store on a real SQLite file: demo data, verification and lockout, secrets,
hostile input, and database failures (unreachable, locked)."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import socket
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest

from ivr.accounts import commands
from ivr.accounts.api import AccountView, LoanView, TransactionView, VerifyStatus
from ivr.accounts.importer import load_file
from ivr.accounts.store import SqlAccountStore
from ivr.config import Settings
from ivr.parts import AccountStoreError

DEMO = Path(commands.__file__).resolve().parent / "demo.yaml"
START = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.timezone.utc)
SECRETS = {"C001": "4821", "C002": "7305", "C003": "6193"}

GARBAGE = [
    "",
    " ",
    "a" * 500,
    "1" * 500,
    "13800000001" * 10,
    "1'; DROP TABLE customers;--",
    "13800000001' OR '1'='1",
    "13800000001; rm -rf /",
    "$(reboot)",
    "`id`",
    "%",
    "_",
    "\x00",
    "13800000001\x00",
    "../../etc/passwd",
    "<script>alert(1)</script>",
]


class Clock:
    """An injectable clock, moved by hand."""

    def __init__(self, now: dt.datetime = START) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "accounts.db"  # the parent folder does not exist yet


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_store(db_path: Path, clock: Clock, **kwargs: object) -> SqlAccountStore:
    return SqlAccountStore(f"sqlite:///{db_path}", clock=clock, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def store(db_path: Path, clock: Clock) -> SqlAccountStore:
    s = make_store(db_path, clock)
    s.init_schema()
    s.import_customers(load_file(DEMO), str(DEMO))
    return s


def table_counts(db_path: Path) -> dict[str, int]:
    with sqlite3.connect(db_path) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {name: conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in names}


def attempts(db_path: Path) -> list[tuple[str, str, str | None, str, str, int]]:
    with sqlite3.connect(db_path) as conn:
        return conn.execute(
            "SELECT customer_id, call_id, caller_hash, caller_masked, result, success"
            " FROM verification_attempts ORDER BY id"
        ).fetchall()


def verify(store: SqlAccountStore, customer: str, digits: str, caller: str = "13900000009",
           call: str = "call-1") -> VerifyStatus:
    return store.verify_id_last4(customer, digits, call_id=call, caller_id=caller)


# ---------------------------------------------------------------- demo data
def test_demo_data_round_trip(store: SqlAccountStore, clock: Clock) -> None:
    assert store.customer_by_phone("13800000001") == "C001"
    assert store.customer_by_phone("15550000002") == "C002"
    assert store.customer_by_phone("01012345678") == "C003"

    assert store.accounts("C001") == [AccountView("5678", "CNY", Decimal("1234.56"))]
    assert store.accounts("C002") == [AccountView("9012", "USD", Decimal("2500.75"))]
    assert store.accounts("C003") == [AccountView("4005", "KRW", Decimal("1234000"))]
    assert str(store.accounts("C003")[0].balance) == "1234000"  # no minor unit for KRW
    assert str(store.accounts("C001")[0].balance) == "1234.56"

    today = clock.now.astimezone().date()
    assert store.loans("C001") == [
        LoanView("L001", "CNY", Decimal("20000.00"), "active", 0, dt.date(2026, 12, 15), Decimal("1500.00"))
    ]
    assert store.loans("C002") == [
        LoanView("L002", "USD", Decimal("8000.00"), "overdue", (today - dt.date(2026, 11, 16)).days,
                 dt.date(2026, 11, 16), Decimal("450.00"))
    ]
    assert store.loans("C003") == [LoanView("L003", "KRW", Decimal("0"), "closed", 0, None, None)]

    assert store.recent_transactions("C001") == [
        TransactionView(dt.date(2026, 11, 20), Decimal("-300.00"), "CNY", "还款"),
        TransactionView(dt.date(2026, 11, 18), Decimal("5000.00"), "CNY", "工资"),
        TransactionView(dt.date(2026, 11, 10), Decimal("-89.90"), "CNY", "超市"),
    ]
    assert store.recent_transactions("C002", limit=2) == [
        TransactionView(dt.date(2026, 11, 21), Decimal("-45.20"), "USD", "Grocery store"),
        TransactionView(dt.date(2026, 11, 15), Decimal("1200.00"), "USD", "Salary"),
    ]
    assert store.recent_transactions("C003", limit=1) == [
        TransactionView(dt.date(2026, 11, 19), Decimal("-52000"), "KRW", "마트"),
    ]
    assert store.recent_transactions("C003", limit=0) == []
    assert store.healthy()
    for customer, digits in SECRETS.items():
        assert verify(store, customer, digits) is VerifyStatus.OK


def test_days_overdue_is_computed_at_call_time(store: SqlAccountStore, clock: Clock) -> None:
    clock.now = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.timezone.utc)
    first = store.loans("C002")[0].days_overdue
    clock.advance(3 * 86400)
    assert store.loans("C002")[0].days_overdue == first + 3
    clock.now = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.timezone.utc)  # before the due date
    assert store.loans("C002")[0].days_overdue == 0


def test_unknown_customer_has_nothing(store: SqlAccountStore) -> None:
    assert store.accounts("C999") == []
    assert store.loans("C999") == []
    assert store.recent_transactions("C999") == []
    assert store.customer_by_phone("19999999999") is None


@pytest.mark.parametrize(
    ("phone", "customer"),
    [
        ("138 0000 0001", "C001"),
        ("138-0000-0001", "C001"),
        ("+1 555 000 0002", "C002"),  # "+" dropped, digits then match exactly
        ("(010) 1234-5678", "C003"),
        ("１３８０００００００１", "C001"),  # full-width digits
        ("3800000001", None),  # exact match only: no suffix matching
        ("138000000012", None),
    ],
)
def test_phone_normalisation(store: SqlAccountStore, phone: str, customer: str | None) -> None:
    assert store.customer_by_phone(phone) == customer


@pytest.mark.parametrize("phone", GARBAGE)
def test_garbage_phone_finds_nobody_and_harms_nothing(store: SqlAccountStore, db_path: Path, phone: str) -> None:
    before = table_counts(db_path)
    assert store.customer_by_phone(phone) is None
    assert table_counts(db_path) == before
    assert store.customer_by_phone("13800000001") == "C001"


# ---------------------------------------------------------------- verification and lockout
def test_verify_ok_wrong_then_locked(store: SqlAccountStore, db_path: Path) -> None:
    assert verify(store, "C001", "4821") is VerifyStatus.OK
    assert verify(store, "C001", " 48-21 ") is VerifyStatus.OK  # spoken/keyed separators
    for n in range(5):
        assert verify(store, "C001", "1111", caller=f"1390000000{n}") is VerifyStatus.WRONG
    # five failures from five different callers: the customer is locked, even for the right digits
    assert verify(store, "C001", "4821", caller="13911111111") is VerifyStatus.LOCKED
    assert verify(store, "C002", "7305") is VerifyStatus.OK  # other customers are not
    results = [row[4] for row in attempts(db_path)]
    assert results == ["ok", "ok", "wrong", "wrong", "wrong", "wrong", "wrong", "locked", "ok"]


def test_malformed_answers_are_wrong(db_path: Path, clock: Clock) -> None:
    store = make_store(db_path, clock, lockout_failures=100)
    store.init_schema()
    store.import_customers(load_file(DEMO), "demo")
    for digits in ("", "482", "48211", "48a1", "4821; DROP TABLE customers;--", "9" * 500, "\x00\x00"):
        assert verify(store, "C002", digits, caller="") is VerifyStatus.WRONG
    assert verify(store, "C999", "4821") is VerifyStatus.WRONG  # unknown customer: just wrong


def test_success_resets_the_customer_count(store: SqlAccountStore) -> None:
    for _ in range(4):
        assert verify(store, "C001", "0000", caller="") is VerifyStatus.WRONG
    assert verify(store, "C001", "4821", caller="") is VerifyStatus.OK
    for _ in range(4):
        assert verify(store, "C001", "0000", caller="") is VerifyStatus.WRONG
    assert verify(store, "C001", "4821", caller="") is VerifyStatus.OK
    for _ in range(5):
        assert verify(store, "C001", "0000", caller="") is VerifyStatus.WRONG
    assert verify(store, "C001", "4821", caller="") is VerifyStatus.LOCKED


def test_lockout_persists_across_instances_and_expires(store: SqlAccountStore, db_path: Path,
                                                       clock: Clock) -> None:
    for _ in range(5):
        assert verify(store, "C003", "0000") is VerifyStatus.WRONG
        clock.advance(60)
    store.close()

    restarted = make_store(db_path, clock)  # a new process on the same file
    assert verify(restarted, "C003", "6193", caller="01099998888") is VerifyStatus.LOCKED
    # The window slides: 1800 s after the first failure only four remain inside it.
    clock.advance(1800 - 5 * 60 + 1)
    assert verify(restarted, "C003", "6193", caller="01099998888") is VerifyStatus.OK


def test_lockout_settings_come_from_settings(db_path: Path, clock: Clock) -> None:
    settings = Settings(database_url=f"sqlite:///{db_path}", lockout_failures=2, lockout_s=60)
    s = SqlAccountStore.from_settings(settings)
    s.init_schema()
    s.import_customers(load_file(DEMO), "demo")
    assert verify(s, "C001", "0000") is VerifyStatus.WRONG
    assert verify(s, "C001", "0000") is VerifyStatus.WRONG
    assert verify(s, "C001", "4821") is VerifyStatus.LOCKED


def test_one_caller_failing_against_several_customers_is_locked(db_path: Path, clock: Clock) -> None:
    s = make_store(db_path, clock, lockout_failures=3)
    s.init_schema()
    s.import_customers(load_file(DEMO), "demo")
    attacker, other = "+86 139 0000 0009", "13700000007"
    assert verify(s, "C001", "0000", caller=attacker) is VerifyStatus.WRONG
    assert verify(s, "C002", "0000", caller=attacker) is VerifyStatus.WRONG
    assert verify(s, "C003", "0000", caller="8613900000009") is VerifyStatus.WRONG  # same digits
    # each customer has one failure only, but this caller ID has three: locked, whatever it tries
    assert verify(s, "C001", "4821", caller=attacker) is VerifyStatus.LOCKED
    assert verify(s, "C002", "7305", caller=attacker) is VerifyStatus.LOCKED
    # the customers themselves, calling from elsewhere, are fine
    assert verify(s, "C001", "4821", caller=other) is VerifyStatus.OK
    assert verify(s, "C003", "6193", caller=other) is VerifyStatus.OK
    clock.advance(1801)
    assert verify(s, "C002", "7305", caller=attacker) is VerifyStatus.OK


def test_withheld_callers_are_not_lumped_together(db_path: Path, clock: Clock) -> None:
    s = make_store(db_path, clock, lockout_failures=2)
    s.init_schema()
    s.import_customers(load_file(DEMO), "demo")
    assert verify(s, "C001", "0000", caller="") is VerifyStatus.WRONG
    assert verify(s, "C002", "0000", caller="") is VerifyStatus.WRONG
    assert verify(s, "C003", "6193", caller="") is VerifyStatus.OK
    assert verify(s, "C003", "6193", caller="anonymous") is VerifyStatus.OK


def test_attempts_are_recorded_without_the_caller_id_in_clear(store: SqlAccountStore, db_path: Path) -> None:
    verify(store, "C001", "4821", caller="13800000001", call="1700000000.42")
    verify(store, "C001", "9999", caller="13800000001", call="1700000000.42")
    verify(store, "C001", "9999", caller="", call="1700000000.43")
    rows = attempts(db_path)
    assert [(r[0], r[1], r[3], r[4], r[5]) for r in rows] == [
        ("C001", "1700000000.42", "*******0001", "ok", 1),
        ("C001", "1700000000.42", "*******0001", "wrong", 0),
        ("C001", "1700000000.43", "(withheld)", "wrong", 0),
    ]
    caller_hash = rows[0][2]
    assert caller_hash is not None and len(caller_hash) == 64 and caller_hash == rows[1][2]
    assert rows[2][2] is None
    assert b"13800000001" not in b"".join(str(c).encode() for row in rows for c in row)


@pytest.mark.parametrize("caller", [*GARBAGE, "+" * 64, "1" * 21])
def test_garbage_caller_ids(store: SqlAccountStore, db_path: Path, caller: str) -> None:
    before = table_counts(db_path)
    assert store.verify_id_last4("C001", "0000", call_id=caller, caller_id=caller) is VerifyStatus.WRONG
    assert store.verify_id_last4("C001", "4821", call_id="c", caller_id=caller) is VerifyStatus.OK
    after = table_counts(db_path)
    assert after["verification_attempts"] == before["verification_attempts"] + 2
    assert {k: v for k, v in after.items() if k != "verification_attempts"} == {
        k: v for k, v in before.items() if k != "verification_attempts"}
    masked = attempts(db_path)[-1][3]
    assert (len(masked) <= 24 and masked.strip("*").isdigit()) or masked in ("(withheld)", "(invalid)")


def test_garbage_customer_ids(store: SqlAccountStore) -> None:
    for customer in GARBAGE:
        assert store.verify_id_last4(customer, "4821", call_id="c", caller_id="") is VerifyStatus.WRONG
        assert store.accounts(customer) == []
        assert store.loans(customer) == []
        assert store.recent_transactions(customer) == []
    assert store.accounts("C001") != []


def test_concurrent_attempts_are_counted_exactly(store: SqlAccountStore) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda n: verify(store, "C002", "0000", caller=f"1370000{n:04d}"), range(12)))
    assert results.count(VerifyStatus.WRONG) == 5
    assert results.count(VerifyStatus.LOCKED) == 7


# ---------------------------------------------------------------- secrets
def test_secrets_are_keyed_hashes_never_clear(store: SqlAccountStore, db_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    verify(store, "C001", "4821")
    verify(store, "C001", "7777")
    keys = store.keys()
    store.close()
    with sqlite3.connect(db_path) as conn:
        hashes = dict(conn.execute("SELECT id, id_last4_hash FROM customers").fetchall())
        columns = [r[1] for r in conn.execute("PRAGMA table_info(customers)")]
    assert set(hashes) == set(SECRETS)
    assert "id_last4" not in columns  # only the hash column exists
    for customer, digits in SECRETS.items():
        stored = hashes[customer]
        assert stored.startswith(f"hmac${keys.current_id}$") and digits not in stored
        assert keys.check(customer, digits, stored).ok and not keys.check(customer, "0000", stored).ok
    # the same digits hash differently for two customers (the customer id is in the message)
    assert keys.hash_id_digits("C001", "4821") != keys.hash_id_digits("C002", "4821")
    # nowhere in the file: neither the customers' secrets nor an answer given on a call
    raw = db_path.read_bytes()
    for digits in (*SECRETS.values(), "7777"):
        assert digits.encode() not in raw
    assert b"13800000001" in raw  # sanity: the file is readable and holds the (non-secret) phone
    for digits in (*SECRETS.values(), "7777"):
        assert digits not in caplog.text


# ---------------------------------------------------------------- audit log
def test_disclosures_are_logged_per_call(store: SqlAccountStore, db_path: Path, clock: Clock) -> None:
    store.record_disclosure("1700000000.42", "C001", "balance of account 6222020000005678")
    store.record_disclosure("1700000000.42", "C001", "loans")
    store.record_disclosure("x" * 500, "C002", "y" * 500)
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT call_id, customer_id, what, disclosed_at FROM disclosures ORDER BY id").fetchall()
    assert rows[0][:3] == ("1700000000.42", "C001", "balance of account ************5678")
    assert rows[1][:3] == ("1700000000.42", "C001", "loans")
    assert rows[0][3].startswith(clock.now.strftime("%Y-%m-%d %H:%M:%S"))
    assert len(rows[2][0]) == 128 and len(rows[2][2]) == 200


# ---------------------------------------------------------------- database failures
def _assert_unusable(s: SqlAccountStore) -> None:
    assert s.healthy() is False
    calls = [
        lambda: s.customer_by_phone("13800000001"),
        lambda: s.verify_id_last4("C001", "4821", call_id="c", caller_id="13800000001"),
        lambda: s.accounts("C001"),
        lambda: s.loans("C001"),
        lambda: s.recent_transactions("C001"),
        lambda: s.record_disclosure("c", "C001", "balance"),
        s.init_schema,
    ]
    for call in calls:
        with pytest.raises(AccountStoreError) as info:
            call()
        message = str(info.value)
        assert "13800000001" not in message and "4821" not in message
        assert info.value.part == "accounts"


def test_unreachable_sqlite_database(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder should be")
    s = SqlAccountStore(f"sqlite:///{blocker}/sub/accounts.db")  # constructing must not fail
    _assert_unusable(s)


def test_unreachable_postgresql_database() -> None:
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s = SqlAccountStore(f"postgresql+psycopg2://ivr:s3cret@127.0.0.1:{port}/ivr", busy_timeout_s=1)
    assert "s3cret" not in s.url_display
    _assert_unusable(s)


def test_invalid_url_is_a_clear_error_without_the_password() -> None:
    with pytest.raises(AccountStoreError) as info:
        SqlAccountStore("postgresql://ivr:s3cret@db:notaport/ivr")
    assert "s3cret" not in str(info.value)
    with pytest.raises(AccountStoreError, match="cannot use database URL"):
        SqlAccountStore("nosuchdialect://ivr:s3cret@db/ivr")


def test_locked_database_fails_in_bounded_time(store: SqlAccountStore, db_path: Path) -> None:
    s = make_store(db_path, Clock(), busy_timeout_s=0.2)
    holder = sqlite3.connect(db_path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(AccountStoreError, match="locked"):
            verify(s, "C001", "4821")
        with pytest.raises(AccountStoreError, match="locked"):
            s.record_disclosure("c", "C001", "balance")
        assert s.healthy() is True  # the server is up; only the data is busy
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert verify(s, "C001", "4821") is VerifyStatus.OK


def test_in_memory_database_is_shared_between_threads() -> None:
    s = SqlAccountStore("sqlite://")
    s.init_schema()
    s.import_customers(load_file(DEMO), "demo")
    with ThreadPoolExecutor(max_workers=4) as pool:
        found = list(pool.map(s.customer_by_phone, ["13800000001", "15550000002", "01012345678"]))
    assert found == ["C001", "C002", "C003"]


# ---------------------------------------------------------------- the command line
def run_cli(argv: list[str], settings: Settings) -> int:
    parser = argparse.ArgumentParser(prog="ivr")
    commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args, settings))


def test_db_init_demo(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(database_url=f"sqlite:///{db_path}")
    assert run_cli(["db", "init"], settings) == 0
    assert table_counts(db_path)["customers"] == 0
    assert run_cli(["db", "init", "--demo"], settings) == 0
    assert run_cli(["db", "init", "--demo"], settings) == 0  # again: same result, no duplicates
    assert "imported 3 demo customers" in capsys.readouterr().out
    counts = table_counts(db_path)
    assert (counts["customers"], counts["phone_numbers"], counts["accounts"], counts["loans"],
            counts["transactions"]) == (3, 3, 3, 3, 9)
    s = SqlAccountStore(f"sqlite:///{db_path}")
    assert s.customer_by_phone("13800000001") == "C001"
    assert verify(s, "C002", "7305") is VerifyStatus.OK


def test_db_init_reports_an_unusable_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert run_cli(["db", "init", "--demo"], Settings(database_url=f"sqlite:///{blocker}/a.db")) == 1
    assert "account store" in capsys.readouterr().err


# ---------------------------------------------------------------- phone numbers: no registration oracle, limited look-ups
def _probe_replies(store: SqlAccountStore, phone: str, caller: str, tries: int) -> list[VerifyStatus]:
    """What a prober learns from keying ``phone`` and wrong ID digits ``tries`` times."""
    subject = store.lookup_keyed_phone(phone, call_id="probe", caller_id=caller)
    assert subject is not None
    return [verify(store, subject, "0000", caller=f"1390000{n:04d}") for n in range(tries)]


def test_unregistered_numbers_get_a_stand_in_that_fails_like_a_customer(store: SqlAccountStore) -> None:
    stand_in = store.verification_subject("12345678901")
    assert stand_in.startswith("~") and len(stand_in) <= 32  # no customer id may start with "~"
    assert store.verification_subject("123-4567-8901") == stand_in  # the same for every call
    assert store.verification_subject("12345678902") != stand_in
    assert "12345678901" not in stand_in and "8901" not in stand_in
    assert store.verification_subject("13800000001") == "C001"
    assert verify(store, stand_in, "0000") is VerifyStatus.WRONG
    # Even the right digits of whoever: a stand-in never verifies.
    assert all(verify(store, stand_in, digits) is VerifyStatus.WRONG for digits in SECRETS.values())
    # The lockout after five failures comes after five failures too: the lock is no oracle either.
    assert _probe_replies(store, "12345678903", "", 6) == _probe_replies(store, "15550000002", "", 6)
    assert _probe_replies(store, "12345678904", "", 6)[-1] is VerifyStatus.LOCKED


def test_keyed_phone_look_ups_are_limited_per_caller_and_window(db_path: Path, clock: Clock) -> None:
    s = make_store(db_path, clock, phone_lookup_limit=3, phone_lookup_limit_withheld=5, phone_lookup_window_s=3600)
    s.init_schema()
    s.import_customers(load_file(DEMO), str(DEMO))

    def look(phone: str, caller: str) -> str | None:
        return s.lookup_keyed_phone(phone, call_id="call-x", caller_id=caller)

    # Registered or not, every look-up counts (counting only misses would itself tell).
    assert [look(p, "13912345678") is not None for p in ("13800000001", "12345678901", "15550000002")] == [True] * 3
    assert look("01012345678", "13912345678") is None  # registered, but over the limit: nothing looked up
    assert look("12345678905", "139-1234-5678") is None  # the same caller ID, written otherwise
    assert look("13800000001", "13987654321") == "C001"  # another caller ID has its own budget
    # A refused look-up is not recorded: the window frees up on time, however often the prober retries.
    clock.advance(3601)
    assert look("13800000001", "13912345678") == "C001"
    # Withheld and invalid caller IDs share one budget.
    assert [look("12345678901", caller) is not None for caller in ("", "anonymous", "", "", "")] == [True] * 5
    assert look("13800000001", "") is None
    # Persisted: a new store (another process, a restart) sees the same counts.
    again = make_store(db_path, clock, phone_lookup_limit=3, phone_lookup_limit_withheld=5)
    assert again.lookup_keyed_phone("13800000001", call_id="c", caller_id="") is None
    again.close()
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT * FROM phone_lookups").fetchall()
    assert len(rows) == 3 + 1 + 1 + 5
    text = repr(rows)
    for number in ("13800000001", "12345678901", "13912345678", "5678"):  # neither the number keyed nor the caller ID
        assert number not in text
    s.close()


def test_phone_lookup_settings_come_from_settings(db_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{db_path}", phone_lookup_limit=1, phone_lookup_limit_withheld=1,
                        phone_lookup_window_s=60)
    s = SqlAccountStore.from_settings(settings)
    s.init_schema()
    assert s.lookup_keyed_phone("12345678901", call_id="c", caller_id="13912345678") is not None
    assert s.lookup_keyed_phone("12345678901", call_id="c", caller_id="13912345678") is None
    s.close()
    with pytest.raises(ValueError, match="phone_lookup_limit"):
        SqlAccountStore(f"sqlite:///{db_path}", phone_lookup_limit=0)


def test_enumeration_protections_on_a_real_postgresql(clock: Clock) -> None:
    """The same store on PostgreSQL: the limit is counted in the database, concurrent look-ups by one
    caller ID are serialised (never more than the limit), and stand-ins lock like customers."""
    from tests.services import postgres_cluster

    with postgres_cluster() as url:
        s = SqlAccountStore(url, clock=clock, phone_lookup_limit=5)
        try:
            s.init_schema()
            s.import_customers(load_file(DEMO), str(DEMO))
            with ThreadPoolExecutor(max_workers=8) as pool:
                found = list(pool.map(lambda n: s.lookup_keyed_phone(f"1234567{n:04d}", call_id=f"c{n}",
                                                                     caller_id="13912345678"), range(12)))
            assert sum(f is not None for f in found) == 5
            assert all(f is None or f.startswith("~") for f in found)
            assert _probe_replies(s, "12345678999", "13900000001", 6) == _probe_replies(s, "15550000002", "13900000001", 6)
            other = SqlAccountStore(url, clock=clock, phone_lookup_limit=5)
            assert other.lookup_keyed_phone("13800000001", call_id="c", caller_id="13912345678") is None
            other.close()
        finally:
            s.close()


def test_postgresql_statements_are_bounded_by_the_lookup_wait() -> None:
    """The store's PostgreSQL connections carry lock and statement timeouts: a statement that outruns
    the caller's wait is cancelled by the server, not left running."""
    from sqlalchemy import text

    from tests.services import postgres_cluster

    with postgres_cluster() as url:
        s = SqlAccountStore(url, busy_timeout_s=0.5, write_wait_s=1.0)
        try:
            with s._engine.connect() as conn:
                assert conn.execute(text("SHOW statement_timeout")).scalar() == "1s"
                assert conn.execute(text("SHOW lock_timeout")).scalar() == "500ms"
                with pytest.raises(Exception, match="statement timeout"):
                    conn.execute(text("SELECT pg_sleep(3)"))
        finally:
            s.close()
