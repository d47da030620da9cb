"""The system-of-record source (issue #19): the robot reads a firm's own PostgreSQL database, whose
schema is unlike the robot's (other table and column names, integer customer numbers, amounts in
cents, dates as text, status codes), through read-only SQL from the configuration; lockouts and the
audit stay in the robot's own database. It must answer every recorded call the robot's own store answers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from ivr.accounts import commands
from ivr.accounts.api import VerifyStatus
from ivr.accounts.importer import load_file
from ivr.accounts.source import QUERIES, SourceConfig, SourceConfigError, SystemOfRecordStore, check_query
from ivr.accounts.store import SqlAccountStore
from ivr.config import Settings, load_settings
from ivr.parts import AccountStoreError
from ivr.testing.callfile import load_call_file
from ivr.testing.harness import ScriptedAsterisk
from ivr.testing.replay import RobotInThread
from tests.conftest import FIXED_DATE, make_demo_db

DEMO = Path(commands.__file__).resolve().parent / "demo.yaml"
CALLS = Path(__file__).parent / "calls"
PARTY = {"C001": 1001, "C002": 1002, "C003": 1003}  # the firm numbers its customers

FOREIGN_SCHEMA = """
CREATE TABLE party (party_no integer PRIMARY KEY, display_name text NOT NULL, national_id text NOT NULL);
CREATE TABLE party_contact (party_no integer NOT NULL REFERENCES party, kind text NOT NULL, value text NOT NULL);
CREATE TABLE deposit (deposit_ref text PRIMARY KEY, party_no integer NOT NULL REFERENCES party,
                      ccy char(3) NOT NULL, balance_minor bigint NOT NULL);
CREATE TABLE credit_line (facility text PRIMARY KEY, party_no integer NOT NULL REFERENCES party, ccy char(3) NOT NULL,
                          left_minor bigint NOT NULL, state char(1) NOT NULL, due_on text NOT NULL DEFAULT '',
                          due_minor bigint);
CREATE TABLE ledger (entry_no serial PRIMARY KEY, party_no integer NOT NULL REFERENCES party, booked text NOT NULL,
                     minor bigint NOT NULL, ccy char(3) NOT NULL, memo text NOT NULL);
"""

QUERIES_TOML = {
    "customer_by_phone": "SELECT party_no AS customer_id FROM party_contact WHERE kind = 'mobile' "
                         "AND regexp_replace(value, '[^0-9]', '', 'g') = :phone",
    "id_last4": "SELECT right(national_id, 4) AS id_last4 FROM party WHERE party_no::text = :customer_id",
    "accounts": "SELECT deposit_ref AS number, ccy AS currency, balance_minor / 100.0 AS balance "
                "FROM deposit WHERE party_no::text = :customer_id ORDER BY deposit_ref",
    "loans": "SELECT facility AS loan_id, ccy AS currency, left_minor / 100.0 AS outstanding, "
             "CASE state WHEN 'A' THEN 'active' WHEN 'O' THEN 'overdue' ELSE 'closed' END AS status, "
             "NULLIF(due_on, '') AS next_due_date, due_minor / 100.0 AS next_due_amount "
             "FROM credit_line WHERE party_no::text = :customer_id",
    "transactions": "SELECT booked AS date, minor / 100.0 AS amount, ccy AS currency, memo AS description "
                    "FROM ledger WHERE party_no::text = :customer_id ORDER BY booked DESC, entry_no LIMIT :limit",
}


def load_foreign(url: str) -> None:
    """The demo customers as the firm's database would hold them."""
    engine = create_engine(url, future=True)
    with engine.begin() as conn:
        for statement in FOREIGN_SCHEMA.split(";"):
            if statement.strip():
                conn.execute(text(statement))
        for c in load_file(DEMO):
            party = PARTY[c.customer_id]
            conn.execute(text("INSERT INTO party VALUES (:p, :n, :i)"),
                         {"p": party, "n": c.name, "i": f"110101199001{party}{c.id_last4}"})
            for phone in c.phones:  # stored as people type them
                conn.execute(text("INSERT INTO party_contact VALUES (:p, 'mobile', :v)"),
                             {"p": party, "v": f"+{phone[:3]} {phone[3:7]}-{phone[7:]}"})
            conn.execute(text("INSERT INTO party_contact VALUES (:p, 'fax', '+1 555 000 9999')"), {"p": party})
            for a in c.accounts:
                conn.execute(text("INSERT INTO deposit VALUES (:r, :p, :c, :b)"),
                             {"r": a.number, "p": party, "c": a.currency, "b": int(a.balance * 100)})
            for x in c.loans:
                conn.execute(text("INSERT INTO credit_line VALUES (:f, :p, :c, :l, :s, :d, :m)"), {
                    "f": x.loan_id, "p": party, "c": x.currency, "l": int(x.outstanding * 100),
                    "s": {"active": "A", "overdue": "O", "closed": "C"}[x.status],
                    "d": x.next_due_date.strftime("%Y%m%d") if x.next_due_date else "",
                    "m": None if x.next_due_amount is None else int(x.next_due_amount * 100)})
            for t in c.transactions:
                conn.execute(text("INSERT INTO ledger (party_no, booked, minor, ccy, memo) VALUES (:p, :b, :m, :c, :d)"),
                             {"p": party, "b": t.date.isoformat(), "m": int(t.amount * 100), "c": t.currency,
                              "d": t.description})
    engine.dispose()


