"""Read the firm's system of record instead of the robot's own customer tables (``account_source = "sql"``).

The look-ups the robot needs are mapped to read-only SQL in ``ivr.toml``::

    account_source = "sql"

    [system_of_record]
    url = "postgresql+psycopg2://ivr_reader@db.example/core"   # a read-only role is best
    timeout_ms = 2000                                           # per query

    [system_of_record.queries]
    customer_by_phone = "SELECT client_no AS customer_id FROM contacts WHERE digits = :phone"
    id_last4 = "SELECT right(national_id, 4) AS id_last4 FROM clients WHERE client_no = :customer_id"
    accounts = "SELECT iban AS number, ccy AS currency, balance_cents / 100.0 AS balance FROM ..."
    loans = "SELECT ref AS loan_id, ccy AS currency, ... AS outstanding, ... AS status, ... AS next_due_date, ..."
    transactions = "SELECT ... AS date, ... AS amount, ... AS currency, ... AS description ... LIMIT :limit"

Each query is one ``SELECT`` (or ``WITH``) with exactly its named parameters (``:phone``,
``:customer_id``, ``:limit``), always bound, never formatted in; it must return the columns named in
``QUERIES``. The connection is read-only (PostgreSQL ``default_transaction_read_only``; SQLite opened
``mode=ro``) and every query is bounded by ``timeout_ms`` (PostgreSQL ``statement_timeout``; SQLite an
interrupt). Amounts may come as numbers or text, dates as dates or ISO / ``YYYYMMDD`` text.

What is the robot's stays in the robot's own database (``database_url``): verification attempts and
lockouts, phone look-up counts, the disclosure audit, releases. The ID digits are read only to be
compared (constant time) and never stored. ``ivr db check-source`` runs each query and reports what is
missing.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import re
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session

from ivr.accounts.api import AccountView, LoanView, TransactionView
from ivr.accounts.importer import LOAN_STATUSES, normalize_id_digits, normalize_phone
from ivr.accounts.keys import CheckResult
from ivr.accounts.store import InstallmentView, SqlAccountStore, _money, fixed_date_clock
from ivr.masking import mask_text
from ivr.parts import AccountStoreError

if TYPE_CHECKING:
    from ivr.config import Settings

log = logging.getLogger(__name__)

# query name -> (its parameters, the columns it must return)
QUERIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "customer_by_phone": (("phone",), ("customer_id",)),
    "id_last4": (("customer_id",), ("id_last4",)),
    "accounts": (("customer_id",), ("number", "currency", "balance")),
    "loans": (("customer_id",), ("loan_id", "currency", "outstanding", "status", "next_due_date", "next_due_amount")),
    "transactions": (("customer_id", "limit"), ("date", "amount", "currency", "description")),
}
SECTION = "[system_of_record]"
_READ_ONLY = re.compile(r"\s*(select|with)\b", re.IGNORECASE)
_DATE_DIGITS = re.compile(r"(\d{4})(\d{2})(\d{2})")


class SourceConfigError(ValueError):
    """The ``[system_of_record]`` section is missing or wrong; the message names the key."""


@dataclass(frozen=True)
class SourceConfig:
    url: str
    timeout_ms: int
    queries: Mapping[str, str]

    @classmethod
    def from_settings(cls, settings: Settings) -> SourceConfig:
        section = settings.system_of_record
        where = f"ivr.toml (or $IVR_CONFIG) {SECTION}"
        if not section:
            raise SourceConfigError(f"{where}: missing (account_source = \"sql\" needs it)")
        unknown = sorted(set(section) - {"url", "timeout_ms", "queries"})
        if unknown:
            raise SourceConfigError(f"{where} {unknown[0]}: unknown key (expected: url, timeout_ms, queries)")
        url = section.get("url")
        if not isinstance(url, str) or not url:
            raise SourceConfigError(f"{where} url: missing (the database URL of the system of record)")
        timeout = section.get("timeout_ms", 2000)
        if not isinstance(timeout, int) or isinstance(timeout, bool) or not 1 <= timeout <= 60_000:
            raise SourceConfigError(f"{where} timeout_ms: must be a whole number of milliseconds, 1-60000")
        queries = section.get("queries", {})
        if not isinstance(queries, dict):
            raise SourceConfigError(f"{where} queries: must be a [system_of_record.queries] section")
        for name in sorted(queries):
            if name not in QUERIES:
                raise SourceConfigError(f"{where} queries.{name}: unknown query (expected: {', '.join(QUERIES)})")
            check_query(name, queries[name])
        return cls(url, timeout, dict(queries))


def check_query(name: str, sql: object) -> None:
    """One read-only statement with exactly the query's named parameters; else ``SourceConfigError``."""
    where = f"ivr.toml {SECTION} queries.{name}"
    if not isinstance(sql, str) or not _READ_ONLY.match(sql):
        raise SourceConfigError(f"{where}: must be a SELECT (or WITH ... SELECT) statement")
    if ";" in sql.strip().rstrip(";"):
        raise SourceConfigError(f"{where}: one statement only (no ';' inside)")
    expected, _ = QUERIES[name]
    used = set(text(sql)._bindparams)
    if used - set(expected):
        raise SourceConfigError(f"{where}: unknown parameter :{sorted(used - set(expected))[0]} "
                                f"(this query takes {', '.join(':' + p for p in expected)})")
    required = {p for p in expected if p != "limit"}
    if required - used:
        raise SourceConfigError(f"{where}: must use :{sorted(required - used)[0]} (a bound parameter, never "
                                "a value written into the SQL)")