@pytest.fixture(scope="module")
def foreign_url() -> Iterator[str]:
    from tests.services import postgres_cluster

    with postgres_cluster() as url:
        load_foreign(url)
        yield url


def source_settings(base: Settings, own_db: Path, url: str, **queries: str) -> Settings:
    section: dict[str, Any] = {"url": url, "timeout_ms": 1500, "queries": {**QUERIES_TOML, **queries}}
    own = SqlAccountStore(f"sqlite:///{own_db}")
    own.init_schema()  # the robot's own tables: empty of customers
    own.close()
    return dataclasses.replace(base, database_url=f"sqlite:///{own_db}", account_source="sql",
                               system_of_record=section)


@pytest.fixture
def source(base_settings: Settings, tmp_path: Path, foreign_url: str) -> Iterator[SystemOfRecordStore]:
    store = SystemOfRecordStore.from_settings(source_settings(base_settings, tmp_path / "own.db", foreign_url))
    yield store
    store.close()


def test_the_source_answers_what_the_own_store_answers(source: SystemOfRecordStore, base_settings: Settings,
                                                       tmp_path: Path) -> None:
    own = SqlAccountStore.from_settings(dataclasses.replace(base_settings,
                                                            database_url=make_demo_db(tmp_path / "demo.db")))
    for c in load_file(DEMO):
        party = str(PARTY[c.customer_id])
        assert own.customer_by_phone(c.phones[0]) == c.customer_id
        assert source.customer_by_phone(c.phones[0]) == party
        assert source.verification_subject(c.phones[0]) == party
        assert source.accounts(party) == own.accounts(c.customer_id)
        assert source.loans(party) == own.loans(c.customer_id)
        for limit in (1, 3, 10):
            assert source.recent_transactions(party, limit) == own.recent_transactions(c.customer_id, limit)
    for phone in ("15550000099", "", "1'; DROP TABLE party;--", "15550009999"):  # the fax is no mobile
        assert source.customer_by_phone(phone) is None
        assert own.customer_by_phone(phone) is None
    assert source.verification_subject("15550000099").startswith("~")  # a stand-in, like the own store's
    assert source.accounts("1'; DROP TABLE party;--") == [] and source.accounts("~stand-in") == []
    own.close()


def test_verification_and_lockout_live_in_the_robots_own_database(source: SystemOfRecordStore,
                                                                  tmp_path: Path) -> None:
    def verify(customer: str, digits: str) -> VerifyStatus:
        return source.verify_id_last4(customer, digits, call_id="c", caller_id="13900000009")

    assert verify("1001", "4821") is VerifyStatus.OK
    assert [verify("1002", "0000") for _ in range(6)] == [VerifyStatus.WRONG] * 5 + [VerifyStatus.LOCKED]
    assert verify("1002", "7305") is VerifyStatus.LOCKED
    stand_in = source.verification_subject("12345678901")
    assert verify(stand_in, "0000") is VerifyStatus.LOCKED  # the caller ID is locked out now, like a customer
    source.record_disclosure("call-1", "1001", "balance")
    import sqlite3

    with sqlite3.connect(tmp_path / "own.db") as conn:
        attempts = conn.execute("SELECT customer_id, result FROM verification_attempts").fetchall()
        assert conn.execute("SELECT count(*) FROM customers").fetchone()[0] == 0
        assert conn.execute("SELECT customer_id FROM disclosures").fetchall() == [("1001",)]
    assert attempts[0] == ("1001", "ok") and len(attempts) == 9
    raw = (tmp_path / "own.db").read_bytes()
    assert b"4821" not in raw and b"7305" not in raw  # the digits were compared, never kept


def test_the_connection_is_read_only_and_queries_are_bounded(base_settings: Settings, tmp_path: Path,
                                                             foreign_url: str) -> None:
    writes = ("WITH gone AS (DELETE FROM deposit WHERE party_no::text = :customer_id RETURNING *) "
              "SELECT deposit_ref AS number, ccy AS currency, 0 AS balance FROM gone")
    slow = ("SELECT deposit_ref AS number, ccy AS currency, balance_minor AS balance FROM deposit, pg_sleep(5) "
            "WHERE party_no::text = :customer_id")
    for sql, problem in ((writes, "read-only transaction"), (slow, "statement timeout")):
        store = SystemOfRecordStore.from_settings(source_settings(base_settings, tmp_path / "own.db", foreign_url,
                                                                  accounts=sql))
        with pytest.raises(AccountStoreError, match=f"query accounts failed.*{problem}"):
            store.accounts("1001")
        store.close()
    engine = create_engine(foreign_url, future=True)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM deposit")).scalar_one() == 3  # nothing deleted
    engine.dispose()


@pytest.mark.parametrize(("name", "sql", "problem"), [
    ("accounts", "DELETE FROM deposit WHERE party_no::text = :customer_id", "must be a SELECT"),
    ("accounts", "SELECT 1 AS number; DROP TABLE party", "one statement only"),
    ("accounts", "SELECT deposit_ref AS number FROM deposit WHERE party_no = 1001", "must use :customer_id"),
    ("accounts", "SELECT * FROM deposit WHERE party_no::text = :customer_id AND ccy = :currency",
     "unknown parameter :currency"),
    ("customer_by_phone", "SELECT party_no AS customer_id FROM party_contact WHERE value = :customer_id",
     "unknown parameter :customer_id"),
])
def test_configured_sql_is_checked_and_named(name: str, sql: str, problem: str) -> None:
    with pytest.raises(SourceConfigError, match=rf"\[system_of_record\] queries\.{name}: .*{problem}"):
        check_query(name, sql)


def test_the_section_comes_from_ivr_toml(tmp_path: Path, foreign_url: str) -> None:
    toml = tmp_path / "ivr.toml"
    queries = "\n".join(f"{k} = {json.dumps(v)}" for k, v in QUERIES_TOML.items())
    toml.write_text(f'account_source = "sql"\n[system_of_record]\nurl = "{foreign_url}"\ntimeout_ms = 800\n'
                    f"[system_of_record.queries]\n{queries}\n", encoding="utf-8")
    settings = load_settings(toml, environ={})
    config = SourceConfig.from_settings(settings)
    assert settings.account_source == "sql" and config.timeout_ms == 800 and set(config.queries) == set(QUERIES)
    toml.write_text(toml.read_text().replace("[system_of_record.queries]", "[system_of_record.queries]\nbalance = \"SELECT 1\""))
    with pytest.raises(SourceConfigError, match=r"queries\.balance: unknown query"):
        SourceConfig.from_settings(load_settings(toml, environ={}))
    with pytest.raises(SourceConfigError, match=r"\[system_of_record\]: missing"):
        SourceConfig.from_settings(Settings(account_source="sql"))


def test_check_source_reports_what_is_missing(base_settings: Settings, tmp_path: Path, foreign_url: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    settings = source_settings(base_settings, tmp_path / "own.db", foreign_url)
    parser = argparse.ArgumentParser(prog="ivr")
    commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["db", "check-source", "--phone", "13800000001", "--customer", "1001"])
    assert args.handler(args, settings) == 0
    out = capsys.readouterr().out
    assert "5 of 5 queries ready" in out and "customer_by_phone: ok (1 row(s)" in out
    queries = dict(QUERIES_TOML)
    del queries["transactions"]
    queries["loans"] = queries["loans"].replace(" AS next_due_amount", " AS due_amount")
    queries["accounts"] = queries["accounts"].replace("FROM deposit", "FROM deposits")
    broken = dataclasses.replace(settings, system_of_record={**settings.system_of_record, "queries": queries})
    assert args.handler(args, broken) == 1
    out = capsys.readouterr().out
    assert "FAIL transactions: missing: add queries.transactions" in out
    assert "FAIL loans: missing column(s): next_due_amount" in out
    assert 'FAIL accounts: fails: (psycopg2.errors.UndefinedTable) relation "deposits" does not exist' in out \
        or 'FAIL accounts: fails: relation "deposits" does not exist' in out
    assert "2 of 5 queries ready" in out


@pytest.fixture(scope="module")
def source_robot(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory,
                 foreign_url: str) -> Iterator[RobotInThread]:
    from ivr.testing.replay import replay_settings

    root = tmp_path_factory.mktemp("source")
    settings = dataclasses.replace(source_settings(replay_settings(base_settings), root / "own.db", foreign_url),
                                   lockout_failures=10_000, fixed_date=FIXED_DATE)
    robot = RobotInThread(settings, text_input=True).start()
    yield robot
    robot.stop()


@pytest.mark.parametrize("path", sorted((CALLS / "text").glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.stem}")
async def test_recorded_calls_through_the_system_of_record(path: Path, source_robot: RobotInThread) -> None:
    """Every recorded text call (and any call file added there) gives its golden transcript when the
    robot reads the firm's database instead of its own tables."""
    call = load_call_file(path)
    assert source_robot.robot is not None
    assert isinstance(source_robot.robot.store, SystemOfRecordStore)
    peer = ScriptedAsterisk(call, locale=call.locale or "zh-CN", text_mode=True,
                            speech=source_robot.robot.parts.synthesizer.render)
    report = await peer.run("127.0.0.1", source_robot.port)
    assert report.failures(call) == [], json.dumps(report.to_json(), ensure_ascii=False, indent=1)
    golden = json.loads(path.with_suffix(".golden.json").read_text(encoding="utf-8"))
    assert report.golden() == golden