@dataclass(frozen=True)
class Finding:
    query: str
    ok: bool
    detail: str


class SystemOfRecordStore(SqlAccountStore):
    """The AccountStore on the firm's own database for customers (read-only SQL of the config), and on
    the robot's own database (``database_url``) for what is the robot's: attempts, lockouts, look-up
    counts, disclosures. Construction touches neither database."""

    def __init__(self, own_url: str, config: SourceConfig, **kwargs: Any) -> None:
        super().__init__(own_url, **kwargs)
        self._config = config
        try:
            parsed = make_url(config.url)
        except (ArgumentError, ValueError, TypeError):
            raise AccountStoreError(f"system of record: {SECTION} url is not a valid database URL") from None
        self.source_display: str = parsed.render_as_string(hide_password=True)
        self._source_dialect = parsed.get_backend_name()
        options: dict[str, Any] = {"future": True, "hide_parameters": True, "pool_pre_ping": True}
        if self._source_dialect == "postgresql" and parsed.get_driver_name() == "psycopg2":
            options["connect_args"] = {
                "connect_timeout": max(2, config.timeout_ms // 1000 + 1),
                "options": f"-c statement_timeout={config.timeout_ms} -c default_transaction_read_only=on",
            }
        elif self._source_dialect == "sqlite":
            path = parsed.database or ""
            options["creator"] = lambda: sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False,
                                                         timeout=config.timeout_ms / 1000)
        try:
            self._source: Engine = create_engine(parsed, **options)
        except (SQLAlchemyError, ImportError) as exc:
            raise AccountStoreError(f"system of record: cannot use {self.source_display}: {type(exc).__name__}") from None

    @classmethod
    def from_settings(cls, settings: Settings) -> SystemOfRecordStore:
        from ivr.accounts.store import _utc_now

        return cls(
            settings.database_url, SourceConfig.from_settings(settings),
            clock=fixed_date_clock(settings.fixed_date) if settings.fixed_date else _utc_now,
            lockout_failures=settings.lockout_failures, lockout_s=settings.lockout_s,
            phone_lookup_limit=settings.phone_lookup_limit,
            phone_lookup_limit_withheld=settings.phone_lookup_limit_withheld,
            phone_lookup_window_s=settings.phone_lookup_window_s, secret_key_file=settings.secret_key_file,
            busy_timeout_s=max(0.1, min(2.0, settings.lookup_timeout_s / 2)), write_wait_s=settings.lookup_timeout_s,
        )

    def close(self) -> None:
        super().close()
        self._source.dispose()

    # ------------------------------------------------------------ running the configured SQL
    @contextmanager
    def _bounded(self, conn: Connection) -> Iterator[None]:
        """SQLite has no statement timeout: interrupt the query once ``timeout_ms`` has passed."""
        if self._source_dialect != "sqlite":
            yield
            return
        raw: Any = conn.connection.dbapi_connection
        deadline = time.monotonic() + self._config.timeout_ms / 1000
        raw.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
        try:
            yield
        finally:
            raw.set_progress_handler(None, 0)

    def _rows(self, name: str, **params: Any) -> list[Mapping[str, Any]]:
        sql = self._config.queries.get(name)
        if sql is None:
            raise AccountStoreError(f"system of record: no query {name!r} in {SECTION} queries "
                                    "(`ivr db check-source` lists what is missing)")
        _, columns = QUERIES[name]
        statement = text(sql)
        used = set(statement._bindparams)
        try:
            with self._source.connect() as conn, self._bounded(conn):
                result = conn.execute(statement, {k: v for k, v in params.items() if k in used})
                missing = [c for c in columns if c not in result.keys()]
                if missing:
                    raise AccountStoreError(f"system of record: query {name} returns no column {missing[0]!r}")
                return [row._mapping for row in result.fetchall()]
        except SQLAlchemyError as exc:
            orig = getattr(exc, "orig", None)
            first = str(orig or exc).strip().splitlines()
            detail = mask_text(first[0])[:200] if first else type(exc).__name__
            message = f"system of record: query {name} failed ({self._source_dialect}): {detail}"
            log.warning(message, extra={"part": "accounts", "event": "db_error"})
            raise AccountStoreError(message) from exc

    # ------------------------------------------------------------ conversions (named errors)
    @staticmethod
    def _amount(name: str, column: str, value: object) -> Decimal:
        try:
            if isinstance(value, float):
                return Decimal(repr(value))
            if isinstance(value, Decimal | int | str) and not isinstance(value, bool):
                amount = Decimal(str(value).strip())
                if amount.is_finite():
                    return amount
        except InvalidOperation:
            pass
        raise AccountStoreError(f"system of record: query {name}, column {column}: not an amount "
                                f"({type(value).__name__})")

    @staticmethod
    def _date(name: str, column: str, value: object) -> dt.date | None:
        if value is None or value == "":
            return None
        if isinstance(value, dt.datetime):
            return value.date()
        if isinstance(value, dt.date):
            return value
        if isinstance(value, str):
            raw = value.strip()
            digits = _DATE_DIGITS.fullmatch(raw)
            try:
                if digits:
                    return dt.date(*map(int, digits.groups()))
                return dt.date.fromisoformat(raw[:10])
            except ValueError:
                pass
        raise AccountStoreError(f"system of record: query {name}, column {column}: not a date "
                                "(a date, or text YYYY-MM-DD / YYYYMMDD)")

    # ------------------------------------------------------------ AccountStore
    def customer_by_phone(self, phone: str) -> str | None:
        digits = normalize_phone(phone)
        if digits is None:
            return None
        rows = self._rows("customer_by_phone", phone=digits)
        owners = {str(r["customer_id"]) for r in rows if r["customer_id"] is not None}
        if len(owners) > 1:  # a number two customers share cannot tell whom to verify
            log.warning("system of record: a phone number belongs to %d customers; treated as unknown",
                        len(owners), extra={"part": "accounts", "event": "phone_ambiguous"})
            return None
        return owners.pop() if owners else None

    _check_id_in_write = False  # asked of the system of record before the robot's own write transaction

    def _check_id(self, customer: str, answer: str | None,
                  session: Session | None = None) -> tuple[CheckResult, str | None]:
        if customer.startswith("~"):  # a stand-in: no query, the same comparison
            expected = None
        else:
            rows = self._rows("id_last4", customer_id=customer)
            expected = normalize_id_digits(str(rows[0]["id_last4"])) if len(rows) == 1 and rows[0]["id_last4"] else None
        ok = hmac.compare_digest((expected or "\x00\x00\x00\x00").encode(), (answer or "\x01\x01\x01\x01").encode())
        return CheckResult(ok and expected is not None and answer is not None, False), None

    def accounts(self, customer_id: str) -> list[AccountView]:
        views = []
        for row in self._rows("accounts", customer_id=customer_id[:64]):
            currency = str(row["currency"]).strip().upper()
            views.append(AccountView(str(row["number"]).strip()[-4:], currency,
                                     _money(self._amount("accounts", "balance", row["balance"]), currency)))
        return views

    def loans(self, customer_id: str) -> list[LoanView]:
        today = self._today()
        views = []
        for row in self._rows("loans", customer_id=customer_id[:64]):
            currency = str(row["currency"]).strip().upper()
            status = str(row["status"]).strip().lower()
            if status not in LOAN_STATUSES:
                raise AccountStoreError(f"system of record: query loans, column status: {status!r} is not one of "
                                        f"{', '.join(LOAN_STATUSES)} (map the codes in the SQL)")
            due = self._date("loans", "next_due_date", row["next_due_date"])
            due_amount = row["next_due_amount"]
            views.append(LoanView(
                loan_id=str(row["loan_id"]), currency=currency,
                outstanding=_money(self._amount("loans", "outstanding", row["outstanding"]), currency),
                status=status,
                days_overdue=max(0, (today - due).days) if status == "overdue" and due is not None else 0,
                next_due_date=due,
                next_due_amount=(None if due_amount is None
                                 else _money(self._amount("loans", "next_due_amount", due_amount), currency)),
            ))
        return sorted(views, key=lambda v: v.loan_id)

    def repayment_schedule(self, customer_id: str, loan_id: str) -> list[InstallmentView]:
        return []  # not mapped: the dialogue does not ask for it

    def recent_transactions(self, customer_id: str, limit: int = 3) -> list[TransactionView]:
        count = max(0, min(int(limit), 100))
        if count == 0:
            return []
        views = []
        for row in self._rows("transactions", customer_id=customer_id[:64], limit=count):
            currency = str(row["currency"]).strip().upper()
            day = self._date("transactions", "date", row["date"])
            if day is None:
                raise AccountStoreError("system of record: query transactions, column date: empty")
            views.append(TransactionView(day, _money(self._amount("transactions", "amount", row["amount"]), currency),
                                         currency, str(row["description"] or "")))
        views.sort(key=lambda v: v.date, reverse=True)  # stable: the query's order within a day
        return views[:count]

    def healthy(self) -> bool:
        if not super().healthy():
            return False
        try:
            with self._source.connect() as conn:
                conn.execute(text("SELECT 1")).scalar_one()
        except Exception as exc:  # a health probe reports, it never raises
            log.debug("system of record unhealthy: %s", type(exc).__name__, extra={"part": "accounts"})
            return False
        return True

    def check_source(self, phone: str = "", customer_id: str = "") -> list[Finding]:
        """Run every query once (with the given sample values, or values that match nothing) and report,
        per query: not configured, failing, missing columns, or ok with its row count."""
        findings: list[Finding] = []
        samples: dict[str, Any] = {"phone": normalize_phone(phone) or "0", "customer_id": customer_id or "~check",
                                   "limit": 3}
        for name, (_, columns) in QUERIES.items():
            sql = self._config.queries.get(name)
            if sql is None:
                findings.append(Finding(name, False, f"missing: add queries.{name} to {SECTION} (returns "
                                                     f"{', '.join(columns)})"))
                continue
            statement = text(sql)
            used = set(statement._bindparams)
            try:
                with self._source.connect() as conn, self._bounded(conn):
                    result = conn.execute(statement, {k: v for k, v in samples.items() if k in used})
                    keys = set(result.keys())
                    rows = result.fetchall()
            except SQLAlchemyError as exc:
                first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
                findings.append(Finding(name, False, f"fails: {mask_text(first[0])[:200] if first else type(exc).__name__}"))
                continue
            missing = [c for c in columns if c not in keys]
            if missing:
                findings.append(Finding(name, False, f"missing column(s): {', '.join(missing)} (has: "
                                                     f"{', '.join(sorted(keys))})"))
            else:
                findings.append(Finding(name, True, f"ok ({len(rows)} row(s) for the sample)"))
        return findings


def open_store(settings: Settings) -> SqlAccountStore:
    """The store ``settings.account_source`` names: the robot's own tables, or the system of record."""
    if settings.account_source == "sql":
        try:
            return SystemOfRecordStore.from_settings(settings)
        except SourceConfigError as exc:
            raise AccountStoreError(str(exc)) from None
    return SqlAccountStore.from_settings(settings)
